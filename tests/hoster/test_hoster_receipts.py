"""A real hoster signs every inference step: the receipt covers the effective input prefix
(rollbacks included) and the exact output it returned, bound to its peer id, span and epoch."""

from __future__ import annotations

import hoster_rpc as rh
import pytest
import torch

from consensus.evidence import Receipt, chain_of, output_hash
from hoster.server import own_p2p_replica
from keys.node_key import public_key_from_peer_id, verify
from subnet.node.procs import ManagedProcess, python_module_argv

pytestmark = pytest.mark.slow


async def test_every_step_answer_carries_a_valid_receipt(tiny_llama, tmp_path, client_dht_factory):
    proc = ManagedProcess("hoster", python_module_argv(
        "hoster", "--model", tiny_llama, "--blocks", "2:6", "--model-name", "receipts-test", "--no-progress"),
        log_path=tmp_path / "hoster.log")
    try:
        _, peer, maddr = proc.wait_ready(120).split()
        p2p = await own_p2p_replica(client_dht_factory([maddr]))
        try:
            s = rh.Stream(p2p, peer)
            await s.open("receipts-test", 2, 6, max_length=16)
            prefix = torch.zeros(1, 0, 64)
            for position, n in ((0, 5), (5, 1), (6, 1), (3, 2), (5, 1)):  # (3, 2) rolls back
                x = torch.randn(1, n, 64)
                meta, tensors = rh.unpack(await s.send(rh.request(meta={"position": position}, tensors=[x])))
                prefix = torch.cat([prefix[:, :position], x], dim=1)
                out = tensors[0]
                r = Receipt(peer, "receipts-test", meta["receipt"]["epoch"], 2, 6, position, n, chain_of(prefix),
                            output_hash(out), bytes.fromhex(meta["receipt"]["sig"]))
                assert r.epoch == 0  # no chain: epoch 0
                assert verify(public_key_from_peer_id(peer), r.message(), r.signature)
                forged = Receipt(**{**r.__dict__, "output_hash": output_hash(out + 1e-3)})
                assert not verify(public_key_from_peer_id(peer), forged.message(), r.signature)
            await s.close()
        finally:
            await p2p.shutdown()
    finally:
        proc.stop(15)

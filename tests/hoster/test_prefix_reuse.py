"""Prefix reuse on a real hoster process (hoster.prefix_cache, docs/PROTOCOL.md "Prefix reuse"): a
session offering the input chain of a closed session's prefix forks its KV, computes only the new
positions with the same outputs and receipts; keys come from the inputs the hoster received, so
other inputs, other spans or mere claims never hit; cached prefixes give way to sessions; n rows
of one prompt prefill once."""

from __future__ import annotations

import socket
import time

import hoster_rpc as rh
import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from consensus.evidence import Receipt, chain_of, chain_seed, extend_chain, output_hash
from hoster.server import own_p2p_replica
from keys.node_key import public_key_from_peer_id, verify
from subnet.node.procs import ManagedProcess, python_module_argv

pytestmark = pytest.mark.slow
UID = "prefix-test"
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hoster(tiny_llama, tmp_path_factory):
    port = _port()
    proc = ManagedProcess("hoster", python_module_argv(
        "hoster", "--model", tiny_llama, "--blocks", "0:8", "--model-name", UID, "--no-progress",
        "--cache-tokens", "640", "--metrics-port", str(port)), log_path=tmp_path_factory.mktemp("px") / "hoster.log")
    try:
        _, peer, maddr = proc.wait_ready(120).split()
        yield peer, maddr, f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.stop(15)


def metric(url: str, name: str) -> float:
    for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in fam.samples:
            if s.name == name:
                return s.value
    return 0.0


def wait_metric(url: str, name: str, at_least: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(url, name) < at_least:
        assert time.monotonic() < deadline, f"{name} stayed below {at_least}"
        time.sleep(0.1)


def offer(x: torch.Tensor, lengths) -> list:
    states = bytearray(chain_seed(x.dtype, x.shape[0], x.shape[2]))
    extend_chain(states, x, 0)
    return [[n, bytes(states[32 * n:32 * n + 32]).hex()] for n in lengths]


async def open_stream(p2p, peer, start=0, end=8, max_length=200, batch_size=1, prefix=None):
    s = rh.Stream(p2p, peer)
    meta = {"start": start, "end": end, "max_length": max_length, "batch_size": batch_size}
    if prefix is not None:
        meta["prefix"] = prefix
    reply, _ = rh.unpack(await s.send(rh.request(UID, meta)))
    return s, reply.get("prefix_hit")


async def store(p2p, peer, url, x: torch.Tensor) -> None:
    before = metric(url, "mesh_hoster_prefix_stored_total")
    s, _ = await open_stream(p2p, peer)
    await s.step(x, 0)
    await s.close()
    wait_metric(url, "mesh_hoster_prefix_stored_total", before + 1)


async def test_fork_computes_only_new_positions_with_same_outputs_and_receipts(hoster, client_dht_factory):
    peer, maddr, url = hoster
    p2p = await own_p2p_replica(client_dht_factory([maddr]))
    try:
        x = torch.randn(1, 90, 64, generator=torch.Generator().manual_seed(1))
        ref = await rh.forward(p2p, peer, UID, 0, 8, x)
        await store(p2p, peer, url, x[:, :70])
        computed = metric(url, "mesh_hoster_positions_computed_total")
        s, hit = await open_stream(p2p, peer, prefix=offer(x, [80, 64, 32]))
        assert hit == 64  # 80 was never sent; 64 is the longest boundary the entry holds
        meta, tensors = rh.unpack(await s.send(rh.request(meta={"position": 64}, tensors=[x[:, 64:90]])))
        torch.testing.assert_close(tensors[0], ref[:, 64:90], **TOL)
        assert metric(url, "mesh_hoster_positions_computed_total") - computed == 26
        r = Receipt(peer, UID, meta["receipt"]["epoch"], 0, 8, 64, 26, chain_of(x), output_hash(tensors[0]),
                    bytes.fromhex(meta["receipt"]["sig"]))
        assert verify(public_key_from_peer_id(peer), r.message(), r.signature)  # the chain covers [0, 90)
        out = await s.step(x[:, 40:41], 40)  # a rollback inside the forked prefix is still right
        torch.testing.assert_close(out, ref[:, 40:41], **TOL)
        await s.close()
        assert metric(url, "mesh_hoster_prefix_reused_positions_total") >= 64
    finally:
        await p2p.shutdown()


async def test_claims_other_inputs_and_other_spans_never_hit(hoster, client_dht_factory):
    peer, maddr, url = hoster
    p2p = await own_p2p_replica(client_dht_factory([maddr]))
    try:
        x = torch.randn(1, 70, 64, generator=torch.Generator().manual_seed(2))
        poison = x.clone()
        poison[:, 10:] += 1.0  # an attacker's session: same first 10 rows, then its own
        await store(p2p, peer, url, poison)
        # the victim offers the chain of its real inputs: the poisoned KV is under another key
        s, hit = await open_stream(p2p, peer, prefix=offer(x, [64, 32]))
        assert hit == 0
        await s.close()
        # the attacker cannot attach its KV to the victim's key: the key is what the hoster hashed
        s, hit = await open_stream(p2p, peer, prefix=offer(poison, [64]))
        assert hit == 64
        out = await s.step(poison[:, 64:70], 64)
        torch.testing.assert_close(out, (await rh.forward(p2p, peer, UID, 0, 8, poison))[:, 64:70], **TOL)
        await s.close()
        await store(p2p, peer, url, x)
        s, hit = await open_stream(p2p, peer, start=0, end=4, prefix=offer(x, [64, 32]))
        assert hit == 0  # another block range: never the [0, 8) entry
        await s.close()
        with pytest.raises(rh.RemoteError) as e:
            await open_stream(p2p, peer, prefix=[[64, "zz" * 32]])
        assert e.value.type == "bad_request"
    finally:
        await p2p.shutdown()


async def test_cached_prefixes_give_way_to_sessions(hoster, client_dht_factory):
    peer, maddr, url = hoster
    p2p = await own_p2p_replica(client_dht_factory([maddr]))
    try:
        for seed in range(4):  # the cache holds at most half of the 640-token budget
            await store(p2p, peer, url, torch.randn(1, 100, 64, generator=torch.Generator().manual_seed(10 + seed)))
        assert 0 < metric(url, "mesh_hoster_prefix_tokens") <= 320
        evicted = metric(url, "mesh_hoster_prefix_evictions_total")
        s, _ = await open_stream(p2p, peer, max_length=600)
        x = torch.randn(1, 600, 64, generator=torch.Generator().manual_seed(3))
        out = await s.step(x, 0)  # needs 600 of 640 tokens: the cached prefixes are evicted first
        assert out.shape == (1, 600, 64)
        assert metric(url, "mesh_hoster_prefix_evictions_total") > evicted
        assert metric(url, "mesh_hoster_prefix_tokens") <= 40
        await s.close()
    finally:
        await p2p.shutdown()


async def test_n_rows_of_one_prompt_prefill_once(hoster, client_dht_factory):
    peer, maddr, url = hoster
    p2p = await own_p2p_replica(client_dht_factory([maddr]))
    try:
        g = torch.Generator().manual_seed(4)
        prompt, nxt = torch.randn(1, 40, 64, generator=g), torch.randn(4, 1, 64, generator=g)
        ref = await rh.forward(p2p, peer, UID, 0, 8, torch.cat([prompt.expand(4, -1, -1), nxt], 1))
        computed = metric(url, "mesh_hoster_positions_computed_total")
        s, _ = await open_stream(p2p, peer, max_length=50, batch_size=4)
        first = await s.step(prompt, 0)  # one row stands for all four
        torch.testing.assert_close(first, ref[:1, :40], **TOL)
        out = await s.step(nxt, 40)
        torch.testing.assert_close(out, ref[:, 40:], **TOL)
        assert metric(url, "mesh_hoster_positions_computed_total") - computed == 40 + 4
        with pytest.raises(rh.RemoteError):
            await s.step(nxt[:1], 41)  # rows differ now: one row no longer stands for all
        await s.close()
    finally:
        await p2p.shutdown()

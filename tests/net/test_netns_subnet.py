"""A subnet across network namespaces (one per node, on a private bridge, 10.x addresses):
a devnet chain, a validator, 3 hosters and a client, none given --initial-peers. The nodes find
each other from the multiaddrs registered on chain, complete scored epochs, and the client (in
hivemind client mode, no listen port) generates the same greedy tokens as local transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from subnet_lab import LabSubnet, wait_for

from subnet.node.devnet import overlapping_ranges

PROMPT = [1, 5, 9, 14, 3, 7]
NEW_TOKENS = 8


def reference_tokens(model: str) -> list[int]:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32)
    out = m.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


@pytest.mark.slow
def test_subnet_across_namespaces_finds_peers_from_the_chain(lab, tiny_llama, tmp_path):
    net = LabSubnet(lab, tmp_path, tiny_llama)
    try:
        net.start_chain()
        validator = net.add_node("validator", ["--validator"])
        hosters = [net.add_node(f"hoster{i}", ["--hoster", "--validator", "--blocks", f"{a}:{b}"])
                   for i, (a, b) in enumerate(overlapping_ranges(8, 3))]
        lab.add("client")
        net.spawn(validator).wait_ready(timeout=240)  # the first node: nobody on chain answers yet
        for h in hosters:
            net.spawn(h)
        for h in hosters:
            line = h.proc.wait_ready(timeout=300)
            assert lab.hosts[h.label].ip in line  # READY prints the address others dial first
        net.owner.activate_subnet(net.subnet_id)

        probe = [sys.executable, str(Path(__file__).with_name("client_probe.py")), tiny_llama, net.url,
                 str(net.subnet_id), str(NEW_TOKENS), ",".join(map(str, PROMPT))]
        r = subprocess.run(lab.argv("client", probe), capture_output=True, text=True, timeout=400,
                           env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:] + net.logs_tail()
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert len(result["peers"]) == 4 and all(p.startswith(f"/ip4/{lab.net}.") for p in result["peers"])
        assert result["tokens"] == reference_tokens(tiny_llama)

        first = net.owner.get_epoch_info(net.subnet_id).epoch + 2
        epoch_s = net.block_time * net.epoch_length
        for epoch in (first, first + 1):
            res = wait_for(lambda e=epoch: net.epoch_result(e), epoch_s * 12 + 120, f"epoch {epoch} to finalise")
            assert res["outcome"] == "accepted" and int(res["attestors"]) == int(res["validators"]) == 4, \
                (res, net.logs_tail())
            sub = net.owner.get_consensus_submission(net.subnet_id, epoch)
            assert sub is not None and len(sub.data) >= 3  # every hoster scored
    except BaseException:
        print(net.logs_tail(40))
        raise
    finally:
        net.stop()

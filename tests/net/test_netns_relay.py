"""NAT traversal through a relay, across network namespaces: a hoster whose namespace drops every
inbound connection (iptables, like a home NAT) reserves a slot on a public node (`--relay`,
on by default with --announce-maddrs) with `--use-auto-relay`, says `relayed` in its announcement,
and serves its blocks to a client and to the hoster before it, all of which reach it only
through the relay. The greedy tokens match local transformers'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netlab import iptables_unavailable
from subnet_lab import LabSubnet
from test_netns_subnet import NEW_TOKENS, PROMPT, reference_tokens


@pytest.mark.slow
def test_hoster_behind_nat_is_reached_through_a_relay(lab, tiny_llama, tmp_path):
    reason = iptables_unavailable()
    if reason:
        pytest.skip(reason)
    net = LabSubnet(lab, tmp_path, tiny_llama)
    try:
        net.start_chain()
        # libp2p builds relayed addresses only from a relay's public addresses: public-looking ones here
        relay = net.add_node("relay", ["--validator"], public=True)  # announces its address: relay service on
        direct = net.add_node("direct", ["--hoster", "--validator", "--blocks", "0:4"], public=True)
        natted = net.add_node("natted", ["--hoster", "--validator", "--blocks", "4:8", "--use-auto-relay",
                                         "--relay-peers", net.maddr(relay)], public=True,
                              registered_maddr=lambda m: f"{net.maddr(relay)}/p2p-circuit/p2p/{m.node_key.peer_id}")
        lab.add("client")
        lab.add_public_address("client")
        lab.drop_inbound("natted")
        net.spawn(relay).wait_ready(timeout=240)
        net.spawn(direct).wait_ready(timeout=300)
        net.spawn(natted, announce=False).wait_ready(timeout=300)

        probe = [sys.executable, str(Path(__file__).with_name("client_probe.py")), tiny_llama, net.url,
                 str(net.subnet_id), str(NEW_TOKENS), ",".join(map(str, PROMPT))]
        r = subprocess.run(lab.argv("client", probe), capture_output=True, text=True, timeout=400,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:] + net.logs_tail()
        result = json.loads(r.stdout.strip().splitlines()[-1])
        servers = {s["peer_id"]: s for s in result["servers"]}
        assert servers[natted.node_key.peer_id]["relayed"] is True
        assert servers[direct.node_key.peer_id]["relayed"] is False
        assert result["tokens"] == reference_tokens(tiny_llama)  # blocks 4:8 only exist behind the NAT
    except BaseException:
        print(net.logs_tail(40))
        raise
    finally:
        net.stop()

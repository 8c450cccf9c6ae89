"""A relay that goes away mid-session: the client was generating through a hoster behind NAT
(reached only through the relay); the relay is killed; the client fails over to a direct hoster
of the same blocks, replays, and finishes with the same greedy tokens as local transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netlab import iptables_unavailable
from subnet_lab import LabSubnet, wait_for
from test_netns_subnet import PROMPT, reference_tokens

NEW_TOKENS = 8
PAUSE_AT = 3


@pytest.mark.slow
def test_client_fails_over_when_the_relay_dies(lab, tiny_llama, tmp_path):
    reason = iptables_unavailable()
    if reason:
        pytest.skip(reason)
    net = LabSubnet(lab, tmp_path, tiny_llama)
    try:
        net.start_chain()
        relay = net.add_node("relay", ["--validator"], public=True)
        first = net.add_node("first", ["--hoster", "--validator", "--blocks", "0:4", "--throughput", "100"],
                             public=True)
        # the NAT'd hoster claims more than the direct spare, so the client starts through the relay
        natted = net.add_node("natted", ["--hoster", "--validator", "--blocks", "4:8", "--throughput", "1000",
                                         "--use-auto-relay", "--relay-peers", net.maddr(relay)], public=True,
                              registered_maddr=lambda m: f"{net.maddr(relay)}/p2p-circuit/p2p/{m.node_key.peer_id}")
        spare = net.add_node("spare", ["--hoster", "--validator", "--blocks", "4:8", "--throughput", "1"],
                             public=True)
        lab.add("client")
        lab.add_public_address("client")
        lab.drop_inbound("natted")
        net.spawn(relay).wait_ready(timeout=240)
        for m in (first, natted, spare):
            net.spawn(m, announce=m is not natted)
        for m in (first, natted, spare):
            m.proc.wait_ready(timeout=300)

        flag = tmp_path / "relay-killed"
        probe = [sys.executable, str(Path(__file__).with_name("client_failover_probe.py")), tiny_llama, net.url,
                 str(net.subnet_id), str(NEW_TOKENS), ",".join(map(str, PROMPT)), str(PAUSE_AT), str(flag),
                 natted.node_key.peer_id]
        client = subprocess.Popen(lab.argv("client", probe), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            line = client.stdout.readline().strip()
            assert line == "PAUSED", line + "\n" + client.stderr.read()[-3000:]
            relay.proc.kill()  # the relay's whole process group: node, DHT process, p2pd
            wait_for(lambda: not relay.proc.alive, 30, "the relay to die")
            flag.touch()
            out, err = client.communicate(timeout=300)
        finally:
            if client.poll() is None:
                client.kill()
        assert client.returncode == 0, err[-3000:] + net.logs_tail()
        result = json.loads(out.strip().splitlines()[-1])
        assert result["tokens"] == reference_tokens(tiny_llama)
        assert natted.node_key.peer_id in result["failed_over_from"]
    except BaseException:
        print(net.logs_tail(40))
        raise
    finally:
        net.stop()

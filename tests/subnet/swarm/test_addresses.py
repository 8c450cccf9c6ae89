"""Node addresses: listen/announce/public-ip parsing, relay flags, client mode with no listen port,
and one-line CLI errors for malformed multiaddrs (subnet/swarm/addresses.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from subnet.swarm.addresses import ALL_INTERFACES, NetworkOptions, parse_maddrs, public_ip_maddrs
from subnet.swarm.dht import dial_order

PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ENV.pop("MESH_NODE_CONFIG", None)


@pytest.mark.parametrize("bad", ["", "garbage", "/ip4/300.1.1.1/tcp/1", "/ip4/1.2.3.4/tcp/notaport", "/ip4/1.2.3.4",
                                 "/" + "a" * 600, 12])
def test_malformed_maddrs_are_one_line_value_errors(bad):
    with pytest.raises(ValueError) as e:
        parse_maddrs([bad], "--host-maddrs")
    assert "\n" not in str(e.value) and str(e.value).startswith("--host-maddrs")


def test_peer_id_required_where_dialled():
    with pytest.raises(ValueError, match="/p2p/"):
        parse_maddrs(["/ip4/1.2.3.4/tcp/5"], "--relay-peers", need_peer_id=True)
    assert parse_maddrs([f"/ip4/1.2.3.4/tcp/5/p2p/{PEER}"], "--relay-peers", need_peer_id=True)


def test_public_ip_announces_each_fixed_listen_port():
    assert public_ip_maddrs("203.0.113.7", ["/ip4/0.0.0.0/tcp/31337"]) == ["/ip4/203.0.113.7/tcp/31337"]
    assert public_ip_maddrs("2001:db8::1", ["/ip6/::/tcp/4000"]) == ["/ip6/2001:db8::1/tcp/4000"]
    with pytest.raises(ValueError, match="fixed TCP port"):
        public_ip_maddrs("203.0.113.7", ALL_INTERFACES)
    with pytest.raises(ValueError, match="not an IPv4 or IPv6"):
        public_ip_maddrs("example.org", ["/ip4/0.0.0.0/tcp/1"])


def test_serving_defaults_listen_everywhere_and_clients_nowhere():
    net = NetworkOptions().checked()
    assert net.dht_kwargs() == {"host_maddrs": list(ALL_INTERFACES)}
    assert net.dht_kwargs(client=True) == {"client_mode": True}


def test_public_address_turns_relay_service_on_and_no_relay_turns_it_off():
    public = NetworkOptions(host_maddrs=["/ip4/0.0.0.0/tcp/31337"], public_ip="203.0.113.7").checked()
    kw = public.dht_kwargs()
    assert kw["announce_maddrs"] == ["/ip4/203.0.113.7/tcp/31337"] and kw["force_reachability"] == "public"
    off = NetworkOptions(announce_maddrs=["/ip4/203.0.113.7/tcp/1"], relay=False).checked().dht_kwargs()
    assert off["use_relay"] is False and "force_reachability" not in off
    nat = NetworkOptions(use_auto_relay=True, relay_peers=[f"/ip4/1.2.3.4/tcp/5/p2p/{PEER}"]).checked().dht_kwargs()
    assert nat["use_auto_relay"] and nat["force_reachability"] == "private" and nat["trusted_relays"]


def test_conflicting_or_port_zero_announce_is_rejected():
    with pytest.raises(ValueError, match="not both"):
        NetworkOptions(announce_maddrs=["/ip4/1.2.3.4/tcp/1"], public_ip="1.2.3.4").checked()
    with pytest.raises(ValueError, match="port 0"):
        NetworkOptions(announce_maddrs=["/ip4/1.2.3.4/tcp/0"]).checked()
    with pytest.raises(ValueError, match="exclude"):
        NetworkOptions(relay=True, use_auto_relay=True).checked()


def test_dial_order_puts_direct_public_addresses_first():
    loop, lan, relayed = (f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}", f"/ip4/10.0.0.2/tcp/1/p2p/{PEER}",
                          f"/ip4/10.0.0.3/tcp/1/p2p/{PEER}/p2p-circuit/p2p/{PEER}")
    assert dial_order([relayed, loop, lan]) == [lan, loop, relayed]


@pytest.mark.parametrize("argv, fragment", [
    (["--host-maddrs", "/ip4/1.2.3"], "--host-maddrs"),
    (["--announce-maddrs", "nonsense"], "--announce-maddrs"),
    (["--public-ip", "10.0.0.1"], "fixed TCP port"),
])
def test_cli_malformed_addresses_end_in_one_line(tiny_llama, argv, fragment):
    r = subprocess.run([sys.executable, "-m", "subnet.node.cli", "--hoster", "--model", tiny_llama, *argv],
                       capture_output=True, text=True, timeout=120, env=ENV, stdin=subprocess.DEVNULL)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("mesh-node: error: ") and fragment in lines[0], lines[0]


def test_python_m_hoster_malformed_address_is_one_line(tiny_llama):
    r = subprocess.run([sys.executable, "-m", "hoster", "--model", tiny_llama, "--announce-maddrs", "/ip4/x"],
                       capture_output=True, text=True, timeout=120, env=ENV, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --announce-maddrs"), r.stderr
    assert "Traceback" not in r.stderr


def test_client_mode_dht_listens_nowhere_and_still_reads_the_dht():
    from hivemind.utils import get_dht_time

    from subnet.swarm.dht import start_dht, visible_maddrs

    server = start_dht(**NetworkOptions().checked().dht_kwargs())
    client = None
    try:
        assert any(not m.startswith("/ip4/127.") for m in visible_maddrs(server))  # every interface
        server.store("k", "v", expiration_time=get_dht_time() + 60)
        client = start_dht(None, visible_maddrs(server)[:1], client_mode=True)
        assert visible_maddrs(client) == []  # no listen address: nothing to dial back
        assert client.get("k", latest=True).value == "v"
    finally:
        for d in (client, server):
            if d is not None:
                d.shutdown()


@pytest.mark.parametrize("argv, fragment", [
    (["--multiaddr", "/ip4/1.2.3.4/tcp/x"], "--multiaddr"),
    (["--create-subnet", "s", "--bootnode", f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}x"], "--bootnode"),
])
def test_register_malformed_multiaddr_is_one_line(argv, fragment):
    r = subprocess.run([sys.executable, "-m", "subnet.node.cli", "register", "--chain", "http://127.0.0.1:9",
                        "--subnet-id", "1", "--peer-id", PEER, *argv],
                       capture_output=True, text=True, timeout=120, env=ENV, stdin=subprocess.DEVNULL)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("mesh-node: error: ") and fragment in lines[0], lines[0]


def test_address_settings_come_from_the_toml_config(tmp_path):
    from hoster.options import network_options
    from subnet.node.cli import _build_parser
    from subnet.node.config import parse_args

    cfg = tmp_path / "c.toml"
    cfg.write_text('[node]\nhost_maddrs = ["/ip4/0.0.0.0/tcp/31337"]\npublic_ip = "203.0.113.7"\nrelay = false\n')
    args = parse_args(_build_parser(), ["--hoster", "--config", str(cfg)], command="node", environ={})
    net = network_options(args)
    assert net.announce_maddrs == ["/ip4/203.0.113.7/tcp/31337"] and net.relay is False
    assert net.dht_kwargs()["use_relay"] is False
    cfg.write_text('[node]\nannounce_maddrs = ["/ip4/1.2.3.4/tcp/nope"]\n')
    args = parse_args(_build_parser(), ["--hoster", "--config", str(cfg)], command="node", environ={})
    with pytest.raises(ValueError, match="--announce-maddrs"):
        network_options(args)

"""A throwaway multi-host network: one Linux network namespace per node on a private bridge.

Each namespace gets a veth pair whose far end sits on a bridge in the root namespace, an address
10.<a>.<b>.<10+i>/24 (the bridge itself is .1, so the test process can reach every node), and a
loopback. `NetLab.close()` kills every process left in the namespaces and deletes them and the
bridge; it runs even when a test fails (fixtures call it in `finally`), and `sweep_stale()` removes
labs of test processes that died before cleaning up (names carry the creating pid).
Needs root / CAP_NET_ADMIN: `netns_unavailable()` says why not, for a skip reason.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX = "mn"  # namespaces mn<pid>x<lab>n<i>, bridge mn<pid>x<lab>br, veths mn<pid>x<lab>v<i> (<= 15 chars)
_LAB_IDS = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def netns_unavailable() -> str | None:
    """None if this process may create namespaces, else the reason (for pytest.skip)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network-namespace tests need root (CAP_NET_ADMIN)"
    name = f"{PREFIX}{os.getpid()}probe"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace (no CAP_NET_ADMIN?): {r.stderr.strip()[:200]}"
    _ip("netns", "del", name, check=False)
    return None


def iptables_unavailable() -> str | None:
    """None when iptables can filter inside a namespace here, else why not."""
    if shutil.which("iptables") is None:
        return "iptables is not installed (scripts/test installs Debian's iptables as root)"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> None:
    """Delete namespaces and bridges left by test processes that no longer exist."""
    names = _ip("netns", "list", check=False).stdout.split()
    links = _ip("-o", "link", "show", check=False).stdout
    for name in set(names) | {w.split("@")[0].rstrip(":") for w in links.split() if w.startswith(PREFIX)}:
        if not name.startswith(PREFIX):
            continue
        digits = name[len(PREFIX):].split("x")[0]
        if digits.isdigit() and not _alive(int(digits)):
            _kill_netns_pids(name)
            _ip("netns", "del", name, check=False)
            _ip("link", "del", name, check=False)


def _kill_netns_pids(ns: str) -> None:
    r = _ip("netns", "pids", ns, check=False)
    for pid in r.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Host:
    name: str  # namespace
    ip: str


@dataclass
class NetLab:
    hosts: dict[str, Host] = field(default_factory=dict)
    # unique per lab, not only per process: a lab whose namespace outlived its close() (a process still
    # inside it) must not make the next lab of the same test process collide on its names
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}x{next(_LAB_IDS)}")

    def __post_init__(self) -> None:
        sweep_stale()
        used = _ip("-4", "-o", "addr", check=False).stdout
        for _ in range(50):
            a, b = random.randint(100, 250), random.randint(0, 250)
            if f" 10.{a}.{b}." not in used:
                break
        self.net = f"10.{a}.{b}"
        self.public_net = f"11.{a}.{b}"  # see add_public_address
        self.bridge = f"{self.tag}br"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.net}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    @property
    def gateway(self) -> str:
        return f"{self.net}.1"

    def add(self, label: str) -> Host:
        """A new namespace on the bridge, reachable at the returned host's ip."""
        i = len(self.hosts)
        ns, host_if = f"{self.tag}n{i}", f"{self.tag}v{i}"
        ip = f"{self.net}.{10 + i}"
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", host_if, "master", self.bridge)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.hosts[label] = Host(ns, ip)
        return self.hosts[label]

    def add_public_address(self, label: str) -> str:
        """A second, public-looking address for `label`, routed only inside the lab's namespaces.

        libp2p discards private (10.x) addresses of relays when it builds relayed addresses, so
        relay tests need addresses it considers public. The range lives only on the namespaces'
        veths (the root namespace gets no route to it), so nothing outside the lab is shadowed.
        """
        i = list(self.hosts).index(label)
        ip = f"{self.public_net}.{10 + i}"
        _ip("-n", self.hosts[label].name, "addr", "add", f"{ip}/24", "dev", "eth0")
        return ip

    def argv(self, label: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace of `label` (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.hosts[label].name, *argv]

    def drop_inbound(self, label: str) -> None:
        """Like a home NAT: the host may dial out, nobody may open a TCP connection to it."""
        ns = self.hosts[label].name
        for rule in (["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
                     ["-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                     ["-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP"],
                     ["-A", "INPUT", "-p", "udp", "-j", "DROP"]):
            subprocess.run(["ip", "netns", "exec", ns, "iptables", *rule], check=True, capture_output=True,
                           timeout=30)

    def close(self) -> None:
        """Kill what runs in the namespaces, delete them and the bridge (idempotent)."""
        for host in self.hosts.values():
            _kill_netns_pids(host.name)
        deadline = time.monotonic() + 10
        for host in self.hosts.values():
            while _ip("netns", "pids", host.name, check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.1)
            _ip("netns", "del", host.name, check=False)
        self.hosts.clear()
        _ip("link", "del", self.bridge, check=False)

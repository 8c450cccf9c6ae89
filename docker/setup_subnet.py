"""One-shot provisioning for docker/compose.yaml (idempotent: does nothing if already done).

Waits for the devnet chain, makes a tiny model if none is mounted, creates keys for the
bootstrap peer and each node, funds them from the devnet faucet, registers and activates
the subnet, and writes `subnet.env` (for the services' shell) and `mesh.toml` (a mesh-node
config file) into the shared keys volume.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--chain", default="http://chain:9944")
    p.add_argument("--dir", default="/keys")
    p.add_argument("--model", default="/models/model")
    p.add_argument("--nodes", nargs="+", default=["hoster1", "hoster2", "validator1"])
    p.add_argument("--bootstrap", default="/dns4/bootstrap/tcp/31337")
    p.add_argument("--stake", type=int, default=100, help="TENSOR per node")
    args = p.parse_args()

    from chain.devnet import DevnetChain
    from chain.types import UNIT
    from keys import AccountKey, NodeKey

    out = Path(args.dir)
    env_file = out / "subnet.env"
    if env_file.exists():
        print(f"already provisioned: {env_file}")
        return 0
    out.mkdir(parents=True, exist_ok=True)

    model = Path(args.model)
    if not (model / "config.json").exists():
        from subnet.model.tiny_model import make_tiny_model

        make_tiny_model(model, "llama")
        print(f"made a tiny random-weight model at {model}")

    faucet = DevnetChain(args.chain, coldkey=None)
    deadline = time.monotonic() + 120
    while True:
        try:
            faucet.get_block()
            break
        except Exception:
            if time.monotonic() > deadline:
                print(f"chain at {args.chain} is not answering", file=sys.stderr)
                return 1
            time.sleep(1)

    for name in ["bootstrap", *args.nodes]:
        (out / name).mkdir(parents=True, exist_ok=True)
    bootstrap = NodeKey.generate()
    bootstrap.save(out / "bootstrap" / "node.key", force=True)
    owner = AccountKey.generate()
    owner.save(out / "owner.json", force=True)
    faucet.fund(owner.address, 100 * UNIT)
    nodes = {}
    for name in args.nodes:
        nk, cold, hot = NodeKey.generate(), AccountKey.generate(), AccountKey.generate()
        nk.save(out / name / "node.key", force=True)
        cold.save(out / name / "coldkey.json", force=True)
        hot.save(out / name / "hotkey.json", force=True)
        faucet.fund(cold.address, (args.stake + 10) * UNIT)
        faucet.fund(hot.address, 10 * UNIT)
        nodes[name] = (nk, cold, hot)

    owner_chain = DevnetChain(args.chain, coldkey=owner)
    subnet_id = owner_chain.register_subnet(
        "mesh-node-compose", min_stake=100 * UNIT, max_stake=1000 * UNIT,
        initial_coldkeys=[cold.address for _, cold, _ in nodes.values()],
    )
    owner_chain.add_delegate_stake(subnet_id, 10 * UNIT)  # without it the subnet earns no node emissions
    for name, (nk, cold, hot) in nodes.items():
        c = DevnetChain(args.chain, coldkey=cold, hotkey=hot)
        node_id = c.register_subnet_node(subnet_id, hotkey=hot.address, peer_id=nk.peer_id, stake=args.stake * UNIT)
        print(f"registered {name}: node {node_id}, peer {nk.peer_id}")
    owner_chain.activate_subnet(subnet_id)

    initial_peer = f"{args.bootstrap}/p2p/{bootstrap.peer_id}"
    (out / "mesh.toml").write_text(
        "# written by docker/setup_subnet.py\n[node]\n"
        f'chain = "{args.chain}"\nsubnet_id = {subnet_id}\ninitial_peers = ["{initial_peer}"]\n'
        f'model = "{model}"\n\n[api]\nhost = "0.0.0.0"\nport = 8000\n'
    )
    # Written last: its presence means "provisioned".
    env_file.write_text(f"SUBNET_ID={subnet_id}\nINITIAL_PEERS={initial_peer}\nCHAIN={args.chain}\nMODEL={model}\n")
    print(f"subnet {subnet_id} active; bootstrap {initial_peer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

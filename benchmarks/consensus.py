"""Consensus costs: scoring time vs number of hosters, and one epoch's commit + reveal over the DHT.

    .venv/bin/python -m benchmarks.consensus            # 10/100/1000 hosters x 24 blocks; 16 nodes
    .venv/bin/python -m benchmarks.consensus --quick    # 10/100 hosters, 4 nodes

Scoring: `consensus.scoring.score_hosters` on synthetic probe outputs (each hoster serves 4
consecutive of 24 blocks, outputs `[1, 8, hidden]` float32, 5% of hosters lazy/random),
plus `score_validators` for 16 validators and `onchain_scores`: the whole per-epoch
scoring a validator runs. Commit/reveal: N nodes registered on a real devnet chain process,
each with its own hivemind DHT peer running the consensus record validator; inside the
commit window all nodes store their hoster commit at once, inside the reveal window their
reveal (probe outputs of 4 blocks, cut into signed parts); the time is until one reader has
fetched and checked every node's records (`fetch_records` / `fetch_reveals`, commitment
verified).
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.common import exit_on_sigterm, fmt_table, load_avg, median, save_results

N_BLOCKS = 24
SPAN = 4


# ----------------------------------------------------------------------------- scoring


def scoring_inputs(n_hosters: int, hidden: int, *, seq: int = 8, lazy: float = 0.05, seed: int = 0):
    """peer -> {block: float32 array}: honest outputs agree to ~1e-6, lazy ones are random."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((N_BLOCKS, 1, seq, hidden), dtype=np.float32)
    outputs: dict[str, dict[int, np.ndarray]] = {}
    for i in range(n_hosters):
        peer = f"12D3KooW{i:012d}"
        start = (i * SPAN) % N_BLOCKS
        is_lazy = rng.random() < lazy
        outs = {}
        for b in range(start, start + SPAN):
            if is_lazy:
                outs[b] = rng.standard_normal((1, seq, hidden), dtype=np.float32)
            else:
                outs[b] = base[b] + rng.standard_normal((1, seq, hidden), dtype=np.float32) * np.float32(1e-6)
        outputs[peer] = outs
    return outputs


def time_scoring(n_hosters: int, hidden: int, runs: int, validators: int = 16) -> dict:
    from consensus.scoring import onchain_scores, score_hosters, score_validators

    outputs = scoring_inputs(n_hosters, hidden)
    node_ids = {p: i for i, p in enumerate(sorted(outputs))}
    times, hoster_times = [], []
    for _ in range(runs + 1):  # first run is the warm-up
        t0 = time.perf_counter()
        hs = score_hosters(outputs, outputs.keys(), expected_shape=(1, 8, hidden))
        t1 = time.perf_counter()
        fixed = hs.fixed()
        revealed = {f"val{v:02d}": fixed for v in range(validators)}
        vs = score_validators(revealed)
        vfixed = {p: int(s * 1e18) for p, s in vs.items()}
        onchain_scores(fixed, vfixed, node_ids)
        t2 = time.perf_counter()
        times.append(t2 - t0)
        hoster_times.append(t1 - t0)
    zero = sum(1 for s in hs.scores.values() if s == 0.0)
    return {"hosters": n_hosters, "blocks": N_BLOCKS, "hidden": hidden, "seconds": median(times[1:]),
            "score_hosters_seconds": median(hoster_times[1:]), "zero_scored": zero}


# ----------------------------------------------------------------------------- commit + reveal


class _Net:
    """A devnet chain process, one subnet, and `n` registered operators (Validator class)."""

    def __init__(self, tmp: Path, n: int, *, block_time: float, epoch_length: int):
        from chain.devnet import start_devnet_process

        self.proc = start_devnet_process(tmp / "chain.db", block_time=block_time, epoch_length=epoch_length,
                                         log_path=tmp / "chain.log")
        self.url = self.proc.url
        self.clients: list = []
        try:
            self._setup(n)
        except BaseException:
            self.close()
            raise

    def _setup(self, n: int) -> None:
        from chain.devnet import DevnetChain, dev_accounts
        from chain.devnet.config import DEV_ACCOUNT_COUNT
        from chain.types import UNIT
        from keys import AccountKey, NodeKey

        funded = dev_accounts(min(n + 1, DEV_ACCOUNT_COUNT))  # genesis-funded dev accounts
        extra = [AccountKey.generate() for _ in range(n + 1 - len(funded))]
        accounts = funded + extra
        self.owner = DevnetChain(self.url, coldkey=accounts[0])
        self.clients.append(self.owner)
        for acc in extra:  # operators beyond the dev accounts get their stake from the owner
            self.owner.fund(acc.address, 200 * UNIT)
        self.subnet_id = self.owner.register_subnet("bench-consensus", min_stake=100 * UNIT, max_stake=1000 * UNIT)
        self.owner.add_delegate_stake(self.subnet_id, 100 * UNIT)  # without it the subnet earns no node emissions
        self.keys: list = []
        for i in range(1, n + 1):
            hot = AccountKey.generate()
            chain = DevnetChain(self.url, coldkey=accounts[i], hotkey=hot)
            self.clients.append(chain)
            self.owner.fund(hot.address, 10 * UNIT)
            key = NodeKey.generate()
            chain.register_subnet_node(self.subnet_id, hotkey=hot.address, peer_id=key.peer_id, stake=100 * UNIT)
            self.keys.append(key)
        self.owner.activate_subnet(self.subnet_id)

    def wait_progress(self, lo: float, hi: float, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.owner.get_epoch_info(self.subnet_id)
            if lo <= info.progress < hi:
                return info
            time.sleep(0.02)
        raise TimeoutError(f"chain never reached progress [{lo}, {hi})")

    def close(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        self.proc.stop()


def time_commit_reveal(n_nodes: int, *, hidden: int, block_time: float, epoch_length: int) -> dict:
    import torch

    from chain.devnet import DevnetChain
    from consensus.commit import commitment, new_salt, verify_commitment
    from consensus.encoding import encode_block_outputs, encode_tensor
    from consensus.phases import RecordKind
    from subnet.swarm.chain_view import ChainRegistry, EpochPosition
    from subnet.swarm.dht import start_dht, visible_maddrs
    from subnet.swarm.record_admission import ConsensusRecordPolicy, make_record_validator
    from subnet.swarm.record_store import (
        fetch_records,
        fetch_reveals,
        record_ttl,
        reveal_parts,
        store_record,
        store_reveal,
    )

    tmp = Path(tempfile.mkdtemp(prefix="mesh-bench-consensus-"))
    net = _Net(tmp, n_nodes, block_time=block_time, epoch_length=epoch_length)
    dhts = []
    try:
        sid, url = net.subnet_id, net.url
        for key in net.keys:  # every node: its own DHT peer with the record validator, like a real node
            peers = visible_maddrs(dhts[0]) if dhts else []
            dhts.append(start_dht(key, peers, check_if_identity_free=False,
                                  record_validators=[make_record_validator(lambda: DevnetChain(url), sid)]))
        reader = ConsensusRecordPolicy(sid, ChainRegistry(lambda: DevnetChain(url), sid))
        # each node's probe outputs: SPAN blocks of [1, 8, hidden] float32
        gen = torch.Generator().manual_seed(0)
        bodies, commits, parts = [], [], []
        for _i, key in enumerate(net.keys):
            outs = {b: encode_tensor(torch.randn(1, 8, hidden, generator=gen)) for b in range(SPAN)}
            salt = new_salt()
            bodies.append({"salt": salt.hex(),
                           "outputs": {str(b): base64.b64encode(d).decode() for b, d in sorted(outs.items())}})
            commits.append(commitment(salt, encode_block_outputs(sid, 0, key.peer_id, outs)))  # epoch fixed below
            parts.append(reveal_parts(bodies[-1]))
        pool = ThreadPoolExecutor(max_workers=n_nodes)

        info = net.wait_progress(0.16, 0.30)  # inside the commit window, room to finish
        epoch = info.epoch
        # commitments bind the epoch: recompute with the real one
        outs_by_node = [{int(b): base64.b64decode(v) for b, v in body["outputs"].items()} for body in bodies]
        commits = [commitment(bytes.fromhex(body["salt"]), encode_block_outputs(sid, epoch, key.peer_id, outs))
                   for body, key, outs in zip(bodies, net.keys, outs_by_node)]
        view = EpochPosition.from_epoch_info(info)
        ttl = record_ttl(view)

        t0 = time.perf_counter()
        block0 = net.owner.get_epoch_info(sid).block
        stored = list(pool.map(lambda i: store_record(
            dhts[i], net.keys[i], sid, epoch, RecordKind.HOSTER_COMMIT,
            {"commit": commits[i].hex(), "blocks": list(range(SPAN)), "parts": parts[i]},
            block=net.owner.get_epoch_info(sid).block, ttl=ttl), range(n_nodes)))
        t_stored = time.perf_counter() - t0
        got = {}
        while len(got) < n_nodes and time.perf_counter() - t0 < 60:
            got = fetch_records(dhts[0], reader, epoch, RecordKind.HOSTER_COMMIT)
        t_commit = time.perf_counter() - t0
        commit_blocks = net.owner.get_epoch_info(sid).block - block0
        parts_by = {p: int(r.payload["parts"]) for p, r in got.items()}

        info = net.wait_progress(0.50, 0.55)
        t0 = time.perf_counter()
        block0 = info.block
        revealed = list(pool.map(lambda i: store_reveal(
            dhts[i], net.keys[i], sid, epoch, RecordKind.HOSTER_REVEAL, bodies[i],
            block=net.owner.get_epoch_info(sid).block, ttl=ttl), range(n_nodes)))
        t_rstored = time.perf_counter() - t0
        found: dict = {}
        while len(found) < n_nodes and time.perf_counter() - t0 < 60:
            found, _problems = fetch_reveals(dhts[1 % n_nodes], reader, epoch, RecordKind.HOSTER_REVEAL, parts_by)
        t_reveal = time.perf_counter() - t0
        reveal_blocks = net.owner.get_epoch_info(sid).block - block0
        verified = 0
        for peer, body in found.items():
            outs = {int(b): base64.b64decode(v) for b, v in body["outputs"].items()}
            ok = verify_commitment(bytes.fromhex(got[peer].payload["commit"]), bytes.fromhex(body["salt"]),
                                   encode_block_outputs(sid, epoch, peer, outs))
            verified += bool(ok)
        pool.shutdown()
        return {
            "nodes": n_nodes, "hidden": hidden, "block_time": block_time, "epoch_length": epoch_length,
            "reveal_parts_per_node": parts[0],
            "commit_stored_s": t_stored, "commit_all_visible_s": t_commit, "commits_stored": sum(stored),
            "commits_seen": len(got), "commit_blocks": commit_blocks,
            "commit_window_blocks": int(0.35 * epoch_length),
            "reveal_stored_s": t_rstored, "reveal_all_fetched_s": t_reveal, "reveals_stored": sum(revealed),
            "reveals_fetched": len(found), "reveals_verified": verified, "reveal_blocks": reveal_blocks,
            "reveal_window_blocks": int(0.10 * epoch_length),
        }
    finally:
        for d in dhts:
            try:
                d.shutdown()
            except Exception:
                pass
        net.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosters", default="10,100,1000")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size of the probe outputs")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--block-time", type=float, default=0.25)
    p.add_argument("--epoch-length", type=int, default=80)
    p.add_argument("--skip-epoch", action="store_true", help="only the scoring part")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="consensus")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.hosters, args.hidden, args.runs, args.nodes, args.out = "10,100", 256, 1, 4, "consensus-quick"
    start_load = load_avg()
    scoring = [time_scoring(int(n), args.hidden, args.runs) for n in args.hosters.split(",")]
    print(fmt_table(["hosters", "blocks", "hidden", "scoring s (all)", "score_hosters s", "lazy scored 0"],
                    [[r["hosters"], r["blocks"], r["hidden"], f"{r['seconds']:.3f}",
                      f"{r['score_hosters_seconds']:.3f}", r["zero_scored"]] for r in scoring]), flush=True)
    epoch = None
    if not args.skip_epoch:
        epoch = time_commit_reveal(args.nodes, hidden=512, block_time=args.block_time,
                                   epoch_length=args.epoch_length)
        print()
        print(fmt_table(
            ["nodes", "phase", "all stored s", "all fetched+checked s", "chain blocks used", "window blocks", "ok"],
            [[epoch["nodes"], "commit", f"{epoch['commit_stored_s']:.2f}", f"{epoch['commit_all_visible_s']:.2f}",
              epoch["commit_blocks"], epoch["commit_window_blocks"], f"{epoch['commits_seen']}/{epoch['nodes']}"],
             [epoch["nodes"], f"reveal ({epoch['reveal_parts_per_node']} parts/node)",
              f"{epoch['reveal_stored_s']:.2f}",
              f"{epoch['reveal_all_fetched_s']:.2f}", epoch["reveal_blocks"], epoch["reveal_window_blocks"],
              f"{epoch['reveals_verified']}/{epoch['nodes']} verified"]]))
    path = save_results(args.out, {"load_avg_at_start": start_load, "scoring": scoring, "epoch": epoch,
                                   "load_avg_at_end": load_avg()})
    print(f"load average {start_load} -> {load_avg()}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

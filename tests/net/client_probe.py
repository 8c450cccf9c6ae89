"""Run inside a client namespace: find the swarm from the chain alone, generate greedy tokens.

`python client_probe.py MODEL CHAIN_URL SUBNET_ID N_NEW ID,ID,...` prints one JSON line
{"peers": [...], "tokens": [...]} (the new token ids) and exits 0.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    import torch

    from chain import connect
    from subnet.client import DistributedModelForCausalLM
    from subnet.swarm.discovery import peers_from_chain

    model_path, url, subnet_id, n_new, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \
        [int(x) for x in sys.argv[5].split(",")]
    with connect(url) as chain:
        peers = peers_from_chain(chain, subnet_id)
    model = DistributedModelForCausalLM.from_pretrained(model_path, initial_peers=peers)
    try:
        deadline = time.monotonic() + 120
        while True:  # hosters announce within a few seconds of joining
            try:
                out = model.generate(torch.tensor([prompt]), max_new_tokens=n_new, do_sample=False)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        from subnet.swarm.announcements import read_announcements

        servers = [{"peer_id": a.peer_id, "start": a.start, "end": a.end, "relayed": a.relayed}
                   for a in read_announcements(model.runtime.dht, model.model_uid)]
        print(json.dumps({"peers": peers, "tokens": out[0, len(prompt):].tolist(), "servers": servers}), flush=True)
    finally:
        model.close() if hasattr(model, "close") else None
    return 0


if __name__ == "__main__":
    sys.exit(main())

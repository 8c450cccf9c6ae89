"""Run inside a client namespace: stream greedy tokens; after `PAUSE_AT` tokens print PAUSED and wait
for FLAG_FILE (the test kills a relay meanwhile), then finish. Prints one JSON line with the new
token ids and which hosters the client banned (failed over from).

`python client_failover_probe.py MODEL CHAIN_URL SUBNET_ID N_NEW ID,ID,... PAUSE_AT FLAG_FILE [PEER_ID]`

With PEER_ID, generation starts only once the client's route goes through that hoster: a hoster
behind NAT announces after its relay reservation, later than direct hosters of the same blocks, and
a client that starts before then never uses it.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    from chain import connect
    from subnet.client import DistributedModelForCausalLM
    from subnet.swarm.discovery import peers_from_chain

    model_path, url, subnet_id, n_new = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    prompt = [int(x) for x in sys.argv[5].split(",")]
    pause_at, flag = int(sys.argv[6]), sys.argv[7]
    required = sys.argv[8] if len(sys.argv) > 8 else None
    with connect(url) as chain:
        peers = peers_from_chain(chain, subnet_id)
    model = DistributedModelForCausalLM.from_pretrained(model_path, initial_peers=peers)
    try:
        deadline = time.monotonic() + 120
        route = [s.peer_id for s in model.wait_until_servable(120)]
        while required and required not in route:
            if time.monotonic() > deadline:
                print(f"ROUTE_WITHOUT {required}: {route}", flush=True)
                return 3
            time.sleep(0.5)
            route = [s.peer_id for s in model.wait_until_servable(120)]
        tokens = []
        for event in model.stream(prompt, max_new_tokens=n_new, do_sample=False):
            tokens.append(event.token_id)
            if len(tokens) == pause_at:
                print("PAUSED", flush=True)
                deadline = time.monotonic() + 120
                while not os.path.exists(flag) and time.monotonic() < deadline:
                    time.sleep(0.2)
        failed = sorted(p for p, n in model.manager.bans._failures.items() if n)
        print(json.dumps({"tokens": tokens, "failed_over_from": failed, "first_route": route}), flush=True)
    finally:
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

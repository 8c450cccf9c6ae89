"""Prefix reuse through the HTTP API on a swarm: second-turn TTFT and a shared system prompt.

    .venv/bin/python -m benchmarks.prefix_reuse           # model a, 1,500-token history
    .venv/bin/python -m benchmarks.prefix_reuse --quick   # small model

Two hoster processes serve half the blocks each; this process runs the API (SwarmBackend) and
the official openai client.
- Second turn: a chat whose first turn holds ~`--history` tokens; the time to the first streamed
  token of the *second* turn, with the client's prefix reuse on (the hosters fork the KV they
  kept from turn one: only the new tokens travel and are computed) and off (the whole history
  is sent again). Each run uses a fresh history, so runs never reuse each other.
- Shared system prompt: 4 users (one after another) whose chats start with the same
  ~`--system` token system prompt; prefill positions the hosters computed (their
  `mesh_hoster_positions_computed_total` counters) with reuse on vs off.
The machine is shared: the load average is printed and saved with the numbers.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import time

if not __package__:  # also runnable as `python benchmarks/<name>.py`
    import pathlib as _pathlib

    sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from benchmarks.common import (  # noqa: E402
    MODELS,
    HosterProcs,
    chain_spans,
    ensure_model,
    exit_on_sigterm,
    fmt_table,
    load_avg,
    median,
    save_results,
)

WORDS = ("block hoster route client validator epoch probe reveal commit stake subnet swarm token cache prefix "
         "session layer weight chain score reward attest peer record").split()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text(tok, n_tokens: int, seed: int) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    while len(tok.encode(" ".join(words), add_special_tokens=False)) < n_tokens:
        words += [rng.choice(WORDS) for _ in range(max(8, (n_tokens - len(words)) // 2))]
    while len(tok.encode(" ".join(words), add_special_tokens=False)) > n_tokens:
        words.pop()
    return " ".join(words)


def _computed(urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
            total += sum(s.value for s in fam.samples if s.name == "mesh_hoster_positions_computed_total")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--history", type=int, default=1500)
    ap.add_argument("--system", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    exit_on_sigterm()
    spec = MODELS["quick" if args.quick else "a"]
    start_load = load_avg()
    path = ensure_model(spec)

    import openai

    from subnet.api import create_app
    from subnet.api.server import BackgroundServer
    from subnet.api.swarm_backend import SwarmBackend

    urls: list[str] = []
    with HosterProcs() as hosters:
        for span in chain_spans(spec.num_layers, 2):
            urls.append(f"http://127.0.0.1:{_port()}/metrics")
            hosters.start(path, span, model_name=spec.name, extra=["--metrics-port", urls[-1].split(":")[2][:-8]])
        backend = SwarmBackend.from_pretrained(str(path), hosters.initial_peers, model_name=spec.name)
        model = backend._models[spec.name]
        store = model.manager.prefix_store
        try:
            model.wait_until_servable(60)
            tok = backend.tokenizer(spec.name)
            with BackgroundServer(create_app(backend, max_tokens_limit=4096, max_prompt_tokens=8192)) as server:
                client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=600)

                def ttft(messages) -> float:
                    t0 = time.perf_counter()
                    with client.chat.completions.create(model=spec.name, messages=messages, max_tokens=4,
                                                        temperature=0, stream=True) as stream:
                        for chunk in stream:
                            if chunk.choices and chunk.choices[0].delta.content is not None:
                                return time.perf_counter() - t0
                    return time.perf_counter() - t0

                def second_turn(seed: int, reuse: bool) -> float:
                    model.manager.prefix_store = store if reuse else None
                    turn1 = [{"role": "user", "content": _text(tok, args.history, seed)}]
                    first = client.chat.completions.create(model=spec.name, messages=turn1, max_tokens=8,
                                                           temperature=0)
                    time.sleep(0.5)  # the hosters keep the closed session a moment after the answer
                    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                                     {"role": "user", "content": "Now say it in five words."}]
                    return ttft(turn2)

                second_turn(10_000, True)  # warm-up
                ttfts = {True: [], False: []}
                for i in range(args.runs):
                    for reuse in (True, False):
                        ttfts[reuse].append(second_turn(2 * i + reuse, reuse))
                on, off = median(ttfts[True]), median(ttfts[False])

                def shared_system(reuse: bool, seed: int) -> tuple[float, float]:
                    model.manager.prefix_store = store if reuse else None
                    system = _text(tok, args.system, seed)
                    before, t = _computed(urls), []
                    for user in ("ada", "bob", "cy", "dee"):
                        msgs = [{"role": "system", "content": system},
                                {"role": "user", "content": f"I am {user}. What is a hoster?"}]
                        t.append(ttft(msgs))
                        time.sleep(0.5)
                    return _computed(urls) - before, median(t[1:])

                work_on, ttft_on = shared_system(True, 20_001)
                work_off, ttft_off = shared_system(False, 20_002)
        finally:
            model.manager.prefix_store = store
            backend.close()
    print(f"model {spec.name}, 2 hosters, median of {args.runs}; load average at start {start_load}, "
          f"at end {load_avg()} (2 cores shared with other work)")
    print(fmt_table([f"second turn, ~{args.history}-token history", "TTFT s"],
                    [["prefix reuse on", f"{on:.3f}"], ["prefix reuse off", f"{off:.3f}"],
                     ["ratio on/off (goal <= 0.3)", f"{on / off:.2f}x"]]))
    print(fmt_table([f"4 users, ~{args.system}-token shared system prompt", "positions computed (all hosters)",
                     "TTFT users 2-4 s"],
                    [["prefix reuse on", f"{work_on:.0f}", f"{ttft_on:.3f}"],
                     ["prefix reuse off", f"{work_off:.0f}", f"{ttft_off:.3f}"],
                     ["prefill work saved", f"{1 - work_on / work_off:.0%}", f"{ttft_on / ttft_off:.2f}x"]]))
    save_results("prefix_reuse" + ("_quick" if args.quick else ""),
                 {"load_avg_at_start": start_load, "load_avg_at_end": load_avg(), "model": spec.name,
                  "history_tokens": args.history, "ttft_reuse_on": ttfts[True], "ttft_reuse_off": ttfts[False],
                  "ttft_ratio": on / off, "system_tokens": args.system, "shared_positions_on": work_on,
                  "shared_positions_off": work_off, "shared_work_saved": 1 - work_on / work_off})


if __name__ == "__main__":
    main()

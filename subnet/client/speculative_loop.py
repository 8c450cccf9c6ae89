"""The token loop with speculative decoding: `generate_events` that verifies drafts in one chain step.

Per round the client feeds `[last, d_1..d_k]` at positions `pos..pos+k` (one remote step, k+1
positions), computes the LM head on all of them, and walks the positions in order: at position
j the sampler processes the logits given the tokens committed so far (penalties, grammar, warpers
exactly as a plain step would), every row either accepts its draft `d_{j+1}` or emits its own
token (`speculative.accept_point_draft`), and the token is committed (counts, grammar, logprobs)
before position j+1 is looked at. The round ends at the first position where an unfinished row
rejects (rows of a batch share one KV length, so all rows keep that many), or after the bonus
token when all drafts are accepted. The next round starts at the first position whose input was
not kept: the hosters roll their caches back to it (an ordinary step at a smaller position).

Events, stop tokens/strings, `min_new_tokens` and `max_new_tokens` are handled per emitted token
exactly as in `generation.generate_events`, so nothing is emitted past a stop or the length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import torch

from subnet.client.generation import ClientHead, StepFn, StreamEvent, loop_setup, step_events
from subnet.client.sampling import Sampler, SamplingParams
from subnet.client.speculative import DEFAULT_DRAFT_TOKENS, DraftController, NgramDrafter, accept_point_draft
from subnet.logs import event

log = logging.getLogger(__name__)


@torch.inference_mode()
def all_logits(head: ClientHead, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of every position of `hidden` `[batch, n, hidden]`: `[batch, n, vocab]` float32."""
    return head.lm_head(head.norm(hidden)).float()


def speculative_events(
    head: ClientHead,
    step: StepFn,
    input_ids: torch.Tensor,
    params: SamplingParams,
    *,
    eos_token_ids: tuple[int, ...] = (),
    tokenizer=None,
    want_text: bool = False,
    should_stop: Callable[[], bool] | None = None,
    start: int = 0,
    shared_rows: bool = False,
    fed: list[int] | None = None,
    gate=None,
    drafter=None,
    controller: DraftController | None = None,
) -> Iterator[list[StreamEvent]]:
    """Like `generate_events` (same arguments and events, `start`/`shared_rows`/`fed` included),
    drafting with `drafter` (prompt lookup by default) as far as `controller` finds it pays.
    `controller` is readable afterwards (stats). `fed` gets only positions that stay valid: the
    last token and the accepted drafts of each step, never a rejected draft.

    With a `gate` (client-side checks in the background, `subnet/client/holdback.py`) a step whose
    check is pending is settled before anything sampled from it is emitted, and a step a check
    failed is sent again over the new route: a consumer never sees a token from a wrong step. (The
    plain loop holds such events back instead and rewinds; here the wait is per checked step, which
    only checked steps pay: the first of each hoster and `verify_fraction` of the rest.)"""
    batch, prompt_len = input_ids.shape
    rows, stop_ids, suppress = loop_setup(input_ids, params, eos_token_ids, tokenizer, want_text)
    if params.max_new_tokens == 0:
        yield [StreamEvent(None, "", "length", i) for i in range(batch)]
        return
    sampler = Sampler(params, input_ids, head.vocab_size)
    drafter = drafter if drafter is not None else NgramDrafter()
    if controller is None:
        controller = DraftController(DEFAULT_DRAFT_TOKENS if params.speculative is None else params.speculative)
    history = [r for r in input_ids.tolist()]  # per row: prompt + emitted tokens
    generators = [sampler.generator(i) for i in range(batch)]

    def emit(tokens: torch.Tensor, processed: torch.Tensor, n: int) -> list[StreamEvent]:
        """Commit one token per row (sampler state) and turn it into events."""
        sampler.commit(tokens, processed)
        ids = tokens.tolist()
        for i, tok in enumerate(ids):
            history[i].append(tok)
        return step_events(rows, ids, sampler.last_logprobs, n, params, stop_ids)

    def verified_step(x: torch.Tensor, pos: int) -> torch.Tensor:
        """`step(x, pos)`; with a gate, its pending checks settled and, if one failed, the step redone."""
        while True:
            hidden = step(x, pos)
            if gate is None:
                return hidden
            rewind, pending = gate.state()
            if pending is not None:
                gate.settle()
                rewind, _ = gate.state()
            if rewind is None:
                return hidden
            if rewind != pos:  # every earlier step was settled before its tokens were emitted
                raise RuntimeError(f"a check failed at position {rewind}, before this step at {pos}")
            gate.rewind(rewind)
            x = x.expand(batch, -1, -1) if x.shape[0] != batch else x  # rows may differ after this step

    def done() -> bool:
        return all(r.finish is not None for r in rows) or (should_stop is not None and should_stop())

    try:
        # the prompt (after a reused prefix; one row for n identical prompts): a plain step
        prompt = input_ids[:1, start:] if shared_rows else input_ids[:, start:]
        if fed is not None:
            fed.extend(input_ids[0].tolist())
        logits = head.logits(verified_step(head.embed_ids(prompt), start))
        if logits.shape[0] != batch:  # one shared row: every row samples from it
            logits = logits.expand(batch, -1).clone()
        processed = sampler.process(logits, 0, suppress)
        last = sampler.pick(processed)
        yield emit(last, processed, 0)
        n, position = 1, prompt_len
        while n < params.max_new_tokens and not done():
            k = min(controller.next_k(), params.max_new_tokens - n - 1)
            drafts = [drafter.draft(history[i], k) if rows[i].finish is None else [] for i in range(batch)]
            k = max((len(d) for d in drafts), default=0)
            block = torch.empty(batch, k + 1, dtype=torch.long)
            block[:, 0] = last
            for i, d in enumerate(drafts):  # rows with shorter drafts repeat their last token (any draft is valid)
                row = d + [history[i][-1]] * (k - len(d))
                block[i, 1:] = torch.tensor(row, dtype=torch.long)
            t0 = time.perf_counter()
            hidden = verified_step(head.embed_ids(block), position)
            logits = all_logits(head, hidden) if k else head.logits(hidden).unsqueeze(1)
            seconds = time.perf_counter() - t0  # the round's cost (not the consumer's time between events)
            kept = 0  # drafts accepted by every unfinished row
            for j in range(k + 1):
                processed = sampler.process(logits[:, j], n, suppress)
                if j == k:
                    tokens = sampler.pick(processed)
                    all_ok = False
                else:
                    tokens, ok = accept_point_draft(processed, block[:, j + 1], greedy=not params.do_sample,
                                                    generators=generators)
                    running = torch.tensor([r.finish is None for r in rows])
                    all_ok = bool((ok | ~running).all())
                events = emit(tokens, processed, n)
                n += 1
                if fed is not None:  # position `position + j` holds a valid input (earlier drafts were accepted)
                    fed.append(int(block[0, j]))
                yield events
                if done() or n >= params.max_new_tokens:
                    return
                if not all_ok:
                    last = tokens
                    break
                kept += 1
            controller.record(k, kept, seconds)
            position += kept + 1
    finally:  # also when the consumer stops early
        event(log, "speculation", logging.DEBUG, rounds=controller.rounds, drafted=controller.drafted,
              accepted=controller.accepted, tokens_per_round=round(controller.tokens_per_round, 2))

"""TEST ONLY: `python -m tests.hoster.tamper_hoster --tamper-scale S [--push-only | --forward-too]
[--tamper-after P] <python -m hoster args>`.

A hoster that computes probes (`run_span`) and `rpc_forward` honestly but adds noise of relative size `S`
to every inference-step output it returns to clients (and signs the altered output, as a
cheater's own code would). Production code has no switch for this: the alteration is a
servicer hook this test module installs in its own process.
"""

from __future__ import annotations

import sys


def install(scale: float, *, push_only: bool = False, forward_too: bool = False, after: int = 0) -> None:
    """Make every Hoster created in this process alter its inference steps (relative noise `scale`),
    or with `push_only` only what it pushes to the next hoster (its answers to clients stay honest)."""
    import hoster.server as server

    original_init = server.Hoster.__init__
    def hook(servicer, scale):
        if push_only:
            return tamper_pushes(servicer, scale)
        return tamper_servicer(servicer, scale, forward_too=forward_too, after=after)

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.servicer_hooks.append(lambda servicer: hook(servicer, scale))

    server.Hoster.__init__ = init


def tamper_servicer(servicer, scale: float, *, forward_too: bool = False, after: int = 0) -> None:
    """Alter inference steps at positions >= `after` (and with `forward_too` the `rpc_forward`
    answers); probes stay honest."""
    backend = servicer.backend
    honest_step, honest_forward = backend.step, backend.forward

    async def step(session, hidden, position):
        out = await honest_step(session, hidden, position)
        return _noisy(out, scale, position) if position >= after else out

    async def forward(hidden, start=None, end=None, *, peer=""):
        return _noisy(await honest_forward(hidden, start, end, peer=peer), scale, 0)

    backend.step = step  # the inference-session path; run_span (probes) stays honest
    if forward_too:
        backend.forward = forward  # what checkers get from rpc_forward


def tamper_pushes(servicer, scale: float) -> None:
    honest_push = servicer._push_onward

    async def push(meta, out):
        return await honest_push(meta, _noisy(out, scale, 0))

    servicer._push_onward = push  # what goes to the next hoster; the reply to the client stays honest


def _noisy(out, scale: float, position: int):
    import torch

    g = torch.Generator().manual_seed(position)  # a fixed direction per position (RMSNorm ignores pure scaling)
    noise = torch.randn(out.shape, generator=g, dtype=torch.float32).to(out.dtype)
    return out + scale * out.norm() / out.numel() ** 0.5 * noise


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.hoster.tamper_hoster", add_help=False)
    p.add_argument("--tamper-scale", type=float, required=True)
    p.add_argument("--push-only", action="store_true")
    p.add_argument("--forward-too", action="store_true")
    p.add_argument("--tamper-after", type=int, default=0)
    args, rest = p.parse_known_args(argv)
    from subnet.model.process_env import set_thread_pool_defaults

    set_thread_pool_defaults()  # as `python -m hoster` does, before torch loads
    install(args.tamper_scale, push_only=args.push_only, forward_too=args.forward_too, after=args.tamper_after)
    from hoster.__main__ import main as hoster_main

    return hoster_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The hoster's LoRA adapters: load them for the served span, and say which rows use which in a step.

`subnet.model.adapters` does the format and the math; this module ties it to the hoster: the
adapters are loaded (and checked) with the blocks, so a bad adapter fails before anything is
announced, and reloaded when the hoster moves to another range. `rows_context` wraps one
forward of the backend: each session's rows get the adapter it opened with (or none).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence

from subnet.logs import event
from subnet.model.adapters import (
    AdapterError,
    adapter_keys,
    adapter_name,
    attach_adapters,
    check_base_model,
    load_adapter,
    read_adapter_config,
    resolve_adapter,
)
from subnet.model.blocks import BlockSpan

__all__ = ["AdapterError", "check_sources", "load_span_adapters", "rows_context", "served"]


def check_sources(sources: Sequence[str], model_path: str, model_name: str | None = None) -> None:
    """Cheap checks before the DHT starts: every adapter resolves, its config is LoRA for this model."""
    for source in sources:
        directory = resolve_adapter(source)
        check_base_model(read_adapter_config(directory, source), source, model_path, model_name)
        adapter_keys(directory, source)


def load_span_adapters(span: BlockSpan, sources: Sequence[str], model_path: str, model_name: str | None = None,
                       log=None) -> None:
    """Load each adapter's factors for the span's layers and wrap the targeted linears (AdapterError: one line)."""
    layers = {i: span.layers[str(i)] for i in range(span.start, span.end)}
    adapters = [load_adapter(s, layers, span.dtype, span.device, model_path=model_path, model_name=model_name)
                for s in sources]
    span.adapter_rows = attach_adapters(layers, adapters)
    span.adapters = {a.name: a for a in adapters}
    if log is not None:
        for a in adapters:
            event(log, "adapter_loaded", adapter=a.name, modules=len(a.factors), kb=round(a.nbytes() / 1024, 1),
                  blocks=f"{span.start}:{span.end}")


def served(span: BlockSpan) -> list[str]:
    """Names of the adapters the span applies (announced)."""
    return sorted(getattr(span, "adapters", None) or ())


def rows_context(span: BlockSpan, choices: Sequence[tuple[str | None, int]]):
    """Context for one forward whose batch rows follow `choices` [(adapter or None, rows), ...]."""
    rows = getattr(span, "adapter_rows", None)
    if rows is None or not any(name for name, _ in choices):
        return contextlib.nullcontext()
    return rows.use(choices, span.device)


def adapted_units(span: BlockSpan, adapter: str | None, rows: int, units: Generator) -> Generator:
    """A stateless forward's units (hoster.scheduler.forward_units), each run with `adapter` on its
    rows: the context is set around every unit only, never across a yield (steps run in between)."""
    if not adapter:
        return units

    def run():
        while True:
            with rows_context(span, [(adapter, rows)]):  # a unit's rows are a prefix of the batch's
                try:
                    next(units)
                except StopIteration as done:
                    return done.value
            yield

    return run()


def known(span: BlockSpan, name: str) -> bool:
    return name in (getattr(span, "adapters", None) or {})


__all__ += ["adapter_name", "known"]

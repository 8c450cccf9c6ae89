"""Route a session through one precision class of hosters (consensus.precision).

Quantized hosters compute different numbers than float ones (int8 ~1e-2, nf4 ~1e-1 relative),
so a session's tokens would depend on which mix of hosters it happened to get. By default a
session's route uses hosters of one class only: the most precise class that can cover the
requested blocks alone, then the same class for every re-route of that session.
`ClientConfig.min_precision` drops less precise hosters; `mix_precisions` allows mixing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from consensus.precision import by_preference, meets_minimum, precision_class
from subnet.client.routing import RouteError, Span
from subnet.swarm.announcements import Announcement


def class_of(server: Announcement) -> str | None:
    """The server's declared class, or None for a combination no honest hoster announces."""
    try:
        return precision_class(server.dtype, server.quant)
    except ValueError:
        return None


def route_in_one_class(servers: Sequence[Announcement], find: Callable[[list[Announcement]], list[Span]], *,
                       minimum: str | None = None, pinned: str | None = None,
                       mix: bool = False) -> list[Span]:
    """`find` over the allowed servers: all at once (`mix`), else class by class, most precise first.

    Returned spans carry their hoster's class in `precision`. Raises the last RouteError.
    """
    classes = {s.peer_id: class_of(s) for s in servers}
    allowed = [s for s in servers if classes[s.peer_id] is not None and meets_minimum(classes[s.peer_id], minimum)]
    if pinned is not None:
        allowed = [s for s in allowed if classes[s.peer_id] == pinned]
    if mix or pinned is not None:
        groups = [allowed]
    else:
        groups = [[s for s in allowed if classes[s.peer_id] == c]
                  for c in by_preference(classes[s.peer_id] for s in allowed)] or [[]]
    error: RouteError | None = None
    for group in groups:
        try:
            route = find(group)
        except RouteError as e:
            error = e
            continue
        return [replace(sp, precision=classes.get(sp.peer_id) or "") for sp in route]
    if minimum is not None and not allowed and servers:
        raise RouteError(f"no hoster of precision {minimum} or better (announced: "
                         f"{', '.join(sorted({c or '?' for c in classes.values()}))})")
    raise error or RouteError("no hosters")

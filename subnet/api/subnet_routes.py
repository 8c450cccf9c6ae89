"""Read-only subnet views for operators and the dashboard:
`/subnet/{summary,nodes,coverage,epochs,rewards,reputation}`.

Handlers are plain functions: FastAPI runs them in its thread pool, because a view may
block on chain HTTP or DHT reads.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Query, Request

from subnet.api.backends import SubnetView
from subnet.api.errors import APIError

router = APIRouter(prefix="/subnet")


def _view(request: Request) -> SubnetView:
    view = request.app.state.ctx.subnet_view
    if view is None:
        raise APIError(404, "This API serves no subnet view (start it with --chain).", code="no_subnet_view")
    return view


def _call(fn, *args):
    try:
        return fn(*args)
    except APIError:
        raise
    except Exception as e:  # the chain or DHT is unreachable: say so, don't 500 with a trace
        raise APIError(503, f"subnet state is unavailable: {e}", code="subnet_unavailable") from None


@router.get("/summary")
def summary(request: Request) -> dict:
    return _call(_view(request).summary)


@router.get("/nodes")
def nodes(request: Request) -> dict:
    return {"data": [asdict(n) for n in _call(_view(request).nodes)]}


@router.get("/coverage")
def coverage(request: Request) -> dict:
    return {"data": [asdict(c) for c in _call(_view(request).coverage)]}


@router.get("/epochs")
def epochs(request: Request, limit: int = Query(20, ge=1, le=500)) -> dict:
    return {"data": [asdict(e) for e in _call(_view(request).epochs, limit)]}


@router.get("/rewards")
def rewards(request: Request, limit: int = Query(20, ge=1, le=500)) -> dict:
    return {"data": [asdict(r) for r in _call(_view(request).rewards, limit)]}


@router.get("/reputation")
def reputation(request: Request, limit: int = Query(20, ge=1, le=500)) -> dict:
    """Reputation changes with the chain's reason (views without them answer an empty list)."""
    view = _view(request)
    changes = getattr(view, "reputation_changes", None)
    return {"data": [] if changes is None else [asdict(c) for c in _call(changes, limit)]}

"""Hosters of a model, from their verified DHT announcements (`subnet.swarm.announcements`).

With a chain registry (`subnet.swarm.chain_view.ChainRegistry`), only hosters registered on
chain with a class allowed to serve are returned (the rule the DHT's `AnnouncementValidator`
applies on storing peers); without one (a client with no chain configured) every validly
signed announcement is, as before.
"""

from __future__ import annotations

import logging
from typing import Any

import hivemind

from subnet.swarm.announcements import SERVING_CLASS, Announcement, read_announcements

log = logging.getLogger(__name__)


def read_servers(dht: hivemind.DHT, model_uid: str, registry: Any = None) -> list[Announcement]:
    """Online hosters of `model_uid` (blocking DHT lookup; "joining" ones are not routable yet)."""
    online = [ann for ann in read_announcements(dht, model_uid) if ann.state == "online"]
    return online if registry is None else registered_only(online, registry)


def registered_only(servers: list[Announcement], registry: Any) -> list[Announcement]:
    """The servers whose peer id is a chain node of class >= SERVING_CLASS (blocking chain reads,
    cached per epoch by the registry, re-read at most every few seconds for an unknown peer). If the
    chain cannot be read, the last node list read is used; if none was ever read, nothing is
    filtered (logged): a chain outage must not stop inference."""
    out = []
    for s in servers:
        try:
            node = registry.node(s.peer_id)
        except Exception as e:
            cached = registry.cached_nodes()
            log.warning("chain node list unreadable (%s): %s", "using the last one" if cached else "not filtering", e)
            if not cached:
                return servers
            node = cached.get(s.peer_id)
        if node is not None and node.node_class >= SERVING_CLASS:
            out.append(s)
    return out

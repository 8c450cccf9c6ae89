"""Hosters of a model, from their verified DHT announcements (`subnet.swarm.announcements`)."""

from __future__ import annotations

import logging

import hivemind

from subnet.swarm.announcements import read_announcements
from subnet.client.routing import ServerInfo

log = logging.getLogger(__name__)


def read_servers(dht: hivemind.DHT, model_uid: str) -> list[ServerInfo]:
    """Online hosters of `model_uid` (blocking DHT lookup; "joining" ones are not routable yet)."""
    servers: list[ServerInfo] = []
    for ann in read_announcements(dht, model_uid):
        if ann.state != "online":
            continue
        try:
            servers.append(ServerInfo.from_payload(ann.payload, peer_id=ann.peer_id))
        except (KeyError, TypeError, ValueError) as e:  # already validated by the reader; belt and braces
            log.debug("skipping announcement from %s: %s", ann.peer_id, e)
    return servers

"""Hosters of a model, from their verified DHT announcements (`subnet.swarm.announcements`)."""

from __future__ import annotations

import hivemind

from subnet.swarm.announcements import Announcement, read_announcements


def read_servers(dht: hivemind.DHT, model_uid: str) -> list[Announcement]:
    """Online hosters of `model_uid` (blocking DHT lookup; "joining" ones are not routable yet)."""
    return [ann for ann in read_announcements(dht, model_uid) if ann.state == "online"]

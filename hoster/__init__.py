"""mesh-node hoster package."""

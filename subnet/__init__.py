"""mesh-node subnet package."""

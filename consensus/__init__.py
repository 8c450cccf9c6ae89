"""mesh-node consensus package."""

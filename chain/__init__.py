"""mesh-node chain package."""

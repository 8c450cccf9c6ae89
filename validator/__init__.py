"""mesh-node validator package."""

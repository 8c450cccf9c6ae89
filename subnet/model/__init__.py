"""The model layer: transformer blocks, linear kernels, memory helpers, tiny test models."""

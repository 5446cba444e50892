"""Backbones and checkpoints, the layer-output extractor, and the LaViSE explainer."""

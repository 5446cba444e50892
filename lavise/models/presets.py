"""The preprocessing preset a model's weights name: torchvision weights' ``transforms()``, timm's
``resolve_model_data_config``.

A preset is plain values (``resize``, ``crop``, ``interpolation``, ``mean``, ``std`` and its
``source``), turned into a :class:`lavise.data.transforms.Preprocessing` with the user's values on
top by :func:`lavise.data.transforms.resolve_preprocessing`. Which weights name one:

- a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``): its ``transforms()``
  (``ImageClassification``: resize, crop, interpolation, mean, std);
- a timm model (``timm/<name>``), whatever its weights: the pretrained config its name selects
  (``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``), the preprocessing that
  architecture is trained with;
- ``none``, ``target`` and a checkpoint of a torchvision model name none (the default preset
  applies: 256 -> 224, bilinear, ImageNet statistics).
"""

from __future__ import annotations

from typing import Any

from lavise.models import timm_models
from lavise.models.backbones import resolve_weights_enum
from lavise.models.checkpoints import looks_like_checkpoint
from lavise.options import INTERPOLATIONS


def torchvision_preset(name: str, weights: str) -> dict[str, Any]:
    """The preset of torchvision weights ``weights`` of model ``name`` (read from ``transforms()``)."""
    enum = resolve_weights_enum(name, weights)
    transform = enum.transforms()
    interpolation = transform.interpolation.value
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"{enum}'s interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    return {
        "resize": int(transform.resize_size[0]),
        "crop": int(transform.crop_size[0]),
        "interpolation": interpolation,
        "mean": tuple(float(v) for v in transform.mean),
        "std": tuple(float(v) for v in transform.std),
        "source": f"torchvision:{enum}",
    }


def weights_preset(name: str, weights: str) -> dict[str, Any] | None:
    """The preset of model ``name`` with ``weights`` (rules in the module docstring); None: no preset."""
    if timm_models.is_timm(name):
        return timm_models.preset(name)
    if weights.lower() in ("none", "target") or looks_like_checkpoint(weights):
        return None
    return torchvision_preset(name, weights)

"""timm as a second source of models: ``backbone.name: timm/<model>`` for any ``timm.list_models()`` name.

The naming rule: the prefix ``timm/`` followed by a timm model name, optionally with its
pretrained tag (``timm/vit_tiny_patch16_224`` or ``timm/vit_tiny_patch16_224.augreg_in21k``).
The tag picks which pretrained config (weights file and preprocessing preset) the name means;
without one timm takes the architecture's default tag. Weights: ``none`` (random, seeded),
``pretrained`` (timm's own download of that config's weights: ``timm.create_model(...,
pretrained=True)``), or a checkpoint path (handled with the torchvision ones in
:mod:`lavise.models.backbones`).

timm fetches pretrained weights from the Hugging Face hub into its cache
(``$HF_HUB_CACHE``, by default ``$HF_HOME/hub``); offline, a file already there is used, and a
failed download is one line saying where to put the file (or to give it as a checkpoint path).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
from collections.abc import Iterator
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from lavise.options import INTERPOLATIONS

PREFIX = "timm/"
PRETRAINED = "pretrained"  # the weights value that asks timm for the name's pretrained weights


def is_timm(name: str) -> bool:
    """Whether ``backbone.name`` follows the timm naming rule (``timm/<model>``)."""
    return name.startswith(PREFIX)


@functools.cache
def _known() -> tuple[frozenset[str], frozenset[str]]:
    """timm's architecture names and its ``architecture.tag`` names (listed once per process)."""
    return frozenset(timm.list_models()), frozenset(timm.list_models(pretrained=True))


def timm_model_name(name: str) -> str:
    """The timm name behind ``timm/<model>``; ValueError with close matches when timm has none."""
    model = name[len(PREFIX) :]
    architectures, tagged = _known()
    base, _, tag = model.partition(".")
    if base in architectures and (not tag or model in tagged):
        return model
    pool = sorted(tagged) if tag and base in architectures else sorted(architectures)
    close = difflib.get_close_matches(model, pool, n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(PREFIX + c for c in close)}; " if close else ""
    raise ValueError(
        f"unknown timm model {name!r}; {hint}any of the {len(architectures)} names of timm.list_models() "
        f"after {PREFIX!r} is valid, optionally with a pretrained tag from timm.list_models(pretrained=True)"
    )


def create(name: str, num_classes: int | None = None, pretrained: bool = False) -> nn.Module:
    """``timm.create_model`` for ``timm/<model>`` (``num_classes`` None: the config's classes)."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return timm.create_model(timm_model_name(name), pretrained=pretrained, **kwargs)


def hub_location(name: str) -> str:
    """Where timm looks for the pretrained weights of ``name``: its hub repo, in the HF cache."""
    from huggingface_hub import constants  # timm's own download dependency

    config = create_skeleton(name).pretrained_cfg
    repo = config.get("hf_hub_id") or config.get("url") or "(no download source in its config)"
    return f"{repo} (cached under {constants.HF_HUB_CACHE})"


@contextlib.contextmanager
def download_hint(name: str, what: str) -> Iterator[None]:
    """A failed pretrained download (offline, not cached) ends in one line saying what to do."""
    try:
        yield
    except (OSError, RuntimeError, ValueError) as error:
        if isinstance(error, ValueError) and "unknown timm model" in str(error):
            raise
        detail = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise FileNotFoundError(
            f"{what} {PRETRAINED}: timm could not load the pretrained weights of {name} from {hub_location(name)}: "
            f"{detail}; download them where there is a network (e.g. `hf download <repo> model.safetensors`) "
            "and copy the hub cache folder, or give the file's path as a checkpoint"
        ) from None


def create_skeleton(name: str) -> nn.Module:
    """``timm/<model>`` built on the meta device: module names and config, no memory."""
    with torch.device("meta"):
        return create(name)


def preset(name: str) -> dict[str, Any]:
    """The preprocessing preset of ``timm/<model>``'s pretrained config (``resolve_model_data_config``):
    ``resize`` = floor(crop / crop_pct) as timm's eval transform computes it. ValueError for a
    config the centre-crop geometry cannot follow (a non-square input, crop_mode other than center)."""
    skeleton = create_skeleton(name)
    config = resolve_model_data_config(skeleton)
    _, height, width = config["input_size"]
    mode = config.get("crop_mode", "center")
    if height != width or mode != "center":
        raise ValueError(
            f"{name}'s preset is a {height}x{width} input with crop_mode {mode!r}; only square centre crops "
            "are supported"
        )
    interpolation = config["interpolation"]
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"{name}'s preset interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    pretrained = skeleton.pretrained_cfg
    tag = pretrained.get("tag")
    return {
        "resize": int(math.floor(height / config["crop_pct"])),
        "crop": int(height),
        "interpolation": interpolation,
        "mean": tuple(float(v) for v in config["mean"]),
        "std": tuple(float(v) for v in config["std"]),
        "source": f"timm:{pretrained.get('architecture', timm_model_name(name))}{'.' + tag if tag else ''}",
    }

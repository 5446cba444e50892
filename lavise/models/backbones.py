"""Any torchvision classification model, or any timm model (``timm/<name>``), with the weights asked for.

Which model names, layer names and weights names are valid is answered here (the registries are
torchvision's and timm's, :mod:`lavise.models.timm_models`), so a mistyped name fails at once
with the valid choices, before an hour of decoding is spent. Which module is the classifier head
and how a model is initialised from a seed are answered here once, for the backbone and for the `target` stage's CNN.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from lavise.models import timm_models
from lavise.models.checkpoints import (
    CHECKPOINT_SUFFIXES,
    FILLED_IN,
    describe_checkpoint,
    infer_num_classes,
    load_state_dict,
    looks_like_checkpoint,
    mismatch_summary,
)

log = logging.getLogger(__name__)


def choices(values: list[str]) -> str:
    """The valid values of a setting, as error messages list them."""
    return ", ".join(values)


def classification_models() -> list[str]:
    """Every torchvision classification model name (the valid model names)."""
    return sorted(list_models(module=torchvision.models))


def check_model_name(name: str) -> None:
    """ValueError listing the valid names unless ``name`` is a torchvision classifier or a timm model."""
    if timm_models.is_timm(name):
        timm_models.timm_model_name(name)
        return
    models = classification_models()
    if name not in models:
        raise ValueError(
            f"unknown model {name!r}; valid: {choices(models)}, or {timm_models.PREFIX}<name> for a timm model"
        )


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Model ``name`` (torchvision or ``timm/``) with random weights from the global RNG."""
    if timm_models.is_timm(name):
        return timm_models.create(name, num_classes)
    return get_model(name, weights=None, **({} if num_classes is None else {"num_classes": num_classes}))


def skeleton(name: str) -> nn.Module:
    """Model ``name`` built on the meta device: its module tree without weights, memory or download."""
    with torch.device("meta"):
        return create_model(name)


def layer_names(name: str) -> list[str]:
    """Module names of model ``name`` (the valid layer names)."""
    return [module_name for module_name, _ in skeleton(name).named_modules() if module_name]


def weight_names(name: str) -> list[str]:
    """Weights names of model ``name``: torchvision's (``DEFAULT`` included), or timm's ``pretrained``."""
    if timm_models.is_timm(name):
        return [timm_models.PRETRAINED]
    return list(get_model_weights(name).__members__)


def classifier_head_name(model: nn.Module) -> str | None:
    """The classifier head: the last Linear/Conv2d module in ``named_modules`` order (None if none).

    The one rule for "which module is the head": num_classes of a checkpoint is read from it,
    and the `target` stage replaces it and sets its bias.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    return names[-1] if names else None


def seeded_model(name: str, seed: int, num_classes: int | None = None) -> nn.Module:
    """Model ``name`` randomly initialised from ``seed``, leaving the global RNG as it was.

    The randomised-model control and the target CNN's initial weights are then the same on
    every run, whatever ran before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(name, num_classes)


def resolve_weights_enum(name: str, weights: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights member named ``weights`` (``IMAGENET1K_V1`` or
    ``ResNet18_Weights.IMAGENET1K_V1``); ValueError listing the valid names otherwise."""
    enum = get_model_weights(name)
    member = weights.split(".")[-1] if weights.startswith(f"{enum.__name__}.") else weights
    if member not in enum.__members__:
        raise ValueError(
            f"unknown weights {weights!r} for {name}; valid: {choices(weight_names(name))}, none, "
            f"or a path to a {'/'.join(CHECKPOINT_SUFFIXES)} state_dict"
        )
    return enum[member]


# A download that failed on the network (no route, DNS, refused, timed out, cut short); a full
# disk while the file is written (OSError ENOSPC) is not one of them and passes through.
DOWNLOAD_ERRORS = (URLError, ConnectionError, TimeoutError, http.client.HTTPException)


def hub_file(weights: torchvision.models.WeightsEnum) -> Path:
    """Where torch hub looks for (and downloads) ``weights``: its checkpoints dir + the URL's file name."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


@contextlib.contextmanager
def download_hint(weights: torchvision.models.WeightsEnum, what: str, value: str) -> Iterator[None]:
    """A failed download of torchvision ``weights`` (set as ``what``: ``value``) ends in one line
    saying where to put the file, rather than a URLError traceback."""
    try:
        yield
    except DOWNLOAD_ERRORS as error:
        reason = getattr(error, "reason", None) or error
        raise FileNotFoundError(
            f"{what} {value}: could not download {weights} from {weights.url} ({reason}); download that file "
            f"elsewhere and put it at {hub_file(weights)}, or give a checkpoint path"
        ) from None


def _fits_except_head(candidate: str, state: Mapping[str, torch.Tensor]) -> int | None:
    """The checkpoint's number of classes when ``state`` is model ``candidate``'s up to the classes
    of its head, else None."""
    try:
        model = skeleton(candidate)
    except (NotImplementedError, RuntimeError):  # some builders cannot run on the meta device (regnet)
        return None
    head = classifier_head_name(model)
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    if head is None or f"{head}.weight" not in state or not state.keys() <= expected.keys():
        return None
    if any(key not in state and not key.endswith(FILLED_IN) for key in expected):
        return None
    for key, tensor in state.items():
        got, want = tuple(tensor.shape), expected[key]
        if got != want and not (key.startswith(f"{head}.") and got[1:] == want[1:]):
            return None
    return int(state[f"{head}.weight"].shape[0])


def guess_architecture(state: Mapping[str, torch.Tensor], name: str) -> str | None:
    """The model of ``name``'s family (resnet18 → resnet*) whose layers ``state`` has, with its
    number of classes: ``resnet50 with 1000 classes``; None when no member fits."""
    family = re.match(r"[a-z]+", name)
    prefix = family.group() if family else name
    for candidate in [name] + [m for m in classification_models() if m.startswith(prefix) and m != name]:
        classes = _fits_except_head(candidate, state)
        if classes is not None:
            return f"{candidate} with {classes} classes"
    return None


def check_state_fits(
    model: nn.Module, state: Mapping[str, torch.Tensor], name: str, source: str, what: str, skip: str | None = None
) -> None:
    """One-line ValueError unless ``state`` (from ``source``, set as ``what``) loads into
    ``model`` (torchvision ``name``) strictly, rather than load_state_dict's key-by-key dump:
    which layers mismatch, what the checkpoint looks like, and a guess at its architecture.
    Keys under module ``skip`` (a head about to be replaced) are left out on both sides."""

    def kept(keys: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in keys.items() if skip is None or not k.startswith(f"{skip}.")}

    summary = mismatch_summary({k: v.shape for k, v in kept(model.state_dict()).items()}, kept(state), name)
    if summary is None:
        return
    guess = guess_architecture(state, name)
    looks = f" (it looks like {guess})" if guess else ""
    raise ValueError(
        f"{what} {source} does not fit {name}: {summary}; the checkpoint has "
        f"{describe_checkpoint(state, classifier_head_name(model))}{looks}: "
        f"give a checkpoint of {name}, or the architecture the checkpoint is of"
    )


def _from_checkpoint(name: str, path: str, num_classes: int | None, what: str) -> nn.Module:
    """Model ``name`` with a user state_dict; ``num_classes`` None reads it from the head (the
    model's default when the checkpoint has no such head: the mismatch is then reported)."""
    state = load_state_dict(path, what)
    classes = num_classes
    head = classifier_head_name(skeleton(name)) if classes is None else None
    if head is not None and f"{head}.weight" in state:
        classes = infer_num_classes(state, head, name)
    model = create_model(name, classes)
    check_state_fits(model, state, name, path, what)
    model.load_state_dict(state, strict=True)
    log.info("loaded %s from %s (%s classes)", name, path, classes or "default")
    return model


def build_model(
    name: str, weights: str, *, num_classes: int | None = None, seed: int = 0, what: str = "weights"
) -> nn.Module:
    """The full classification model with the requested weights, in eval mode.

    ``weights``: a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``) or, for a timm
    model, ``pretrained``; ``none`` (random
    initialisation from ``seed``, the randomised-model control) or a path to a state_dict.
    ``what`` names the setting in errors (the stage passes its params key, ``backbone.weights``).
    """
    check_model_name(name)
    if weights.lower() == "none":
        model = seeded_model(name, seed, num_classes)
    elif looks_like_checkpoint(weights):
        model = _from_checkpoint(name, weights, num_classes, what)
    elif timm_models.is_timm(name):
        if weights != timm_models.PRETRAINED:
            raise ValueError(
                f"unknown weights {weights!r} for {name}; valid: {timm_models.PRETRAINED}, none, or a path to a "
                f"{'/'.join(CHECKPOINT_SUFFIXES)} state_dict"
            )
        with timm_models.download_hint(name, what):
            model = timm_models.create(name, num_classes, pretrained=True)
        log.info("loaded %s with timm's pretrained weights", name)
    else:
        weights_enum = resolve_weights_enum(name, weights)
        class_kwargs = {} if num_classes is None else {"num_classes": num_classes}
        with download_hint(weights_enum, what, weights):
            model = get_model(name, weights=weights_enum, **class_kwargs)
        log.info("loaded %s with torchvision weights %s", name, weights_enum)
    return model.eval()

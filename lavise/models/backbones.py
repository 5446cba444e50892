"""Any torchvision classification CNN, any named layer, frozen, as a feature-map extractor.

LaViSE explains the filters of one layer of a trained model, so the features stage needs the
layer's maps and nothing after it. The model is truncated at the layer with torchvision's FX
feature extraction: the forward pass stops there, and the modules after it (VGG's 100M-parameter
classifier, for one) are not kept in memory. Mistyped names fail at once with the valid choices,
before an hour of decoding is spent.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models.feature_extraction import create_feature_extractor

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


class FeatureExtractor(nn.Module):
    """Normalised images ``[B, 3, H, W]`` -> the layer's maps ``[B, d, h', w']``."""

    def __init__(self, body: nn.Module, name: str, weights: str, layer: str) -> None:
        super().__init__()
        self.body = body
        self.model_name = name
        self.weights = weights
        self.layer = layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)["maps"]


def _choices(values: list[str]) -> str:
    return ", ".join(values)


def classification_models() -> list[str]:
    """Every torchvision classification model name (the valid ``backbone.name`` values)."""
    return sorted(list_models(module=torchvision.models))


def layer_names(name: str) -> list[str]:
    """Module names of model ``name`` (the valid ``backbone.layer`` values), from a skeleton built
    on the meta device: no weights, no memory, no download."""
    with torch.device("meta"):
        skeleton = get_model(name, weights=None)
    return [module_name for module_name, _ in skeleton.named_modules() if module_name]


def weight_names(name: str) -> list[str]:
    """torchvision weights names of model ``name`` (``DEFAULT`` included)."""
    return list(get_model_weights(name).__members__)


def looks_like_checkpoint(weights: str) -> bool:
    """The one rule that tells a checkpoint path from a torchvision weights name."""
    return weights.endswith(CHECKPOINT_SUFFIXES) or "/" in weights or "\\" in weights or Path(weights).is_file()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a user checkpoint: safetensors, or a torch state_dict with ``weights_only=True``.

    A DataParallel ``module.`` prefix is removed so checkpoints saved from wrapped models load.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} is not a state_dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def infer_num_classes(name: str, state: dict[str, torch.Tensor]) -> int:
    """Number of classes = output size of the model's last Linear/Conv2d found in ``state``."""
    with torch.device("meta"):
        skeleton = get_model(name, weights=None)
    last_key = None
    for module_name, module in skeleton.named_modules():
        key = f"{module_name}.weight"
        if isinstance(module, (nn.Linear, nn.Conv2d)) and key in state:
            last_key = key
    if last_key is None:
        raise ValueError(f"cannot infer num_classes for {name}: no classifier weight in checkpoint")
    return int(state[last_key].shape[0])


def resolve_weights_enum(name: str, weights: str) -> torchvision.models.WeightsEnum:
    """The torchvision weights member named ``weights`` (``IMAGENET1K_V1`` or
    ``ResNet18_Weights.IMAGENET1K_V1``); ValueError listing the valid names otherwise."""
    enum = get_model_weights(name)
    member = weights.split(".")[-1] if weights.startswith(f"{enum.__name__}.") else weights
    if member not in enum.__members__:
        raise ValueError(
            f"unknown weights {weights!r} for {name}; valid: {_choices(weight_names(name))}, none, "
            f"or a path to a {'/'.join(CHECKPOINT_SUFFIXES)} state_dict"
        )
    return enum[member]


def build_model(name: str, weights: str, *, num_classes: int | None = None, seed: int = 0) -> nn.Module:
    """The full classification model with the requested weights, in eval mode.

    ``none`` initialises from ``seed`` (without touching the global RNG) so the randomised-model
    control gives the same cache on every run.
    """
    models = classification_models()
    if name not in models:
        raise ValueError(f"unknown model {name!r}; valid: {_choices(models)}")
    class_kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if weights.lower() == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_model(name, weights=None, **class_kwargs)
    elif looks_like_checkpoint(weights):
        state = load_state_dict(weights)
        classes = num_classes if num_classes is not None else infer_num_classes(name, state)
        model = get_model(name, weights=None, num_classes=classes)
        model.load_state_dict(state, strict=True)
        log.info("loaded %s from %s (%d classes)", name, weights, classes)
    else:
        weights_enum = resolve_weights_enum(name, weights)
        model = get_model(name, weights=weights_enum, **class_kwargs)
        log.info("loaded %s with torchvision weights %s", name, weights_enum)
    return model.eval()


def build_feature_extractor(
    name: str, weights: str, layer: str, *, num_classes: int | None = None, seed: int = 0
) -> nn.Module:
    """Frozen extractor mapping normalised images to the maps of ``layer`` of model ``name``.

    ``weights``: a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``), ``none`` (random
    initialisation, the randomised-model control) or a path to a state_dict. ``layer``: a module
    name as in ``model.named_modules()``; a module called twice (ResNet's shared ReLU) gives its
    first call's output. ``seed`` only matters for ``none``.
    """
    model = build_model(name, weights, num_classes=num_classes, seed=seed)
    layers = [module_name for module_name, _ in model.named_modules() if module_name]
    if layer not in layers:
        raise ValueError(f"unknown layer {layer!r} for {name}; valid: {_choices(layers)}")
    body = create_feature_extractor(model, return_nodes={layer: "maps"})
    extractor = FeatureExtractor(body, name, weights, layer).eval()
    extractor.requires_grad_(False)
    return extractor


def layer_output_shape(extractor: nn.Module, crop: int) -> tuple[int, int, int]:
    """(d, h', w') of the extractor's maps for a ``crop`` x ``crop`` input, by one dummy pass."""
    parameter = next(extractor.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.inference_mode():
        maps = extractor(torch.zeros(1, 3, crop, crop, device=device))
    if maps.ndim != 4:
        raise ValueError(f"layer output has shape {tuple(maps.shape)}, not a convolutional map [B, d, h', w']")
    return int(maps.shape[1]), int(maps.shape[2]), int(maps.shape[3])


def pool_features(maps: torch.Tensor) -> torch.Tensor:
    """Global average pooling over h' x w': ``[..., d, h', w']`` -> ``[..., d]``.

    This is the pooling ResNet applies after layer4; LaViSE uses it for every model and layer so
    all explainers see the same kind of input.
    """
    return maps.mean(dim=(-2, -1))


def resolve_weights(weights: str, target_model: Path) -> str:
    """`target` means the checkpoint the `target` stage trained; anything else passes through."""
    if weights != "target":
        return weights
    checkpoint = target_model / "model.safetensors"
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"backbone.weights is 'target' but {checkpoint} does not exist: run the target stage "
            "(dvc repro target) or set backbone.weights to a torchvision weights name, none or a path"
        )
    return str(checkpoint)

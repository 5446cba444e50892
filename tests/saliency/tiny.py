"""A tiny classifier whose class 0 responds to bright pixels: saliency must point at them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lavise.models.head import head_from_layer
from lavise.saliency.methods import Explainee, MethodSettings
from lavise.saliency.models import Models

SIZE = 224  # LIME's quickshift (max_dist 200 px) needs an image this large to make superpixels
SETTINGS = MethodSettings(
    batch_size=8,
    scorecam_channels=None,
    ablationcam_channels=None,
    lime_samples=40,
    lime_features=100000,
    lime_hide_color=None,
    seed=0,
)


def tiny_model(seed: int = 0, detector: bool = True) -> nn.Sequential:
    """conv(3->4) ReLU conv(4->4) ReLU pool fc(4->3); with ``detector`` channel 0 is brightness and
    class 0's logit reads only it."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    if detector:
        with torch.no_grad():
            for conv in (model[0], model[2]):
                conv.weight.zero_()
                conv.bias.fill_(-0.5 if conv is model[0] else 0.0)
                conv.weight[0, :, 1, 1] = 1.0  # channel 0: (centre pixel of) channel sum / previous channel 0
            model[6].weight.zero_()
            model[6].weight[0, 0] = 5.0
    return model.eval()


def bright_square(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """uint8 crop, its normalised input and the square's mask: a white square at rows/cols
    size/16 .. size/4, away from the centre."""
    crop = torch.full((3, size, size), 20, dtype=torch.uint8)
    square = slice(size // 16, size // 4)
    crop[:, square, square] = 255
    mask = np.zeros((size, size), dtype=bool)
    mask[square, square] = True
    from lavise.data.transforms import normalize_uint8

    return crop, normalize_uint8(crop), mask


def tiny_models(categories: list[str] | None = ("bright", "b", "c")) -> Models:
    trained, random = tiny_model(), tiny_model(seed=1, detector=False)
    cats = None if categories is None else list(categories)
    explainees = [Explainee(m, m[2], torch.sigmoid, head_from_layer(m, "2")) for m in (trained, random)]
    return Models(explainees[0], explainees[1], cats)

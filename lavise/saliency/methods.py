"""The saliency methods: a registry with one entry per method, each an adapter over its library.

Every entry turns one image and ``K`` classes into maps ``[K, H, W]`` at the crop's resolution
(higher = more salient for that class):

* ``gradcam``, ``gradcam++``, ``scorecam``, ``ablationcam``: pytorch-grad-cam's ``GradCAM``,
  ``GradCAMPlusPlus``, ``ScoreCAM`` and ``AblationCAM`` on the CAM layer, each class's logit as
  the target (``ClassifierOutputTarget``; Ablation-CAM: the class probability, see
  :func:`cam_targets`); the library upsamples to the input and scales each
  map to [0, 1]. The K classes go through as one batch of K copies of the image.
* ``scorecam`` runs one forward pass per layer channel (batched by ``batch_size``), shared by the
  K classes (:class:`SharedScoreCAM`); ``scorecam_channels`` keeps only that many channels of
  highest mean activation on the image (the library's ``reshape_transform`` hook selects them).
* ``ablationcam`` runs the library's ``AblationCAM`` on the network from the CAM layer onward
  (``Explainee.head``), fed the layer's activations: each ablated pass costs the head, not the
  whole network, and the maps are the library's (tests/saliency). ``ablationcam_channels``
  ablates only that many channels of highest mean activation (the others keep weight 0).
* For both, null = every channel, as published.
* ``lime``: ``LimeImageExplainer.explain_instance`` with its default quickshift segmentation,
  on the crop in [0, 1], explaining the class probabilities (sigmoid of the logits for the
  multi-label target CNN, softmax for an ImageNet-style one); a pixel's value is its
  superpixel's weight in the class's local linear model. All K classes share one set of samples.

Adding a method is one :data:`REGISTRY` entry and its name in ``lavise.options.SALIENCY_METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from lime.lime_image import LimeImageExplainer
from pytorch_grad_cam import AblationCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from lavise.data.transforms import normalize


@dataclass(frozen=True)
class MethodSettings:
    """What the methods take from params: forward batch, channel budgets, LIME's settings, seed."""

    batch_size: int
    scorecam_channels: int | None
    ablationcam_channels: int | None
    lime_samples: int
    lime_features: int
    lime_hide_color: float | None
    seed: int


@dataclass(frozen=True)
class Explainee:
    """A classifier to explain: the model (eval mode, on its device), its CAM layer module, how
    its logits ``[B, C]`` become the probabilities LIME regresses on, and the network from the
    CAM layer onward (layer output -> logits; None where the model cannot be cut there, and
    Ablation-CAM then runs the whole model per ablated batch, as the library does)."""

    model: nn.Module
    layer: nn.Module
    probabilities: Callable[[torch.Tensor], torch.Tensor]
    head: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


# (model, normalised image [3, H, W], uint8 crop [3, H, W], classes [K], settings) -> maps [K, H, W]
Explain = Callable[[Explainee, torch.Tensor, torch.Tensor, list[int], MethodSettings], np.ndarray]


@dataclass(frozen=True)
class SaliencyMethod:
    """One registered method: its params name, what computes it, and the library it adapts."""

    name: str
    explain: Explain
    library: str


def top_channels(k: int | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A ``reshape_transform`` keeping the ``k`` channels of highest mean activation of ``[B, C, h, w]``."""
    if k is None:
        return None

    def select(activations: torch.Tensor) -> torch.Tensor:
        if k >= activations.shape[1]:
            return activations
        means = activations.mean(dim=(2, 3))  # [B, C]
        order = torch.argsort(means, dim=1, descending=True, stable=True)[:, :k]  # [B, k]
        index = order[:, :, None, None].expand(-1, -1, *activations.shape[2:])
        return torch.gather(activations, 1, index)  # [B, k, h, w]

    return select


class TopChannelAblation(AblationLayer):
    """The library's ablation layer, ablating the ``k`` channels of highest mean activation
    (all with ``k`` None) instead of its SVD-ranked share."""

    def __init__(self, k: int | None) -> None:
        super().__init__()
        self.k = k

    def activations_to_be_ablated(self, activations: np.ndarray, ratio_channels_to_ablate: float = 1.0) -> np.ndarray:
        """Channel indices of one image's activations ``[C, h, w]`` to ablate."""
        if self.k is None or self.k >= activations.shape[0]:
            return super().activations_to_be_ablated(activations, 1.0)
        means = activations.reshape(activations.shape[0], -1).mean(axis=1)  # [C]
        self.indices = np.int32(np.argsort(-means, kind="stable")[: self.k])
        return self.indices


class SharedScoreCAM(ScoreCAM):
    """The library's Score-CAM for K targets on K copies of one image, with the masked forward
    passes run once instead of once per target (the masked inputs do not depend on the class).
    The weights are the library's: per target, a softmax over channels of its masked scores."""

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        if not torch.equal(input_tensor, input_tensor[:1].expand_as(input_tensor)):
            return super().get_cam_weights(input_tensor, target_layer, targets, activations, grads)
        with torch.no_grad():
            maps = torch.from_numpy(activations[:1]).to(self.device)  # [1, C, h, w]
            upsampled = torch.nn.UpsamplingBilinear2d(size=input_tensor.shape[-2:])(maps)[0]  # [C, H, W]
            flat = upsampled.flatten(1)
            low, high = flat.min(dim=1).values, flat.max(dim=1).values
            upsampled = (upsampled - low[:, None, None]) / (high - low + 1e-8)[:, None, None]
            outputs = []
            for start in range(0, len(upsampled), self.batch_size):
                masks = upsampled[start : start + self.batch_size, None]  # [b, 1, H, W]
                outputs.append(self.model(input_tensor[:1] * masks))  # [b, classes]
            logits = torch.cat(outputs)  # [C, classes]
            scores = torch.tensor([[float(target(row)) for row in logits] for target in targets])  # [K, C]
        return torch.softmax(scores, dim=-1).numpy()


def _make_cam(name: str, explainee: Explainee, settings: MethodSettings) -> BaseCAM:
    layers = [explainee.layer]
    if name == "gradcam":
        return GradCAM(explainee.model, layers)
    if name == "gradcam++":
        return GradCAMPlusPlus(explainee.model, layers)
    if name == "scorecam":
        cam = SharedScoreCAM(explainee.model, layers, reshape_transform=top_channels(settings.scorecam_channels))
        cam.batch_size = settings.batch_size  # read by ScoreCAM.get_cam_weights
        return cam
    return AblationCAM(
        explainee.model,
        layers,
        ablation_layer=TopChannelAblation(settings.ablationcam_channels),
        batch_size=settings.batch_size,
    )


class ProbabilityTarget:
    """A class's probability as the CAM target (``ClassifierOutputTarget`` takes the logit)."""

    def __init__(self, category: int, probabilities: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.category, self.probabilities = category, probabilities

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.ndim == 1:  # one sample's logits [C]
            return self.probabilities(output[None])[0, self.category]
        return self.probabilities(output)[:, self.category]  # [B, C] -> [B]


def cam_targets(name: str, explainee: Explainee, classes: list[int]) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The logit of each class; for Ablation-CAM its probability, because the library divides each
    channel's score drop by the original score, and a negative logit would flip every weight's sign."""
    if name == "ablationcam":
        return [ProbabilityTarget(c, explainee.probabilities) for c in classes]
    return [ClassifierOutputTarget(c) for c in classes]


def cam_explain(name: str) -> Explain:
    """The adapter of pytorch-grad-cam method ``name``: K copies of the image, one target per class."""

    def explain(
        explainee: Explainee, image: torch.Tensor, crop: torch.Tensor, classes: list[int], settings: MethodSettings
    ) -> np.ndarray:
        batch = image[None].expand(len(classes), -1, -1, -1).contiguous().to(explainee.device)  # [K, 3, H, W]
        with _make_cam(name, explainee, settings) as cam:
            maps = cam(input_tensor=batch, targets=cam_targets(name, explainee, classes))
        return np.asarray(maps, dtype=np.float32)  # [K, H, W]

    return explain


def layer_activations(explainee: Explainee, image: torch.Tensor) -> torch.Tensor:
    """The CAM layer's output ``[1, C, h, w]`` on the normalised ``image`` ``[3, H, W]``."""
    captured: list[torch.Tensor] = []
    handle = explainee.layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with torch.no_grad():
            explainee.model(image[None].to(explainee.device))
    finally:
        handle.remove()
    return captured[0]


def ablation_explain(
    explainee: Explainee, image: torch.Tensor, crop: torch.Tensor, classes: list[int], settings: MethodSettings
) -> np.ndarray:
    """pytorch-grad-cam's AblationCAM on the head (``Explainee.head``) fed the CAM layer's
    activations, upsampled to the crop as the library's BaseCAM does (min-max scale, resize,
    scale again); without a head, the library on the whole model."""
    if explainee.head is None:
        return cam_explain("ablationcam")(explainee, image, crop, classes, settings)
    tail = nn.Sequential(nn.Identity(), explainee.head)  # input: the layer's output
    batch = layer_activations(explainee, image).expand(len(classes), -1, -1, -1).contiguous()  # [K, C, h, w]
    ablation = TopChannelAblation(settings.ablationcam_channels)
    with AblationCAM(tail, [tail[0]], ablation_layer=ablation, batch_size=settings.batch_size) as cam:
        small = cam(input_tensor=batch, targets=cam_targets("ablationcam", explainee, classes))  # [K, h, w]
    size = (int(image.shape[-1]), int(image.shape[-2]))  # (width, height), as BaseCAM passes it
    return np.asarray(scale_cam_image(scale_cam_image(small, size)), dtype=np.float32)  # [K, H, W]


def lime_explain(
    explainee: Explainee, image: torch.Tensor, crop: torch.Tensor, classes: list[int], settings: MethodSettings
) -> np.ndarray:
    """LIME's superpixel weights per class, painted on the crop ``[K, H, W]``."""

    def classify(samples: np.ndarray) -> np.ndarray:  # [n, H, W, 3] in [0, 1] -> probabilities [n, C]
        batch = torch.from_numpy(samples).permute(0, 3, 1, 2).float().to(explainee.device)
        with torch.no_grad():
            return explainee.probabilities(explainee.model(normalize(batch))).double().cpu().numpy()

    pixels = crop.permute(1, 2, 0).double().numpy() / 255.0  # [H, W, 3]
    explanation = LimeImageExplainer(random_state=settings.seed).explain_instance(
        pixels,
        classify,
        labels=tuple(classes),
        top_labels=None,
        hide_color=settings.lime_hide_color,
        num_features=settings.lime_features,
        num_samples=settings.lime_samples,
        batch_size=settings.batch_size,
        random_seed=settings.seed,
    )
    segments = explanation.segments  # [H, W] superpixel ids 0..S-1
    maps = np.zeros((len(classes), *segments.shape), dtype=np.float32)
    for k, label in enumerate(classes):
        weights = np.zeros(int(segments.max()) + 1)
        for segment, weight in explanation.local_exp[label]:
            weights[segment] = weight
        maps[k] = weights[segments]
    return maps


REGISTRY: dict[str, SaliencyMethod] = {
    "gradcam": SaliencyMethod("gradcam", cam_explain("gradcam"), "pytorch-grad-cam GradCAM"),
    "gradcam++": SaliencyMethod("gradcam++", cam_explain("gradcam++"), "pytorch-grad-cam GradCAMPlusPlus"),
    "scorecam": SaliencyMethod("scorecam", cam_explain("scorecam"), "pytorch-grad-cam ScoreCAM"),
    "ablationcam": SaliencyMethod("ablationcam", ablation_explain, "pytorch-grad-cam AblationCAM (on the head)"),
    "lime": SaliencyMethod("lime", lime_explain, "lime LimeImageExplainer (quickshift)"),
}

"""The layout adapter (lavise/models/token_grid.py) against hand-written loops, and the layer checks it gives."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from lavise.models.backbones import skeleton
from lavise.models.extractor import FeatureExtractor, HookTruncated, LayerProbe, as_maps
from lavise.models.token_grid import _layer_list, check_grid_layer, extra_tokens, from_maps, layout_of, to_maps


def test_tokens_become_a_row_major_grid_without_the_extra_tokens() -> None:
    tokens = torch.randn(2, 2 + 3 * 3, 5)  # two extra tokens (class + distillation), 3x3 patches, 5 channels
    maps = as_maps(tokens, "blocks.3", 2)
    assert maps.shape == (2, 5, 3, 3)
    for n in range(2):
        for c in range(5):
            for i in range(3):
                for j in range(3):
                    assert maps[n, c, i, j] == tokens[n, 2 + i * 3 + j, c]
    assert layout_of(tuple(tokens.shape), 2) == {"layout": "tokens", "dropped_tokens": 2, "grid": [3, 3]}


def test_channels_last_is_permuted_and_channels_first_passes_through() -> None:
    grid = torch.randn(2, 4, 4, 6)  # [N, h, w, C]
    maps = as_maps(grid, "features.7")
    assert maps.shape == (2, 6, 4, 4)
    for c in range(6):
        assert torch.equal(maps[:, c], grid[..., c])
    conv = torch.randn(2, 6, 4, 4)
    assert as_maps(conv, "layer4") is conv
    assert layout_of((2, 7, 7, 768), 0)["layout"] == "channels_last"
    assert layout_of((2, 768, 7, 7), 0)["layout"] == "channels_first"


def test_from_maps_inverts_to_maps_keeping_the_extra_tokens() -> None:
    tokens = torch.randn(2, 1 + 16, 3)
    assert torch.equal(from_maps(to_maps(tokens, "x", 1), tokens, 1), tokens)
    grid = torch.randn(2, 4, 4, 3)
    assert torch.equal(from_maps(to_maps(grid, "x", 0), grid, 0), grid)


@pytest.mark.parametrize(
    ("shape", "extra", "problem"),
    [
        ((2, 1 + 10, 8), 1, r"11 tokens are not a square number of patches plus the model's 1 extra"),
        ((2, 1000), 0, r"not a spatial grid"),
        ((2, 3, 4, 5, 6), 0, r"not a spatial grid"),
    ],
)
def test_outputs_that_are_no_grid_name_the_layer_and_shape(shape: tuple[int, ...], extra: int, problem: str) -> None:
    with pytest.raises(ValueError, match=rf"layer 'head' outputs shape \({shape[0]}, {shape[1]}.*: {problem}"):
        to_maps(torch.zeros(shape), "head", extra)


def test_extra_tokens_of_torchvision_and_timm_vits() -> None:
    assert extra_tokens(skeleton("vit_b_16")) == 1
    assert extra_tokens(skeleton("resnet18")) == 0
    assert extra_tokens(skeleton("timm/deit_tiny_distilled_patch16_224")) == 2  # class + distillation
    assert extra_tokens(skeleton("timm/vit_small_patch14_reg4_dinov2")) == 5  # class + 4 registers


@pytest.fixture(scope="module")
def tiny_vit() -> torch.nn.Module:
    """A two-block timm ViT on 32 x 32 inputs (2 x 2 patches of 16): the ViT code, at test size."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10).eval()


def test_a_head_layer_is_refused_with_its_shape_and_the_grid_layers(tiny_vit: torch.nn.Module) -> None:
    with pytest.raises(ValueError) as error:
        check_grid_layer(tiny_vit, "head", 32, "timm/vit_tiny_patch16_224")
    message = str(error.value)
    assert "layer 'head' of timm/vit_tiny_patch16_224 outputs shape (1, 10): not a spatial grid" in message
    listed = message.split("layers with a grid output at crop 32: ")[1].split("; and ")[0].split(", ")
    assert listed[:4] == ["patch_embed", "patch_embed.proj", "patch_embed.norm", "pos_drop"]  # module order
    assert "blocks.1" in listed and "norm" in listed
    assert "fc_norm" not in listed and "head" not in listed  # a pooled vector, the logits
    assert "blocks.0.attn.qkv" in listed and "; and " not in message  # two blocks: every name fits
    names = ["blocks", "blocks.0", "blocks.0.mlp", "blocks.0.mlp.fc1", "blocks.1", "norm"]
    assert _layer_list(names, limit=4) == "blocks, blocks.0, blocks.1, norm; and 2 deeper names such as blocks.0.mlp"
    assert check_grid_layer(tiny_vit, "patch_embed", 32, "vit") == {
        "layout": "tokens",
        "dropped_tokens": 0,  # before the class token is prepended
        "grid": [2, 2],
    }


def test_hook_truncation_gives_the_blocks_tokens_as_maps(tiny_vit: torch.nn.Module) -> None:
    images = torch.randn(2, 3, 32, 32)
    tokens = {}
    handle = tiny_vit.blocks[1].register_forward_hook(lambda _m, _i, out: tokens.setdefault("out", out))
    with torch.inference_mode():
        tiny_vit(images)
    handle.remove()
    truncated = HookTruncated(copy.deepcopy(tiny_vit), "blocks.1")
    extractor = FeatureExtractor(truncated, "timm/vit", "none", "blocks.1", extra_tokens(tiny_vit))
    with torch.inference_mode():
        maps = extractor(images)
    assert extractor.layout == {"layout": "tokens", "dropped_tokens": 1, "grid": [2, 2]}
    assert torch.equal(maps, tokens["out"][:, 1:].reshape(2, 2, 2, 192).permute(0, 3, 1, 2))


def test_layer_probe_ablates_vit_channels_for_the_layers_after(tiny_vit: torch.nn.Module) -> None:
    images = torch.randn(1, 3, 32, 32)
    plain = LayerProbe(tiny_vit, "blocks.0")
    with torch.inference_mode():
        logits, maps = plain(images)
    plain.remove()
    ablated = LayerProbe(tiny_vit, "blocks.0", ablate=[0, 5])
    with torch.inference_mode():
        logits_ablated, maps_ablated = ablated(images)
    ablated.remove()
    assert maps.shape == (1, 192, 2, 2) and not maps_ablated[:, [0, 5]].any()
    assert torch.equal(maps_ablated[:, 1:5], maps[:, 1:5])
    assert not torch.allclose(logits, logits_ablated)

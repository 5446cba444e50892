"""Explainer MLP, hinge rank loss and the safetensors round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lavise.models.explainer import Explainer, hinge_rank_loss, load_explainer, save_explainer


def naive_hinge_rank_loss(outputs, class_vectors, positive_mask, margin) -> float:
    """Plain Python loops over rows and classes: the definition, written out."""
    total = 0.0
    for b in range(outputs.shape[0]):
        out = outputs[b].tolist()
        out_norm = sum(x * x for x in out) ** 0.5
        sims = []
        for c in range(class_vectors.shape[0]):
            vec = class_vectors[c].tolist()
            vec_norm = sum(x * x for x in vec) ** 0.5
            sims.append(sum(o * v for o, v in zip(out, vec)) / (out_norm * vec_norm))
        positives = [sims[c] for c in range(len(sims)) if positive_mask[b, c]]
        positive_mean = sum(positives) / len(positives)
        row = 0.0
        for c in range(len(sims)):
            if not positive_mask[b, c]:
                row += max(0.0, margin - positive_mean + sims[c])
        total += row
    return total / outputs.shape[0]


def test_hinge_loss_hand_computed():
    # output (1,0); classes (1,0), (0,1), (-1,0); positive = (0,1): cos = [1, 0, -1], pos = 0.
    # negatives: max(0, 1 - 0 + 1) = 2 and max(0, 1 - 0 - 1) = 0 → loss 2.
    outputs = torch.tensor([[1.0, 0.0]])
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    mask = torch.tensor([[False, True, False]])
    assert hinge_rank_loss(outputs, classes, mask, margin=1.0).item() == pytest.approx(2.0)
    # two positives (1,0) and (0,1): pos = 0.5; only negative (-1,0): max(0, 1 - 0.5 - 1) = 0.
    both = torch.tensor([[True, True, False]])
    assert hinge_rank_loss(outputs, classes, both, margin=1.0).item() == pytest.approx(0.0)
    assert hinge_rank_loss(outputs, classes, both, margin=2.0).item() == pytest.approx(0.5)


def test_hinge_loss_matches_double_loop_on_random_inputs():
    generator = torch.Generator().manual_seed(3)
    batch, n_classes, emb = 9, 7, 5
    outputs = torch.randn(batch, emb, generator=generator, dtype=torch.float64)
    classes = torch.nn.functional.normalize(
        torch.randn(n_classes, emb, generator=generator, dtype=torch.float64), dim=1
    )
    mask = torch.rand(batch, n_classes, generator=generator) < 0.3
    mask[:, 0] |= ~mask.any(dim=1)  # every row needs a positive
    mask[1] = False
    mask[1, [2, 4, 5]] = True  # multi-positive row
    # row 0: positive = class 0 exactly, every other class orthogonal to it or opposed to it
    # (cosine <= 0) → with margin 1 every negative term is max(0, cos) = 0.
    classes[:emb] = torch.eye(emb, dtype=torch.float64)
    classes[emb:, 0] = -classes[emb:, 0].abs()
    outputs[0] = 3.0 * classes[0]
    mask[0] = False
    mask[0, 0] = True
    margin = 1.0
    expected = naive_hinge_rank_loss(outputs, classes, mask, margin)
    assert hinge_rank_loss(outputs, classes, mask, margin).item() == pytest.approx(expected, rel=1e-12)
    assert hinge_rank_loss(outputs[:1], classes, mask[:1], margin).item() == 0.0
    assert naive_hinge_rank_loss(outputs[:1], classes, mask[:1], margin) == pytest.approx(0.0, abs=1e-12)
    assert hinge_rank_loss(outputs[1:2], classes, mask[1:2], margin).item() == pytest.approx(
        naive_hinge_rank_loss(outputs[1:2], classes, mask[1:2], margin), rel=1e-12
    )


def test_hinge_loss_rejects_rows_without_positive_and_bad_masks():
    outputs, classes = torch.randn(2, 3), torch.eye(3)
    with pytest.raises(ValueError, match="at least one positive"):
        hinge_rank_loss(outputs, classes, torch.tensor([[True, False, False], [False] * 3]), 1.0)
    with pytest.raises(TypeError):
        hinge_rank_loss(outputs, classes, torch.ones(2, 3), 1.0)
    with pytest.raises(ValueError, match="shape"):
        hinge_rank_loss(outputs, classes, torch.ones(2, 4, dtype=torch.bool), 1.0)


def test_hinge_loss_gradient_flows():
    outputs = torch.randn(4, 3, requires_grad=True)
    mask = torch.eye(4, 3, dtype=torch.bool) | torch.tensor([[False] * 3] * 3 + [[True, False, False]])
    hinge_rank_loss(outputs, torch.eye(3), mask, 1.0).backward()
    assert outputs.grad is not None and torch.isfinite(outputs.grad).all()


def test_explainer_layer_order_and_shapes():
    model = Explainer(in_dim=12, emb_dim=5, hidden_dim=7, dropout=0.25)
    kinds = [type(m) for m in model.layers]
    assert kinds == [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert model.layers[0].num_features == 12
    assert (model.layers[2].in_features, model.layers[2].out_features) == (12, 7)
    assert model.layers[4].num_features == 7
    assert (model.layers[6].in_features, model.layers[6].out_features) == (7, 5)
    assert model.layers[1].p == model.layers[5].p == 0.25
    assert model(torch.randn(3, 12)).shape == (3, 5)
    default = Explainer(in_dim=9, emb_dim=4)
    assert default.hidden_dim == 9 and default.layers[2].out_features == 9 and default.dropout == 0.1


def test_explainer_rejects_bad_dimensions():
    with pytest.raises(ValueError):
        Explainer(in_dim=0, emb_dim=4)
    with pytest.raises(ValueError):
        Explainer(in_dim=4, emb_dim=4, dropout=1.0)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Explainer(in_dim=6, emb_dim=3, hidden_dim=4, dropout=0.1)
    model.train()
    for _ in range(3):  # move the BatchNorm running statistics away from their defaults
        model(torch.randn(8, 6) * 2 + 1)
    model.eval()
    out_dir = tmp_path / "explainer"
    save_explainer(model, {"classes": ["a", "b"], "layer": "layer4"}, out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "explainer.safetensors"]
    loaded, config = load_explainer(out_dir)
    assert not loaded.training
    assert config["classes"] == ["a", "b"] and config["layer"] == "layer4"
    assert (config["in_dim"], config["hidden_dim"], config["emb_dim"], config["dropout"]) == (6, 4, 3, 0.1)
    assert json.loads((out_dir / "config.json").read_text()) == config
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_load_explainer_missing_files_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_explainer(tmp_path)

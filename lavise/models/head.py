"""The network from a layer onward: layer maps ``[B, d, h', w']`` -> logits ``[B, C]``.

The ablation test zeroes filters at the layer and re-scores the classifier many times (every µ,
every random repeat, every class); running the rest of the model on the cached layer maps
instead of the pixels makes each pass cost the head alone. The model is traced with torch.fx
with ``layer`` kept as one call, and the graph after that call is copied into a new module
whose input is the layer's output. A layer the rest of the model cannot be run from (a residual
branch inside a block, whose sum also reads the block's input; a module called twice) is
refused with a message naming what else the model reads.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from lavise.models.backbones import classifier_head_name
from lavise.models.extractor import check_layer


class _LayerLeafTracer(fx.Tracer):
    """torch.fx tracer that keeps ``layer`` as a single ``call_module`` node."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.layer or super().is_leaf_module(module, qualified_name)


def _downstream(graph: fx.Graph, start: fx.Node) -> list[fx.Node]:
    """The nodes computed from ``start`` (itself excluded), in graph order."""
    reached = {start}
    nodes = []
    for node in graph.nodes:
        if node is not start and any(arg in reached for arg in node.all_input_nodes):
            reached.add(node)
            nodes.append(node)
    return nodes


def head_from_layer(model: nn.Module, layer: str) -> fx.GraphModule:
    """A module mapping ``layer``'s output to the model's output, sharing ``model``'s parameters.

    ValueError when ``model`` has no classifier head, when ``layer`` is not one of its modules or
    is called more than once, or when the rest of the model reads anything but that layer's
    output (and parameters).
    """
    name = type(model).__name__
    check_layer(model, layer, name)
    if classifier_head_name(model) is None:
        raise ValueError(f"{name} has no classifier head (no Linear or Conv2d module): nothing to score")
    graph = _LayerLeafTracer(layer).trace(model)
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == layer]
    if len(calls) != 1:
        raise ValueError(f"layer {layer!r} of {name} is called {len(calls)} times in the forward pass, not once")
    after = _downstream(graph, calls[0])
    outputs = [node for node in after if node.op == "output"]
    if not outputs:
        raise ValueError(f"the output of {name} does not depend on layer {layer!r}")
    kept = set(after) | {calls[0]}
    for node in after:
        other = [arg for arg in node.all_input_nodes if arg not in kept and arg.op != "get_attr"]
        if other:
            raise ValueError(
                f"the head of {name} cannot be run from layer {layer!r}: {node.name} also reads {other[0].name} "
                "(computed before the layer, e.g. a residual connection); choose the output of a whole block"
            )
    head = fx.Graph()
    values = {calls[0]: head.placeholder("maps")}
    for node in graph.nodes:
        if node.op == "get_attr" and any(user in kept for user in node.users):
            values[node] = head.node_copy(node, lambda arg: values[arg])
    for node in after:
        values[node] = head.node_copy(node, lambda arg: values[arg])
    module = fx.GraphModule(model, head, class_name="HeadFromLayer")
    module.eval()
    return module


def run_head(head: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, C]`` of maps ``[B, d, h', w']`` (no gradient)."""
    with torch.inference_mode():
        return head(maps)

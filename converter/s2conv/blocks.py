"""The main path of a graph: the tensors that every path from the input to the logits
passes through, and the stages between them.

A tensor is on the main path when, right after the node that makes it, it is the only
tensor still needed on the way to the logits. In graph terms it dominates the logits
(every input-to-logits path passes through it), so the network is a single tensor
there: a block boundary. Inside a residual block the skip tensor stays live beside the
branch, inside a squeeze-excite block the feature map stays live beside the gate, so
neither has a main-path tensor inside; a chain of layers has one after every node.

Why any topological order works: a node on an input-to-logits path that does not
descend from a dominator t must be an ancestor of t (its path to the logits passes
through t), so it comes before t; everything after t descends from t.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2conv.graph import GraphView, OnnxNode


@dataclass(frozen=True)
class Stage:
    """The nodes between two consecutive main-path tensors: one op of a chain, or a whole block."""

    input: str
    output: str
    nodes: tuple[OnnxNode, ...]

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(node.op for node in self.nodes)


def main_path(view: GraphView, logits: str) -> tuple[Stage, ...]:
    """The stages from the model input to `logits`, in order (empty if `logits` is the input).

    Stage i's output is stage i+1's input; the first input is the model input, the last
    output is `logits`. Only nodes on some input-to-logits data path are considered:
    constant subgraphs and shape computations (torch's `x.view(x.size(0), -1)`) are
    not data flow.
    """
    on_path = _nodes_on_path(view, logits)
    last_use = _last_uses(on_path, view)
    live = {view.input_name}
    stages: list[Stage] = []
    start, pending = view.input_name, []
    for position, node in enumerate(on_path):
        pending.append(node)
        for name in view.data_inputs(node):
            if last_use.get(name) == position:
                live.discard(name)
        for name in node.outputs:
            if name and (name == logits or last_use.get(name, -1) > position):
                live.add(name)
        if len(live) == 1:
            (cut,) = live
            if cut != start:
                stages.append(Stage(start, cut, tuple(pending)))
                start, pending = cut, []
    return tuple(stages)


def _nodes_on_path(view: GraphView, logits: str) -> list[OnnxNode]:
    """Nodes that compute `logits` from the input's values, in graph order."""
    needed, seen = [logits], set()
    indices: set[int] = set()
    while needed:
        name = needed.pop()
        if name in seen:
            continue
        seen.add(name)
        node = view.producer(name)
        if node is None or view.is_constant(name):
            continue
        indices.add(node.index)
        needed.extend(view.data_inputs(node))
    return [view.nodes[i] for i in sorted(indices)]


def _last_uses(nodes: list[OnnxNode], view: GraphView) -> dict[str, int]:
    """For each tensor read by the path's nodes: the position of its last reader."""
    last: dict[str, int] = {}
    for position, node in enumerate(nodes):
        for name in view.data_inputs(node):
            last[name] = position
    return last

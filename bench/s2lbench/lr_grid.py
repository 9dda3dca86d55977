"""A learning-rate grid whose best point is not at an edge.

Each method's grid is tried; while the best rate is the lowest (highest) one tried, the
grid grows by one step below (above), with the grid's own ratio between neighbours, at
most `max_extend` times. Best: by the named rule of `lr_select` (the bench's: the lowest
validation cross-entropy at each model's best temperature), the same rule for every method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from s2lbench.lr_select import Scores, rule

DEFAULT_RULE = "calibrated-loss"


def best(scores: Scores, rule_name: str = DEFAULT_RULE) -> float:
    return rule(rule_name)(scores)


def at_edge(scores: Scores, rule_name: str = DEFAULT_RULE) -> str | None:
    """The edge the best rate sits on: "low", "high" (a grid of one: "high") or None."""
    rates = sorted(scores)
    b = best(scores, rule_name)
    if b == rates[-1]:
        return "high"
    return "low" if b == rates[0] else None


def search(evaluate: Callable[[float], dict[str, float]], grid: Sequence[float], max_extend: int, rule_name: str = DEFAULT_RULE) -> Scores:
    """Scores of every rate tried: the grid, then outward steps while the best sits on an edge."""
    rule(rule_name)  # an unknown rule is refused before anything trains
    rates = sorted(grid)
    ratio = rates[1] / rates[0] if len(rates) > 1 else 3.0
    scores: Scores = {lr: evaluate(lr) for lr in rates}
    for _ in range(max_extend):
        edge = at_edge(scores, rule_name)
        if edge is None:
            break
        lr = min(scores) / ratio if edge == "low" else max(scores) * ratio
        scores[float(f"{lr:.3g}")] = evaluate(float(f"{lr:.3g}"))
    return dict(sorted(scores.items()))


def record(scores: Scores, rule_name: str = DEFAULT_RULE) -> dict[str, Any]:
    """What the JSON keeps: the best rate, the rule, every rate tried, and whether the best is still on an edge."""
    return {
        "lr": best(scores, rule_name),
        "rule": rule_name,
        "grid": [{"lr": lr, **s} for lr, s in scores.items()],
        "best_at_edge": at_edge(scores, rule_name),
    }

"""The corruption-robustness workload (s2models.data.corrupt, s2lbench.corrupted) and the
cost counters of s2lbench.cost, on small slices."""

from __future__ import annotations

import numpy as np
import pytest
from s2models.data import corrupt

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    images, _ = corrupt.upright_device_images("digits")
    return images["test"][:12]


def test_there_are_at_least_eight_corruptions_in_four_families():
    assert len(corrupt.names()) >= 8
    assert {corrupt.family(n) for n in corrupt.names()} == {"noise", "blur", "weather", "digital"}


@pytest.mark.parametrize("name", corrupt.names())
def test_every_corruption_is_deterministic_for_a_seed_and_changes_the_images(digits, name):
    a = corrupt.corrupt(digits, name, 3, seed=5)
    b = corrupt.corrupt(digits, name, 3, seed=5)
    assert a.dtype == np.float32 and a.shape == digits.shape and a.min() >= 0.0 and a.max() <= 1.0
    assert a.tobytes() == b.tobytes()
    clean = np.round(digits * 255) / 255
    assert np.abs(a - clean).mean() > 0.01


def test_a_random_corruption_depends_on_its_seed_and_grows_with_severity(digits):
    assert not np.array_equal(corrupt.corrupt(digits, "gaussian_noise", 2, 1), corrupt.corrupt(digits, "gaussian_noise", 2, 2))
    clean = np.round(digits * 255) / 255
    error = [np.abs(corrupt.corrupt(digits, "gaussian_noise", s, 0) - clean).mean() for s in corrupt.SEVERITIES]
    assert error[0] < error[1] < error[2]


def test_mixed_severity_is_seeded_and_uses_every_severity(digits):
    a, sa = corrupt.mixed_severity(digits, "defocus_blur", "ft", 0)
    b, sb = corrupt.mixed_severity(digits, "defocus_blur", "ft", 0)
    assert a.tobytes() == b.tobytes() and np.array_equal(sa, sb) and set(sa.tolist()) == {1, 2, 3}


def test_unknown_corruptions_and_severities_are_refused_by_name(digits):
    with pytest.raises(KeyError, match="corruption 'frost'"):
        corrupt.corrupt(digits, "frost", 1, 0)
    with pytest.raises(ValueError, match="severity"):
        corrupt.corrupt(digits, "fog", 4, 0)


def test_the_corrupted_workload_has_one_ft_split_and_three_test_severities_per_corruption():
    from s2lbench import corrupted

    mix, sets = corrupted.build("digits_cnn", ["jpeg", "snow"], max_ft=20, max_test=10)
    assert [s.corruption for s in sets] == ["jpeg", "snow"] and mix.kind == "cnn"
    for s in sets:
        assert s.ft.x.shape == (20, 1, 8, 8) and s.test.x.shape == (30, 1, 8, 8)
        assert np.array_equal(s.test.y[:10], s.test.y[10:20]) and s.severity.tolist() == [1] * 10 + [2] * 10 + [3] * 10
    assert mix.ft.x.shape == (20, 1, 8, 8) and np.array_equal(mix.ft.y, sets[0].ft.y)
    again, _ = corrupted.build("digits_cnn", ["jpeg", "snow"], max_ft=20, max_test=10)
    assert again.ft.x.tobytes() == mix.ft.x.tobytes()


@pytest.fixture(scope="module")
def context():
    from s2lbench.context import Context
    from s2lbench.profiles import PROFILES
    from s2lbench.workloads import load

    return Context(load("digits_cnn").subset(32, 32), PROFILES["edge"], 4, 8.0, {}, 2)


def test_a_torch_step_counts_what_the_method_trains(context):
    from s2lbench.cost import method_cost

    x, y = context.workload.ft.x[:8], context.workload.ft.y[:8]
    ft = method_cost("torch-ft-all", "torch", context, x, y, 1e-3, 32, 5)
    lora_c = method_cost("lora-c-all", "torch", context, x, y, 1e-2, 32, 5)
    galore = method_cost("galore-all", "torch", context, x, y, 1e-2, 32, 5)
    weights = sum(p.numel() for p in context.torch_net().parameters())
    assert ft["trainable"] == galore["trainable"] == weights and 0 < lora_c["trainable"] < weights
    tensors = len(list(context.torch_net().parameters()))
    assert 0 <= ft["memory_bytes"]["optimizer"] - 2 * 4 * weights <= 8 * tensors  # Adam: two moments per weight (+ a step count)
    assert galore["memory_bytes"]["optimizer"] < ft["memory_bytes"]["optimizer"]  # moments in the projected space
    assert lora_c["memory_bytes"]["gradients"] == 4 * lora_c["trainable"]
    for c in (ft, lora_c, galore):
        assert c["flops_per_sample"] > 0 and c["memory_bytes"]["activations"] > 0
        assert c["memory_bytes"]["total"] == sum(v for k, v in c["memory_bytes"].items() if k != "total")


def test_skip2lora_flops_follow_the_head_gemms(context):
    from s2lbench.cost import method_cost

    bundle = context.bundle(0)
    x, y = context.workload.ft.x[:8], context.workload.ft.y[:8]
    c = method_cost("s2rt-skip2lora", "s2rt", context, x, y, 1e-2, 32, 5)
    d, n_taps, r, k = sum(t.size for t in bundle.taps), len(bundle.taps), bundle.head.rank, bundle.head.num_outputs
    assert c["flops_cached_step"] == 4 * r * d + 6 * n_taps * r * k
    assert c["flops_per_sample"] == pytest.approx(c["flops_cached_step"] + c["flops_frozen_forward"] / 5)
    ft = method_cost("torch-ft-all", "torch", context, x, y, 1e-3, 32, 5)
    assert c["flops_frozen_forward"] < ft["flops_per_sample"]  # a forward costs less than forward + backward
    assert c["memory_bytes"]["cache"] == 32 * bundle.cache.record_size


def test_the_cnn_report_renders_every_table_and_the_plot_from_the_committed_json(tmp_path):
    import json
    from pathlib import Path

    from s2lbench import cnn_report

    result = json.loads((Path(__file__).resolve().parents[2] / "bench" / "results" / "cnn.json").read_text())
    text = cnn_report.markdown(result)
    for heading in ("## Summary", "## Depthwise-separable nets", "## Corrupted inputs, digits_cnn", "## Corrupted inputs, mnist_cnn"):
        assert heading in text
    for cnn, w in result["reference"].items():
        for method in w["costs"]:
            assert f"| {cnn} | {result['labels'][method]} |" in text
        assert all(t["lr"] in [g["lr"] for g in t["grid"]] for t in w["tuning"].values())
    for c in result["corruption"].values():
        assert len(c["corruptions"]) >= 8 and {len(c["sweep"])} == {8}
    cnn_report.plot(result, tmp_path / "cnn.png")
    assert (tmp_path / "cnn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""CNN graphs: block-boundary taps, pooled inside the frozen segment, differential-tested
against the source model's intermediates in onnxruntime (optimisations off)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cnn_graphs import CNN_CASES, adaptive_avg_pool, conv_chain, inverted_residual_se
from conv_graphs import random_input, run_original, run_segment
from s2conv import ConvertOptions, convert
from s2rt.bundle import read_bundle, write_bundle
from s2rt.bundle.model import SegmentBackend, TapReduction
from s2rt.errors import UnsupportedGraphError


def pooled(x: np.ndarray, grid: int) -> np.ndarray:
    if x.ndim == 2 or grid == 0:
        return x
    if grid == 1:
        return x.mean(axis=tuple(range(2, x.ndim)))
    return adaptive_avg_pool(x, grid)


@pytest.mark.parametrize("name", list(CNN_CASES))
def test_taps_are_block_inputs_and_the_classifier_input(name, tmp_path):
    case = CNN_CASES[name]()
    bundle = convert(case.save(tmp_path))
    assert [t.source for t in bundle.taps] == case.taps
    assert [t.layer for t in bundle.taps] == case.layers
    assert [t.reduction for t in bundle.taps[:-1]] == [TapReduction.GLOBAL_AVG_POOL] * (len(case.taps) - 1)
    assert bundle.taps[-1].reduction == TapReduction.NONE


@pytest.mark.parametrize("grid", [1, 2, 0])
@pytest.mark.parametrize("name", list(CNN_CASES))
def test_pooled_taps_equal_the_source_models_pooled_intermediates(name, grid, tmp_path):
    case = CNN_CASES[name]()
    bundle = convert(case.save(tmp_path), ConvertOptions(tap_pool=grid))
    x = random_input(case.input_shape, 4)
    expected = run_original(case.model, x, [*case.taps, case.logits])
    got = run_segment(bundle, x)
    for tap in bundle.taps:
        want = pooled(expected[tap.source].astype(np.float64), grid)
        assert got[tap.name].shape == (4, *tap.shape) == want.shape
        np.testing.assert_allclose(got[tap.name], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["s2l.logits"], expected[case.logits], rtol=0, atol=1e-6)


def test_a_two_by_two_grid_over_an_odd_map_uses_overlapping_adaptive_windows(tmp_path):
    bundle = convert(inverted_residual_se().save(tmp_path), ConvertOptions(tap_pool=2))  # 7x7 maps
    assert [(t.shape, t.reduction) for t in bundle.taps] == [
        ((1, 2, 2), TapReduction.AVG_POOL),
        ((4, 2, 2), TapReduction.AVG_POOL),
        ((4,), TapReduction.NONE),
    ]
    segment = bundle.segment(SegmentBackend.ONNX).model
    pools = [n for n in onnx.load_from_string(bytes(segment)).graph.node if n.op_type == "AveragePool"]
    assert [(list(n.attribute[0].ints), list(n.attribute[1].ints)) for n in pools] == [([4, 4], [3, 3])] * 2


def test_reductions_survive_the_bundle_round_trip(tmp_path):
    bundle = convert(conv_chain().save(tmp_path), ConvertOptions(tap_pool=2))
    write_bundle(bundle, tmp_path / "b.s2l")
    again = read_bundle(tmp_path / "b.s2l")
    assert [(t.shape, t.reduction) for t in again.taps] == [(t.shape, t.reduction) for t in bundle.taps]
    assert again.taps[1].reduction == TapReduction.AVG_POOL and again.taps[1].shape == (4, 2, 2)


def test_a_grid_no_window_fits_names_the_tap_and_the_grids_that_do(tmp_path):
    with pytest.raises(
        UnsupportedGraphError, match=r"tap 'x' has a spatial size of 8, .* into 3 equal cells; choose --tap-pool 1 or 2 or 4"
    ):
        convert(conv_chain().save(tmp_path), ConvertOptions(tap_pool=3))


def test_cache_holds_a_few_floats_per_channel(tmp_path):
    pooled_bundle = convert(inverted_residual_se().save(tmp_path))
    whole = convert(inverted_residual_se().save(tmp_path), ConvertOptions(tap_pool=0))
    assert pooled_bundle.tap_width == 1 + 4 + 4
    assert whole.tap_width == 49 + 4 * 49 + 4

"""The heads beyond linear train from an int8 Skip-Cache (scales chosen on the device) to
within a point of the float32 cache on HAR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from s2conv import ConvertOptions, convert
from s2rt.bundle import parse_bundle, serialize_bundle
from s2rt.data import load_samples
from s2rt.session import Model
from s2rt.trainer import TrainConfig

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("method", ["skip2relu", "oselm-rf"])
def test_int8_cache_fine_tunes_within_a_point_of_float32(method):
    source = MODELS / "har_mlp.onnx"
    accuracy = {}
    for dtype in ("float32", "int8"):
        bundle = parse_bundle(serialize_bundle(convert(source, ConvertOptions(cache_dtype=dtype)))[0])
        model = Model(bundle, method=method)
        ft, test = (load_samples(MODELS / "data" / f"har_{s}.npz", bundle.input) for s in ("ft", "test"))
        result = model.fine_tune(ft, TrainConfig(epochs=20, learning_rate=0.01, seed=0))
        assert result.cache_hits > 0
        accuracy[dtype] = model.evaluate(test)["accuracy"]
    assert accuracy["float32"] > 0.95
    assert abs(accuracy["int8"] - accuracy["float32"]) <= 0.01, accuracy


def test_oselm_fits_in_one_pass_from_the_frozen_outputs_so_an_int8_cache_changes_nothing():
    """oselm reads every sample once, as the frozen segment computes it (statistics and Gram
    matrix in the same pass): its fit never decodes the cache, int8 or not."""
    source = MODELS / "har_mlp.onnx"
    betas = {}
    for dtype in ("float32", "int8"):
        bundle = parse_bundle(serialize_bundle(convert(source, ConvertOptions(cache_dtype=dtype)))[0])
        model = Model(bundle, method="oselm")
        ft = load_samples(MODELS / "data" / "har_ft.npz", bundle.input)
        result = model.fine_tune(ft, TrainConfig(seed=0))
        assert (result.cache_hits, result.cache_misses) == (0, len(ft.y))
        betas[dtype] = model.head.state_dict()["beta"]
    np.testing.assert_array_equal(betas["int8"], betas["float32"])

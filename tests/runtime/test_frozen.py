"""The onnxruntime backend and the frozen wrapper against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny import tiny_bundle, tiny_reference, tiny_weights
from s2rt.backend import open_backend
from s2rt.errors import BackendError, RuntimeInputError
from s2rt.frozen import FrozenModel


def frozen(threads=1):
    w = tiny_weights()
    b = tiny_bundle(w)
    return w, FrozenModel(b, open_backend(b, "auto", threads))


@pytest.mark.parametrize("threads", [1, 2])
def test_outputs_match_numpy(threads):
    w, f = frozen(threads)
    x = np.random.default_rng(1).normal(size=(9, 6)).astype(np.float32)
    taps, logits = f.run(x)
    want_taps, want_logits = tiny_reference(w, x)
    np.testing.assert_allclose(taps, want_taps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    assert taps.dtype == logits.dtype == np.float32


def test_bad_inputs_are_named():
    _, f = frozen()
    with pytest.raises(RuntimeInputError, match=r"expected samples of shape \(6,\)"):
        f.run(np.ones((2, 5), np.float32))
    with pytest.raises(RuntimeInputError, match="sample 1 contains NaN"):
        f.run(np.array([[0.0] * 6, [np.nan] * 6], np.float32))


def test_unknown_backend_and_threads():
    b = tiny_bundle()
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        open_backend(b, "tpu")
    with pytest.raises(BackendError, match="threads"):
        open_backend(b, "onnx", 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_every_non_finite_value_is_found_and_its_sample_named(bad, dtype):
    """Whatever the finiteness check computes, a lone NaN, inf or -inf anywhere is caught."""
    _, f = frozen()
    x = np.full((5, 6), min(np.finfo(dtype).max, np.finfo(np.float32).max), dtype)  # huge finite values pass
    assert f.check_input(x).shape == (5, 6)
    for sample, column in ((0, 0), (3, 2), (4, 5)):
        y = x.copy()
        y[sample, column] = bad
        with pytest.raises(RuntimeInputError, match=f"sample {sample} contains NaN or Inf"):
            f.check_input(y)

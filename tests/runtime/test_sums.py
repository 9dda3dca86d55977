"""`s2rt.heads.sums`: the ridge sums add up over chunks, a fit's squared error follows from them,
and a width whose D x D sums would be unreasonable is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from s2rt.heads.sums import MAX_WIDTH, check_width, ridge_sums, squared_error, targets, unpack


def test_chunked_sums_are_the_sums_of_the_stacked_samples_and_give_the_squared_error():
    rng = np.random.default_rng(0)
    x, f = rng.normal(size=(40, 5)), rng.normal(size=(40, 3))
    y = rng.integers(0, 3, 40)
    chunks = [(x[i], f[i], y[i]) for i in np.array_split(np.arange(40), 3)]
    s = ridge_sums(chunks, 5, 3, 2.0, regression=False)
    t = 2.0 * (np.eye(3)[y] - 1 / 3) - f
    np.testing.assert_allclose(unpack(s.gram.astype(np.float64), 5), x.T @ x, rtol=1e-6)
    np.testing.assert_allclose(s.cross, x.T @ t, rtol=1e-6, atol=1e-6)
    assert s.targets == pytest.approx(np.sum(t * t)) and s.examples == 40
    dw = rng.normal(size=(3, 5))
    want = np.sum((x @ dw.T - t) ** 2)
    assert squared_error(dw, x.T @ x, x.T @ t, s.targets) == pytest.approx(want, rel=1e-10)
    np.testing.assert_allclose(targets(f, rng.normal(size=(40, 3)), 2.0, regression=True).shape, (40, 3))


def test_a_width_above_the_limit_is_refused_by_name():
    check_width(MAX_WIDTH)
    with pytest.raises(ValueError, match=rf"D = {MAX_WIDTH + 1} features; the D x D sums are limited to D <= {MAX_WIDTH}"):
        check_width(MAX_WIDTH + 1)

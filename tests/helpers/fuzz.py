"""Shared settings of the fuzz property tests: bounded and deterministic in CI, longer on request.

    S2L_FUZZ_EXAMPLES=20000 pytest tests/runtime/test_fuzz_*.py     # random, 20,000 per property
"""

from __future__ import annotations

import os

from helpers.mutate import INTERESTING_U32, OPS
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CI_EXAMPLES = 500
EXAMPLES = int(os.environ.get("S2L_FUZZ_EXAMPLES", CI_EXAMPLES))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=1000,  # ms: no case may take a second
    derandomize="S2L_FUZZ_EXAMPLES" not in os.environ,  # CI runs the same cases every time
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

position = st.integers(0, 1 << 16)
value = st.one_of(st.sampled_from(INTERESTING_U32), st.integers(0, 2**32 - 1))
op = st.tuples(st.sampled_from(OPS), position, value, position)
ops = st.lists(op, min_size=1, max_size=6)

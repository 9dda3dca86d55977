"""The LoRA A init, regenerated from the seed: the same bytes on every machine and NumPy.

A (rank x width) is U(-1/sqrt(width), 1/sqrt(width)), PEFT's LoRA A init
(`kaiming_uniform_(A, a=sqrt(5))` has bound sqrt(6 / ((1 + a^2) width)) = 1/sqrt(width)).
A bundle can name this rule instead of storing A (s2l.fbs `AInitRule.SPLITMIX64_UNIFORM`),
so the converter and every runtime must draw the very same numbers: NumPy's own
generators promise no such thing across versions, so this one is spelled out.

The rule, in integers mod 2^64 (mix = the SplitMix64 finaliser, GAMMA = 0x9E3779B97F4A7C15):

    key    = mix(seed + (tap_index + 1) * GAMMA)         # one stream per (seed, tap)
    bits_i = mix(key + (i + 1) * GAMMA)                  # i = row * width + column
    u_i    = float32(bits_i >> 40) * 2^-24               # the top 24 bits: exact, in [0, 1)
    A_i    = (2 u_i - 1) * bound,  bound = float32(1) / sqrt(float32(width))

Every float step is one IEEE float32 operation, exactly rounded (2 u - 1 is exact), so the
result does not depend on the platform. Rows are a prefix: the first r rows of rank R are
the A of rank r.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
MAX_SEED = (1 << 63) - 1
_CHUNK = 1 << 16  # elements per step: bounds the uint64 temporaries

# NumPy 1.x turns uint64 op Python int into float64 (or refuses uint64 >> int): every
# operand below is a np.uint64, and every operation is on arrays (scalars warn on wrap).
_U_GAMMA = np.uint64(GAMMA)
_U_MUL1 = np.uint64(_MUL1)
_U_MUL2 = np.uint64(_MUL2)
_U_ONE = np.uint64(1)
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40))
_TWO_POW_M24 = np.float32(2.0**-24)


def lora_a(rank: int, width: int, seed: int, tap_index: int) -> np.ndarray:
    """Tap `tap_index`'s initial A: a (rank x width) float32, C-contiguous array.

    `seed` is 0..2^63-1 (the bundle's `Head.seed`); raises ValueError otherwise.
    """
    _check(rank, width, seed, tap_index)
    rank, width = int(rank), int(width)
    key = np.uint64(_mix_int((int(seed) + (int(tap_index) + 1) * GAMMA) & MASK64))
    bound = np.float32(1) / np.sqrt(np.float32(width))
    out = np.empty(rank * width, dtype=np.float32)
    for start in range(0, out.size, _CHUNK):
        index = np.arange(start, min(start + _CHUNK, out.size), dtype=np.uint64)
        bits = _mix_array(key + (index + _U_ONE) * _U_GAMMA)
        u = (bits >> _SHIFTS[3]).astype(np.float32) * _TWO_POW_M24
        out[start : start + index.size] = (np.float32(2) * u - np.float32(1)) * bound
    return out.reshape(rank, width)


def _check(rank: int, width: int, seed: int, tap_index: int) -> None:
    for name, value in (("rank", rank), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"lora_a: {name} must be an integer >= 1, got {value!r}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"lora_a: seed must be an integer in 0..2^63-1, got {seed!r}")
    if not isinstance(tap_index, (int, np.integer)) or tap_index < 0:
        raise ValueError(f"lora_a: tap_index must be an integer >= 0, got {tap_index!r}")


def _mix_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * _MUL1) & MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & MASK64
    return z ^ (z >> 31)


def _mix_array(z: np.ndarray) -> np.ndarray:
    s30, s27, s31, _ = _SHIFTS
    z = (z ^ (z >> s30)) * _U_MUL1
    z = (z ^ (z >> s27)) * _U_MUL2
    return z ^ (z >> s31)

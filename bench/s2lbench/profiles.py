"""Thread profiles. Each runs in its own process: BLAS reads its thread count once, at import.

edge: one thread everywhere (OpenMP/MKL/OpenBLAS, onnxruntime intra-op, torch), the
paper's single slow core. default: what the libraries pick on this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class Profile:
    name: str
    threads: int  # 0: the library default
    env: dict[str, str] = field(default_factory=dict)  # set before numpy/torch are imported

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for a process that runs this profile."""
        env = dict(os.environ if base is None else base)
        for var in THREAD_VARS:  # the Makefile exports the edge values; default must not inherit them
            env.pop(var, None)
        env.update(self.env)
        return env

    @property
    def s2rt_threads(self) -> int:
        """onnxruntime intra-op threads for s2rt's frozen segment (s2rt needs an explicit count)."""
        return self.threads or (os.cpu_count() or 1)


PROFILES: dict[str, Profile] = {
    "edge": Profile("edge", 1, {var: "1" for var in THREAD_VARS}),
    "default": Profile("default", 0),
}


def check_environment(profile: Profile) -> None:
    """Raise if this process was started without the profile's environment (BLAS would ignore a late change)."""
    wrong = {var: os.environ.get(var) for var, value in profile.env.items() if os.environ.get(var) != value}
    if wrong:
        raise RuntimeError(f"profile {profile.name!r} must run in a process started with {profile.env}; found {wrong}")


def apply_torch(profile: Profile) -> None:
    """torch's intra-op threads (it reads OMP_NUM_THREADS too, but say it explicitly)."""
    import torch

    if profile.threads:
        torch.set_num_threads(profile.threads)

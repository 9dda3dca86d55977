"""What methods share within one profile process: converted bundles, the torch mirror, the ORTT peer."""

from __future__ import annotations

import functools
from typing import Any

from s2lbench.profiles import Profile
from s2lbench.workloads import Workload


class Context:
    def __init__(self, workload: Workload, profile: Profile, rank: int, alpha: float, peer_env: dict[str, str], tap_pool: int = 1) -> None:
        self.workload, self.profile, self.rank, self.alpha, self.tap_pool = workload, profile, rank, alpha, tap_pool
        self._peer_env = peer_env
        self._peer: Any = None

    @functools.cache  # noqa: B019 - one Context per workload, kept for the profile's run
    def bundle(self, seed: int) -> Any:
        """The workload's model converted by s2conv (the seed draws the adapters' initial A)."""
        from s2conv import ConvertOptions, convert

        return convert(self.workload.onnx, ConvertOptions(rank=self.rank, alpha=self.alpha, seed=seed, tap_pool=self.tap_pool))

    @functools.cache  # noqa: B019
    def torch_net(self) -> Any:
        from s2lbench.onnxnet import load_onnx_net

        return load_onnx_net(str(self.workload.onnx))

    @functools.cache  # noqa: B019
    def skip2lora_parameters(self) -> int:
        from s2rt.session import new_head

        return new_head(self.bundle(0)).num_parameters

    @functools.cache  # noqa: B019
    def matched_lora_rank(self, seed: int = 0) -> int:
        """The PEFT LoRA-All rank whose trainable-parameter count is nearest Skip2-LoRA's."""
        from s2lbench.methods_torch import lora_parameters

        per_rank = lora_parameters(self.torch_net(), 1)
        target = self.skip2lora_parameters()
        low = max(1, target // per_rank)
        return min((low, low + 1), key=lambda r: (abs(r * per_rank - target), r))

    def ortt(self) -> Any:
        if self._peer is None:
            from s2lbench.methods_ortt import OrttPeer

            self._peer = OrttPeer(self._peer_env)
        return self._peer

    def close(self) -> None:
        if self._peer is not None:
            self._peer.close()
            self._peer = None

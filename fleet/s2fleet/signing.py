"""The fleet key on the server: every round's global adapters go out signed.

Each round, before the train and the evaluate messages are sent, the global adapters are
written as an adapter state file for the fleet's bundle (naming the run and the round
whose aggregate they are) and signed with the fleet key (`s2rt.serve.fleet_signing`),
under a sequence number that grows with every version signed; the file, the signature,
the key id and the sequence travel in the round's ConfigRecord beside the arrays. A
device whose daemon runs `s2rt serve --fleet-key FLEET.pub` (`s2fleet.member`) imports
that file only if the signature verifies for the bundle it serves and the sequence is
not older than the newest version it holds. The same adapters are signed once: the
evaluate message of round r and the train message of round r + 1 carry the same signed
file, which a daemon stores once. The in-process ClientApp (`s2fleet.apps`) ignores them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from s2rt.bundle.model import Bundle
from s2rt.bundle.signing import SigningKey
from s2rt.serve.fleet_signing import KEY_HEADER, SEQUENCE_HEADER, SIGNATURE_HEADER, adapter_file, sign

from s2fleet.aggregate import Adapters
from s2fleet.apps import AdapterStrategy, from_record

GLOBAL_FILE = "global-file"  # bytes: the adapter state file (.npz) of the global version
GLOBAL_SIGNATURE = "global-signature"  # hex: the fleet key's Ed25519 signature of it
GLOBAL_KEY = "global-key"  # the fleet key's id
GLOBAL_SEQUENCE = "global-sequence"  # decimal text: the version's sequence (signed with it)
GLOBAL_ROUND = "global-round"  # the round whose aggregate the version is (0: the initial adapters)


def _fingerprint(adapters: Adapters) -> str:
    h = hashlib.sha256()
    for a, b in adapters:
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
        h.update(np.ascontiguousarray(b, np.float32).tobytes())
    return h.hexdigest()


class GlobalSigner:
    """Signs global adapter versions of one bundle with the fleet key; the same adapters once."""

    def __init__(self, bundle: Bundle, key: SigningKey, run_id: int = 0) -> None:
        self.bundle, self.key, self.run_id = bundle, key, run_id
        self._last: tuple[str, dict[str, Any]] | None = None

    def entries(self, adapters: Adapters, version_round: int) -> dict[str, Any]:
        """The ConfigRecord entries that carry the signed global version, the aggregate of `version_round`."""
        fingerprint = _fingerprint(adapters)
        if self._last is not None and self._last[0] == fingerprint:
            return self._last[1]
        data = adapter_file(adapters, self.bundle, round=version_round, run=self.run_id, origin="fleet server")
        headers = sign(data, self.bundle.digest, self.key)
        entries = {
            GLOBAL_FILE: data,
            GLOBAL_SIGNATURE: headers[SIGNATURE_HEADER],
            GLOBAL_KEY: headers[KEY_HEADER],
            GLOBAL_SEQUENCE: headers[SEQUENCE_HEADER],
            GLOBAL_ROUND: version_round,
        }
        self._last = fingerprint, entries
        return entries


class SignedAdapterStrategy(AdapterStrategy):
    """`AdapterStrategy` whose train and evaluate messages carry the global adapters signed by the fleet key."""

    def __init__(self, signer: GlobalSigner, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signer = signer

    def _signed(self, arrays: ArrayRecord, config: ConfigRecord, version_round: int) -> ConfigRecord:
        return ConfigRecord({**dict(config), **self.signer.entries(from_record(arrays, self.taps), version_round)})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round, arrays, self._signed(arrays, config, server_round - 1), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round, arrays, self._signed(arrays, config, server_round), grid)

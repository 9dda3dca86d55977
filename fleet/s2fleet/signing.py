"""The fleet key on the server: every round's global adapters go out signed.

Each round, before the train messages are sent, the global adapters are written as an
adapter state file for the fleet's bundle and signed with the fleet key
(`s2rt.serve.fleet_signing`); the file, the signature and the key id travel in the
round's ConfigRecord beside the arrays. A device whose daemon runs `s2rt serve
--fleet-key FLEET.pub` (`s2fleet.member`) imports that file only if the signature
verifies for the bundle it serves. The in-process ClientApp (`s2fleet.apps`) ignores them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from s2rt.bundle.model import Bundle
from s2rt.bundle.signing import SigningKey
from s2rt.serve.fleet_signing import KEY_HEADER, SIGNATURE_HEADER, adapter_file, sign

from s2fleet.aggregate import Adapters
from s2fleet.apps import AdapterStrategy, from_record

GLOBAL_FILE = "global-file"  # bytes: the adapter state file (.npz) of the global version
GLOBAL_SIGNATURE = "global-signature"  # hex: the fleet key's Ed25519 signature of it
GLOBAL_KEY = "global-key"  # the fleet key's id


class GlobalSigner:
    """Signs global adapter versions of one bundle with the fleet key."""

    def __init__(self, bundle: Bundle, key: SigningKey) -> None:
        self.bundle, self.key = bundle, key

    def entries(self, adapters: Adapters, server_round: int) -> dict[str, Any]:
        """The ConfigRecord entries that carry the signed global version of `server_round`."""
        data = adapter_file(adapters, self.bundle, round=server_round, origin="fleet server")
        headers = sign(data, self.bundle.digest, self.key)
        return {GLOBAL_FILE: data, GLOBAL_SIGNATURE: headers[SIGNATURE_HEADER], GLOBAL_KEY: headers[KEY_HEADER]}


class SignedAdapterStrategy(AdapterStrategy):
    """`AdapterStrategy` whose train messages carry the global adapters signed by the fleet key."""

    def __init__(self, signer: GlobalSigner, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signer = signer

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        signed = ConfigRecord({**dict(config), **self.signer.entries(from_record(arrays, self.taps), server_round)})
        return super().configure_train(server_round, arrays, signed, grid)

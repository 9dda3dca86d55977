"""Training progress: a one-line bar on a terminal, one logfmt line per epoch otherwise.

`train(..., progress=make_progress())`. Any `(epoch, epochs, batch, batches, loss)`
callable works as `progress`; one that also has `epoch_end` and `close` (an
`EpochListener`, like `ProgressReporter`) gets each finished epoch's metrics and the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Protocol, TextIO, runtime_checkable

_KEYS = {"train_loss": "loss", "val_loss": "val_loss", "val_accuracy": "val_acc"}


class ProgressCallback(Protocol):
    def __call__(self, epoch: int, epochs: int, batch: int, batches: int, loss: float) -> None: ...


@runtime_checkable
class EpochListener(Protocol):
    def epoch_end(self, epoch: int, epochs: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def format_epoch(epoch: int, epochs: int, metrics: Mapping[str, float]) -> str:
    """`epoch=3/20 loss=0.41 val_loss=0.38 val_acc=0.93`."""
    parts = [f"epoch={epoch}/{epochs}"]
    parts += [f"{short}={metrics[key]:.4g}" for key, short in _KEYS.items() if key in metrics]
    return " ".join(parts)


class ProgressReporter:
    """On a TTY: a bar redrawn in place (at most every `interval` s), then one summary
    line per epoch. Elsewhere: the summary lines only, so a log gets one line per epoch."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, width: int = 24, interval: float = 0.1) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width
        self.interval = interval
        self._last_draw = -float("inf")
        self._shown = 0  # length of the unfinished line on screen, 0 when none

    def __call__(self, epoch: int, epochs: int, batch: int, batches: int, loss: float) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last_draw < self.interval:
            return
        self._last_draw = now
        filled = self.width * batch // batches
        bar = "#" * filled + "." * (self.width - filled)
        line = f"epoch {epoch}/{epochs} [{bar}] {batch}/{batches} loss={loss:.4g}"
        self.stream.write("\r" + line.ljust(self._shown))
        self.stream.flush()
        self._shown = len(line)

    def epoch_end(self, epoch: int, epochs: int, metrics: Mapping[str, float]) -> None:
        line = format_epoch(epoch, epochs, metrics)
        prefix = "\r" if self._shown else ""
        self.stream.write(prefix + line.ljust(self._shown) + "\n")
        self.stream.flush()
        self._shown = 0

    def close(self) -> None:
        """End a bar left unfinished by a run that stopped mid-epoch."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = 0


def make_progress(stream: TextIO | None = None) -> ProgressReporter:
    """The reporter for `stream` (default stderr): a bar on a terminal, log lines elsewhere."""
    return ProgressReporter(stream)

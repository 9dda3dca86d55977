"""Progress of the conversion's slow stages (calibration, int8 quantization, TFLite emit).

`convert(..., progress=StageProgress())` reports each slow stage on stderr: on a terminal
`s2conv: quantizing … done (3.2 s)` as it happens, elsewhere one line per stage when it
ends, so a log gets one line per stage. Fast stages say nothing. `convert` without
`progress` is silent (a library call).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TextIO

from s2conv.version import PRODUCER


class Progress(Protocol):
    def stage(self, what: str) -> AbstractContextManager[None]: ...


class StageProgress:
    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty() if tty is None else tty

    @contextmanager
    def stage(self, what: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.tty:
            self._write(f"{PRODUCER}: {what} ...")
        ended = False
        try:
            yield
            ended = True
        finally:
            seconds = time.perf_counter() - start
            if self.tty:
                self._write(f" done ({seconds:.1f} s)\n" if ended else "\n")
            elif ended:
                self._write(f"{PRODUCER}: {what}: done in {seconds:.2f} s\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


@contextmanager
def silent(what: str) -> Iterator[None]:
    yield

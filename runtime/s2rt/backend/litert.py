"""LiteRT backend: a TFLite `Interpreter` built from the segment's bytes.

`ai_edge_litert` (the maintained LiteRT package, NumPy 2) first, `tflite_runtime` as
the fallback where that is what a device has. The segment records batch 1 with -1 in
its shape signatures; the input is resized (and the tensors re-planned) only when the
batch size changes. Outputs are looked up by tensor name, never by position.

LiteRT's C++ logger announces its XNNPACK delegate on stderr the first time a process
plans tensors ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU."), and Python
has no switch for it: that first planning runs with stderr captured, and everything
but that line is written back.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from s2rt.bundle.model import Segment
from s2rt.errors import BackendError

# Tried in this order; the first that imports is used.
INTERPRETER_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
DELEGATE_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_first_planning = True


def interpreter_class() -> tuple[type, str]:
    """(Interpreter class, module it came from); ImportError if neither is installed."""
    failures = []
    for module_name in INTERPRETER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            failures.append(f"{module_name}: {e}")
            continue
        return module.Interpreter, module_name.split(".")[0]
    raise ImportError("no LiteRT interpreter: " + "; ".join(failures), name=" or ".join(m.split(".")[0] for m in INTERPRETER_MODULES))


class LiteRTBackend:
    name = "tflite"

    def __init__(self, segment: Segment, threads: int = 1) -> None:
        interpreter, self.implementation = interpreter_class()
        try:
            self.interpreter: Any = interpreter(model_content=bytes(segment.model), num_threads=threads)
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"{self.implementation} cannot load the frozen segment: {e}") from None
        inputs = self.interpreter.get_input_details()
        names = [d["name"] for d in inputs]
        if names != [segment.input_name]:
            raise BackendError(f"frozen segment inputs are {names}, the bundle says {[segment.input_name]}")
        self.input_index = int(inputs[0]["index"])
        self.sample_shape = tuple(int(d) for d in inputs[0]["shape"][1:])
        details = self.interpreter.get_output_details()
        self.outputs = {d["name"]: int(d["index"]) for d in details}
        self.output_sample_shapes = {d["name"]: tuple(int(n) for n in d["shape"][1:]) for d in details}
        self.batch: int | None = None
        self.threads = threads

    def _resize(self, batch: int) -> None:
        try:
            self.interpreter.resize_tensor_input(self.input_index, [batch, *self.sample_shape], strict=True)
            with _without_delegate_notice():
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            self.batch = None
            raise BackendError(f"{self.implementation} cannot run the frozen segment on a batch of {batch}: {e}") from None
        self.batch = batch

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n = len(x)
        if n == 0:
            return {name: np.zeros((0, *shape), np.float32) for name, shape in self.output_sample_shapes.items()}
        if n != self.batch:
            self._resize(n)
        try:
            self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(x))
            self.interpreter.invoke()
            return {name: self.interpreter.get_tensor(index) for name, index in self.outputs.items()}
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"{self.implementation} failed to run the frozen segment: {e}") from None


@contextmanager
def _without_delegate_notice() -> Iterator[None]:
    """The first time in this process: run the block with file descriptor 2 sent to a
    temporary file, then write back all it caught but LiteRT's delegate notice (other
    threads' stderr in that moment comes out late, not lost). Later: nothing."""
    global _first_planning
    if not _first_planning:
        yield
        return
    _first_planning = False
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:  # no fd 2: nothing to keep clean
        yield
        return
    try:
        caught = tempfile.TemporaryFile()  # noqa: SIM115 - the `with caught` below closes it
    except OSError:  # no writable temp dir: let the notice through
        os.close(saved)
        yield
        return
    with caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(keepends=True) if line.strip() != DELEGATE_NOTICE]
            if kept:
                os.write(2, b"".join(kept))

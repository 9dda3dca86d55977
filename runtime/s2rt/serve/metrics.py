"""Prometheus text exposition (format 0.0.4), written by hand: counters, gauges, histograms.

metrics = Metrics()
metrics.requests.inc(route="/v1/predict", method="POST", status="200")
metrics.latency.observe(0.004, route="/v1/predict")
text = metrics.render()
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = _key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(_key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            return [f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in sorted(self._values.items())]


class Gauge:
    """A value read when the metrics are rendered."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def samples(self) -> list[str]:
        return [f"{self.name} {_fmt_value(self.read())}"]


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., +Inf count, sum
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = _key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            series[bisect.bisect_left(self.buckets, value)] += 1
            series[-1] += value

    def samples(self) -> list[str]:
        lines = []
        with self._lock:
            for key, series in sorted(self._series.items()):
                cumulative = 0.0
                for bound, count in zip((*self.buckets, math.inf), series[:-1]):
                    cumulative += count
                    lines.append(f"{self.name}_bucket{_fmt_labels(key, (('le', _fmt_value(bound)),))} {_fmt_value(cumulative)}")
                lines.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(series[-1])}")
                lines.append(f"{self.name}_count{_fmt_labels(key)} {_fmt_value(cumulative)}")
        return lines


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter("s2rt_http_requests_total", "HTTP requests by route, method and status")
        self.latency = Histogram("s2rt_http_request_duration_seconds", "HTTP request latency by route")
        self.predictions = Counter("s2rt_predictions_total", "samples predicted")
        self.ingested = Counter("s2rt_samples_ingested_total", "labelled samples stored since start")
        self.cache_hits = Counter("s2rt_cache_hits_total", "Skip-Cache hits during fine-tuning")
        self.cache_misses = Counter("s2rt_cache_misses_total", "Skip-Cache misses (frozen forward runs) during fine-tuning")
        self.training_runs = Counter("s2rt_training_runs_total", "fine-tune jobs by outcome")
        self.training_seconds = Counter("s2rt_training_seconds_total", "time spent fine-tuning")
        self.gauges: list[Gauge] = []
        for unlabelled in (self.predictions, self.ingested, self.cache_hits, self.cache_misses, self.training_seconds):
            unlabelled.inc(0)

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help, read))

    def render(self) -> str:
        out = []
        metrics: list[Counter | Histogram | Gauge] = [self.requests, self.latency, self.predictions, self.ingested]
        metrics += [self.cache_hits, self.cache_misses, self.training_runs, self.training_seconds, *self.gauges]
        for metric in metrics:
            out.append(f"# HELP {metric.name} {metric.help}")
            out.append(f"# TYPE {metric.name} {metric.kind}")
            out.extend(metric.samples())
        return "\n".join(out) + "\n"

"""HAR stand-in: seglearn's smartwatch IMU recordings of 7 shoulder exercises.

140 recordings (10 subjects x 7 classes x left/right wrist), 6 axes (accelerometer
ax ay az in g, gyroscope wx wy wz in rad/s) at 50 Hz. Each recording is cut into windows
of 100 samples with 50% overlap; 8 statistics per axis give 48 features, ordered
axis-major (feature index = axis * 8 + statistic, see FEATURE_NAMES).

Pretraining sees subjects 1-5, the device subjects 6-10, whose sensor also drifts (a
seeded gain and offset per axis on the raw signal). Within each side, two ways to split:

- SplitBy.TIME (default): every recording is cut in time, the earlier windows to
  train/ft, the later ones to val/test, dropping the one window that straddles the cut,
  so no raw sample is in two splits. This is the device's situation: it fine-tunes on
  what it has collected from its wearer and is judged on what comes next.
- SplitBy.RECORDING: whole recordings, seeded and stratified (train/val by class, ft/test
  by subject and class, i.e. one wrist each way). Far harder: with 5 pretraining subjects
  an unseen recording (often the other wrist) scores only ~0.7-0.8 even in-domain.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from s2models.data.workload import Split, Workload

WINDOW = 100
STEP = 50
AXES = ("ax", "ay", "az", "wx", "wy", "wz")
FEATURES = ("mean", "std", "min", "max", "p25", "p75", "mean_abs_diff", "rms")
FEATURE_NAMES = tuple(f"{axis}_{stat}" for axis in AXES for stat in FEATURES)
PRETRAIN_SUBJECTS = (1, 2, 3, 4, 5)
DEVICE_SUBJECTS = (6, 7, 8, 9, 10)
SOURCE = (
    f"seglearn {importlib.metadata.version('seglearn')} watch_dataset.npy "
    "(smartwatch IMU, 7 shoulder exercises, 10 subjects, left and right wrist)"
)

# A split is planned as (recording id, window range) pairs before any feature is computed.
Plan = dict[str, list[tuple[int, slice]]]


class SplitBy(str, Enum):
    """How windows are assigned to train/val and to ft/test (see the module docstring)."""

    TIME = "time"
    RECORDING = "recording"


@dataclass(frozen=True)
class HarConfig:
    """How the HAR workload is split and shifted."""

    seed: int = 0  # seeds the drift and, with SplitBy.RECORDING, the splits
    split_by: SplitBy = SplitBy.TIME  # cut every recording in time, or split whole recordings
    val_fraction: float = 0.2  # share of the pretraining windows held out for early stopping
    test_fraction: float = 0.5  # share of the device windows held out as the shifted test
    drift: bool = True  # apply the per-axis sensor drift to the device recordings
    gain_spread: float = 0.4  # device gain per axis: 1 +- U(gain_spread / 2, gain_spread)
    offset_std: float = 0.3  # device offset per axis: N(0, offset_std) x that axis's signal std

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"HarConfig.{name}: expected a value in (0, 1), found {getattr(self, name)}")
        if self.split_by not in tuple(SplitBy):
            raise ValueError(f"HarConfig.split_by: expected one of {[m.value for m in SplitBy]}, found {self.split_by!r}")
        if not 0.0 <= self.gain_spread < 1.0:
            raise ValueError(f"HarConfig.gain_spread: expected [0, 1), found {self.gain_spread}")


@dataclass(frozen=True)
class Recordings:
    """The raw data set: one (n_i, 6) float64 signal per recording."""

    signals: list[np.ndarray]
    y: np.ndarray
    subject: np.ndarray
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Drift:
    """A sensor drift: signal * gain + offset, per axis."""

    gain: np.ndarray
    offset: np.ndarray

    def apply(self, signal: np.ndarray) -> np.ndarray:
        return signal * self.gain + self.offset


def read_recordings() -> Recordings:
    """Read seglearn's packaged recordings without importing seglearn (it needs pandas)."""
    spec = importlib.util.find_spec("seglearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("seglearn is not installed: `pip install seglearn` (only its data file is read)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "watch_dataset.npy"
    # Only pickle read in the project: seglearn ships its data so; host-side, build time only; we write plain npz.
    raw = np.load(path, allow_pickle=True).item()
    return Recordings(
        signals=[np.asarray(s, dtype=np.float64) for s in raw["X"]],
        y=np.asarray(raw["y"], dtype=np.int64),
        subject=np.asarray(raw["subject"], dtype=np.int64),
        labels=tuple(str(label) for label in raw["y_labels"]),
    )


def window_features(signal: np.ndarray) -> np.ndarray:
    """(n, 6) signal -> (windows, 48) float64 features, FEATURE_NAMES order."""
    windows = np.lib.stride_tricks.sliding_window_view(signal, WINDOW, axis=0)[::STEP]
    stats = (
        windows.mean(axis=-1),
        windows.std(axis=-1),
        windows.min(axis=-1),
        windows.max(axis=-1),
        np.percentile(windows, 25, axis=-1),
        np.percentile(windows, 75, axis=-1),
        np.abs(np.diff(windows, axis=-1)).mean(axis=-1),
        np.sqrt((windows**2).mean(axis=-1)),
    )
    return np.stack(stats, axis=-1).reshape(len(windows), len(FEATURE_NAMES))


def make_drift(recordings: Recordings, config: HarConfig) -> Drift:
    """Seeded per-axis gain and offset; offsets scale with each axis's pretraining std."""
    rng = np.random.default_rng([config.seed, 1])
    pretrain = np.isin(recordings.subject, PRETRAIN_SUBJECTS)
    axis_std = np.concatenate([s for s, keep in zip(recordings.signals, pretrain) if keep]).std(axis=0)
    n = len(AXES)
    sign = rng.choice([-1.0, 1.0], size=n)
    gain = 1.0 + sign * rng.uniform(config.gain_spread / 2, config.gain_spread, size=n)
    offset = rng.normal(0.0, config.offset_std, size=n) * axis_std
    return Drift(gain=gain, offset=offset)


def time_cut(n_windows: int, later_fraction: float) -> tuple[slice, slice]:
    """Earlier and later windows of one recording, without the window straddling the cut.

    Windows k and k+1 share 50 samples; dropping window cut-1 leaves a gap of a full window
    between the last earlier window (cut-2) and the first later one (cut).
    """
    cut = min(max(round(n_windows * (1.0 - later_fraction)), 2), n_windows - 1)
    return slice(0, cut - 1), slice(cut, n_windows)


def subject_ids(recordings: Recordings, subjects: tuple[int, ...]) -> np.ndarray:
    return np.flatnonzero(np.isin(recordings.subject, subjects))


def plan_by_time(recordings: Recordings, config: HarConfig) -> Plan:
    plan: Plan = {"train": [], "val": [], "ft": [], "test": []}
    for (early, late), subjects, fraction in (
        (("train", "val"), PRETRAIN_SUBJECTS, config.val_fraction),
        (("ft", "test"), DEVICE_SUBJECTS, config.test_fraction),
    ):
        for i in subject_ids(recordings, subjects):
            n_windows = (len(recordings.signals[i]) - WINDOW) // STEP + 1
            before, after = time_cut(n_windows, fraction)
            plan[early].append((int(i), before))
            plan[late].append((int(i), after))
    return plan


def plan_by_recording(recordings: Recordings, config: HarConfig) -> Plan:
    pretrain = subject_ids(recordings, PRETRAIN_SUBJECTS)
    device = subject_ids(recordings, DEVICE_SUBJECTS)
    n_classes = len(recordings.labels)
    train, val = train_test_split(pretrain, test_size=config.val_fraction, stratify=recordings.y[pretrain], random_state=config.seed)
    ft, test = train_test_split(
        device,
        test_size=config.test_fraction,
        stratify=recordings.subject[device] * n_classes + recordings.y[device],
        random_state=config.seed,
    )
    ids = {"train": train, "val": val, "ft": ft, "test": test}
    return {name: [(int(i), slice(None)) for i in np.sort(chosen)] for name, chosen in ids.items()}


PLANNERS = {SplitBy.TIME: plan_by_time, SplitBy.RECORDING: plan_by_recording}


def assemble(features: list[np.ndarray], recordings: Recordings, entries: list[tuple[int, slice]]) -> Split:
    """Concatenate the planned windows of each recording into one split."""
    parts = [features[i][windows] for i, windows in entries]
    y = [np.full(len(part), recordings.y[i], dtype=np.int64) for part, (i, _) in zip(parts, entries)]
    group = np.concatenate([np.full(len(part), i, dtype=np.int64) for part, (i, _) in zip(parts, entries)])
    sources = {"subject": recordings.subject[group], "recording": group}
    return Split(np.concatenate(parts).astype(np.float32), np.concatenate(y), group, sources)


def load(config: HarConfig = HarConfig()) -> Workload:
    """The HAR workload: windowed features of every split, the device recordings drifted."""
    recordings = read_recordings()
    drift = make_drift(recordings, config) if config.drift else None
    device = np.isin(recordings.subject, DEVICE_SUBJECTS)
    features = [
        window_features(drift.apply(signal) if drift is not None and on_device else signal)
        for signal, on_device in zip(recordings.signals, device)
    ]
    plan = PLANNERS[SplitBy(config.split_by)](recordings, config)
    described = asdict(config) | {"split_by": SplitBy(config.split_by).value}
    if drift is not None:
        described["drift_gain"] = [round(float(g), 4) for g in drift.gain]
        described["drift_offset"] = [round(float(o), 4) for o in drift.offset]
    splits = {name: assemble(features, recordings, entries) for name, entries in plan.items()}
    return Workload(
        name="har",
        source=SOURCE,
        labels=recordings.labels,
        train=splits["train"],
        val=splits["val"],
        ft=splits["ft"],
        test=splits["test"],
        config=described,
    )

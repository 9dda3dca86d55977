"""Fan vibration: synthetic accelerometer windows of healthy and damaged cooling fans.

The paper's own kind of data (arXiv 2410.21073 fine-tunes on fan vibrations), made
from a fixed seed so it needs no download. Each fan unit has one condition:

- healthy: blade-pass tones (n_blades x rotation speed and its harmonics), a faint 1x;
- imbalance (a chipped blade): strong 1x and 2x rotation tones on top;
- bearing (a worn bearing): a high-frequency resonance amplitude-modulated at the
  bearing defect frequency (about 3.1-3.6 x rotation), plus its low-order tone.

Damage severity varies by unit, so a mild case sits close to a healthy one. A window is
WINDOW samples at FS Hz; its features are log(1 + |rfft|) of bins 1..FEATURES (Hann
window), so the model sees a spectrum, as a vibration monitor would.

Pretraining sees one set of units recorded in a quiet lab. The device sees other units
in a noisy room (broadband noise and the room's own machinery tones at fixed
frequencies) through a sensor whose gain has drifted. Each unit's recording is cut in
time: earlier windows to train (resp. ft), later ones to val (resp. test).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from s2models.data.workload import Split, Workload

FS = 1000.0  # Hz
WINDOW = 256  # samples per window
FEATURES = 128  # spectrum bins 1..128 (3.9 Hz each, up to 500 Hz)
N_BLADES = 7
LABELS = ("healthy", "imbalance", "bearing")
SOURCE = f"synthetic fan vibration (s2models.data.fan, {FS:.0f} Hz, {WINDOW}-sample windows, log-magnitude spectrum)"


@dataclass(frozen=True)
class FanConfig:
    """How the fan workload is generated, split and shifted."""

    seed: int = 0  # seeds every unit, window and the room
    pretrain_units: int = 10  # fan units per class recorded in the lab
    device_units: int = 5  # other fan units per class, recorded on the device
    pretrain_windows: int = 60  # windows per pretraining unit
    device_windows: int = 120  # windows per device unit
    val_fraction: float = 0.2  # later share of each pretraining recording held out for early stopping
    test_fraction: float = 0.5  # later share of each device recording held out as the shifted test
    lab_noise: float = 0.15  # std of the sensor noise in the lab
    room_noise: float = 0.25  # std of the room's broadband noise on the device
    room_tones: tuple[float, ...] = (50.0, 100.0, 150.0, 300.0)  # Hz, the room's machinery
    room_tone_amplitude: float = 0.6
    sensor_gain: float = 0.45  # device sensor gain relative to the lab's

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"FanConfig.{name}: expected a value in (0, 1), found {getattr(self, name)}")
        for name in ("pretrain_units", "device_units", "pretrain_windows", "device_windows"):
            if getattr(self, name) < 2:
                raise ValueError(f"FanConfig.{name}: expected at least 2, found {getattr(self, name)}")
        if not self.sensor_gain > 0.0:
            raise ValueError(f"FanConfig.sensor_gain: expected a gain > 0, found {self.sensor_gain}")


@dataclass(frozen=True)
class Unit:
    """One fan: its condition, speed, tone amplitudes and damage severity."""

    condition: int  # index into LABELS
    rotation_hz: float
    blade_amplitude: float
    severity: float  # 0 for healthy units
    defect_ratio: float  # bearing defect frequency / rotation frequency
    resonance_hz: float  # the bearing's excited structural resonance


def make_unit(condition: int, rng: np.random.Generator) -> Unit:
    return Unit(
        condition=condition,
        rotation_hz=rng.uniform(18.0, 30.0),
        blade_amplitude=rng.uniform(0.6, 1.2),
        severity=0.0 if condition == 0 else rng.uniform(0.1, 1.0),
        defect_ratio=rng.uniform(3.1, 3.6),
        resonance_hz=rng.uniform(330.0, 430.0),
    )


def vibration(unit: Unit, n_windows: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(n_windows, WINDOW) clean-room signals of one unit; speed wanders a little per window."""
    t = np.arange(WINDOW) / FS
    speed = unit.rotation_hz * (1.0 + 0.02 * rng.standard_normal(n_windows))[:, None]
    signal = np.zeros((n_windows, WINDOW))

    def tone(freq: np.ndarray | float, amplitude: np.ndarray | float) -> np.ndarray:
        phase = rng.uniform(0.0, 2.0 * np.pi, size=(n_windows, 1))
        return amplitude * np.sin(2.0 * np.pi * freq * t + phase)

    for k in (1, 2, 3):
        signal += tone(k * N_BLADES * speed, unit.blade_amplitude / k * rng.uniform(0.8, 1.2, (n_windows, 1)))
    signal += tone(speed, 0.08)
    if LABELS[unit.condition] == "imbalance":
        signal += tone(speed, 0.9 * unit.severity) + tone(2.0 * speed, 0.35 * unit.severity)
    elif LABELS[unit.condition] == "bearing":
        defect = unit.defect_ratio * speed
        envelope = 1.0 + np.sin(2.0 * np.pi * defect * t + rng.uniform(0.0, 2.0 * np.pi, (n_windows, 1)))
        signal += tone(unit.resonance_hz, 0.35 * unit.severity) * envelope + tone(defect, 0.2 * unit.severity)
    return signal + noise * rng.standard_normal(signal.shape)


def room(n_windows: int, config: FanConfig, rng: np.random.Generator) -> np.ndarray:
    """The device room's own vibration: broadband noise plus fixed machinery tones."""
    t = np.arange(WINDOW) / FS
    out = config.room_noise * rng.standard_normal((n_windows, WINDOW))
    for freq in config.room_tones:
        amplitude = config.room_tone_amplitude * rng.uniform(0.5, 1.0, (n_windows, 1))
        out += amplitude * np.sin(2.0 * np.pi * freq * t + rng.uniform(0.0, 2.0 * np.pi, (n_windows, 1)))
    return out


def spectrum_features(signals: np.ndarray) -> np.ndarray:
    """(n, WINDOW) signals -> (n, FEATURES) float64 log(1 + |rfft|) of bins 1..FEATURES, Hann window."""
    magnitude = np.abs(np.fft.rfft(signals * np.hanning(WINDOW), axis=1))
    return np.log1p(magnitude[:, 1 : FEATURES + 1])


def record(
    units: list[Unit], n_windows: int, later_fraction: float, shifted: bool, config: FanConfig, rng: np.random.Generator
) -> tuple[Split, Split]:
    """Every unit's windows, each unit's recording cut in time into (earlier, later) splits."""
    cut = min(max(round(n_windows * (1.0 - later_fraction)), 1), n_windows - 1)
    earlier: list[Split] = []
    later: list[Split] = []
    for unit_id, unit in enumerate(units):
        signal = vibration(unit, n_windows, config.lab_noise, rng)
        if shifted:
            signal = config.sensor_gain * (signal + room(n_windows, config, rng))
        x = spectrum_features(signal).astype(np.float32)
        for side, rows in ((earlier, slice(0, cut)), (later, slice(cut, n_windows))):
            n = len(x[rows])
            side.append(Split(x[rows], np.full(n, unit.condition, dtype=np.int64), np.full(n, unit_id, dtype=np.int64)))
    return concat(earlier), concat(later)


def concat(parts: list[Split]) -> Split:
    x, y, group = (np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "y", "group"))
    return Split(x, y, group)


def load(config: FanConfig = FanConfig()) -> Workload:
    """The fan workload: lab units for pretraining, other units in a noisy room on the device."""
    rng = np.random.default_rng([config.seed, 7])
    pretrain = [make_unit(c, rng) for _ in range(config.pretrain_units) for c in range(len(LABELS))]
    device = [make_unit(c, rng) for _ in range(config.device_units) for c in range(len(LABELS))]
    train, val = record(pretrain, config.pretrain_windows, config.val_fraction, False, config, rng)
    ft, test = record(device, config.device_windows, config.test_fraction, True, config, rng)
    # device units get group ids after the pretraining ones, so no id is shared
    offset = len(pretrain)
    ft = Split(ft.x, ft.y, ft.group + offset)
    test = Split(test.x, test.y, test.group + offset)
    described = asdict(config) | {"room_tones": list(config.room_tones)}  # as models.json reads it back
    return Workload(name="fan", source=SOURCE, labels=LABELS, train=train, val=val, ft=ft, test=test, config=described)

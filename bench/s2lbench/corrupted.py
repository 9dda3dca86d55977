"""The corruption-robustness workloads: a reference CNN's upright device images, corrupted.

Per corruption: the fine-tune split has every image at one severity drawn at random
(seeded); the held-out test split has every image at each of the three severities. The
learning rates come from a mix: every fine-tune image under a corruption and a severity
drawn at random, split 80/20 for validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2lbench.workloads import Data, Workload, index, load, stratified_take

SOURCES = {"digits_cnn": "digits", "mnist_cnn": "mnist"}


@dataclass(frozen=True)
class CorruptedSet:
    corruption: str
    family: str
    ft: Data  # one severity per image
    test: Data  # every test image at severity 1, then 2, then 3
    severity: np.ndarray  # (len(test),) the severity of each test row


def _images(cnn: str, max_ft: int | None, max_test: int | None, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from s2models.data.corrupt import upright_device_images

    images, labels = upright_device_images(SOURCES[cnn])
    for split, cap in (("ft", max_ft), ("test", max_test)):
        if cap is not None and cap < len(labels[split]):
            keep = stratified_take(labels[split], cap, seed)
            images[split], labels[split] = images[split][keep], labels[split][keep]
    return images, labels


def _as_input(images: np.ndarray, cnn: str) -> np.ndarray:
    shape = tuple(index()[cnn]["input"]["shape"][1:])
    return np.ascontiguousarray(images.reshape(len(images), *shape), dtype=np.float32)


def build(cnn: str, corruptions: list[str], max_ft: int | None, max_test: int | None, seed: int = 0) -> tuple[Workload, list[CorruptedSet]]:
    """(the tuning mix as a Workload, one CorruptedSet per corruption) for reference CNN `cnn`."""
    from s2models.data.corrupt import SEVERITIES, corrupt, family, mixed_severity, seed_of

    if cnn not in SOURCES:
        raise KeyError(f"corrupted workload: expected a CNN in {', '.join(SOURCES)}, found {cnn!r}")
    images, labels = _images(cnn, max_ft, max_test, seed)
    sets = []
    for name in corruptions:
        ft, _ = mixed_severity(images["ft"], name, "ft", seed)
        tests = [corrupt(images["test"], name, s, seed_of(name, s, "test", seed)) for s in SEVERITIES]
        test = Data(_as_input(np.concatenate(tests), cnn), np.tile(labels["test"], len(SEVERITIES)))
        severity = np.repeat(np.array(SEVERITIES), len(labels["test"]))
        sets.append(CorruptedSet(name, family(name), Data(_as_input(ft, cnn), labels["ft"]), test, severity))
    which = np.random.default_rng([seed, 29]).integers(0, len(sets), size=len(labels["ft"]))
    mix = np.stack([sets[k].ft.x[i] for i, k in enumerate(which)])
    reference = load(cnn)
    tuning = Workload(f"{cnn}-corrupted", reference.onnx, Data(mix, labels["ft"]), sets[0].test, reference.classes, reference.kind)
    return tuning, sets

"""The ridge round's kappa and lambda, judged on validation samples only (never the test split).

    .venv-fleet/bin/python bench/ridge_validation.py --json bench/results/ridge_validation.json

HAR's fine-tune samples split as the daemon splits them (`s2rt.serve.gate.held_out`: about
20 % held out by content hash). Per kappa: the lambda that `s2fleet.ridge.choose_lambda`
picks from the held-out sums (as the fleet server does), its held-out squared error, and
the held-out accuracy of the fit at each candidate lambda. The sums add up exactly over
devices, so the figures hold for any number of devices and any split of the samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "converter"), str(ROOT / "fleet"), str(ROOT / "bench")]

from fleet_bench import DATA, make_bundle  # noqa: E402
from s2fleet import ridge  # noqa: E402
from s2fleet.simulate import load_data  # noqa: E402
from s2rt.data import Samples  # noqa: E402
from s2rt.serve.gate import VAL_FRACTION, held_out  # noqa: E402
from s2rt.session import Model  # noqa: E402

KAPPAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Model.open(make_bundle(Path(tmp)))
    data = load_data(DATA / "har_ft.npz", DATA / "har_test.npz", model)
    val = held_out(data.x, VAL_FRACTION)
    taps, frozen = model.frozen.run(data.x[val])
    x_val, width = np.asarray(taps, np.float64), sum(model.head.tap_sizes)  # type: ignore[attr-defined]
    rows = []
    for kappa in KAPPAS:
        train, held = ridge.split_statistics(model, Samples(data.x, data.y), kappa)
        choice = ridge.choose_lambda([train], [held], width)
        accuracy = {}
        for lam in ridge.LAMBDAS:
            dw = ridge.fit([train], width, lam)
            accuracy[f"{lam:g}"] = float(np.mean(np.argmax(frozen + x_val @ dw.T, axis=1) == data.y[val]))
        rows.append({"kappa": kappa, **choice.report(), "held_out_accuracy": accuracy})
        print(f"kappa {kappa:g}: lambda {choice.lam:g} chosen, held-out accuracy {accuracy[f'{choice.lam:g}']:.4f}")
    result = {"train_examples": int((~val).sum()), "held_out_examples": int(val.sum()), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

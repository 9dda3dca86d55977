"""The CNN benchmark's markdown and its plot (accuracy against update FLOPs), from cnn.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s2lbench.report import selection

FT_ALL = "torch-ft-all"
SKIP2 = "s2rt-skip2lora"
PEFT = ("peft-lora-all", "peft-dora-all", "lora-c-all")
KIND = {"digits_cnn": "ResNet-style", "mnist_cnn": "MobileNet-style, depthwise-separable"}
REPRODUCE = "make bench-cnn  # or: .venv/bin/python bench/run.py cnn"


def _kb(n: float) -> str:
    return f"{n / 1024:,.0f}"


def _rss(rss: dict[str, Any], name: str) -> str:
    r = rss.get(name)
    if not r:
        return ""
    return "error" if "error" in r else f"{r['peak_mb']:.0f} (+{r['peak_mb'] - r['baseline_mb']:.0f})"


def _grid(tuning: dict[str, Any]) -> str:
    rates = [g["lr"] for g in tuning.get("grid", [])]
    edge = " (best on an edge)" if tuning.get("best_at_edge") else ""
    return f"{tuning['lr']:g} of {', '.join(f'{r:g}' for r in rates)}{edge}"


def cost_table(w: dict[str, Any], labels: dict[str, str]) -> list[str]:
    costs, methods = w["costs"], w["methods"]
    ft = costs.get(FT_ALL)
    lines = [
        "| method | trainable params | lr (of the grid tried) | shifted-test acc | fine-tune ms | update MFLOPs / sample | FLOPs vs FT-All "
        "| memory KB: weights / grads / optimizer / activations / cache = total | memory vs FT-All | peak RSS MB (+run) |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|",
        f"| frozen model | 0 | | {w['frozen_accuracy']:.3f} | | | | | | |",
    ]
    for name, c in costs.items():
        m, mem = methods[name], c["memory_bytes"]
        parts = " / ".join(_kb(mem.get(k, 0)) for k in ("parameters", "gradients", "optimizer", "activations", "cache"))
        flops_ratio = f"{c['flops_per_sample'] / ft['flops_per_sample']:.2f}" if ft else ""
        mem_ratio = f"{mem['total'] / ft['memory_bytes']['total']:.2f}" if ft else ""
        acc = f"{m['accuracy_mean']:.3f} ± {m['accuracy_std']:.3f}"
        lines.append(
            f"| {labels.get(name, name)} | {m['trainable']:,} | {_grid(w['tuning'][name])} | {acc} "
            f"| {m['seconds_median'] * 1e3:,.0f} | {c['flops_per_sample'] / 1e6:.3f} | {flops_ratio} | {parts} = {_kb(mem['total'])} "
            f"| {mem_ratio} | {_rss(w.get('rss', {}), name)} |"
        )
    notes = sorted({m["note"] for m in methods.values() if m.get("note")})
    return lines + [""] + [f"- {n}." for n in notes] + [f"- not run: {k}: {v}" for k, v in w.get("failed", {}).items()]


def summary_table(result: dict[str, Any]) -> list[str]:
    """One row per (CNN, method): what the README shows."""
    lines = [
        "| CNN | method | trainable params | shifted-test acc | corrupted-test acc (mean of corruptions) | update MFLOPs / sample "
        "| training memory KB (vs FT-All) | peak RSS MB | fine-tune speed-up vs FT-All |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, w in result["reference"].items():
        means = _corruption_means(result["corruption"].get(name, {}))
        ft = w["costs"].get(FT_ALL)
        frozen = _frozen_mean(result["corruption"].get(name, {}))
        lines.append(f"| {name} | frozen model | 0 | {w['frozen_accuracy']:.3f} | {'' if frozen is None else f'{frozen:.3f}'} | | | | |")
        for m, c in w["costs"].items():
            total = c["memory_bytes"]["total"]
            ratio = f" ({total / ft['memory_bytes']['total']:.2f})" if ft else ""
            corrupted = f"{means[m]:.3f}" if m in means else ""
            rss = w.get("rss", {}).get(m, {})
            lines.append(
                f"| {name} | {result['labels'].get(m, m)} | {w['methods'][m]['trainable']:,} | {w['methods'][m]['accuracy_mean']:.3f} "
                f"| {corrupted} | {c['flops_per_sample'] / 1e6:.2f} | {_kb(total)}{ratio} | {rss.get('peak_mb', float('nan')):.0f} "
                f"| {w['methods'][m].get(f'speedup_vs_{FT_ALL}', float('nan')):.1f}× |"
            )
    return lines


def depthwise_table(result: dict[str, Any]) -> list[str]:
    ref = result["reference"]
    names = [n for n in ("digits_cnn", "mnist_cnn") if n in ref and FT_ALL in ref[n]["costs"]]
    if len(names) < 2:
        return []
    lines = [
        "| method | "
        + " | ".join(f"memory / FT-All, {n} ({KIND[n]})" for n in names)
        + " | activations / FT-All's, "
        + " / ".join(names)
        + " |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for name in (*PEFT, "galore-all", SKIP2):
        if not all(name in ref[n]["costs"] for n in names):
            continue
        mem = [ref[n]["costs"][name]["memory_bytes"] for n in names]
        ft = [ref[n]["costs"][FT_ALL]["memory_bytes"] for n in names]
        ratios = " | ".join(f"{m['total'] / f['total']:.2f}" for m, f in zip(mem, ft))
        acts = " / ".join(f"{m['activations'] / f['activations']:.2f}" for m, f in zip(mem, ft))
        lines.append(f"| {result['labels'].get(name, name)} | {ratios} | {acts} |")
    return lines


def corruption_table(c: dict[str, Any], labels: dict[str, str]) -> list[str]:
    methods = [m for m in c["tuning"]]
    lines = [
        "| corruption | family | frozen, severity 1 / 2 / 3 | frozen | " + " | ".join(labels.get(m, m) for m in methods) + " |",
        "|---|---|---|---:|" + "---:|" * len(methods),
    ]
    sums: dict[str, list[float]] = {m: [] for m in ["frozen", *methods]}
    for name, row in c["corruptions"].items():
        f = row["frozen"]
        sev = " / ".join(f"{f[s]:.2f}" for s in ("1", "2", "3") if s in f)
        best = max((row[m] for m in methods if m in row), default=0.0)
        cells = [f"**{row[m]:.3f}**" if row.get(m) == best else f"{row[m]:.3f}" if m in row else "" for m in methods]
        lines.append(f"| {name} | {row['family']} | {sev} | {f['mean']:.3f} | " + " | ".join(cells) + " |")
        sums["frozen"].append(f["mean"])
        for m in methods:
            if m in row:
                sums[m].append(row[m])
    mean = {k: sum(v) / len(v) for k, v in sums.items() if v}
    lines.append("| **mean** | | | " + f"{mean['frozen']:.3f} | " + " | ".join(f"{mean.get(m, float('nan')):.3f}" for m in methods) + " |")
    return lines


def sweep_table(c: dict[str, Any]) -> list[str]:
    rows = c.get("sweep") or []
    if not rows:
        return []
    by = {(r["rank"], r["held"]): r for r in rows}
    lines = ["| rank r | alpha (alpha/r held) | mean acc | alpha (alpha held) | mean acc |", "|---:|---:|---:|---:|---:|"]
    for rank in sorted({r["rank"] for r in rows}):
        a, b = by[(rank, "alpha/r")], by[(rank, "alpha")]
        lines.append(f"| {rank} | {a['alpha']:g} | {a['mean']:.3f} | {b['alpha']:g} | {b['mean']:.3f} |")
    return lines


def markdown(result: dict[str, Any], plot_name: str | None = "cnn.png") -> str:
    v, labels, cfg = result["versions"], result["labels"], result["config"]
    lines = [
        "# s2l CNN benchmark: the seed papers' peers, update FLOPs, memory, corrupted inputs",
        "",
        f"{result['created']}; profile `{result['profile']}` (one thread everywhere); numpy {v['numpy']}, onnxruntime {v['onnxruntime']}, "
        f"torch {v['torch']}, peft {v['peft']}, albumentations {v['albumentations']}. {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
        f"Adam, every method's learning rate from its grid {selection(cfg)} (the grid grows while its best point is on an edge); "
        f"conv taps averaged to {cfg['tap_pool']}x{cfg['tap_pool']} for Skip2-LoRA; rank 4, alpha 8 for every adapter.",
        "",
        "Update FLOPs per sample: torch methods counted by `torch.utils.flop_counter.FlopCounterMode` over one training step "
        "(matmuls and convolutions, forward and backward); Skip2-LoRA analytically (head GEMMs per cached step, plus the frozen "
        "forward once per sample, spread over the epochs). Memory: weights, gradients, optimizer state and the activations "
        "autograd saves at batch 32 (s2rt: analytic, plus its Skip-Cache); peak RSS: one run in a fresh process.",
        "",
        f"Reproduce: `{REPRODUCE}`.",
        "",
    ]
    if plot_name:
        lines += [f"![accuracy vs update FLOPs]({plot_name})", ""]
    lines += ["## Summary", "", *summary_table(result), ""]
    for name, w in result["reference"].items():
        lines += [f"## {name} ({KIND.get(name, '')}): {w['n_ft']} fine-tune / {w['n_test']} shifted-test samples, {w['epochs']} epochs", ""]
        lines += [*cost_table(w, labels), ""]
    dw = depthwise_table(result)
    if dw:
        lines += ["## Depthwise-separable nets: training memory relative to FT-All", "", *dw, ""]
    for name, c in result["corruption"].items():
        lines += [
            f"## Corrupted inputs, {name}: accuracy per corruption (fine-tune on {c['n_ft']} corrupted images, "
            f"test on {c['n_test_per_severity']} held-out images x 3 severities)",
            "",
            *corruption_table(c, labels),
            "",
        ]
        sw = sweep_table(c)
        if sw:
            lines += [f"Skip2-LoRA, mean over the corruptions, rank and alpha ({name}):", "", *sw, ""]
    return "\n".join(lines).rstrip() + "\n"


MARKERS = {"s2rt-skip2lora": ("tab:red", "*"), "peft-lora-all": ("tab:green", "s"), "peft-dora-all": ("tab:olive", "D"),
           "lora-c-all": ("tab:purple", "^"), "galore-all": ("tab:orange", "v"), FT_ALL: ("tab:blue", "o")}  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy against update FLOPs per sample: shifted test and corruption mean, a column per CNN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    names = list(result["reference"])
    fig, axes = plt.subplots(2, len(names), figsize=(5.0 * len(names), 7.4), squeeze=False)
    handles: dict[str, Any] = {}
    for col, name in enumerate(names):
        w = result["reference"][name]
        c = result["corruption"].get(name, {})
        panels = [
            ("shifted test", {m: w["methods"][m]["accuracy_mean"] for m in w["costs"]}, w["frozen_accuracy"]),
            ("corrupted test, mean of corruptions", _corruption_means(c), _frozen_mean(c)),
        ]
        for row, (title, accs, frozen) in enumerate(panels):
            ax = axes[row][col]
            for m, acc in accs.items():
                if m not in w["costs"]:
                    continue
                color, marker = MARKERS.get(m, ("black", "x"))
                (line,) = ax.plot(w["costs"][m]["flops_per_sample"], acc, marker, color=color, ms=12 if marker == "*" else 7, ls="")
                handles[result["labels"].get(m, m)] = line
            if frozen is not None:
                handles["frozen model"] = ax.axhline(frozen, color="gray", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(EngFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{name} ({KIND.get(name, '')}):\n{title}", fontsize=9)
            ax.set_xlabel("update FLOPs per sample (log)", fontsize=8)
            ax.set_ylabel("accuracy", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _corruption_means(c: dict[str, Any]) -> dict[str, float]:
    rows = list(c.get("corruptions", {}).values())
    return {m: sum(r[m] for r in rows) / len(rows) for m in c.get("tuning", {}) if rows and all(m in r for r in rows)}


def _frozen_mean(c: dict[str, Any]) -> float | None:
    rows = list(c.get("corruptions", {}).values())
    return sum(r["frozen"]["mean"] for r in rows) / len(rows) if rows else None

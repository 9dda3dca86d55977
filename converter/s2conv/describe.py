"""`s2conv inspect`: what a bundle holds, as a JSON-ready dict or as text."""

from __future__ import annotations

import json
from typing import Any

from s2rt.bundle.a_init import a_init_rule
from s2rt.bundle.model import AInitRule, Bundle

from s2conv.quantize import INT8_SCHEMES

# int8 bundles written before the scheme was recorded: 8-bit weights on both backends.
UNRECORDED_SCHEME = "a8w8"
UNRECORDED_NOTE = {
    "onnx": "not recorded (made before 7-bit weights): on x86 without VNNI its int16 pair sums can saturate; "
    "convert again to get a8w7",
    "tflite": "not recorded (made before the scheme was recorded)",
}


def describe_bundle(bundle: Bundle) -> dict[str, Any]:
    """Everything `inspect` shows, as plain JSON-serialisable data."""
    head = bundle.head
    provenance = _provenance(bundle)
    return {
        "format_version": "{}.{}".format(*bundle.format_version),
        "digest": bundle.digest,
        "signature": {"signed": bool(bundle.signature), "signer_key_id": bundle.signer_key_id or None},
        "provenance": provenance,
        "input": {
            "name": bundle.input.name,
            "shape": list(bundle.input.shape),
            "dtype": bundle.input.dtype.name.lower(),
            "normalised": bundle.input.mean is not None,
        },
        "labels": list(bundle.labels),
        "output_activation": bundle.output_activation.name.lower(),
        "segments": [
            {
                "backend": s.backend.name.lower(),
                "size_bytes": len(s.model),
                "input": s.input_name,
                "logits_output": s.logits_output,
                "int8": _int8(provenance["options"], s.backend.name.lower()),
            }
            for s in bundle.segments
        ],
        "taps": [
            {
                "name": t.name,
                "source": t.source,
                "layer": t.layer,
                "shape": list(t.shape),
                "size": t.size,
                "reduction": t.reduction.name.lower(),
            }
            for t in bundle.taps
        ],
        "tap_width": bundle.tap_width,
        "head": {
            "rank": head.rank,
            "alpha": head.alpha,
            "scaling": head.scaling,
            "num_outputs": head.num_outputs,
            "loss": head.loss.name.lower(),
            "seed": head.seed,
            "a_init": a_init_rule(head, bundle.taps).name.lower(),
            "trainable_parameters": head.num_parameters,
            "defaults": {
                "optimizer": head.defaults.optimizer.name.lower(),
                "learning_rate": head.defaults.learning_rate,
                "epochs": head.defaults.epochs,
                "batch_size": head.defaults.batch_size,
            },
        },
        "cache": {
            "record_size": bundle.cache.record_size,
            "alignment": bundle.cache.alignment,
            "fields": [
                {
                    "kind": f.kind.name.lower(),
                    "name": f.name,
                    "offset": f.offset,
                    "shape": list(f.shape),
                    "dtype": f.dtype.name.lower(),
                    "nbytes": f.nbytes,
                }
                for f in bundle.cache.fields
            ],
        },
    }


def _provenance(bundle: Bundle) -> dict[str, Any]:
    p = bundle.provenance
    try:
        options = json.loads(p.options_json or "{}")
    except json.JSONDecodeError:
        options = p.options_json
    return {
        "source_name": p.source_name,
        "source_sha256": p.source_sha256,
        "producer": p.producer,
        "producer_version": p.producer_version,
        "created_utc": p.created_utc,
        "options": options,
    }


def _int8(options: Any, backend: str) -> dict[str, str] | None:
    """The segment's int8 scheme from the bundle's creation options, or None for a float segment."""
    if not isinstance(options, dict) or options.get("quantize") != "int8":
        return None
    recorded = options.get("int8_scheme")
    name = recorded.get(backend) if isinstance(recorded, dict) else None
    if not isinstance(name, str):
        return {"scheme": UNRECORDED_SCHEME, "meaning": INT8_SCHEMES[UNRECORDED_SCHEME], "note": UNRECORDED_NOTE[backend]}
    return {"scheme": name, "meaning": INT8_SCHEMES.get(name, "unknown to this s2conv")}


def render_text(d: dict[str, Any]) -> str:
    """The human-readable view of `describe_bundle`'s result."""
    p, i, h = d["provenance"], d["input"], d["head"]
    defaults = h["defaults"]
    lines = [
        f"format      {d['format_version']}",
        f"digest      {d['digest'] or '(not written yet)'}",
        f"signature   {_signature(d['signature'])}",
        f"source      {p['source_name']}  sha256 {p['source_sha256']}",
        f"producer    {p['producer']} {p['producer_version']}, {p['created_utc']}",
        f"options     {json.dumps(p['options'], sort_keys=True)}",
        f"input       {i['name']}  {i['dtype']} {_shape(i['shape'])}" + ("  (normalised)" if i["normalised"] else ""),
        f"labels      {', '.join(d['labels'])}",
        f"output      {_activation(d['output_activation'])}",
        "segments    " + "; ".join(f"{s['backend']} {s['size_bytes']:,} bytes" for s in d["segments"]),
        *[f"int8        {s['backend']}: {_scheme(s['int8'])}" for s in d["segments"] if s.get("int8")],
        f"taps        {len(d['taps'])}, fused width {d['tap_width']}",
        *_table(
            ["name", "source", "layer", "shape", "reduction"],
            [[t["name"], t["source"], t["layer"] or "-", _shape(t["shape"]), t["reduction"].replace("_", " ")] for t in d["taps"]],
        ),
        f"head        rank {h['rank']}, alpha {h['alpha']:g} (scaling {h['scaling']:g}), {h['num_outputs']} outputs, "
        f"{h['trainable_parameters']:,} trainable parameters, loss {h['loss']}, seed {h['seed']}, initial A {_a_init(h['a_init'])}",
        f"defaults    {defaults['optimizer']}, learning rate {defaults['learning_rate']:g}, "
        f"{defaults['epochs']} epochs, batch size {defaults['batch_size']}",
        f"cache       record {d['cache']['record_size']:,} bytes, alignment {d['cache']['alignment']}",
        *_table(
            ["offset", "bytes", "kind", "name", "dtype", "shape"],
            [[str(f["offset"]), str(f["nbytes"]), f["kind"], f["name"], f["dtype"], _shape(f["shape"])] for f in d["cache"]["fields"]],
        ),
    ]
    return "\n".join(lines)


def _scheme(int8: dict[str, str]) -> str:
    text = f"{int8['scheme']} ({int8['meaning']})"
    return f"{text}; {int8['note']}" if "note" in int8 else text


def _signature(s: dict[str, Any]) -> str:
    if not s["signed"]:
        return "none (unsigned)"
    return f"ed25519, signer key id {s['signer_key_id']} (`s2rt verify --trusted-key KEY.pub` checks it)"


def _a_init(rule: str) -> str:
    return "stored" if rule == AInitRule.STORED.name.lower() else f"regenerated from the seed ({rule})"


def _activation(name: str) -> str:
    return "logits (no activation)" if name == "none" else f"logits, then {name} (cut from the source model)"


def _shape(shape: list[int]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return ["            " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows)]

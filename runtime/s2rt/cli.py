"""`s2rt`: fine-tune, evaluate and run an s2l bundle on the device."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np

from s2rt import __version__
from s2rt.backend import BACKENDS
from s2rt.bundle import Optimizer
from s2rt.data import load_samples
from s2rt.errors import KeyFileError, S2LError
from s2rt.methods import DEFAULT_METHOD, METHODS
from s2rt.progress import make_progress
from s2rt.serve.commands import add_client, add_serve
from s2rt.session import Model
from s2rt.trainer import LR_SCHEDULES, TrainConfig
from s2rt.trust import ENV_VAR, open_trusted, signer_of, trusted_keys_from

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except S2LError as e:
        if args.debug:
            raise
        print(f"s2rt: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("s2rt: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2rt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"s2rt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _add_train(sub: Subparsers) -> None:
    train = sub.add_parser("train", help="fine-tune the adapters on labelled samples")
    _common(train, data_help="labelled samples (.npz with x and y, or .csv)")
    train.add_argument("-o", "--output", required=True, help="where to write the trained adapters (.npz)")
    train.add_argument("--init", metavar="ADAPTERS", help="continue from these adapters instead of the bundle's initial head")
    train.add_argument("--epochs", type=int, help="passes over the training samples (default: the bundle's)")
    train.add_argument("--batch-size", type=int, help="samples per step (default: the bundle's)")
    train.add_argument("--lr", type=float, help="learning rate (default: the bundle's)")
    train.add_argument("--optimizer", choices=[o.name.lower() for o in Optimizer], help="default: the bundle's")
    train.add_argument("--seed", type=int, default=0, help="seed for the validation split and shuffling (default: 0)")
    train.add_argument("--val-fraction", type=float, default=0.0, help="share of samples held out for early stopping (default: 0)")
    train.add_argument("--patience", type=int, default=0, help="early stop after this many epochs without validation gain; 0 = off")
    train.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default="constant",
        help="cosine: the learning rate decays to 0 over the epochs (default: constant)",
    )
    train.add_argument(
        "--method",
        choices=list(METHODS),
        default=DEFAULT_METHOD,
        help="what to train, for comparison: "
        + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
        + f" (default: {DEFAULT_METHOD})",
    )
    train.add_argument("--no-cache", action="store_true", help="run the frozen forward every epoch (no Skip-Cache), for comparison")
    train.add_argument("--cache-file", help="keep the Skip-Cache in this memory-mapped file (default: in memory)")
    train.add_argument(
        "--cache-capacity", type=int, help="most samples the cache holds; the rest run the frozen forward every epoch (default: all)"
    )
    train.add_argument(
        "--max-cache-mb",
        type=float,
        metavar="MB",
        help="memory budget of the cache in MiB (2^20 bytes); it holds as many samples as fit, the first ones "
        "seen, and the rest run the frozen forward every epoch (default: no budget)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(run=_train)


def _add_eval(sub: Subparsers) -> None:
    evaluate = sub.add_parser("eval", help="accuracy on labelled samples")
    _common(evaluate, data_help="labelled samples (.npz with x and y, or .csv)")
    evaluate.add_argument("--adapters", help="trained adapters (.npz); without them the bundle's frozen model is evaluated")
    evaluate.set_defaults(run=_eval)


def _add_predict(sub: Subparsers) -> None:
    predict = sub.add_parser("predict", help="class and probabilities for each sample")
    _common(predict, data_help="samples (.npz with x, or .csv)")
    predict.add_argument("--adapters", help="trained adapters (.npz)")
    predict.set_defaults(run=_predict)


def _common(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("bundle", help="the .s2l bundle")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="inference backend (default: auto)")
    p.add_argument("--threads", type=int, default=1, help="backend threads (default: 1)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    _trusted_key_option(p)


def _trusted_key_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trusted-key",
        action="append",
        metavar="PUB",
        help=f"accept only bundles signed by this public key (a .pub file, or a folder of them); repeatable. "
        f"Also read from ${ENV_VAR} (paths separated by '{os.pathsep}')",
    )


def _open(args: argparse.Namespace) -> Model:
    keys = trusted_keys_from(args.trusted_key)
    return Model.open(args.bundle, args.backend, args.threads, getattr(args, "adapters", None), trusted_keys=keys)


def _emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    print(json.dumps(result) if args.json else text)


def _train(args: argparse.Namespace) -> int:
    model = _open(args)
    head = model.bundle.head
    samples = load_samples(args.data, model.bundle.input, head.num_outputs, require_labels=True)
    if args.init:
        model.load_adapters(args.init, args.method)
    d = head.defaults
    config = TrainConfig(
        epochs=args.epochs if args.epochs is not None else d.epochs,
        batch_size=args.batch_size if args.batch_size is not None else d.batch_size,
        learning_rate=args.lr if args.lr is not None else d.learning_rate,
        optimizer=Optimizer[args.optimizer.upper()] if args.optimizer else d.optimizer,
        loss=head.loss,
        seed=args.seed,
        val_fraction=args.val_fraction,
        patience=args.patience,
        lr_schedule=args.lr_schedule,
    )
    progress = None if args.quiet or args.json else make_progress()
    result = model.fine_tune(
        samples,
        config,
        use_cache=not args.no_cache,
        cache_path=args.cache_file,
        cache_capacity=args.cache_capacity,
        max_cache_mb=args.max_cache_mb,
        progress=progress,
        method=args.method,
    )
    r = result.report
    metrics = {
        "epochs": r.epochs_run,
        "best_epoch": r.best_epoch,
        "stopped_early": r.stopped_early,
        "diverged": r.diverged,
        "train_loss": r.history[-1]["train_loss"] if r.history else None,
        "val_accuracy": r.history[r.best_epoch - 1].get("val_accuracy") if r.history and r.best_epoch else None,
        "seconds": result.seconds,
        "frozen_seconds": result.frozen_seconds,
        "method": model.method.name,
        "cache": not args.no_cache and model.method.uses_cache,
        "cache_hits": result.cache_hits,
        "cache_misses": result.cache_misses,
        "cache_records": result.cache_records,
        "n": len(samples.x),
        "trainable_parameters": model.head.num_parameters,
    }
    model.save_adapters(args.output, metrics=metrics)
    text = (
        f"trained {r.epochs_run} epochs on {len(samples.x)} samples in {result.seconds:.3f} s "
        f"(cache hits {result.cache_hits}, misses {result.cache_misses}); "
        f"final loss {metrics['train_loss']:.4f}\nwrote {args.output}"
    )
    if r.diverged:
        text += f"\nwarning: {r.message}"
    elif r.message:
        text += f"\n{r.message}"
    _emit(args, {**metrics, "output": args.output}, text)
    return 0


def _eval(args: argparse.Namespace) -> int:
    model = _open(args)
    samples = load_samples(args.data, model.bundle.input, model.bundle.head.num_outputs, require_labels=True)
    result = model.evaluate(samples)
    _emit(args, result, f"accuracy {result['accuracy']:.4f} on {result['n']} samples")
    return 0


def _predict(args: argparse.Namespace) -> int:
    model = _open(args)
    samples = load_samples(args.data, model.bundle.input, model.bundle.head.num_outputs)
    classes, probs = model.predict(samples.x)
    labels = model.bundle.labels
    rows = [
        {"index": i, "class": int(c), "label": labels[c] if c < len(labels) else str(c), "probabilities": p.round(6).tolist()}
        for i, (c, p) in enumerate(zip(classes, probs))
    ]
    text = "\n".join(f"{r['index']}\t{r['label']}\t{float(np.max(r['probabilities'])):.4f}" for r in rows)
    _emit(args, {"predictions": rows}, text)
    return 0


def _add_verify(sub: Subparsers) -> None:
    verify = sub.add_parser("verify", help="check a bundle's structure, digest and signature against trusted keys")
    verify.add_argument("bundle", help="the .s2l bundle")
    _trusted_key_option(verify)
    verify.add_argument("--json", action="store_true", help="print machine-readable JSON")
    verify.add_argument("--debug", action="store_true", help="show tracebacks")
    verify.set_defaults(run=_verify)


def _verify(args: argparse.Namespace) -> int:
    keys = trusted_keys_from(args.trusted_key)
    if not keys:
        raise KeyFileError(f"no trusted keys: give --trusted-key PUB (repeatable) or set ${ENV_VAR}")
    bundle = open_trusted(args.bundle, keys)
    key = signer_of(bundle, keys)
    version = "{}.{}".format(*bundle.format_version)
    result = {
        "bundle": args.bundle,
        "ok": True,
        "format_version": version,
        "digest": bundle.digest,
        "signer_key_id": bundle.signer_key_id,
        "trusted_key": key.source,
    }
    text = f"{args.bundle}: OK (format {version}, digest {bundle.digest[:16]}), signed by trusted key {key.key_id} ({key.source})"
    _emit(args, result, text)
    return 0


# Each adds one subcommand (its parser, with `run` set to the function that executes it).
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (_add_train, _add_eval, _add_predict, _add_verify, add_serve, add_client)


if __name__ == "__main__":
    sys.exit(main())

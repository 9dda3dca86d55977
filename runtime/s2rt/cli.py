"""`s2rt`: fine-tune, evaluate and run an s2l bundle on the device.

Errors are one line on stderr: exit 2 for a usage error (a flag's value, an output that
cannot be written), 1 when the work fails (see `s2rt.clikit`); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeAlias, cast

import numpy as np

from s2rt import __version__
from s2rt.backend import BACKENDS
from s2rt.bundle import Optimizer
from s2rt.bundle.foreign import refuse_foreign
from s2rt.clikit import OneLineParser, check_writable, fraction, int_at_least, positive_float, refuse_misspelled_command, run_main
from s2rt.data import load_samples
from s2rt.errors import UsageError
from s2rt.methods import DEFAULT_METHOD, METHODS
from s2rt.progress import make_progress
from s2rt.serve.commands import add_client, add_serve
from s2rt.session import Model
from s2rt.trainer import LR_SCHEDULES
from s2rt.trust import ENV_VAR, open_trusted, signer_of, trusted_keys_from

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and not words[0].startswith("-"):
        refuse_misspelled_command("s2rt", words[0], COMMAND_NAMES)
    args = _parser().parse_args(words)
    return run_main("s2rt", lambda: int(args.run(args)), lambda: bool(getattr(args, "debug", False)))


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="s2rt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"s2rt {__version__}")
    # the subcommands' parsers are OneLineParsers too (argparse makes them of the parent's class)
    sub = cast(Subparsers, parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for add in COMMANDS:
        add(sub)
    return parser


def _add_train(sub: Subparsers) -> None:
    train = sub.add_parser("train", help="fine-tune the adapters on labelled samples")
    _common(train, data_help="labelled samples (.npz with x and y, or .csv)")
    train.add_argument("-o", "--output", required=True, help="where to write the trained adapters (.npz)")
    train.add_argument("--init", metavar="ADAPTERS", help="continue from these adapters instead of the bundle's initial head")
    train.add_argument("--epochs", type=int_at_least(1), help="passes over the training samples (default: the bundle's)")
    train.add_argument("--batch-size", type=int_at_least(1), help="samples per step (default: the bundle's)")
    train.add_argument("--lr", type=positive_float, help="learning rate (default: the bundle's)")
    train.add_argument("--optimizer", choices=[o.name.lower() for o in Optimizer], help="default: the bundle's")
    train.add_argument("--seed", type=int_at_least(0), default=0, help="seed for the validation split and shuffling (default: 0)")
    train.add_argument(
        "--val-fraction", type=fraction, default=0.0, help="share of samples held out for early stopping, in [0, 1) (default: 0)"
    )
    train.add_argument(
        "--patience",
        type=int_at_least(0),
        default=0,
        help="early stop after this many epochs without validation gain; 0 = off (needs --val-fraction)",
    )
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
    train.add_argument(
        "--allow-new-classes",
        action="store_true",
        help="labels (names in the .npz's y) the bundle does not have become new classes: the skip2lora head grows "
        "a row per class; the adapters record them and eval/predict report them",
    )
    train.add_argument("--no-cache", action="store_true", help="run the frozen forward every epoch (no Skip-Cache), for comparison")
    train.add_argument("--cache-file", help="keep the Skip-Cache in this memory-mapped file (default: in memory)")
    train.add_argument(
        "--cache-capacity",
        type=int_at_least(1),
        help="most samples the cache holds; the rest run the frozen forward every epoch (default: all)",
    )
    train.add_argument(
        "--max-cache-mb",
        type=positive_float,
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
    p.add_argument("--threads", type=int_at_least(1), default=1, help="backend threads (default: 1)")
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
    if args.patience and not args.val_fraction:
        raise UsageError(f"--patience {args.patience} needs a validation split: give --val-fraction (e.g. 0.2), or --patience 0")
    check_writable("-o/--output", args.output)  # before the work: a bad path fails now, not after training
    if args.cache_file:
        check_writable("--cache-file", args.cache_file)
    model = _open(args)
    if args.init:
        model.load_adapters(args.init, args.method)
    samples = load_samples(args.data, model.bundle.input, len(model.labels), require_labels=True, label_index=_names(model, args))
    config = model.train_config(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        optimizer=Optimizer[args.optimizer.upper()] if args.optimizer else None,
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
        "new_labels": list(model.new_labels),
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
    samples = load_samples(args.data, model.bundle.input, len(model.labels), require_labels=True, label_index=_names(model, args))
    result = model.evaluate(samples)
    text = f"accuracy {result['accuracy']:.4f} on {result['n']} samples"
    if model.new_labels:
        recall = ", ".join(f"{k} {'-' if v is None else f'{v:.4f}'}" for k, v in result["new_class_recall"].items())
        old = result["old_class_accuracy"]
        text += f"\nold classes: accuracy {'-' if old is None else f'{old:.4f}'}; new classes: recall {recall}"
    _emit(args, result, text)
    return 0


def _names(model: Model, args: argparse.Namespace) -> Callable[[np.ndarray], np.ndarray]:
    allow = bool(getattr(args, "allow_new_classes", False))
    return lambda y: model.label_indices(y, allow_new_classes=allow)


def _predict(args: argparse.Namespace) -> int:
    model = _open(args)
    samples = load_samples(args.data, model.bundle.input, len(model.labels), label_index=_names(model, args))
    classes, probs = model.classify(samples.x)
    labels = model.labels
    rows = [
        {"index": i, "class": int(c), "label": labels[c] if c < len(labels) else str(c), "probabilities": p.round(6).tolist()}
        for i, (c, p) in enumerate(zip(classes, probs))
    ]
    text = "\n".join(f"{r['index']}\t{r['label']}\t{float(np.max(r['probabilities'])):.4f}" for r in rows)
    _emit(args, {"predictions": rows}, text)
    return 0


def _add_verify(sub: Subparsers) -> None:
    verify = sub.add_parser(
        "verify",
        help="check a bundle's structure and digest, and its signature against trusted keys when there are any",
        description="Without trusted keys: structure and digest (an unsigned bundle reports 'digest ok, not signed'). "
        "With them: the bundle must also be signed by one of them.",
    )
    verify.add_argument("bundle", help="the .s2l bundle")
    _trusted_key_option(verify)
    verify.add_argument("--json", action="store_true", help="print machine-readable JSON")
    verify.add_argument("--debug", action="store_true", help="show tracebacks")
    verify.set_defaults(run=_verify)


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when the bundle is intact (and, with trusted keys, signed by one); 1 otherwise."""
    keys = trusted_keys_from(args.trusted_key)
    refuse_foreign(args.bundle)
    bundle = open_trusted(args.bundle, keys)
    version = "{}.{}".format(*bundle.format_version)
    result: dict[str, Any] = {
        "bundle": args.bundle,
        "ok": True,
        "format_version": version,
        "digest": bundle.digest,
        "digest_ok": True,
        "signed": bool(bundle.signer_key_id),
        "signer_key_id": bundle.signer_key_id or None,
        "trusted_key": None,
    }
    text = f"{args.bundle}: OK (format {version}, digest {bundle.digest[:16]}): digest ok, "
    if keys:
        key = signer_of(bundle, keys)
        result["trusted_key"] = key.source
        text += f"signed by trusted key {key.key_id} ({key.source})"
    elif bundle.signer_key_id:
        text += f"signed by key {bundle.signer_key_id}, not checked: give --trusted-key PUB or set ${ENV_VAR} to check it"
    else:
        text += "not signed"
    _emit(args, result, text)
    return 0


# Each adds one subcommand (its parser, with `run` set to the function that executes it).
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (_add_train, _add_eval, _add_predict, _add_verify, add_serve, add_client)
COMMAND_NAMES = ("train", "eval", "predict", "verify", "serve", "client")


if __name__ == "__main__":
    sys.exit(main())

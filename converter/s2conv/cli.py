"""`s2conv`: convert an ONNX model into an s2l bundle, or inspect a bundle.

    s2conv MODEL.onnx -o BUNDLE.s2l [options]
    s2conv inspect BUNDLE.s2l [--json]
    s2conv inspect MODEL.onnx [--rank R] [--tap-pool G] [--cache-dtype D] [--json]   # candidate taps and their costs
    s2conv keygen -o KEY                      (KEY, mode 0600, and KEY.pub)
    s2conv sign BUNDLE.s2l --key KEY [-o OUT.s2l]
    s2conv export BUNDLE.s2l --adapters ADAPTERS.npz -o TUNED.onnx|TUNED.tflite   (adapters merged in)

Errors print one line, `s2conv: error: <message>`, on stderr: exit status 2 for a usage
error (a flag's value, an output that cannot be written, a misspelled command), 1 when
the model cannot be converted or the bundle cannot be read, as `s2rt` (`s2rt.clikit`).
`--debug` shows the traceback and debug logs; `--quiet` hides the progress of slow stages.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from s2rt.bundle import read_bundle
from s2rt.bundle.model import FILE_IDENTIFIER, Bundle, OutputActivation
from s2rt.bundle.signing import SigningKey, sign_bundle_file
from s2rt.clikit import OneLineParser, check_writable, refuse_misspelled_command, run_main
from s2rt.errors import ConversionError, UsageError

from s2conv.candidates import describe_model, render_model_text
from s2conv.convert import CACHE_DTYPES, LOSSES, OPTIMIZERS, SEGMENT_BACKENDS, ConvertOptions, InvalidOptionError, convert
from s2conv.describe import describe_bundle, render_text
from s2conv.emit import emit
from s2conv.export import export_file
from s2conv.load import load_model
from s2conv.quantize import QUANTIZE_CHOICES
from s2conv.stages import StageProgress
from s2conv.version import PRODUCER, __version__

AUTO_TAPS = "auto"
CONVERT_DESCRIPTION = (
    "Convert an ONNX model (one input, one output) into an s2l bundle: the frozen segment, which outputs every tap "
    "and the frozen logits, plus an initial Skip2-LoRA adapter head. To look at a bundle: s2conv inspect BUNDLE.s2l"
)
DEFAULTS = ConvertOptions()
# ConvertOptions field -> the flag that sets it, so an option error names what the user typed
FLAGS = {
    "rank": "--rank",
    "alpha": "--alpha",
    "taps": "--taps",
    "tap_pool": "--tap-pool",
    "scores": "--scores",
    "cache_dtype": "--cache-dtype",
    "seed": "--seed",
    "labels": "--labels",
    "loss": "--loss",
    "optimizer": "--optimizer",
    "learning_rate": "--lr",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "backend": "--backend",
    "quantize": "--quantize",
    "calib": "--calib",
}
_Parser = OneLineParser
Runner = Callable[[argparse.Namespace, _Parser], int]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] and args_list[0] in SUBCOMMANDS:
        command = SUBCOMMANDS[args_list[0]]
        make_parser, run = command.parser, command.run
        args_list = args_list[1:]
    else:
        _refuse_misspelled_command(args_list[0] if args_list else "")
        make_parser, run = _convert_parser, _convert
    parser = make_parser()
    args = parser.parse_args(args_list)
    _configure_logging(args.debug)
    return run_main(PRODUCER, lambda: run(args, parser), lambda: bool(args.debug))


def _refuse_misspelled_command(word: str) -> None:
    """`s2conv inspekt x`: a first word that is no file but close to a command name is a typo, not a model."""
    if not word or word.startswith("-") or Path(word).exists() or "." in word or "/" in word:
        return  # an option, or a path (perhaps missing: the converter names it)
    refuse_misspelled_command(PRODUCER, word, SUBCOMMANDS)


# --- convert ------------------------------------------------------------------------------


def _convert_parser() -> _Parser:
    p = _Parser(
        prog=PRODUCER,
        usage="%(prog)s MODEL.onnx -o BUNDLE.s2l [options]\n       %(prog)s COMMAND ... (inspect, export, keygen, sign)",
        description=CONVERT_DESCRIPTION,
        epilog=_commands_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL.onnx", help="the source ONNX model")
    p.add_argument("-o", "--output", metavar="BUNDLE.s2l", required=True, help="where to write the bundle")
    p.add_argument("--rank", type=int, default=DEFAULTS.rank, help=_help("rank"))
    p.add_argument("--alpha", type=float, default=DEFAULTS.alpha, help=_help("alpha"))
    p.add_argument(
        "--taps",
        default=AUTO_TAPS,
        metavar="auto|NAME1,NAME2,...",
        help="tap tensors of the source model, comma-separated, in order; 'auto' (default) takes the input of every "
        "layer (Gemm, MatMul, Conv) or block (residual, squeeze-excite) on the main path from the input to the logits; "
        "`s2conv inspect MODEL.onnx` lists the candidates",
    )
    p.add_argument("--tap-pool", type=int, default=DEFAULTS.tap_pool, metavar="G", help=_help("tap_pool"))
    p.add_argument("--scores", metavar="NAME", help=ConvertOptions.help("scores"))
    p.add_argument("--cache-dtype", choices=list(CACHE_DTYPES), default=DEFAULTS.cache_dtype, help=_help("cache_dtype"))
    p.add_argument("--quantize", choices=list(QUANTIZE_CHOICES), default=DEFAULTS.quantize, help=_help("quantize"))
    p.add_argument("--calib", metavar="FILE.npz", help=ConvertOptions.help("calib"))
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help=_help("seed"))
    labels = p.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels", metavar="A,B,...", help="class labels, comma-separated, one per model output (default: class_0 ... class_{C-1})"
    )
    labels.add_argument("--labels-file", metavar="FILE", type=Path, help="class labels, one per line")
    p.add_argument("--loss", choices=list(LOSSES), default=DEFAULTS.loss, help=_help("loss"))
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=DEFAULTS.optimizer, help=_help("optimizer"))
    p.add_argument("--lr", type=float, default=DEFAULTS.learning_rate, help=_help("learning_rate"))
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help=_help("epochs"))
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help=_help("batch_size"))
    p.add_argument("--backend", choices=list(SEGMENT_BACKENDS), default=DEFAULTS.backend, help=_help("backend"))
    p.add_argument(
        "--save-segment",
        metavar="FILE.onnx|FILE.tflite",
        type=Path,
        help="also write the frozen segment as a plain model, ONNX or TFLite by the suffix (to look at it in Netron, say)",
    )
    p.add_argument("--sign-key", metavar="KEY", help="sign the bundle with this Ed25519 private key (from `s2conv keygen`)")
    p.add_argument("--quiet", action="store_true", help="do not report the progress of slow stages (int8 calibration, TFLite emit)")
    _add_common(p)
    return p


def _commands_help() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name.ljust(width)}  {command.summary}" for name, command in SUBCOMMANDS.items()]
    return "commands (`s2conv COMMAND --help` for each):\n" + "\n".join(lines)


def _help(field: str) -> str:
    return ConvertOptions.help(field) + " (default: %(default)s)"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show debug logs and the traceback of an error")
    p.add_argument("--version", action="version", version=f"{PRODUCER} {__version__}")


def _convert(args: argparse.Namespace, parser: _Parser) -> int:
    options = _options(args, parser)
    _check_outputs(args)
    signer = SigningKey.load(args.sign_key) if args.sign_key else None  # a bad key fails before the conversion
    bundle = convert(args.model, options, progress=None if args.quiet else StageProgress())
    bundle, artefacts = emit(bundle, args.output, args.save_segment, signer=signer)
    for artefact in artefacts:
        print(f"wrote {artefact.kind} {artefact.path} ({artefact.size:,} bytes)")
    print(_summary(bundle))
    if signer is not None:
        print(f"signed by key {signer.key_id} ({signer.source})")
    return 0


def _options(args: argparse.Namespace, parser: _Parser) -> ConvertOptions:
    try:
        return ConvertOptions(
            rank=args.rank,
            alpha=args.alpha,
            taps=None if args.taps.strip() == AUTO_TAPS else _split_names(args.taps),
            tap_pool=args.tap_pool,
            scores=args.scores,
            cache_dtype=args.cache_dtype,
            seed=args.seed,
            labels=_labels(args),
            loss=args.loss,
            optimizer=args.optimizer,
            learning_rate=args.lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            backend=args.backend,
            quantize=args.quantize,
            calib=args.calib,
        )
    except InvalidOptionError as e:
        raise UsageError(e.for_cli(FLAGS)) from None


def _check_outputs(args: argparse.Namespace) -> None:
    """Before the work: the files the conversion will write can be written, and --save-segment names a format."""
    check_writable("-o/--output", args.output)
    if args.save_segment is not None:
        suffix = args.save_segment.suffix.lower()
        if suffix not in (".onnx", ".tflite"):
            raise UsageError(f"--save-segment {args.save_segment}: name the file .onnx or .tflite (the suffix picks the format)")
        have = [kind.name for kind in SEGMENT_BACKENDS[args.backend]]
        if suffix[1:].upper() not in have:
            raise UsageError(
                f"--save-segment {args.save_segment}: the bundle has no {suffix[1:].upper()} segment to save (it has "
                f"{' and '.join(have)}); name the file after one it has, or convert with --backend both"
            )
        check_writable("--save-segment", args.save_segment)


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(","))


def _labels(args: argparse.Namespace) -> tuple[str, ...] | None:
    if args.labels is not None:
        return _split_names(args.labels)
    if args.labels_file is None:
        return None
    try:
        lines = args.labels_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"{args.labels_file}: cannot read the labels file: {e}") from e
    return tuple(line.strip() for line in lines if line.strip())


def _summary(bundle: Bundle) -> str:
    widths = " + ".join(str(t.size) for t in bundle.taps)
    head = bundle.head
    activation = bundle.output_activation
    then = "" if activation == OutputActivation.NONE else f" (then {activation.name.lower()})"
    return (
        f"{bundle.provenance.source_name}: {len(bundle.taps)} taps ({widths} = {bundle.tap_width} features), "
        f"{head.num_outputs} outputs{then}, rank {head.rank}, alpha {head.alpha:g}, "
        f"{head.num_parameters:,} trainable parameters, cache record {bundle.cache.record_size:,} bytes, "
        f"digest {bundle.digest[:16]}"
    )


# --- inspect ------------------------------------------------------------------------------


def _inspect_parser() -> _Parser:
    p = _Parser(
        prog=f"{PRODUCER} inspect",
        description="Show what an s2l bundle holds, or list the candidate taps of an ONNX model with their costs.",
    )
    p.add_argument(
        "bundle",
        metavar="BUNDLE.s2l|MODEL.onnx",
        help="a bundle (verified against its digest), or an ONNX model: its candidate taps, their shapes, reductions, "
        "cache bytes per sample and adapter parameters",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    model = p.add_argument_group("for an ONNX model")
    model.add_argument("--rank", type=int, default=DEFAULTS.rank, help=_help("rank"))
    model.add_argument("--tap-pool", type=int, default=DEFAULTS.tap_pool, metavar="G", help=_help("tap_pool"))
    model.add_argument("--cache-dtype", choices=["float32", "float16"], default=DEFAULTS.cache_dtype, help="cache storage dtype")
    model.add_argument("--scores", metavar="NAME", help=ConvertOptions.help("scores"))
    _add_common(p)
    return p


def _inspect(args: argparse.Namespace, parser: _Parser) -> int:
    if not _is_bundle(Path(args.bundle)):
        return _inspect_model(args, parser)
    bundle = read_bundle(args.bundle)
    description = {"bundle": str(args.bundle), **describe_bundle(bundle)}
    print(json.dumps(description, indent=2) if args.json else f"bundle      {args.bundle}\n" + render_text(description))
    return 0


def _is_bundle(path: Path) -> bool:
    """A FlatBuffers file with the bundle's identifier at bytes 4..8; anything else is read as ONNX."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return True  # let the bundle reader name the problem
    return head[4:8] == FILE_IDENTIFIER or path.suffix == ".s2l"


def _inspect_model(args: argparse.Namespace, parser: _Parser) -> int:
    try:
        options = ConvertOptions(rank=args.rank, tap_pool=args.tap_pool, cache_dtype=args.cache_dtype, scores=args.scores)
    except InvalidOptionError as e:
        raise UsageError(e.for_cli(FLAGS)) from None
    loaded = load_model(args.bundle, options.scores)
    description = describe_model(loaded, options.rank, options.tap_pool, CACHE_DTYPES[options.cache_dtype])
    print(json.dumps(description, indent=2) if args.json else render_model_text(description))
    return 0


# --- export -------------------------------------------------------------------------------


def _export_parser() -> _Parser:
    p = _Parser(
        prog=f"{PRODUCER} export",
        description="Write one standalone model with trained adapters merged in: the frozen network plus one MatMul "
        "per tap, then the source model's output activation. It gives what `s2rt predict` gives with those adapters.",
    )
    p.add_argument("bundle", metavar="BUNDLE.s2l", help="the bundle the adapters were trained for (it needs its ONNX segment)")
    p.add_argument("--adapters", required=True, metavar="ADAPTERS.npz", help="trained adapters (s2rt train -o ...)")
    p.add_argument(
        "-o", "--output", required=True, type=Path, metavar="TUNED.onnx|TUNED.tflite", help="where to write; the suffix picks the format"
    )
    p.add_argument(
        "--output-name", metavar="NAME", help="name of the model's output (default: the source model's, when the bundle knows it)"
    )
    _add_common(p)
    return p


def _export(args: argparse.Namespace, parser: _Parser) -> int:
    if args.output.suffix.lower() not in (".onnx", ".tflite"):
        raise UsageError(f"-o/--output {args.output}: name the file .onnx or .tflite (the suffix picks the format)")
    check_writable("-o/--output", args.output)
    size = export_file(read_bundle(args.bundle), args.adapters, args.output, args.output_name)
    print(f"wrote tuned model {args.output} ({size:,} bytes)")
    return 0


# --- keygen, sign -------------------------------------------------------------------------


def _keygen_parser() -> _Parser:
    p = _Parser(
        prog=f"{PRODUCER} keygen",
        description="Make an Ed25519 key pair for signing bundles: KEY (private, mode 0600) and KEY.pub "
        "(public: give it to devices as `s2rt ... --trusted-key KEY.pub`).",
    )
    p.add_argument("-o", "--output", metavar="KEY", required=True, help="the private key file to create (never overwritten)")
    _add_common(p)
    return p


def _keygen(args: argparse.Namespace, parser: _Parser) -> int:
    check_writable("-o/--output", args.output)
    key = SigningKey.generate()
    private, public = key.save(args.output)
    print(f"wrote private key {private} (mode 0600) and public key {public}; key id {key.key_id}")
    return 0


def _sign_parser() -> _Parser:
    p = _Parser(
        prog=f"{PRODUCER} sign",
        description="Sign a bundle with an Ed25519 private key. Only the envelope is rewritten (the body and its "
        "digest stay the same); an earlier signature is replaced.",
    )
    p.add_argument("bundle", metavar="BUNDLE.s2l", help="the bundle to sign (verified first)")
    p.add_argument("--key", metavar="KEY", required=True, help="the private key (from `s2conv keygen`)")
    p.add_argument("-o", "--output", metavar="OUT.s2l", help="write the signed bundle here (default: replace BUNDLE)")
    _add_common(p)
    return p


def _sign(args: argparse.Namespace, parser: _Parser) -> int:
    check_writable("-o/--output" if args.output else "BUNDLE.s2l", args.output or args.bundle)
    key = SigningKey.load(args.key)
    signed = sign_bundle_file(args.bundle, key, args.output)
    version = "{}.{}".format(*signed.format_version)
    print(f"signed {args.output or args.bundle} with key {key.key_id} (format {version}, digest {signed.digest[:16]})")
    return 0


@dataclass(frozen=True)
class Command:
    parser: Callable[[], _Parser]
    run: Runner
    summary: str


# The first word of the command line selects one of these; anything else is a model to convert.
SUBCOMMANDS: dict[str, Command] = {
    "inspect": Command(_inspect_parser, _inspect, "what a bundle holds, or an ONNX model's candidate taps and their costs"),
    "export": Command(_export_parser, _export, "one standalone .onnx/.tflite model with trained adapters merged in"),
    "keygen": Command(_keygen_parser, _keygen, "make an Ed25519 key pair for signing bundles"),
    "sign": Command(_sign_parser, _sign, "sign a bundle with a private key"),
}


class _LogFormatter(logging.Formatter):
    """`s2conv: warning: ...`, in the style of the error line."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{PRODUCER}: {record.levelname.lower()}: {record.getMessage()}"


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter())
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])


if __name__ == "__main__":
    sys.exit(main())

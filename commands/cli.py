"""The ``actprep`` command."""
from __future__ import annotations

import argparse
import ast
import difflib
import logging
import os
import re
import sys
import time
from typing import Iterable, NoReturn

from actprep.commands import runargs
from actprep.schemas.version import ACTPREP_VERSION


class CommandParser(argparse.ArgumentParser):
    """The parser of ``actprep`` and of each of its commands: argparse's, except that an
    option must be spelt out (no abbreviations: ``--htm`` is not ``--html``), and that an
    unknown option or an invalid choice is one line of error naming the nearest valid
    ones (:meth:`reject`, :meth:`error`)."""

    # the command hands the arguments it does not take to Beam, as pipeline options
    passes_to_beam = False

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, CommandParser] = {}  # actprep's: each command's parser
        self._given: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        # kept for error(): a missing required option may be a misspelt one
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def option_names(self) -> list[str]:
        """Every option string of this parser (``--shard-size``, ``-o``, ``--help``)."""
        # argparse's own table of them: it has no public way to list a parser's options
        return list(self._option_string_actions)  # noqa: SLF001

    def reject(self, extra: list[str]) -> NoReturn:
        """Ends the command (status 2) for arguments it does not take: the unknown options,
        each with the nearest of its options (and of Beam's, for a command that passes them
        on), in one line; else the stray words, as argparse does."""
        unknown = [a for a in extra if _looks_like_option(a)]
        if not unknown:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        names = self.option_names()
        if self.passes_to_beam:
            names += [f"--{n}" for n in sorted(runargs.beam_option_names())]
        found = [(name, nearest(name, names))
                 for name in dict.fromkeys(arg.split("=", 1)[0] for arg in unknown)]
        if len(found) == 1:
            ((name, near),) = found
            text = f"unknown option {name}"
            if self.passes_to_beam:
                text += " (neither an actprep nor a Beam option)"
            if near:
                text += f"; did you mean {_either(near)}?"
        else:
            text = "unknown options " + ", ".join(
                name + (f" (did you mean {_either(near)}?)" if near else "")
                for name, near in found)
            if self.passes_to_beam:
                text += "; neither actprep nor Beam options"
        if not any(near for _, near in found):
            text += f"; '{self.prog} --help' lists the options"
        self.exit(2, f"{self.prog}: error: {text}\n")

    def error(self, message: str) -> NoReturn:
        hint = _choice_hint(message)
        if hint:  # one line: the usage of `actprep run` is thirty
            self.exit(2, f"{self.prog}: error: {message}; did you mean {hint}?\n")
        if "required" in message:  # "--output is required" for a misspelt --ouptut
            unknown = self._unknown_given()
            if unknown:
                self.reject(unknown)
        super().error(message)

    def _unknown_given(self) -> list[str]:
        """The options given to this parser that it does not take (nor Beam, when it
        passes them on)."""
        mine = set(self.option_names())
        given = self._given[:self._given.index("--")] if "--" in self._given else self._given
        unknown = [a for a in given if _looks_like_option(a)
                   and a.split("=", 1)[0] not in mine]
        if self.passes_to_beam:
            unknown = [a for a in unknown if not runargs.is_beam_option(a.split("=", 1)[0])]
        return unknown


def nearest(word: str, names: Iterable[str]) -> list[str]:
    """The few ``names`` nearest to a misspelt ``word``, best first: close enough
    (difflib's ratio 0.7), and near the best one; "-" and "_" count as the same."""
    def key(text: str) -> str:
        return text.replace("_", "-")
    scored = sorted(((difflib.SequenceMatcher(None, key(word), key(n)).ratio(), n)
                     for n in dict.fromkeys(names) if n != word), key=lambda s: -s[0])
    if not scored or scored[0][0] < 0.7:
        return []
    best = scored[0][0]
    return [n for ratio, n in scored[:3] if ratio >= max(0.7, best - 0.1)]


def _looks_like_option(arg: str) -> bool:
    return arg.startswith("-") and arg != "--" and not _is_number(arg)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


_INVALID_CHOICE = re.compile(r"invalid choice: (?P<value>.*?) \(choose from (?P<choices>.*)\)$")


def _unquoted(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            return str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            pass
    return text


def _choice_hint(message: str) -> str | None:
    """The nearest choices to the value of argparse's "invalid choice" error, or None
    (another error, a number, nothing near)."""
    found = _INVALID_CHOICE.search(message)
    if not found:
        return None
    value = _unquoted(found["value"])
    if _is_number(value):  # 101 for 1..100: the choices say it all
        return None
    choices = [_unquoted(c) for c in found["choices"].split(", ")]
    near = nearest(value, choices)
    return _either([repr(c) for c in near]) if near else None


def import_beam_quietly() -> None:
    """Imports Apache Beam without its one import-time warning that does not concern actprep:
    without Beam's gcp extras (no apitools) the import of ``apache_beam`` logs "apitools not
    found, and bigquery client libraries are not available ..." to the root logger, on every
    command, and by doing so sets up Python's default logging before ``main`` does. actprep
    does not use BigQuery; what it needs of the gcp extras (gs:// paths, Dataflow) fails
    with its own clear error. Only that message, and only during this import, is dropped."""
    if "apache_beam" in sys.modules:
        return
    root = logging.getLogger()
    quiet = _NotApitools()
    # logging.warning() on a root logger without handlers would install the default one
    stand_in = None if root.handlers else _LastResort()
    if stand_in:
        root.addHandler(stand_in)
    root.addFilter(quiet)
    try:
        import apache_beam  # noqa: F401
    finally:
        root.removeFilter(quiet)
        if stand_in:
            root.removeHandler(stand_in)


class _NotApitools(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


class _LastResort(logging.Handler):
    """What logging does with a record when no handler is set up (``logging.lastResort``)."""

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            last.handle(record)


def cmd_run(parser: argparse.ArgumentParser, args: argparse.Namespace,
            beam_args: list[str]) -> int:
    from actprep.commands import exitcodes
    from actprep.commands.runner import run

    opts = runargs.run_options(args)
    problem = runargs.path_problem(opts)
    if problem:
        print(f"actprep: error: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    return run(opts, beam_args)


def cmd_demo(parser: argparse.ArgumentParser, args: argparse.Namespace,
             beam_args: list[str]) -> int:
    from actprep.commands.demo import run_demo

    return run_demo(args.output, beam_args)


def cmd_flow(parser: argparse.ArgumentParser, args: argparse.Namespace,
             beam_args: list[str]) -> int:
    from actprep.commands.flowcli import FlowCliError, flow_images

    if beam_args:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    try:
        report = flow_images(args.first, args.second, args.output, backend=args.backend,
                             device=args.device, preset_name=args.preset, viz=args.viz,
                             legend=args.legend)
    except FlowCliError as exc:
        print(f"actprep flow: error: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


def _add_flow_parser(sub) -> None:
    from actprep.extractors.flow.engine import BACKENDS
    from actprep.extractors.torch_device import DEVICES
    from actprep.extractors.flow.params import DEFAULT_PRESET, PRESETS

    flow_p = sub.add_parser("flow", help="TV-L1 optical flow between two images")
    flow_p.add_argument("first", help="first image (any format OpenCV reads)")
    flow_p.add_argument("second", help="second image, same size")
    flow_p.add_argument("-o", "--output", required=True,
                        help="flow file: .flo (Middlebury) or .npy (float32 [H, W, 2])")
    flow_p.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="torch or opencv (auto: torch on CUDA when available, else opencv)")
    flow_p.add_argument("--device", choices=DEVICES, default="auto")
    flow_p.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                        help=f"TV-L1 parameters (default {DEFAULT_PRESET})")
    flow_p.add_argument("--viz", metavar="PNG", help="also write the Middlebury colour coding "
                        "(hue: direction; saturation: |flow| over the largest; white: none)")
    flow_p.add_argument("--legend", action="store_true",
                        help="with --viz: draw the colour wheel to the right of the picture, "
                        "coded and normalised as it is (the rim is the largest |flow|, "
                        "printed under it)")
    flow_p.set_defaults(func=cmd_flow)


def cmd_vggish_convert(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       beam_args: list[str]) -> int:
    from actprep.commands.vggishcli import VggishConvertError, convert

    if beam_args:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    try:
        lines = convert(args.checkpoint, args.weights, args.output, args.saved_model)
    except VggishConvertError as exc:
        print(f"actprep vggish-convert: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _add_vggish_parser(sub) -> None:
    # nothing imported here: TensorFlow loads only when the command runs
    conv_p = sub.add_parser(
        "vggish-convert", help="VGGish weights: the official TF checkpoint to a PyTorch "
        ".pth, or a .pth to a TF-Hub-style SavedModel")
    source = conv_p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT",
                        help="official TF checkpoint (vggish_model.ckpt) or a V2 prefix")
    source.add_argument("--weights", metavar="PTH",
                        help="PyTorch-port state_dict (.pth, local or gs://)")
    conv_p.add_argument("-o", "--output", metavar="PTH",
                        help="write a PyTorch state_dict (for --vggish-backend torch)")
    conv_p.add_argument("--saved-model", metavar="DIR",
                        help="write a SavedModel with the TF-Hub interface (for "
                        "--vggish-backend tfhub --vggish-hub DIR)")
    conv_p.set_defaults(func=cmd_vggish_convert)


def _add_debug(sub) -> None:
    """Every command takes --debug too, after its name (``actprep run ... --debug``)."""
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the Python traceback of an error instead of one line")


def make_parser() -> CommandParser:
    """The parser of ``actprep``; ``commands`` holds the parser of each command by name."""
    parser = CommandParser(
        prog="actprep", description="Action-recognition videos to WebDataset shards.")
    parser.add_argument("--version", action="version", version=f"actprep {ACTPREP_VERSION}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log Beam's messages")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="process a manifest into shards; other --options "
                           "are Beam pipeline options (e.g. --runner, --direct_num_workers)")
    runargs.add_run_arguments(run_p)
    run_p.passes_to_beam = True
    run_p.set_defaults(func=cmd_run)
    demo_p = sub.add_parser("demo", help="generate a small Kinetics-style set and run on it")
    demo_p.add_argument("--output", default="actprep-demo", help="folder (default ./actprep-demo)")
    demo_p.set_defaults(func=cmd_demo)
    demo_p.passes_to_beam = True
    _add_flow_parser(sub)
    from actprep.reports.stats import add_stats_parser
    add_stats_parser(sub)
    from actprep.reports.verify import add_verify_parser
    add_verify_parser(sub)
    _add_vggish_parser(sub)
    _add_debug(sub)
    parser.commands = dict(sub.choices)
    return parser


def parse_command_line(argv: list[str] | None = None,
                       parser: CommandParser | None = None
                       ) -> tuple[argparse.Namespace, list[str]]:
    """The parsed arguments of an ``actprep`` command line, and the Beam pipeline options
    among them (``run`` and ``demo`` pass them on; [] for the other commands). Anything
    else ends the process with status 2 and one line of error: an unknown option (named
    with the nearest actprep or Beam options), a stray word, a value Beam refuses."""
    parser = parser or make_parser()
    args, extra = parser.parse_known_args(argv)
    command: CommandParser = parser.commands[args.command]
    if not extra:
        return args, []
    if not command.passes_to_beam:
        command.reject(extra)
    try:
        unknown = runargs.unknown_beam_args(extra)
    except argparse.ArgumentError as exc:  # a Beam option with a value it refuses
        command.error(str(exc))
    if unknown:
        command.reject(unknown)
    return args, extra


def main(argv: list[str] | None = None) -> int:
    import_beam_quietly()
    parser = make_parser()
    args, beam_args = parse_command_line(argv, parser)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not (args.verbose or args.debug):  # Beam logs routine warnings, and the tracebacks of errors it raises
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    start = time.monotonic()
    try:
        code = args.func(parser, args, beam_args)
    except Exception as exc:  # noqa: BLE001 - one line for the user; --debug shows all
        if getattr(args, "debug", False):
            raise
        return _report(exc)
    logging.getLogger("actprep").info("finished in %.1f s", time.monotonic() - start)
    return code


def _report(exc: Exception) -> int:
    """One line for an error that ended a command: a fault of the environment (what to
    fix), or a bug (where to look)."""
    from actprep.commands import exitcodes
    from actprep.pipelines.faults import EnvironmentFault, find_fault

    fault = find_fault(exc)
    if fault is None:
        print(f"actprep: internal error (a bug in actprep): {type(exc).__name__}: {exc}; "
              f"rerun with --debug for the traceback, and please report it", file=sys.stderr)
        return exitcodes.ERROR
    print(f"actprep: error: {fault}", file=sys.stderr)
    if isinstance(exc, EnvironmentFault) and exc.resume:
        print("actprep: a fault of the machine or its storage, not of the videos: nothing was "
              "recorded as a video's failure. Fix it, then rerun the same command to resume",
              file=sys.stderr)
    return exitcodes.ERROR


def exit_now(code: int) -> None:
    """Ends the process without C++ static destructors: after Beam's multi-processing
    runner has finished (and every file is written and the summary printed), those
    occasionally abort with "terminate called without an active exception" (exit status
    134), which would make a finished job look failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def entry() -> None:
    """Console-script entry."""
    exit_now(main())


if __name__ == "__main__":
    entry()

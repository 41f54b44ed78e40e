"""The ``actprep`` command."""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time

from apache_beam.options.pipeline_options import PipelineOptions

from actprep.schemas.version import ACTPREP_VERSION


@functools.cache
def beam_option_names() -> frozenset[str]:
    """Every option name Beam's pipeline options accept, without the dashes: destinations
    and option strings, so aliases and negations (``--worker_machine_type``,
    ``--no_use_public_ips``) count as well as ``--machine_type``."""
    parsers: list[argparse.ArgumentParser] = []
    known = PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    names = {s[2:] for action in parsers[0]._actions  # noqa: SLF001
             for s in action.option_strings if s.startswith("--")}
    return frozenset(names | set(known))


def _check_beam_args(parser: argparse.ArgumentParser, beam_args: list[str]) -> list[str]:
    """Beam options pass through untouched, but a misspelt actprep option must not be
    silently handed to Beam (which would discard it)."""
    known = beam_option_names()
    for arg in beam_args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if name not in known and name.replace("-", "_") not in known:
                parser.error(f"unknown option --{name} (neither an actprep nor a Beam option)")
    return beam_args


def cmd_run(parser: argparse.ArgumentParser, args: argparse.Namespace,
            beam_args: list[str]) -> int:
    from actprep.commands.runner import run

    from actprep.pipelines.options import run_options_from_args
    opts = run_options_from_args(args)
    return run(opts, _check_beam_args(parser, beam_args))


def cmd_demo(parser: argparse.ArgumentParser, args: argparse.Namespace,
             beam_args: list[str]) -> int:
    from actprep.commands.demo import run_demo

    return run_demo(args.output, _check_beam_args(parser, beam_args))


def cmd_flow(parser: argparse.ArgumentParser, args: argparse.Namespace,
             beam_args: list[str]) -> int:
    from actprep.commands.flowcli import FlowCliError, flow_images

    if beam_args:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    try:
        report = flow_images(args.first, args.second, args.output, backend=args.backend,
                             device=args.device, preset_name=args.preset, viz=args.viz)
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
    flow_p.add_argument("--viz", metavar="PNG", help="also write the Middlebury colour coding")
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


def make_parser() -> argparse.ArgumentParser:
    from actprep.pipelines.options import add_run_arguments

    parser = argparse.ArgumentParser(
        prog="actprep", description="Action-recognition videos to WebDataset shards.")
    parser.add_argument("--version", action="version", version=f"actprep {ACTPREP_VERSION}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log Beam's messages")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="process a manifest into shards; other --options "
                           "are Beam pipeline options (e.g. --runner, --direct_num_workers)")
    add_run_arguments(run_p)
    run_p.set_defaults(func=cmd_run)
    demo_p = sub.add_parser("demo", help="generate a small Kinetics-style set and run on it")
    demo_p.add_argument("--output", default="actprep-demo", help="folder (default ./actprep-demo)")
    demo_p.set_defaults(func=cmd_demo)
    _add_flow_parser(sub)
    from actprep.reports.stats import add_stats_parser
    add_stats_parser(sub)
    from actprep.reports.verify import add_verify_parser
    add_verify_parser(sub)
    _add_vggish_parser(sub)
    _add_debug(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, beam_args = parser.parse_known_args(argv)
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

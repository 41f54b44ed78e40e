"""The ``actprep run`` command line: its argparse options, their conversion to
:class:`~actprep.pipelines.options.RunOptions`, a description of each option for other
front-ends (the Dataflow Flex Template, :mod:`actprep.commands.flex`), and the check of
the arguments ``actprep run`` hands on to Beam.

Public API:

* :func:`add_run_arguments` adds the options to a parser and returns a :class:`RunOption`
  per option; :func:`run_option_list` returns those alone.
* :func:`run_options` turns the parsed arguments into ``RunOptions``; :func:`path_problem`
  says when one of their paths cannot be opened here (gs:// without Beam's gcp extras).
* :func:`parse_bool`, with :data:`TRUE_WORDS` and :data:`FALSE_WORDS`: what a boolean value
  (``--mfcc-center false``) accepts.
* :func:`beam_option_names`, :func:`unknown_beam_args` and :func:`is_beam_option`: Beam's
  pipeline options, for the arguments ``actprep run`` does not take itself.
"""
from __future__ import annotations

import argparse
import functools
import math
from dataclasses import dataclass
from typing import Any

from actprep.extractors.audio.mfcc import MfccParams
from actprep.extractors.ffmpeg_bin import MIN_VERSION
from actprep.extractors.flow.engine import BACKENDS as FLOW_BACKENDS
from actprep.extractors.flow.params import DEFAULT_PRESET, PRESETS
from actprep.extractors.flow.quantize import DEFAULT_BOUND
from actprep.extractors.rgb import DEFAULT_JPEG_QUALITY
from actprep.extractors.torch_device import DEVICES
from actprep.pipelines.options import (DEFAULT_MODALITIES, MODALITIES, VGGISH_BACKENDS,
                                      RunOptions)
from actprep.schemas.manifest import DATASETS

TRUE_WORDS = ("true", "1", "yes")  # what a boolean value accepts, case-insensitive
FALSE_WORDS = ("false", "0", "no")

# What an option's value is (RunOption.kind)
KINDS = (
    "flag",  # a switch without a value (--flow-raw, --no-wait)
    "bool",  # true or false (TRUE_WORDS, FALSE_WORDS): --mfcc-center false
    "choice",  # one of RunOption.choices
    "int", "positive_int", "float", "positive_float",
    "fraction",  # a float from 0 to 1
    "size",  # WxH, e.g. 340x256
    "modalities",  # comma-separated MODALITIES
    "text",  # anything: paths, names
)


@dataclass(frozen=True)
class RunOption:
    """One option of ``actprep run``, as its ``--help`` shows it."""

    option: str  # the option string: --video-root
    dest: str  # the parsed arguments' attribute: video_root (the MFCC ones: mfcc_<name>)
    help: str  # the help text, as --help prints it ("" when there is none)
    kind: str  # what the value is: one of KINDS
    default: Any = None  # a flag's is the value when it is not given (--no-wait: True)
    required: bool = False
    # the accepted values: kind "choice" (a tuple); an "int" may have a range
    choices: tuple | range | None = None
    metavar: str | None = None
    exclusive_group: int | None = None  # options of one group exclude each other

    @property
    def is_flag(self) -> bool:
        return self.kind == "flag"


def parse_bool(text: str) -> bool:
    """A boolean option's value: one of TRUE_WORDS or FALSE_WORDS, in any case."""
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size expects WxH such as 340x256, got {text!r}")
    if w < 2 or h < 2:
        raise argparse.ArgumentTypeError(f"--size {text}: both sides must be at least 2")
    return w, h


def _modalities(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in MODALITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--modalities {text!r}: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(MODALITIES)}")
    return names


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text}")
    return value


def _positive(kind):
    what = "a positive whole number" if kind is int else "a positive number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < math.inf:  # NaN too
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.kind = "positive_" + kind.__name__  # RunOption.kind
    return parse


# RunOption.kind by argparse type (the _positive ones carry theirs)
_KIND_OF_TYPE = {parse_bool: "bool", _size: "size", _modalities: "modalities",
                 _fraction: "fraction", int: "int", float: "float", str: "text", None: "text"}


class _Recorder:
    """Stands for a parser or a mutually exclusive group while the options are added:
    passes every call on and keeps each option's action (what ``add_argument`` returns)."""

    def __init__(self, container, added: list, group: int | None = None):
        self._container, self._added, self._group = container, added, group

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = self._container.add_argument(*args, **kwargs)
        self._added.append((action, self._group))
        return action

    def add_mutually_exclusive_group(self, **kwargs) -> "_Recorder":
        group = self._container.add_mutually_exclusive_group(**kwargs)
        return _Recorder(group, self._added, group=len(self._added))


def _described(action: argparse.Action, group: int | None) -> RunOption:
    longs = [s for s in action.option_strings if s.startswith("--")]
    if action.nargs == 0:
        kind = "flag"
    elif action.choices is not None and not isinstance(action.choices, range):
        kind = "choice"
    else:
        kind = getattr(action.type, "kind", None) or _KIND_OF_TYPE.get(action.type)
        if kind is None:  # a new type: say what it is above, for the Flex Template
            raise ValueError(f"{longs[0]}: no RunOption kind for its type {action.type!r}")
    choices = action.choices
    if choices is not None and not isinstance(choices, range):
        choices = tuple(choices)
    return RunOption(option=longs[0], dest=action.dest, help=_help_text(action), kind=kind,
                     default=action.default, required=bool(action.required),
                     choices=choices, metavar=action.metavar, exclusive_group=group)


def _help_text(action: argparse.Action) -> str:
    """The help as argparse prints it: %-placeholders (``%(default)s``) expanded."""
    text = action.help or ""
    if "%(" in text or "%%" in text:
        values = dict(vars(action), prog="actprep run")
        if action.choices is not None:
            values["choices"] = ", ".join(map(str, action.choices))
        text = text % values
    return text


def run_option_list() -> list[RunOption]:
    """Every option of ``actprep run``, in ``--help`` order (without --help and the
    command-line-wide --debug)."""
    return add_run_arguments(argparse.ArgumentParser(add_help=False))


def run_options(args: argparse.Namespace) -> RunOptions:
    """The options of parsed ``actprep run`` arguments."""
    return RunOptions.from_values(vars(args))


def path_problem(opts: RunOptions) -> str | None:
    """A path of the options on a storage this installation cannot open (gs:// without
    Beam's gcp extras), said in one line; None when every path can be opened."""
    from actprep.pipelines import storage  # Beam: imported by main() first, quietly

    paths = {"--manifest": opts.manifest, "--video-root": opts.video_root,
             "--output": opts.output, "--classes": opts.classes,
             "--vggish-weights": opts.vggish_weights, "--vggish-pca": opts.vggish_pca}
    if opts.vggish_hub and not opts.vggish_hub.startswith(("http://", "https://")):
        paths["--vggish-hub"] = opts.vggish_hub
    for option, path in paths.items():
        problem = storage.unopenable(path) if path else None
        if problem:
            return f"{option} {path}: {problem}"
    return None


def add_run_arguments(parser: argparse.ArgumentParser) -> list[RunOption]:
    """Adds the options of ``actprep run`` to ``parser``; returns them, in order."""
    added: list = []
    parser = _Recorder(parser, added)
    parser.add_argument("--dataset", required=True, choices=DATASETS,
                        help="manifest kind: kinetics (Kinetics-400/600/700 annotation CSV), "
                        "mit (Moments in Time CSV) or generic (CSV/JSONL of path,label[,split])")
    parser.add_argument("--manifest", required=True,
                        help="Kinetics CSV, Moments in Time CSV, or generic CSV/JSONL")
    parser.add_argument("--video-root", help="folder holding the videos (local or gs://)")
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    parser.add_argument("--classes", help="class list fixing label indices: one name per "
                        "line, or 'name,index' lines (moments_categories.txt)")
    parser.add_argument("--split", help="split name for every row (overrides the manifest)")
    parser.add_argument("--modalities", type=_modalities, default=DEFAULT_MODALITIES,
                        help=f"comma-separated, from {','.join(MODALITIES)} (default: rgb,mfcc; "
                        "vggish needs --vggish-weights or --vggish-hub)")
    parser.add_argument("--fps", type=_positive(float), help="frame rate (default: the source's)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short-side", type=_positive(int), default=256,
                       help="resize so the short side is N, keeping aspect (default 256)")
    group.add_argument("--size", type=_size, help="resize to exactly WxH, e.g. 340x256")
    parser.add_argument("--shard-size", type=_positive(int), default=100,
                        help="manifest rows per shard, failed rows included (default 100; see "
                        "docs/FORMAT.md)")
    parser.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY,
                        choices=range(1, 101), metavar="1..100",
                        help=f"JPEG quality of the RGB and flow frames, 1..100 (default "
                        f"{DEFAULT_JPEG_QUALITY})")
    parser.add_argument("--decode-threads", type=int, default=1,
                        help="ffmpeg decoder threads per video (default 1: videos already "
                        "decode in parallel, one per worker; 0 lets ffmpeg decide)")
    parser.add_argument("--min-decoded-fraction", type=float, default=0.9,
                        help="fail a video whose decoded length is under this fraction of the "
                        "length its header declares (truncated files); 0 disables")
    defaults = MfccParams()
    for name, value in defaults.as_dict().items():
        parser.add_argument(f"--mfcc-{name.replace('_', '-')}", dest=f"mfcc_{name}",
                            type=parse_bool if isinstance(value, bool) else type(value),
                            default=value, help=f"MFCC {name} (default {value})")
    parser.add_argument("--flow-backend", choices=FLOW_BACKENDS, default="auto",
                        help="TV-L1 implementation: torch (batched and compiled, GPU or CPU) "
                        "or opencv (CPU); auto: torch, on CUDA when available, falling back "
                        "to opencv, with a warning, where torch cannot compile")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where torch flow and VGGish run (auto: cuda when available)")
    parser.add_argument("--flow-preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                        help=f"TV-L1 parameter preset (default {DEFAULT_PRESET}; tsn needs "
                        "the torch backend)")
    parser.add_argument("--flow-bound", type=_positive(float), default=DEFAULT_BOUND,
                        help=f"flow clipped to +-this many pixels before 8-bit quantization "
                        f"(default {DEFAULT_BOUND:g})")
    parser.add_argument("--flow-batch-size", type=_positive(int), default=8,
                        help="frame pairs per torch flow call (default 8)")
    parser.add_argument("--flow-device-batches", type=_positive(int), default=2,
                        help="torch flow batches a worker process runs at once, whatever its "
                        "thread count (default 2): bounds GPU memory at about this times "
                        "--flow-batch-size times 40 MiB for 340x256 frames")
    parser.add_argument("--flow-raw", action="store_true",
                        help="also store raw flow as float16 KEY.flow.NNNNNN.npy members")
    parser.add_argument("--vggish-backend", choices=VGGISH_BACKENDS, default="torch",
                        help="VGGish implementation: torch (weights from --vggish-weights) or "
                        "tfhub (tensorflow-hub model from --vggish-hub; pip install "
                        "actprep[tfhub])")
    parser.add_argument("--vggish-weights", metavar="PATH",
                        help="VGGish weights as a PyTorch state_dict in the PyTorch-port layout "
                        "(local or gs://); convert the official TF checkpoint with "
                        "'actprep vggish-convert'")
    parser.add_argument("--vggish-hub", metavar="HANDLE",
                        help="TF-Hub VGGish handle for --vggish-backend tfhub: a SavedModel "
                        "folder (local or gs://) or a tfhub.dev address")
    parser.add_argument("--vggish-pca", metavar="PATH",
                        help="PCA parameters (vggish_pca_params.npz or the port's .pth): also "
                        "write uint8 KEY.vggish_pca.npy in the AudioSet format")
    parser.add_argument("--vggish-hop", type=_positive(float), default=0.96,
                        help="seconds between VGGish example starts (default 0.96: "
                        "non-overlapping, as the reference)")
    parser.add_argument("--vggish-batch-size", type=_positive(int), default=64,
                        help="VGGish examples per forward pass (default 64)")
    parser.add_argument("--workers", type=_positive(int), metavar="N",
                        help="videos processed at once by each worker process (default: "
                        "every core on the local runner, 1 on Dataflow, whose harness "
                        "threads already run videos in parallel)")
    parser.add_argument("--ffmpeg", metavar="PATH",
                        help="decode with this ffmpeg (also $ACTPREP_FFMPEG) instead of the "
                        "one installed with actprep (imageio-ffmpeg's); it must be ffmpeg "
                        f"{'.'.join(map(str, MIN_VERSION))} or newer. The ffmpeg is part of "
                        "the run's settings and of every sample's params")
    parser.add_argument("--allow-ffmpeg-change", action="store_true",
                        help="resume an output started with another ffmpeg (its samples "
                        "keep theirs; new ones record this one)")
    parser.add_argument("--max-failed-fraction", type=_fraction, default=0.5, metavar="X",
                        help="exit with status 4 when more than this fraction of the rows "
                        "failed (default 0.5; the shards are committed all the same)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="process again the videos that failed in a media stage (fetch, "
                        "probe, decode, audio...); their committed shards are rebuilt")
    parser.add_argument("--no-wait", dest="wait", action="store_false",
                        help="remote runners (Dataflow): return once the job is submitted; "
                        "the job commits its shards and keeps the output's lock itself "
                        "(local runners always wait)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no live progress display")
    return [_described(action, group) for action, group in added]


# ------------------------------------------------------------------------ Beam's options

@functools.cache
def _beam_parser() -> argparse.ArgumentParser:
    """Beam's own parser of its pipeline options (every ``PipelineOptions`` class's), as
    ``PipelineOptions.get_all_options`` builds it: exact names, no abbreviations."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parsers: list[argparse.ArgumentParser] = []
    # get_all_options hands its parser over once every options class has filled it
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    (parser,) = parsers
    parser.exit_on_error = False  # a bad value raises, rather than printing Beam's usage
    return parser


@functools.cache
def beam_option_names() -> frozenset[str]:
    """The names of Beam's pipeline options, without dashes (``runner``, ``num_workers``):
    each option's name as ``PipelineOptions.get_all_options`` keys it, where ``--name``
    is an option Beam takes. Beam also takes a few aliases and negations
    (``--worker_machine_type``, ``--no_use_public_ips``) not listed here; whether an
    argument is Beam's is :func:`unknown_beam_args`'s to say."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return frozenset(name for name in PipelineOptions([]).get_all_options()
                     if is_beam_option(f"--{name}"))


def unknown_beam_args(args: list[str]) -> list[str]:
    """The arguments of ``args`` that Beam's pipeline options do not take (unknown options,
    their values, stray words), in order; [] when Beam takes them all. Beam's own parser
    decides (exact names, no abbreviations), as it will when the job is built. A value Beam
    refuses (``--num_workers=many``) raises ``argparse.ArgumentError``."""
    _, unknown = _beam_parser().parse_known_args(list(args))
    return unknown


def is_beam_option(option: str) -> bool:
    """Whether Beam's pipeline options take ``option`` (``--runner``; the aliases and
    negations :func:`beam_option_names` leaves out: ``--no_use_public_ips``)."""
    try:
        return not unknown_beam_args([option])
    except argparse.ArgumentError:  # Beam's parser took it, and then wanted a value
        return True

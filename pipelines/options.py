"""Options of ``actprep run``: what shapes the output, parsed apart from Beam's own."""
from __future__ import annotations

import argparse
import posixpath
from dataclasses import asdict, dataclass, field

from actprep.extractors.audio.mfcc import MfccParams
from actprep.extractors import ffmpeg_bin
from actprep.extractors.ffmpeg_bin import MIN_VERSION
from actprep.extractors.flow.engine import BACKENDS as FLOW_BACKENDS
from actprep.extractors.torch_device import DEVICES
from actprep.extractors.flow.params import DEFAULT_PRESET, PRESETS, preset
from actprep.extractors.flow.quantize import DEFAULT_BOUND
from actprep.extractors.rgb import DEFAULT_JPEG_QUALITY
from actprep.schemas.manifest import DATASETS

MODALITIES = ("rgb", "flow", "mfcc", "vggish")
# options that change how a run goes, not what its output means: a rerun may change them
# (the flow and VGGish backends and devices actually used are in each sample's metadata)
TRANSIENT = ("progress", "output", "decode_threads", "flow_backend", "device",
             "flow_batch_size", "vggish_backend", "vggish_batch_size", "retry_failed",
             "lock_token", "wait", "flow_device_batches", "workers", "unit_size", "ffmpeg",
             "allow_ffmpeg_change", "max_failed_fraction")
VGGISH_BACKENDS = ("torch", "tfhub")
DEFAULT_MODALITIES = ("rgb", "mfcc")


@dataclass(frozen=True)
class RunOptions:
    """Everything the job needs besides Beam's pipeline options. Small and picklable."""

    dataset: str
    manifest: str
    output: str
    video_root: str | None = None
    classes: str | None = None
    split: str | None = None
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    fps: float | None = None
    short_side: int | None = 256
    size: tuple[int, int] | None = None
    shard_size: int = 100
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    min_decoded_fraction: float = 0.9
    decode_threads: int = 1
    mfcc: MfccParams = field(default_factory=MfccParams)
    flow_backend: str = "auto"
    device: str = "auto"
    flow_preset: str = DEFAULT_PRESET
    flow_bound: float = DEFAULT_BOUND
    flow_batch_size: int = 8
    flow_device_batches: int = 2
    flow_raw: bool = False
    vggish_backend: str = "torch"
    vggish_weights: str | None = None
    vggish_hub: str | None = None
    vggish_pca: str | None = None
    vggish_hop: float = 0.96
    vggish_batch_size: int = 64
    retry_failed: bool = False
    progress: bool = True
    wait: bool = True
    lock_token: str | None = None  # set by the runner: whose run.lock the workers refresh
    # videos processed at once per worker process (None: the runner decides: every core
    # locally, 1 on Dataflow, whose harness threads already run elements in parallel)
    workers: int | None = None
    # videos per job element (None: a whole shard, which then commits itself; Dataflow: 1,
    # so its workers share out single videos); set by the runner, not a command option
    unit_size: int | None = None
    ffmpeg: str | None = None  # --ffmpeg: the binary asked for (None: the bundled one)
    # the version of the ffmpeg the run decodes with, set by the runner: shapes the output
    ffmpeg_version: str | None = None
    allow_ffmpeg_change: bool = False  # resume an output started with another ffmpeg
    # a run in which more than this fraction of the rows failed exits with FAILURES
    max_failed_fraction: float = 0.5

    def videos_within(self) -> str:
        """The folder no video may leave: the video root, or the manifest's folder."""
        return self.video_root or posixpath.dirname(self.manifest) or "."

    def decoder(self) -> str:
        """The version of the ffmpeg this run decodes with: the runner's pick, else this
        process's (``ffmpeg_bin.chosen``)."""
        return self.ffmpeg_version or ffmpeg_bin.chosen().version

    def flow_params(self) -> dict:
        """Flow settings that shape the output: preset name, its TV-L1 parameters, the
        quantization bound and whether raw flow is stored."""
        return {"preset": self.flow_preset, "tvl1": preset(self.flow_preset).as_dict(),
                "bound": self.flow_bound, "raw": self.flow_raw}

    def vggish_params(self) -> dict:
        """VGGish settings that shape the output: weight sources and the example hop."""
        return {"weights": self.vggish_weights, "hub": self.vggish_hub, "pca": self.vggish_pca,
                "hop_seconds": self.vggish_hop}

    def extractor_params(self, ran: dict | None = None) -> dict:
        """The parameters that shape a sample, as recorded in its metadata; ``ran`` holds,
        per modality ("flow", "vggish"), what actually computed it (backend, device), not
        what was requested."""
        ran = ran or {}
        params: dict = {"ffmpeg": self.decoder(),
                         "modalities": list(self.modalities), "fps": self.fps,
                        "short_side": self.short_side,
                        "size": list(self.size) if self.size else None}
        if "rgb" in self.modalities:
            params["rgb"] = {"jpeg_quality": self.jpeg_quality}
        if "flow" in self.modalities:
            params["flow"] = {**self.flow_params(), **ran.get("flow", {})}
        if "mfcc" in self.modalities:
            params["mfcc"] = self.mfcc.as_dict()
        if "vggish" in self.modalities:
            params["vggish"] = {**self.vggish_params(), **ran.get("vggish", {})}
        return params

    def as_dict(self) -> dict:
        return asdict(self)


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


_fraction.kind = float  # read by the Flex Template metadata (commands/flex.py)


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value
    parse.kind = kind  # read by the Flex Template metadata (commands/flex.py)
    return parse


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
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
                            type=_bool if isinstance(value, bool) else type(value),
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


TRUE_WORDS = ("true", "1", "yes")  # what a boolean value accepts, case-insensitive
FALSE_WORDS = ("false", "0", "no")


def _bool(text: str) -> bool:
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def run_options_from_args(args: argparse.Namespace) -> RunOptions:
    mfcc = MfccParams(**{k: getattr(args, f"mfcc_{k}") for k in MfccParams().as_dict()})
    return RunOptions(
        dataset=args.dataset, manifest=args.manifest, output=args.output.rstrip("/"),
        video_root=args.video_root.rstrip("/") if args.video_root else None,
        classes=args.classes, split=args.split, modalities=args.modalities, fps=args.fps,
        short_side=None if args.size else args.short_side, size=args.size,
        shard_size=args.shard_size, jpeg_quality=args.jpeg_quality,
        min_decoded_fraction=args.min_decoded_fraction, decode_threads=args.decode_threads,
        mfcc=mfcc, flow_backend=args.flow_backend, device=args.device,
        flow_preset=args.flow_preset, flow_bound=args.flow_bound,
        flow_batch_size=args.flow_batch_size, flow_raw=args.flow_raw,
        flow_device_batches=args.flow_device_batches,
        vggish_backend=args.vggish_backend, vggish_weights=args.vggish_weights,
        vggish_hub=args.vggish_hub, vggish_pca=args.vggish_pca, vggish_hop=args.vggish_hop,
        vggish_batch_size=args.vggish_batch_size, retry_failed=args.retry_failed, wait=args.wait,
        progress=args.progress, workers=args.workers, ffmpeg=args.ffmpeg,
        allow_ffmpeg_change=args.allow_ffmpeg_change,
        max_failed_fraction=args.max_failed_fraction,
    )

"""The options of an actprep run (:class:`RunOptions`): what shapes the output and how the
job goes, apart from Beam's own pipeline options.

This is the record the job needs, with its defaults; the ``actprep run`` command line that
fills it (argparse, the Flex Template's parameters) is :mod:`actprep.commands.runargs`.
"""
from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from actprep.extractors.audio.mfcc import MfccParams
from actprep.extractors import ffmpeg_bin
from actprep.extractors.flow.params import DEFAULT_PRESET, preset
from actprep.extractors.flow.quantize import DEFAULT_BOUND
from actprep.extractors.rgb import DEFAULT_JPEG_QUALITY
from actprep.schemas.sample import STAGES

# what --modalities may name: the run modalities of the sample layout table
# (schemas/sample.py MEMBERS), so a new modality is a row there
MODALITIES = STAGES
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

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "RunOptions":
        """The options from flat values by field name, as a command line gives them: the
        MFCC parameters as ``mfcc_<name>``, ``short_side`` ignored when a ``size`` is given,
        trailing slashes of the output and video root dropped. Every other field is read
        as it is, except those the runner sets (:data:`RUNNER_FIELDS`); keys that are not
        fields (a command's own) are ignored."""
        mfcc = MfccParams(**{k: values[f"mfcc_{k}"] for k in MfccParams().as_dict()})
        kept = {f.name: values[f.name] for f in fields(cls)
                if f.name not in _SHAPED and f.name not in RUNNER_FIELDS}
        video_root = values["video_root"]
        return cls(**kept, mfcc=mfcc, output=values["output"].rstrip("/"),
                   video_root=video_root.rstrip("/") if video_root else None,
                   short_side=None if values["size"] else values["short_side"])


# the fields the runner sets, not a command line: from_values leaves them at their default
RUNNER_FIELDS = ("lock_token", "unit_size", "ffmpeg_version")
# the fields from_values shapes from the values (the others it copies)
_SHAPED = ("mfcc", "output", "video_root", "short_side")

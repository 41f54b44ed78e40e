"""Sample layout v1: the members one video becomes inside a shard, and how to read them.

A sample is the set of tar members sharing a key (WebDataset: the member name up to its
first dot). Members, with KEY the sample key:

- ``KEY.json``            metadata (see ``sample_metadata``), UTF-8 JSON with sorted keys
- ``KEY.cls``             label index as ASCII digits; absent for unlabelled videos
- ``KEY.rgb.NNNNNN.jpg``  RGB frame N (1-based, 6 digits) as JPEG, so sorting is time order
- ``KEY.flow_x.NNNNNN.jpg``, ``KEY.flow_y.NNNNNN.jpg``  flow N (frame N to N+1, 1-based)
  as grayscale JPEGs of the TSN-quantized components (see ``extractors/flow/quantize.py``)
- ``KEY.flow.NNNNNN.npy`` float16 [2, H, W] raw flow N (u, v), only with ``--flow-raw``
- ``KEY.mfcc.npy``        float32 [n_mfcc, T] MFCC matrix; absent without audio
- ``KEY.vggish.npy``      float32 [n, 128] raw VGGish embeddings (one per example, 0.96 s
  each, every ``--vggish-hop`` seconds; n = 0 for audio under 0.96 s); absent without audio
- ``KEY.vggish_pca.npy``  uint8 [n, 128] PCA-postprocessed embeddings (AudioSet format),
  only with ``--vggish-pca``

Only stock WebDataset extensions are used, so ``webdataset`` decodes samples without actprep.
Tar headers are fixed (mtime 0, uid/gid 0, no user names, mode 0444) so equal inputs give
byte-identical shards.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from actprep.schemas.version import ACTPREP_VERSION, LAYOUT_VERSION

FRAME_DIGITS = 6
TAR_FORMAT = tarfile.PAX_FORMAT


@dataclass(frozen=True)
class MemberKind:
    """One family of sample members: its suffix, what needs it, where it sits in a sample
    and what its bytes must be. The writer, ``actprep verify``, the readers and retry all
    work from ``MEMBERS``, so a new modality is a row here, its extractor and its stage."""

    family: str  # the suffix up to its first dot: "rgb", "flow_x", "mfcc", ...
    extension: str  # "jpg", "npy", "json", "cls": a stock WebDataset decoder's
    modality: str | None  # the reader modality that reads it; None: every sample (json, cls)
    stage: str | None  # the run modality (``--modalities``) that writes it; None: always
    order: tuple[int, int]  # (place in a sample, place among one frame's numbered members)
    numbered: bool = False  # one member per frame or flow, numbered 1..N (FRAME_DIGITS)
    counted_by: str | None = None  # the index row field that says how many (numbered) or,
    #                                when not null, that the single member is there
    always: bool = False  # a single member every sample has
    optional: bool = False  # numbered members that a run's options may leave out
    channels: int | None = None  # a JPEG's channels
    dtype: str | None = None  # an .npy's dtype
    shape: tuple[int | str | None, ...] = ()  # an .npy's shape: sizes, index row fields
    #                                            (their value), None (any size)

    def suffix(self, number: int | None = None) -> str:
        """The member suffix (after ``KEY.``): ``rgb.000007.jpg``, ``mfcc.npy``, ``json``."""
        if self.numbered:
            return f"{self.family}.{number:0{FRAME_DIGITS}d}.{self.extension}"
        return self.extension if self.family == self.extension else \
            f"{self.family}.{self.extension}"

    def rank(self, number: int | None) -> tuple[int, int, int]:
        """Sort key of the documented member order within a sample."""
        return self.order[0], number or 0, self.order[1]


MEMBERS = (
    MemberKind("cls", "cls", None, None, (0, 0), counted_by="label_index"),
    MemberKind("rgb", "jpg", "rgb", "rgb", (1, 0), numbered=True, counted_by="frames",
               channels=3),
    MemberKind("flow_x", "jpg", "flow", "flow", (1, 1), numbered=True, counted_by="flow_pairs",
               channels=1),
    MemberKind("flow_y", "jpg", "flow", "flow", (1, 2), numbered=True, counted_by="flow_pairs",
               channels=1),
    MemberKind("flow", "npy", "flow", "flow", (1, 3), numbered=True, counted_by="flow_pairs",
               optional=True, dtype="float16", shape=(2, "height", "width")),
    MemberKind("mfcc", "npy", "audio", "mfcc", (2, 0), counted_by="mfcc_frames", dtype="float32",
               shape=(None, "mfcc_frames")),
    MemberKind("vggish", "npy", "audio", "vggish", (3, 0), counted_by="vggish_examples",
               dtype="float32", shape=("vggish_examples", 128)),
    MemberKind("vggish_pca", "npy", "audio", "vggish", (4, 0), dtype="uint8",
               shape=("vggish_examples", 128)),
    MemberKind("json", "json", None, None, (5, 0), always=True),
)
KINDS = {kind.family: kind for kind in MEMBERS}
MODALITIES = ("rgb", "flow", "audio")  # what a reader can ask for
STAGES = tuple(dict.fromkeys(k.stage for k in MEMBERS if k.stage))  # what a run can write

JSON = KINDS["json"].suffix()
CLS = KINDS["cls"].suffix()
MFCC = KINDS["mfcc"].suffix()
VGGISH = KINDS["vggish"].suffix()
VGGISH_PCA = KINDS["vggish_pca"].suffix()
rgb_suffix = KINDS["rgb"].suffix  # frame N (1-based, as mmaction2's rawframes)
flow_x_suffix = KINDS["flow_x"].suffix  # flow N: frame N to N+1, 1-based
flow_y_suffix = KINDS["flow_y"].suffix
flow_raw_suffix = KINDS["flow"].suffix  # float16 [2, H, W], with --flow-raw
AUDIO = {kind.family: kind.suffix() for kind in MEMBERS if kind.modality == "audio"}


def member_name(key: str, suffix: str) -> str:
    return f"{key}.{suffix}"


def split_member(name: str) -> tuple[str, str]:
    """(key, suffix) of a member name: the key ends at the first dot (WebDataset's rule)."""
    key, _, suffix = name.partition(".")
    return key, suffix


def member_key(name: str) -> str:
    return name.split(".", 1)[0]


def family(suffix: str) -> str:
    """The family of a member suffix (``flow_x.000003.jpg`` -> ``flow_x``)."""
    return suffix.split(".", 1)[0]


def parse_suffix(suffix: str) -> tuple[MemberKind, int | None] | None:
    """(kind, frame number or None) of a member suffix as the writer names it; None if it
    is not in the layout or not canonically numbered."""
    kind = KINDS.get(family(suffix))
    if kind is None:
        return None
    if not kind.numbered:
        return (kind, None) if suffix == kind.suffix() else None
    parts = suffix.split(".")
    if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
        return None
    number = int(parts[1])
    return (kind, number) if kind.suffix(number) == suffix else None


def families(modalities: frozenset[str] | set[str]) -> frozenset[str]:
    """The member families a reader of ``modalities`` reads: theirs, plus json and cls."""
    return frozenset(k.family for k in MEMBERS if k.modality is None or k.modality in modalities)


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with every varying field fixed, for reproducible shards."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def npy_bytes(array: np.ndarray) -> bytes:
    """``.npy`` bytes, never pickled."""
    buf = io.BytesIO()
    array = np.asarray(array)
    np.save(buf, array if array.ndim == 0 else np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_bytes(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def cls_bytes(label_index: int) -> bytes:
    return str(int(label_index)).encode()


def sample_metadata(*, key: str, dataset: str, split: str | None, label: str | None,
                    label_index: int | None, source_path: str, source_bytes: int,
                    duration: float | None, fps: float, frames: int, width: int, height: int,
                    audio_sample_rate: int | None, source: Mapping[str, Any],
                    params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``KEY.json`` document. ``source`` describes the input file as probed (codec,
    size, fps, audio); ``params`` holds the extractor parameters that shaped the sample."""
    return {
        "key": key,
        "dataset": dataset,
        "split": split,
        "label": label,
        "label_index": label_index,
        "source_path": source_path,
        "source_bytes": source_bytes,
        "duration": duration,
        "fps": fps,
        "frames": frames,
        "width": width,
        "height": height,
        "audio_sample_rate": audio_sample_rate,
        "source": dict(source),
        "params": dict(params),
        "layout_version": LAYOUT_VERSION,
        "actprep_version": ACTPREP_VERSION,
    }


def _numbered(sample: Mapping[str, Any], family_name: str, what: str) -> list[str]:
    """Member suffixes of a numbered family in number order; they must be numbered 1..N."""
    found = sorted((parsed[1], k) for k in sample if family(k) == family_name
                   and (parsed := parse_suffix(k)) is not None)
    if [n for n, _ in found] != list(range(1, len(found) + 1)):
        raise ValueError(f"sample {sample.get('__key__')}: {what} are not numbered 1..N")
    return [k for _, k in found]


def _jpeg(data: bytes, flags: int) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def dequantize_flow(q: np.ndarray, bound: float) -> np.ndarray:
    """Inverse of the TSN flow quantization of ``extractors/flow/quantize.py`` (which uses
    this one): ``f = q * 2 bound / 255 - bound``, float32. Here so readers need no extractor."""
    return np.asarray(q, np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def _decode_flow(sample: Mapping[str, Any], meta: Mapping[str, Any]) -> np.ndarray | None:
    """float32 [F-1, 2, H, W] from the raw ``.npy`` members when present, else dequantized
    from the x/y JPEGs; None when the sample has no flow."""
    import cv2

    raw = _numbered(sample, "flow", "raw flows")
    if raw:
        return np.stack([np.load(io.BytesIO(sample[k]), allow_pickle=False) for k in raw]
                        ).astype(np.float32)
    xs = _numbered(sample, "flow_x", "flow x members")
    ys = _numbered(sample, "flow_y", "flow y members")
    if len(xs) != len(ys):
        raise ValueError(f"sample {sample.get('__key__')}: {len(xs)} flow x members but "
                         f"{len(ys)} flow y members")
    flow_params = meta.get("params", {}).get("flow")
    if not xs:
        if flow_params is None:
            return None
        return np.zeros((0, 2, meta["height"], meta["width"]), np.float32)
    bound = float(flow_params["bound"])
    q = np.stack([np.stack([_jpeg(sample[x], cv2.IMREAD_GRAYSCALE),
                            _jpeg(sample[y], cv2.IMREAD_GRAYSCALE)]) for x, y in zip(xs, ys)])
    return dequantize_flow(q, bound)


def decode_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Turns one raw WebDataset sample (``{"__key__": ..., suffix: bytes}``, as
    ``webdataset.WebDataset(url)`` yields without a decoder) into arrays:
    ``key``, ``meta`` (dict), ``label`` (int or None), ``rgb`` (uint8 [T, H, W, 3], RGB),
    ``flow`` (float32 [T-1, 2, H, W] in pixels, or None without flow; from the raw
    float16 members when present, else dequantized from the JPEGs),
    ``mfcc`` (float32 [n_mfcc, T] or None), ``vggish`` (float32 [n, 128] or None),
    ``vggish_pca`` (uint8 [n, 128] or None)."""
    import cv2  # local: only readers need it

    frames = _numbered(sample, "rgb", "RGB frames")
    rgb = [_jpeg(sample[k], cv2.IMREAD_COLOR)[:, :, ::-1] for k in frames]
    meta = json.loads(sample[JSON])
    return {
        "key": sample.get("__key__", meta["key"]),
        "meta": meta,
        "label": int(sample[CLS]) if CLS in sample else None,
        "rgb": np.stack(rgb) if rgb else np.zeros((0, meta["height"], meta["width"], 3), np.uint8),
        "flow": _decode_flow(sample, meta),
        **{name: _npy(sample, suffix) for name, suffix in AUDIO.items()},
    }


def _npy(sample: Mapping[str, Any], suffix: str) -> np.ndarray | None:
    return np.load(io.BytesIO(sample[suffix]), allow_pickle=False) if suffix in sample else None


def iter_samples(urls: Any) -> Any:
    """Samples of the shards at ``urls`` (a path, a brace pattern or a list; local or
    any URL webdataset opens) as ``decode_sample`` dicts, in shard order."""
    import webdataset as wds  # local: writers do not need it

    return map(decode_sample, wds.WebDataset(urls, shardshuffle=False))

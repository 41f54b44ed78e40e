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
import re
import tarfile
from typing import Any, Mapping

import numpy as np

from actprep.schemas.version import ACTPREP_VERSION, LAYOUT_VERSION

FRAME_DIGITS = 6
JSON = "json"
CLS = "cls"
MFCC = "mfcc.npy"
VGGISH = "vggish.npy"
VGGISH_PCA = "vggish_pca.npy"
_RGB = re.compile(r"^rgb\.(\d+)\.jpg$")
_FLOW_X = re.compile(r"^flow_x\.(\d+)\.jpg$")
_FLOW_Y = re.compile(r"^flow_y\.(\d+)\.jpg$")
_FLOW_RAW = re.compile(r"^flow\.(\d+)\.npy$")
TAR_FORMAT = tarfile.PAX_FORMAT


def rgb_suffix(number: int) -> str:
    """Member suffix of RGB frame ``number`` (1-based, as mmaction2's rawframes)."""
    return f"rgb.{number:0{FRAME_DIGITS}d}.jpg"


def flow_x_suffix(number: int) -> str:
    """Member suffix of the x component of flow ``number`` (frame N to N+1, 1-based)."""
    return f"flow_x.{number:0{FRAME_DIGITS}d}.jpg"


def flow_y_suffix(number: int) -> str:
    """Member suffix of the y component of flow ``number``."""
    return f"flow_y.{number:0{FRAME_DIGITS}d}.jpg"


def flow_raw_suffix(number: int) -> str:
    """Member suffix of raw flow ``number`` (float16 [2, H, W], with ``--flow-raw``)."""
    return f"flow.{number:0{FRAME_DIGITS}d}.npy"


def member_name(key: str, suffix: str) -> str:
    return f"{key}.{suffix}"


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


def _numbered(sample: Mapping[str, Any], pattern: re.Pattern, what: str) -> list[str]:
    """Member suffixes matching ``pattern`` in number order; they must be numbered 1..N."""
    found = sorted((int(m.group(1)), k) for k in sample if (m := pattern.match(k)))
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

    raw = _numbered(sample, _FLOW_RAW, "raw flows")
    if raw:
        return np.stack([np.load(io.BytesIO(sample[k]), allow_pickle=False) for k in raw]
                        ).astype(np.float32)
    xs = _numbered(sample, _FLOW_X, "flow x members")
    ys = _numbered(sample, _FLOW_Y, "flow y members")
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

    frames = _numbered(sample, _RGB, "RGB frames")
    rgb = [_jpeg(sample[k], cv2.IMREAD_COLOR)[:, :, ::-1] for k in frames]
    meta = json.loads(sample[JSON])
    return {
        "key": sample.get("__key__", meta["key"]),
        "meta": meta,
        "label": int(sample[CLS]) if CLS in sample else None,
        "rgb": np.stack(rgb) if rgb else np.zeros((0, meta["height"], meta["width"], 3), np.uint8),
        "flow": _decode_flow(sample, meta),
        "mfcc": _npy(sample, MFCC),
        "vggish": _npy(sample, VGGISH),
        "vggish_pca": _npy(sample, VGGISH_PCA),
    }


def _npy(sample: Mapping[str, Any], suffix: str) -> np.ndarray | None:
    return np.load(io.BytesIO(sample[suffix]), allow_pickle=False) if suffix in sample else None


def iter_samples(urls: Any) -> Any:
    """Samples of the shards at ``urls`` (a path, a brace pattern or a list; local or
    any URL webdataset opens) as ``decode_sample`` dicts, in shard order."""
    import webdataset as wds  # local: writers do not need it

    return map(decode_sample, wds.WebDataset(urls, shardshuffle=False))

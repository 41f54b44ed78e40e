"""``ActprepDataset``: a PyTorch iterable dataset over actprep shards for trainers.

It streams the shards with ``webdataset.WebDataset`` (local paths, ``gs://`` or any URL
webdataset opens), picks frame numbers with ``actprep.readers.sampling`` (TSN segments or
dense clips) and decodes **only the JPEGs at those numbers**: a video's other members are read
from the tar but never decoded, and members of modalities not asked for are skipped unread.

    from torch.utils.data import DataLoader
    from actprep.readers import ActprepDataset

    ds = ActprepDataset("out/shard-{000000..000009}.tar", modality="rgb+flow",
                        sampling="tsn", mode="train", seed=0)
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in DataLoader(ds, batch_size=8, num_workers=4):
            batch["rgb"]    # uint8   [B, 3, 3, H, W]   (segments, RGB, H, W)
            batch["flow"]   # float32 [B, 3, 10, H, W]  (segments, x1 y1 ... x5 y5, H, W) px
            batch["label"]  # int64   [B]               (-1 for unlabelled videos)

Sample dicts: ``key`` (str), ``label`` (int, -1 without ``KEY.cls``), with RGB ``rgb`` uint8
``[T, 3, H, W]`` (RGB order, 0..255: normalise on the GPU) and ``rgb_indices`` int64 ``[T]``;
with flow ``flow`` float32 ``[T, 2L, H, W]`` in pixels (x and y interleaved per field:
x1, y1, x2, y2, ..., TSN's 10-channel input for L=5; from the raw ``KEY.flow.N.npy`` members
when present, else the JPEGs dequantized with the sample's ``params.flow.bound``) and
``flow_indices`` int64 ``[T, L]`` (flow N = frame N to N+1); with audio ``mfcc`` float32
``[n_mfcc, T']``, ``vggish`` float32 ``[n, 128]``, ``vggish_pca`` uint8 ``[n, 128]``, each
only when the sample has it. TSN: T = ``num_segments`` and L = ``new_length`` for flow (1 for
RGB). Clips: T = ``num_clips * clip_len`` (clip after clip) and L = 1.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from actprep.readers.sampling import MODES, clip_indices, tsn_indices
from actprep.schemas.sample import (CLS, JSON, MFCC, VGGISH, VGGISH_PCA, dequantize_flow,
                                    flow_raw_suffix, flow_x_suffix, flow_y_suffix, rgb_suffix)

MODALITIES = ("rgb", "flow", "audio")
SAMPLINGS = ("tsn", "clip")
AUDIO = {"mfcc": MFCC, "vggish": VGGISH, "vggish_pca": VGGISH_PCA}
# member families (the suffix up to its first dot) each modality needs; json and cls always
_FAMILIES = {"rgb": {"rgb"}, "flow": {"flow_x", "flow_y", "flow"},
             "audio": {"mfcc", "vggish", "vggish_pca"}}
DEFAULT_TRAIN_SHUFFLE = 100


def parse_modality(modality: str) -> frozenset[str]:
    """``"rgb+flow"`` -> {"rgb", "flow"}; any ``+``-joined subset of rgb, flow, audio."""
    parts = frozenset(p.strip() for p in modality.split("+"))
    if not parts or not parts <= set(MODALITIES):
        raise ValueError(f"modality must join {MODALITIES} with '+', got {modality!r}")
    return parts


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The train-mode generator of one sample: a function of (seed, epoch, key) only, so
    the sampling does not depend on worker count, shard order or shuffling."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return np.random.default_rng([seed, epoch, int.from_bytes(digest, "little")])


def _member(sample: Mapping[str, Any], suffix: str) -> bytes:
    try:
        return sample[suffix]
    except KeyError:
        raise ValueError(f"sample {sample.get('__key__')}: member {suffix} is missing") from None


def _jpeg(data: bytes, flags: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ValueError("undecodable JPEG member")
    return image


def _count(sample: Mapping[str, Any], prefix: str, suffix: str) -> int:
    return sum(1 for k in sample if k.startswith(prefix) and k.endswith(suffix))


def decode_rgb(sample: Mapping[str, Any], numbers: np.ndarray) -> torch.Tensor:
    """uint8 [T, 3, H, W] (RGB) of frames ``numbers`` (1-based, any shape, flattened);
    each distinct frame is decoded once."""
    numbers = np.asarray(numbers).ravel()
    cache: dict[int, np.ndarray] = {}
    out = None
    for i, n in enumerate(numbers.tolist()):
        if n not in cache:
            cache[n] = _jpeg(_member(sample, rgb_suffix(n)), cv2.IMREAD_COLOR)
        bgr = cache[n]
        if out is None:
            out = np.empty((len(numbers), 3, *bgr.shape[:2]), np.uint8)
        blue, green, red = cv2.split(bgr)  # planar copies: 2.5x faster than a strided one
        out[i, 0], out[i, 1], out[i, 2] = red, green, blue
    return torch.from_numpy(out)


def decode_flow(sample: Mapping[str, Any], numbers: np.ndarray, bound: float | None
                ) -> torch.Tensor:
    """float32 [S, 2L, H, W] in pixels for flow numbers ``[S, L]``, channels x1, y1, ...,
    xL, yL: raw float16 members when the sample has them, else the quantized JPEGs
    dequantized with ``bound``. Each distinct flow is decoded once."""
    numbers = np.asarray(numbers)
    segments, length = numbers.shape
    raw = flow_raw_suffix(1) in sample
    cache: dict[int, np.ndarray] = {}
    out = None
    for i, n in enumerate(numbers.ravel().tolist()):
        if n not in cache:
            if raw:
                cache[n] = np.load(io.BytesIO(_member(sample, flow_raw_suffix(n))),
                                   allow_pickle=False)
            else:
                cache[n] = np.stack([
                    _jpeg(_member(sample, flow_x_suffix(n)), cv2.IMREAD_GRAYSCALE),
                    _jpeg(_member(sample, flow_y_suffix(n)), cv2.IMREAD_GRAYSCALE)])
        field = cache[n]
        if out is None:
            out = np.empty((numbers.size, *field.shape), field.dtype)
        out[i] = field
    flow = out.astype(np.float32) if raw else dequantize_flow(out, float(bound))
    return torch.from_numpy(flow.reshape(segments, 2 * length, *flow.shape[2:]))


def _npy(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))


class ActprepDataset(IterableDataset):
    """Sampled, decoded videos of actprep shards (see the module docstring for the output).

    ``urls``: a path or URL, a brace pattern (``out/shard-{000000..000009}.tar``; ``::``
    joins several) or a list of them. ``modality``: ``+``-joined subset of rgb, flow, audio.
    ``sampling``: ``"tsn"`` (``num_segments`` segments; one RGB frame and ``new_length``
    flows each) or ``"clip"`` (``num_clips`` clips of ``clip_len`` frames every
    ``frame_interval``; flow is sampled as frames, ``clip_len`` flows at the same stride).
    ``mode``: ``"train"`` (random offsets from ``sample_rng(seed, epoch, key)``: reproducible;
    call ``set_epoch`` every epoch for new draws) or ``"test"`` (deterministic centres).

    Shards are split across DataLoader workers and ``torch.distributed`` ranks (webdataset's
    ``split_by_worker`` / ``split_by_node``), so every sample comes once per epoch when the
    shards outnumber the workers; extra workers get nothing. ``shardshuffle`` (default: on in
    train mode) permutes the shard list with ``(seed, epoch)`` before the split;
    ``shuffle`` is a buffer of raw samples (default 100 in train mode, 0 in test mode; it
    holds the samples' bytes, a few MB per video). ``transform``, when given, maps each output
    dict (in the worker): crop or resize there so that ``default_collate`` can batch videos
    of different sizes.
    """

    def __init__(self, urls: str | os.PathLike | Sequence[str | os.PathLike], *,
                 modality: str = "rgb", sampling: str = "tsn", mode: str = "train",
                 num_segments: int = 3, new_length: int = 5, clip_len: int = 32,
                 frame_interval: int = 2, num_clips: int = 1, seed: int = 0,
                 shardshuffle: bool | None = None, shuffle: int | None = None,
                 transform: Callable[[dict], dict] | None = None) -> None:
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.urls = _expand(urls)
        self.modalities = parse_modality(modality)
        self.sampling, self.mode = sampling, mode
        self.num_segments, self.new_length = num_segments, new_length
        self.clip_len, self.frame_interval, self.num_clips = clip_len, frame_interval, num_clips
        self.seed, self.epoch = int(seed), 0
        self.shardshuffle = (mode == "train") if shardshuffle is None else shardshuffle
        train_buffer = DEFAULT_TRAIN_SHUFFLE if mode == "train" else 0
        self.shuffle = train_buffer if shuffle is None else int(shuffle)
        self.transform = transform
        self._families = {"json", "cls"}.union(*(_FAMILIES[m] for m in self.modalities))

    def set_epoch(self, epoch: int) -> None:
        """New shard order and train-mode offsets for ``epoch`` (as DistributedSampler)."""
        self.epoch = int(epoch)

    def shard_order(self) -> list[str]:
        """This epoch's shard list, before the split across ranks and workers."""
        urls = list(self.urls)
        if self.shardshuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(urls)
        return urls

    def wanted(self, name: str) -> bool:
        """Whether tar member ``name`` is read at all: json, cls and the asked modalities."""
        suffix = os.path.basename(name).split(".", 1)[-1]
        return suffix.split(".", 1)[0] in self._families

    def raw_samples(self) -> Iterator[dict[str, Any]]:
        """Undecoded samples (``{"__key__": ..., suffix: bytes}``) of this worker's shards."""
        pipeline = wds.WebDataset(self.shard_order(), shardshuffle=False,
                                  nodesplitter=wds.split_by_node,
                                  workersplitter=wds.split_by_worker,
                                  select_files=self.wanted, empty_check=False)
        if self.shuffle > 0:
            info = get_worker_info()
            worker = info.id if info is not None else 0
            rng = random.Random(f"{self.seed}:{self.epoch}:{worker}")
            pipeline = pipeline.shuffle(self.shuffle, rng=rng)
        return iter(pipeline)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.raw_samples():
            out = self.decode(sample)
            yield self.transform(out) if self.transform is not None else out

    def decode(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """One raw sample to the output dict: sample frame numbers, decode those members."""
        key = sample["__key__"]
        meta = json.loads(_member(sample, JSON))
        rng = sample_rng(self.seed, self.epoch, key) if self.mode == "train" else None
        out: dict[str, Any] = {"key": key,
                               "label": int(sample[CLS]) if CLS in sample else -1}
        if "rgb" in self.modalities:
            frames = _count(sample, "rgb.", ".jpg")
            if frames == 0:
                raise ValueError(f"sample {key}: no RGB frames (extracted without rgb)")
            numbers = self._numbers(frames, 1, rng).ravel()
            out["rgb"] = decode_rgb(sample, numbers)
            out["rgb_indices"] = torch.from_numpy(numbers)
        if "flow" in self.modalities:
            flows = _count(sample, "flow_x.", ".jpg") or _count(sample, "flow.", ".npy")
            if flows == 0:
                raise ValueError(f"sample {key}: no flow (extracted without flow, or a "
                                 "single-frame video)")
            numbers = self._numbers(flows, self.new_length, rng)
            bound = (meta.get("params", {}).get("flow") or {}).get("bound")
            if bound is None and flow_raw_suffix(1) not in sample:
                raise ValueError(f"sample {key}: no params.flow.bound in its metadata")
            out["flow"] = decode_flow(sample, numbers, bound)
            out["flow_indices"] = torch.from_numpy(numbers)
        if "audio" in self.modalities:
            out.update({name: _npy(sample[suffix]) for name, suffix in AUDIO.items()
                        if suffix in sample})
        return out

    def _numbers(self, count: int, length: int, rng: np.random.Generator | None
                 ) -> np.ndarray:
        """[T, L] 1-based numbers among ``count`` frames or flows (L = 1 for clips)."""
        if self.sampling == "tsn":
            return tsn_indices(count, self.num_segments, length, self.mode, rng)
        clips = clip_indices(count, self.clip_len, self.frame_interval, self.mode,
                             self.num_clips, rng)
        return clips.reshape(-1, 1)


def _expand(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A list of shard URLs: brace patterns and ``::`` lists expanded."""
    if isinstance(urls, (str, os.PathLike)):
        urls = [urls]
    expanded = [u for url in urls for u in wds.shardlists.expand_urls(os.fspath(url))]
    if not expanded:
        raise ValueError("no shard URLs given")
    return expanded


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` for the fixed-size entries; audio arrays (their lengths vary with
    the video's) and entries some samples lack are returned as lists (None where absent)."""
    names = dict.fromkeys(k for sample in batch for k in sample)
    out: dict[str, Any] = {}
    for name in names:
        values = [sample.get(name) for sample in batch]
        ragged = name in AUDIO or any(v is None for v in values)
        out[name] = values if ragged else default_collate(values)
    return out

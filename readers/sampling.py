"""Frame sampling of the action-recognition literature, as pure index arithmetic (numpy only).

Every function returns a 2-D numpy int64 array of **1-based** frame numbers (the numbering of
the ``KEY.rgb.NNNNNN.jpg`` members; for flow, the numbering of the flow members, where flow N
is the motion from frame N to N+1, so a video of F frames has F-1 flows: pass
``num_frames=F-1``). Every returned number is in ``1..num_frames``.

- ``tsn_indices``: Temporal Segment Networks (Wang et al. 2016). ``num_segments`` equal
  segments over the whole video, one snippet of ``length`` consecutive frames per segment
  (``length=1`` for RGB, 5 for the 10-channel flow stack). Shape ``[num_segments, length]``.
- ``clip_indices``: dense clips for 3D networks (I3D, non-local): ``clip_len`` frames every
  ``interval`` frames (32 x 2: a 63-frame span). Shape ``[num_clips, clip_len]``.

Train mode draws from the ``numpy.random.Generator`` passed in (seed it for reproducible runs);
test mode is deterministic and ignores ``rng``.
"""
from __future__ import annotations

import numpy as np

MODES = ("train", "test")


def _check(num_frames: int, count: int, length: int, mode: str) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if count < 1 or length < 1:
        raise ValueError(f"segment/clip count and length must be >= 1, got {count}, {length}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def train_offsets(num_frames: int, span: int, count: int,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """0-based start offsets of ``count`` windows of ``span`` frames, train mode.

    mmaction2's ``SampleFrames._get_train_clips`` (``keep_tail_frames=False``), which is
    TSN's ``_sample_indices`` with two safer short-video branches. With
    ``avail = num_frames - span + 1`` valid starts and ``seg = avail // count``:

    1. ``seg > 0``: segment i covers starts ``[i*seg, (i+1)*seg)``; one uniform draw in each
       (the last ``avail % count`` starts are never used, as in TSN);
    2. else, if ``num_frames > max(count, span)``: ``count`` sorted uniform draws in
       ``[0, avail)`` (repeats possible);
    3. else, if ``0 <= avail < count``: evenly spread, ``round(i * avail / count)``;
    4. else (the video is shorter than one window): all zeros.
    """
    rng = rng if rng is not None else np.random.default_rng()
    avail = num_frames - span + 1
    seg = avail // count
    if seg > 0:
        return np.arange(count) * seg + rng.integers(seg, size=count)
    if num_frames > max(count, span):
        return np.sort(rng.integers(avail, size=count))
    if seg == 0:
        return np.around(np.arange(count) * avail / count).astype(np.int64)
    return np.zeros(count, np.int64)


def tsn_test_offsets(num_frames: int, length: int, count: int) -> np.ndarray:
    """0-based snippet starts at the centre of each of ``count`` segments, test mode.

    TSN's ``_get_test_indices`` (and mmaction2 0.x's test ``SampleFrames``): with
    ``avail = num_frames - length + 1`` valid starts, start i is
    ``floor((i + 0.5) * avail / count)``, computed exactly in integers. With fewer starts
    than segments, neighbouring segments share a start; with no valid start (the video is
    shorter than one snippet), all starts are 0."""
    avail = num_frames - length + 1
    if avail < 1:
        return np.zeros(count, np.int64)
    return (2 * np.arange(count) + 1) * avail // (2 * count)


def tsn_indices(num_frames: int, num_segments: int = 3, length: int = 1, mode: str = "train",
                rng: np.random.Generator | None = None) -> np.ndarray:
    """TSN snippets: int64 ``[num_segments, length]`` 1-based frame (or flow) numbers.

    Starts from ``train_offsets`` (random within each segment) or ``tsn_test_offsets``
    (segment centres); a snippet is ``length`` consecutive numbers from its start. Numbers past
    the end are **clipped to the last frame** (the last one repeats, as TSN's loader, which
    stops advancing at ``num_frames``), so a 3-flow video gives the stack 1, 2, 3, 3, 3.
    """
    _check(num_frames, num_segments, length, mode)
    if mode == "train":
        starts = train_offsets(num_frames, length, num_segments, rng)
    else:
        starts = tsn_test_offsets(num_frames, length, num_segments)
    frames = starts[:, None] + np.arange(length)[None, :]
    return np.minimum(frames, num_frames - 1).astype(np.int64) + 1


def clip_span(clip_len: int, interval: int) -> int:
    """Frames covered by one clip from its first to its last frame: 32 x 2 spans 63."""
    return (clip_len - 1) * interval + 1


def clip_test_offsets(num_frames: int, span: int, num_clips: int) -> np.ndarray:
    """0-based clip starts, test mode (mmaction2's ``SampleFrames._get_test_clips``): with
    ``max_offset = max(num_frames - span, 0)``, one clip starts at ``max_offset // 2`` (the
    centre window); several start at ``round(i * max_offset / (num_clips - 1))`` (evenly
    spaced, first and last window included; ``np.round``, halves to even)."""
    max_offset = max(num_frames - span, 0)
    if num_clips == 1:
        return np.array([max_offset // 2], np.int64)
    return np.round(np.arange(num_clips) * (max_offset / (num_clips - 1))).astype(np.int64)


def clip_indices(num_frames: int, clip_len: int = 32, interval: int = 2, mode: str = "train",
                 num_clips: int = 1, rng: np.random.Generator | None = None) -> np.ndarray:
    """Dense clips: int64 ``[num_clips, clip_len]`` 1-based frame numbers.

    A clip is ``start + j * interval`` for j < clip_len. Starts: ``train_offsets`` with the
    clip's span (a random valid window; with several clips, one per segment) or
    ``clip_test_offsets`` (the centre window, or evenly spaced). Numbers past the end **loop**
    (taken modulo ``num_frames``), as mmaction2's ``SampleFrames(out_of_bound_opt='loop')``:
    a 10-frame video read as 32 x 2 gives 1, 3, 5, 7, 9, 1, 3, ...

    The span is ``(clip_len - 1) * interval + 1`` (63 for 32 x 2) in both modes; mmaction2's
    train sampler uses ``clip_len * interval`` (64), one frame more, so its last random start
    is one frame earlier than here.
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    _check(num_frames, num_clips, clip_len, mode)
    span = clip_span(clip_len, interval)
    if mode == "train":
        starts = train_offsets(num_frames, span, num_clips, rng)
    else:
        starts = clip_test_offsets(num_frames, span, num_clips)
    frames = starts[:, None] + np.arange(clip_len)[None, :] * interval
    return np.mod(frames, num_frames).astype(np.int64) + 1

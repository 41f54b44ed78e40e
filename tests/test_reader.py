"""The trainers' reader: TSN / clip sampling arithmetic, and ActprepDataset over a real
``actprep run`` output (frames and flows equal decode_sample's at the sampled numbers)."""
from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import webdataset as wds

from conftest import LOCAL_BEAM
from actprep.pipelines.synth import make_video
from actprep.readers.sampling import clip_indices, train_offsets, tsn_indices
from actprep.schemas.sample import decode_sample, flow_raw_suffix, npy_bytes

torch = pytest.importorskip("torch")
from actprep.readers import ActprepDataset, collate  # noqa: E402  (needs torch)


# --- sampling: exact indices in test mode -----------------------------------------------------

@pytest.mark.parametrize("frames, expected", [
    (1, [1, 1, 1]),        # shorter than the segments: every segment takes frame 1..F
    (2, [1, 2, 2]),
    (3, [1, 2, 3]),        # exactly one frame per segment
    (10, [2, 6, 9]),       # TSN: int(tick / 2 + tick * i) + 1, tick = 10 / 3
    (100, [17, 51, 84]),
    (300, [51, 151, 251]),
])
def test_tsn_rgb_test_mode_takes_segment_centres(frames, expected):
    got = tsn_indices(frames, 3, 1, "test")
    assert got.shape == (3, 1) and got.dtype == np.int64
    assert got.ravel().tolist() == expected


@pytest.mark.parametrize("flows, starts", [
    (1, [1, 1, 1]),        # shorter than a stack: stack 1,1,1,1,1 (clipped to the last)
    (3, [1, 1, 1]),        # stack 1,2,3,3,3
    (5, [1, 1, 1]),        # exactly one stack: every segment shares it
    (7, [1, 2, 3]),        # 3 valid starts: one each
    (9, [1, 3, 5]),
    (100, [17, 49, 81]),   # avail 96, tick 32: 16, 48, 80 (+1)
])
def test_tsn_flow_test_mode_stacks(flows, starts):
    got = tsn_indices(flows, 3, 5, "test")
    assert got.shape == (3, 5)
    assert got[:, 0].tolist() == starts
    expected = np.minimum(np.array(starts)[:, None] + np.arange(5), flows)
    assert (got == expected).all()
    assert got.min() >= 1 and got.max() <= flows


@pytest.mark.parametrize("frames, first, last", [
    (10, 1, 3),      # loops: 1,3,5,7,9,1,3,... (10-frame video, 63-frame span: 62 % 10)
    (63, 1, 63),     # exactly the span
    (64, 1, 63),     # max_offset 1 // 2 = 0
    (100, 19, 81),   # centre: (100 - 63) // 2 = 18
    (300, 119, 181),
])
def test_clip_test_mode_centre_window(frames, first, last):
    got = clip_indices(frames, 32, 2, "test")
    assert got.shape == (1, 32)
    assert (got[0, 0], got[0, -1]) == (first, last)
    if frames >= 63:
        assert (np.diff(got[0]) == 2).all()
    assert got.min() >= 1 and got.max() <= frames


def test_clip_short_video_loops():
    assert clip_indices(10, 32, 2, "test")[0, :8].tolist() == [1, 3, 5, 7, 9, 1, 3, 5]
    assert clip_indices(9, 8, 2, "test")[0].tolist() == [1, 3, 5, 7, 9, 2, 4, 6]
    assert clip_indices(4, 4, 2, "test")[0].tolist() == [1, 3, 1, 3]
    rng = np.random.default_rng(0)
    assert clip_indices(4, 4, 2, "train", rng=rng)[0].tolist() == [1, 3, 1, 3]  # start 0


def test_clip_test_mode_several_clips_evenly_spaced():
    got = clip_indices(100, 4, 2, "test", num_clips=3)  # span 7, max_offset 93
    assert got[:, 0].tolist() == [1, 47, 94]  # np.round(0, 46.5 -> 46, 93) + 1
    assert got[2].tolist() == [94, 96, 98, 100]


# --- sampling: train mode properties -----------------------------------------------------------

@pytest.mark.parametrize("frames", [4, 5, 6, 7, 8, 15, 16, 30, 101, 250])
@pytest.mark.parametrize("length", [1, 5])
def test_tsn_train_in_range_and_in_segment(frames, length):
    rng = np.random.default_rng(1234)
    avail, k = frames - length + 1, 3
    seg = avail // k
    for _ in range(50):
        got = tsn_indices(frames, k, length, "train", rng)
        assert got.shape == (k, length)
        assert got.min() >= 1 and got.max() <= frames
        if seg > 0:  # one random start inside each segment, stacks need no clipping
            starts = got[:, 0] - 1
            assert ((starts >= np.arange(k) * seg) & (starts < (np.arange(k) + 1) * seg)).all()
            assert (got == got[:, :1] + np.arange(length)).all()
        assert (np.diff(got[:, 0]) >= 0).all()


def test_train_covers_every_position_and_is_seeded():
    seen = Counter()
    rng = np.random.default_rng(7)
    for _ in range(600):
        seen.update(tsn_indices(30, 3, 1, "train", rng).ravel().tolist())
    assert set(seen) == set(range(1, 31))  # segments of 10: all 30 frames reachable
    a = tsn_indices(250, 3, 5, "train", np.random.default_rng(5))
    b = tsn_indices(250, 3, 5, "train", np.random.default_rng(5))
    assert (a == b).all()


def test_train_offsets_short_video_branches():
    rng = np.random.default_rng(0)
    assert train_offsets(2, 1, 3, rng).tolist() == [0, 1, 1]  # round(i * 2 / 3)
    assert train_offsets(3, 5, 3, rng).tolist() == [0, 0, 0]  # shorter than a stack
    drawn = train_offsets(6, 5, 3, rng)  # 2 valid starts for 3 segments: sorted draws
    assert drawn.tolist() == sorted(drawn.tolist()) and set(drawn.tolist()) <= {0, 1}


@pytest.mark.parametrize("frames", [10, 62, 63, 64, 200])
def test_clip_train_window_fits_when_long_enough(frames):
    rng = np.random.default_rng(3)
    starts = set()
    for _ in range(40):
        got = clip_indices(frames, 32, 2, "train", rng=rng)[0]
        assert got.min() >= 1 and got.max() <= frames
        if frames >= 63:
            assert (np.diff(got) == 2).all()  # no wrap-around needed
            assert got[0] <= frames - 62
        starts.add(int(got[0]))
    assert len(starts) > 1 if frames > 63 else starts == {1}


def test_sampling_refuses_bad_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        tsn_indices(0, 3)
    with pytest.raises(ValueError, match="mode"):
        clip_indices(10, mode="val")
    with pytest.raises(ValueError, match="interval"):
        clip_indices(10, interval=0)


# --- the dataset on a real output ----------------------------------------------------------------

VIDEOS = {  # path: (label, seconds at 10 fps, motion in px/frame at 128x96; stored at 64x48)
    "walk/a.mp4": ("walk", 1.0, (2.0, 1.0)),
    "walk/b.mp4": ("walk", 1.2, (-2.0, 2.0)),
    "run/short.mp4": ("run", 0.4, (2.0, 0.0)),
    "misc/nolabel.mp4": ("", 0.6, (0.0, 2.0)),
}
KEYS = {"walk__a": 1, "walk__b": 1, "run__short": 0, "misc__nolabel": -1}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """An actprep output of the four VIDEOS (two shards); returns its shard pattern."""
    from actprep.pipelines.cli import main

    root = tmp_path_factory.mktemp("reader")
    with open(root / "list.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["path", "label"])
        for path, (label, seconds, motion) in VIDEOS.items():
            (root / path).parent.mkdir(exist_ok=True)
            make_video(str(root / path), duration=seconds, fps=10, size=(128, 96),
                       motion=motion)
            rows.writerow([path, label])
    out = root / "out"
    code = main(["run", "--dataset", "generic", "--manifest", str(root / "list.csv"),
                 "--output", str(out), "--size", "64x48", "--modalities", "rgb,flow,mfcc",
                 "--flow-backend", "opencv", "--shard-size", "2", "--no-progress",
                 *LOCAL_BEAM])
    assert code == 0
    assert sorted(p.name for p in out.glob("shard-*.tar")) == \
        ["shard-000000.tar", "shard-000001.tar"]
    return str(out / "shard-{000000..000001}.tar")


@pytest.fixture(scope="module")
def reference(shards) -> dict:
    """decode_sample of every video: the arrays the dataset must agree with."""
    return {s["key"]: s for s in map(decode_sample, wds.WebDataset(shards, shardshuffle=False))}


def test_tsn_test_mode_equals_decode_sample(shards, reference):
    ds = ActprepDataset(shards, modality="rgb+flow+audio", sampling="tsn", mode="test")
    got = {s["key"]: s for s in ds}
    assert set(got) == set(KEYS)
    for key, s in got.items():
        ref = reference[key]
        frames = ref["rgb"].shape[0]
        assert s["label"] == KEYS[key] and ref["label"] == (None if key == "misc__nolabel"
                                                            else KEYS[key])
        assert s["rgb"].dtype == torch.uint8 and s["rgb"].shape == (3, 3, 48, 64)
        assert s["rgb_indices"].tolist() == tsn_indices(frames, 3, 1, "test").ravel().tolist()
        want_rgb = ref["rgb"][s["rgb_indices"].numpy() - 1].transpose(0, 3, 1, 2)
        assert np.array_equal(s["rgb"].numpy(), want_rgb)
        assert s["flow"].dtype == torch.float32 and s["flow"].shape == (3, 10, 48, 64)
        numbers = s["flow_indices"].numpy()
        assert (numbers == tsn_indices(frames - 1, 3, 5, "test")).all()
        want_flow = ref["flow"][numbers - 1].reshape(3, 10, 48, 64)  # x1 y1 x2 y2 ...
        assert np.array_equal(s["flow"].numpy(), want_flow)
        assert np.array_equal(s["flow"][:, 0].numpy(), ref["flow"][numbers[:, 0] - 1, 0])
        assert np.array_equal(s["flow"][:, 1].numpy(), ref["flow"][numbers[:, 0] - 1, 1])
        assert s["mfcc"].dtype == torch.float32 and np.array_equal(s["mfcc"].numpy(),
                                                                    ref["mfcc"])
        assert "vggish" not in s


@pytest.mark.parametrize("key, path", [("walk__a", "walk/a.mp4"), ("walk__b", "walk/b.mp4")])
def test_flow_is_the_known_motion(shards, key, path):
    """The window moves by ``motion`` px per frame at 128x96, so the content by -motion / 2
    at the stored 64x48; x channels are even, y channels odd."""
    ds = ActprepDataset(shards, modality="flow", sampling="tsn", mode="test")
    flow = next(s for s in ds if s["key"] == key)["flow"][:, :, 8:-8, 8:-8]
    dx, dy = VIDEOS[path][2]
    assert float(flow[:, 0::2].median()) == pytest.approx(-dx / 2, abs=0.25)
    assert float(flow[:, 1::2].median()) == pytest.approx(-dy / 2, abs=0.25)


def test_clip_mode_loops_short_video(shards, reference):
    ds = ActprepDataset(shards, modality="rgb+flow", sampling="clip", mode="test",
                        clip_len=4, frame_interval=2)
    got = {s["key"]: s for s in ds}
    short = got["run__short"]  # 4 frames, 3 flows: span 7 loops
    assert short["rgb_indices"].tolist() == [1, 3, 1, 3]
    assert short["flow_indices"].ravel().tolist() == [1, 3, 2, 1]
    assert short["rgb"].shape == (4, 3, 48, 64) and short["flow"].shape == (4, 2, 48, 64)
    ref = reference["run__short"]
    assert np.array_equal(short["rgb"].numpy(), ref["rgb"][[0, 2, 0, 2]].transpose(0, 3, 1, 2))
    assert np.array_equal(short["flow"].numpy(), ref["flow"][[0, 2, 1, 0]])
    assert got["walk__a"]["rgb_indices"].tolist() == [2, 4, 6, 8]  # (10 - 7) // 2 = 1
    default = ActprepDataset(shards, modality="rgb", sampling="clip", mode="test")
    s = next(s for s in default if s["key"] == "walk__a")
    assert s["rgb"].shape == (32, 3, 48, 64)
    assert s["rgb_indices"][:7].tolist() == [1, 3, 5, 7, 9, 1, 3]


def test_train_mode_is_reproducible_per_epoch(shards):
    def indices(epoch: int, seed: int = 0) -> dict:
        ds = ActprepDataset(shards, modality="rgb", mode="train", seed=seed, shuffle=3)
        ds.set_epoch(epoch)
        return {s["key"]: s["rgb_indices"].tolist() for s in ds}

    first = indices(0)
    assert first == indices(0)
    assert indices(1) != first or indices(2) != first
    for key, numbers in first.items():
        assert numbers == sorted(numbers)


def _tag_worker(sample: dict) -> dict:
    return {**sample, "worker": torch.utils.data.get_worker_info().id}


def test_dataloader_two_workers_every_sample_once(shards):
    ds = ActprepDataset(shards, modality="rgb+flow+audio", sampling="tsn", mode="train",
                        transform=_tag_worker)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    for epoch in range(2):
        ds.set_epoch(epoch)
        keys, labels, workers = [], {}, {}
        for batch in loader:
            assert batch["rgb"].shape[1:] == (3, 3, 48, 64)
            assert batch["flow"].shape[1:] == (3, 10, 48, 64)
            assert isinstance(batch["mfcc"], list)
            keys += batch["key"]
            labels.update(zip(batch["key"], batch["label"].tolist()))
            workers.update(zip(batch["key"], batch["worker"].tolist()))
        assert sorted(keys) == sorted(KEYS)
        assert labels == KEYS
        # one shard per worker: the keys of a shard share a worker, the workers differ
        assert workers["misc__nolabel"] == workers["run__short"]
        assert workers["walk__a"] == workers["walk__b"] != workers["run__short"]


def test_audio_only_skips_frame_members(shards):
    ds = ActprepDataset(shards, modality="audio", mode="test")
    assert ds.wanted("walk__a.mfcc.npy") and ds.wanted("walk__a.json")
    assert not ds.wanted("walk__a.rgb.000001.jpg") and not ds.wanted("walk__a.flow_x.000001.jpg")
    raw = next(iter(ds.raw_samples()))
    assert not any(k.startswith(("rgb.", "flow")) for k in raw)
    s = next(iter(ds))
    assert set(s) == {"key", "label", "mfcc"} and s["mfcc"].shape[0] == 40


def test_raw_flow_members_are_preferred():
    """With ``--flow-raw`` members the float16 fields are returned, not the JPEGs."""
    fields = np.random.default_rng(0).normal(0, 3, (6, 2, 8, 10)).astype(np.float16)
    sample = {"__key__": "v", "json": json.dumps({"params": {"flow": {"bound": 20}}}).encode()}
    sample.update({flow_raw_suffix(i + 1): npy_bytes(f) for i, f in enumerate(fields)})
    ds = ActprepDataset("unused.tar", modality="flow", mode="test", num_segments=2,
                        new_length=2)
    s = ds.decode(sample)
    assert s["label"] == -1 and s["flow_indices"].tolist() == [[2, 3], [4, 5]]
    want = fields[[1, 2, 3, 4]].astype(np.float32).reshape(2, 4, 8, 10)
    assert s["flow"].dtype == torch.float32 and np.array_equal(s["flow"].numpy(), want)


def test_dataset_refuses_bad_arguments(shards):
    with pytest.raises(ValueError, match="modality"):
        ActprepDataset(shards, modality="rgb+depth")
    with pytest.raises(ValueError, match="sampling"):
        ActprepDataset(shards, sampling="dense")
    with pytest.raises(ValueError, match="no flow"):
        ActprepDataset("x.tar", modality="flow").decode(
            {"__key__": "v", "json": b"{}", "rgb.000001.jpg": b""})

"""The trainers' reader: TSN / clip sampling arithmetic, and ActprepDataset over a real
``actprep run`` output (frames and flows equal decode_sample's at the sampled numbers)."""
from __future__ import annotations

import csv
import glob
import json
import os
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from conftest import LOCAL_BEAM
from actprep.extractors.synth import make_garbage, make_video
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
BROKEN = "misc__broken"  # undecodable: a failed row, never read


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    """An actprep output of the four VIDEOS and one undecodable file (three shards)."""
    from actprep.commands.cli import main

    root = tmp_path_factory.mktemp("reader")
    with open(root / "list.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["path", "label"])
        for path, (label, seconds, motion) in VIDEOS.items():
            (root / path).parent.mkdir(exist_ok=True)
            make_video(str(root / path), duration=seconds, fps=10, size=(128, 96),
                       motion=motion)
            rows.writerow([path, label])
        make_garbage(str(root / "misc" / "broken.mp4"), seed=5)
        rows.writerow(["misc/broken.mp4", "run"])
    out = root / "out"
    code = main(["run", "--dataset", "generic", "--manifest", str(root / "list.csv"),
                 "--output", str(out), "--size", "64x48", "--modalities", "rgb,flow,mfcc",
                 "--flow-backend", "opencv", "--shard-size", "2", "--no-progress",
                 *LOCAL_BEAM])
    assert code == 0
    assert sorted(p.name for p in out.glob("shard-*.tar")) == \
        ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    return str(out)


@pytest.fixture(scope="module")
def shards(output) -> str:
    """The output's shard pattern."""
    return output + "/shard-{000000..000002}.tar"


@pytest.fixture(scope="module")
def reference(shards) -> dict:
    """decode_sample of every video: the arrays the dataset must agree with."""
    return {s["key"]: s for s in map(decode_sample, wds.WebDataset(shards, shardshuffle=False))}


@pytest.mark.e2e
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


@pytest.mark.e2e
@pytest.mark.parametrize("key, path", [("walk__a", "walk/a.mp4"), ("walk__b", "walk/b.mp4")])
def test_flow_is_the_known_motion(shards, key, path):
    """The window moves by ``motion`` px per frame at 128x96, so the content by -motion / 2
    at the stored 64x48; x channels are even, y channels odd."""
    ds = ActprepDataset(shards, modality="flow", sampling="tsn", mode="test")
    flow = next(s for s in ds if s["key"] == key)["flow"][:, :, 8:-8, 8:-8]
    dx, dy = VIDEOS[path][2]
    assert float(flow[:, 0::2].median()) == pytest.approx(-dx / 2, abs=0.25)
    assert float(flow[:, 1::2].median()) == pytest.approx(-dy / 2, abs=0.25)


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_streaming_dataloader_two_workers_every_sample_once(output, shards):
    """The webdataset reader of before (streaming=True): shards split across workers."""
    ds = ActprepDataset(shards, modality="rgb+flow+audio", sampling="tsn", mode="train",
                        transform=_tag_worker, streaming=True)
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
        # whole shards per worker: the keys of a shard share a worker, both workers work
        for shard in glob.glob(os.path.join(output, "index", "*.parquet")):
            table = pq.read_table(shard, filters=[("status", "==", "ok")])
            assert len({workers[k] for k in table["key"].to_pylist()}) == 1
        assert set(workers.values()) == {0, 1}


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_dataset_refuses_bad_arguments(shards):
    with pytest.raises(ValueError, match="modality"):
        ActprepDataset(shards, modality="rgb+depth")
    with pytest.raises(ValueError, match="sampling"):
        ActprepDataset(shards, sampling="dense")
    with pytest.raises(ValueError, match="no flow"):
        ActprepDataset("x.tar", modality="flow").decode(
            {"__key__": "v", "json": b"{}", "rgb.000001.jpg": b""})


# --- the epoch order: ranks, workers, resume (readers/order.py, make_loader) --------------------

from actprep.readers import make_loader, order, tarindex  # noqa: E402
from actprep.schemas.index import read_index  # noqa: E402


def _loader_keys(ds, batch_size: int, workers: int) -> list[str]:
    keys = []
    for batch in make_loader(ds, batch_size, workers):
        assert len(batch["key"]) == len(batch["label"]) == batch["rgb"].shape[0]
        keys += batch["key"]
    return keys


def test_order_ranks_cover_the_epoch_equally():
    """Synthetic counts (an empty shard included): every rank the same count, all samples
    covered, at most W - 1 repeated (padding) or left out (drop_last)."""
    counts = [5, 0, 7, 3, 1]
    total = sum(counts)
    for shuffle in (True, False):
        sequence = order.epoch_sequence(counts, 3, 1, shuffle=shuffle)
        assert sorted(sequence.tolist()) == list(range(total))
        for world in (1, 2, 3, 4, 7, 16, 20):
            parts = [order.rank_sequence(sequence, r, world) for r in range(world)]
            assert {len(p) for p in parts} == {-(-total // world)}
            seen = Counter(i for p in parts for i in p.tolist())
            assert set(seen) == set(range(total))
            assert sum(seen.values()) - total <= world - 1
            assert np.array_equal(np.concatenate(parts)[:total], sequence)  # contiguous
            dropped = [order.rank_sequence(sequence, r, world, drop_last=True)
                       for r in range(world)]
            assert {len(p) for p in dropped} == {total // world}
            kept = [i for p in dropped for i in p.tolist()]
            assert len(set(kept)) == len(kept) and total - len(kept) <= world - 1
    unshuffled = order.epoch_sequence(counts, 3, 1, shuffle=False)
    assert unshuffled.tolist() == list(range(total))


def test_order_depends_on_seed_and_epoch_only():
    counts = [50, 40, 30]
    first = order.epoch_sequence(counts, 0, 0, shuffle=True)
    assert np.array_equal(first, order.epoch_sequence(counts, 0, 0, shuffle=True))
    others = [order.epoch_sequence(counts, 0, e, shuffle=True) for e in (1, 2)]
    others.append(order.epoch_sequence(counts, 1, 0, shuffle=True))
    assert all(not np.array_equal(first, o) for o in others)
    shuffled_shards = order.epoch_sequence(counts, 0, 1, shuffle=False, shardshuffle=True)
    assert sorted(shuffled_shards.tolist()) == list(range(120))
    for start, count in ((0, 50), (50, 40), (90, 30)):  # each shard whole, in key order
        at = np.flatnonzero((shuffled_shards >= start) & (shuffled_shards < start + count))
        assert np.array_equal(shuffled_shards[at], np.arange(start, start + count))
        assert np.array_equal(at, np.arange(at[0], at[0] + count))


def test_worker_positions_interleave_batches():
    for remaining, batch, workers in ((10, 3, 2), (7, 1, 3), (2, 4, 4), (0, 2, 2)):
        parts = [order.worker_positions(remaining, batch, workers, w) for w in range(workers)]
        # what the DataLoader does: a batch from each worker in turn, skipping the finished
        batches = [[p[i:i + batch].tolist() for i in range(0, len(p), batch)] for p in parts]
        merged, turn = [], 0
        while any(batches):
            if batches[turn % workers]:
                merged += batches[turn % workers].pop(0)
            turn += 1
        assert merged == list(range(remaining))


def test_order_refuses_bad_arguments():
    with pytest.raises(ValueError, match="rank must be below"):
        order.rank_sequence(np.arange(4), 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        order.rank_sequence(np.arange(4), 0, 0)
    with pytest.raises(ValueError, match="seed"):
        order.epoch_sequence([3], -1, 0, shuffle=True)


@pytest.mark.e2e
def test_index_records_each_samples_byte_range(output):
    """tar_offset / tar_bytes of every ok row cover exactly its members; failed rows none."""
    rows = [r for path in sorted(glob.glob(os.path.join(output, "index", "*.parquet")))
            for r in read_index(path).to_pylist()]
    assert {r["key"] for r in rows if r["status"] == "ok"} == set(KEYS)
    (broken,) = [r for r in rows if r["key"] == BROKEN]
    assert broken["status"] == "failed" and broken["tar_offset"] is None \
        and broken["tar_bytes"] is None
    for row in rows:
        if row["status"] != "ok":
            continue
        with open(os.path.join(output, row["shard"] + ".tar"), "rb") as f:
            f.seek(row["tar_offset"])
            data = f.read(row["tar_bytes"])
        members = list(tarindex.iter_members(data))
        assert len(members) == row["members"]
        assert {name.split(".", 1)[0] for name, _, _ in members} == {row["key"]}
        assert sum(size for _, _, size in members) == row["sample_bytes"]
        with open(os.path.join(output, row["shard"] + ".tar"), "rb") as f:
            keys, offsets, nbytes = tarindex.scan(f)
        at = keys.index(row["key"])
        assert (offsets[at], nbytes[at]) == (row["tar_offset"], row["tar_bytes"])


def test_tar_parser_reads_long_names_like_tarfile(tmp_path):
    """Keys up to 160 characters make member names past ustar's 100: pax headers."""
    import io
    import tarfile

    from actprep.pipelines.fragment import open_shard
    from actprep.schemas.sample import tar_info

    key = "k" * 150
    members = [(f"{key}.cls", b"3"), (f"{key}.rgb.000001.jpg", b"x" * 700),
               ("short.json", b"{}"), ("short.cls", b"1" * 512)]
    path = tmp_path / "t.tar"
    with open(path, "wb") as f:
        tar = open_shard(f)
        for name, data in members:
            tar.addfile(tar_info(name, len(data)), io.BytesIO(data))
        tar.close()
    raw = path.read_bytes()
    got = [(name, raw[start:start + size]) for name, start, size in tarindex.iter_members(raw)]
    assert got == members
    with tarfile.open(path) as tf:
        assert [m.name for m in tf.getmembers()] == [n for n, _ in got]
    with open(path, "rb") as f:
        keys, offsets, nbytes = tarindex.scan(f)
    assert keys == [key, "short"] and offsets[0] == 0
    assert [n for n, _, _ in tarindex.iter_members(raw[offsets[1]:offsets[1] + nbytes[1]])] \
        == ["short.json", "short.cls"]
    with pytest.raises(tarindex.TarFormatError):
        list(tarindex.iter_members(raw[100:1124]))


@pytest.mark.e2e
def test_same_sequence_with_zero_or_two_workers(output):
    ds = ActprepDataset(output, modality="rgb", mode="train", seed=4)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        expected = ds.keys()
        assert sorted(expected) == sorted(KEYS) and BROKEN not in expected
        for batch_size in (1, 3):
            assert _loader_keys(ds, batch_size, 0) == expected
            assert _loader_keys(ds, batch_size, 2) == expected
    # and the decoded samples agree too (train-mode offsets depend on seed, epoch, key)
    ds.set_epoch(1)
    one = {k: i for b in make_loader(ds, 2, 0) for k, i in zip(b["key"], b["rgb_indices"])}
    two = {k: i for b in make_loader(ds, 2, 2) for k, i in zip(b["key"], b["rgb_indices"])}
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


@pytest.mark.e2e
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_the_epoch_evenly(output, world):
    for drop_last in (False, True):
        parts = []
        for rank in range(world):
            ds = ActprepDataset(output, modality="rgb", mode="train", seed=1, rank=rank,
                                world_size=world, drop_last=drop_last)
            ds.set_epoch(2)
            keys = ds.keys()
            assert _loader_keys(ds, 1, 2) == keys
            assert len(ds) == len(keys) == ds.samples_per_rank
            parts.append(keys)
        assert len({len(p) for p in parts}) == 1
        seen = Counter(k for p in parts for k in p)
        if drop_last:
            assert set(seen.values()) == {1} and len(KEYS) - len(seen) <= world - 1
        else:
            assert set(seen) == set(KEYS) and sum(seen.values()) - len(KEYS) <= world - 1


@pytest.mark.e2e
def test_set_position_gives_exactly_the_rest(output):
    ds = ActprepDataset(output, modality="rgb", mode="train", seed=2, rank=1, world_size=3)
    ds.set_epoch(5)
    full = ds.keys()
    for k in range(len(full) + 1):
        ds.set_position(k)
        assert ds.keys() == full[k:] and len(ds) == len(full) - k
        assert _loader_keys(ds, 1, 2) == full[k:]
    ds.set_epoch(5)  # a new epoch starts at its beginning
    assert ds.keys() == full
    with pytest.raises(ValueError, match="past the end"):
        ds.set_position(len(full) + 1)
    ds = ActprepDataset(output, modality="rgb", mode="train", seed=2)
    ds.set_epoch(3)
    full = [s["key"] for s in ds]
    ds.set_position(2)
    assert [s["key"] for s in ds] == full[2:]


@pytest.mark.e2e
def test_epochs_differ_and_repeat(output):
    def keys(seed: int, epoch: int) -> list[str]:
        ds = ActprepDataset(output, modality="rgb", mode="train", seed=seed)
        ds.set_epoch(epoch)
        return ds.keys()

    orders = [tuple(keys(0, e)) for e in range(6)]
    assert len(set(orders)) > 1
    assert [tuple(keys(0, e)) for e in range(6)] == orders
    test = ActprepDataset(output, modality="rgb", mode="test")  # unshuffled: shard order
    assert test.keys() == [k for s in range(3) for k in test.catalog().shard_keys(s)]


@pytest.mark.e2e
def test_url_pattern_reads_the_index_beside_the_tars(output, shards):
    by_folder = ActprepDataset(output, modality="rgb", mode="test")
    by_urls = ActprepDataset(shards, modality="rgb", mode="test")
    assert by_urls.keys() == by_folder.keys()
    a, b = list(by_folder), list(by_urls)
    assert [s["key"] for s in a] == [s["key"] for s in b]
    assert all(torch.equal(x["rgb"], y["rgb"]) for x, y in zip(a, b))


@pytest.mark.e2e
def test_memory_url_reads_like_local(output):
    """fsspec's memory:// filesystem (a real one, in-process) stands in for gs://."""
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for path in glob.glob(os.path.join(output, "**", "shard-*"), recursive=True):
        rel = os.path.relpath(path, output)
        fs.pipe(f"/reader-test/out/{rel}", open(path, "rb").read())
    try:
        local = ActprepDataset(output, modality="rgb+flow", mode="train", seed=3)
        for source in ("memory://reader-test/out",
                       "memory://reader-test/out/shard-{000000..000002}.tar"):
            remote = ActprepDataset(source, modality="rgb+flow", mode="train", seed=3)
            assert remote.read_ahead == 4
            for epoch in (0, 1):
                local.set_epoch(epoch)
                remote.set_epoch(epoch)
                want, got = list(local), list(remote)
                assert [s["key"] for s in got] == [s["key"] for s in want]
                for x, y in zip(want, got):
                    assert torch.equal(x["rgb"], y["rgb"]) and torch.equal(x["flow"], y["flow"])
        with pytest.raises(ValueError, match="no such output folder"):
            ActprepDataset("memory://reader-test/nothing")
    finally:
        fs.rm("/reader-test", recursive=True)


@pytest.mark.e2e
def test_output_without_range_columns_reads(output, tmp_path):
    """An output written before tar_offset / tar_bytes: the ranges come from one scan of
    each tar's headers, then from the cache folder."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(output, old)
    for path in glob.glob(str(old / "index" / "*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["tar_offset", "tar_bytes"]), path)
        assert "tar_offset" not in pq.read_schema(path).names
    cache = tmp_path / "cache"
    new = ActprepDataset(output, modality="rgb+flow", mode="train", seed=6)
    for attempt in range(2):
        legacy = ActprepDataset(str(old), modality="rgb+flow", mode="train", seed=6,
                                cache_dir=str(cache))
        assert (legacy.catalog().offset == -1).all()
        for epoch in (0, 1):
            new.set_epoch(epoch)
            legacy.set_epoch(epoch)
            want, got = list(new), list(legacy)
            assert [s["key"] for s in got] == [s["key"] for s in want]
            assert all(torch.equal(x["flow"], y["flow"]) for x, y in zip(want, got))
        assert np.array_equal(legacy.catalog().offset, new.catalog().offset)
        assert np.array_equal(legacy.catalog().nbytes, new.catalog().nbytes)
        # one sidecar per shard that has samples, then reused
        assert len(list(cache.glob("*.npy"))) == np.count_nonzero(legacy.catalog().counts)
        tarindex._MEMORY.clear()
    got = _loader_keys(ActprepDataset(str(old), modality="rgb", seed=6), 2, 2)
    assert sorted(got) == sorted(KEYS)


@pytest.mark.e2e
def test_stock_webdataset_still_reads_the_shards(shards):
    keys = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)]
    assert sorted(keys) == sorted(KEYS)


@pytest.mark.e2e
def test_reader_refuses_bad_inputs(output, tmp_path):
    with pytest.raises(ValueError, match="no such output folder"):
        ActprepDataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no committed shard"):
        ActprepDataset(str(tmp_path))
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "shard-000000.tar").write_bytes(open(os.path.join(output, "shard-000000.tar"),
                                                 "rb").read())
    with pytest.raises(ValueError, match="no index at"):
        ActprepDataset(str(lone), modality="rgb").catalog()
    assert len(list(ActprepDataset(str(lone), modality="rgb", streaming=True))) >= 1
    with pytest.raises(ValueError, match="rank must be below"):
        ActprepDataset(output, rank=3, world_size=3)
    with pytest.raises(ValueError, match="both rank and world_size"):
        ActprepDataset(output, rank=1)
    with pytest.raises(ValueError, match="position"):
        ActprepDataset(output).set_position(-1)
    with pytest.raises(ValueError, match="persistent_workers"):
        make_loader(ActprepDataset(output), 2, 2, persistent_workers=True)


@pytest.mark.e2e
def test_verify_checks_the_byte_ranges(output, tmp_path):
    import shutil

    from actprep.reports.verify import verify
    from actprep.schemas.index import index_footer, write_index

    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    assert verify(str(copy), workers=1, decode=False).ok  # the ranges commit recorded
    paths = sorted(glob.glob(str(copy / "index" / "*.parquet")))
    path = max(paths, key=lambda p: sum(r["status"] == "ok" for r in read_index(p).to_pylist()))
    data = open(path, "rb").read()
    rows = read_index(path).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2
    ok[0]["tar_offset"] += 512
    write_index(rows, path, tar_bytes=index_footer(data)[1])
    problems = verify(str(copy), workers=1, decode=False).problems
    assert [(p.key, p.kind) for p in problems] == [(ok[0]["key"], "range")]
    ok[0]["tar_offset"] = ok[0]["tar_bytes"] = None  # one ok row without, one with
    write_index(rows, path, tar_bytes=index_footer(data)[1])
    problems = verify(str(copy), workers=1, decode=False).problems
    assert [p.kind for p in problems] == ["index"] and "1 of 2 ok rows" in problems[0].detail


def _ddp_rank(rank: int, world: int, output: str, port: int, folder: str, crash_after: int
              ) -> None:
    """One rank of a DDP run of READER.md's loop shape, without a model: the keys it trains
    on go to a file per rank and attempt, the position to a checkpoint after every batch;
    with ``crash_after`` the process dies (no cleanup) after that many batches."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ckpt = os.path.join(folder, f"ckpt{rank}.json")
    start_epoch, position = 0, 0
    if os.path.exists(ckpt):
        with open(ckpt) as f:
            start_epoch, position = json.load(f)
    ds = ActprepDataset(output, modality="rgb", mode="train", seed=7)  # rank, world: dist's
    loader = make_loader(ds, batch_size=1, num_workers=0)
    log = os.path.join(folder, f"keys{rank}.{'resumed' if position else 'first'}.jsonl")
    with open(log, "a") as out:
        for epoch in range(start_epoch, 2):
            ds.set_epoch(epoch)
            if epoch == start_epoch:
                ds.set_position(position)
            done = ds.position
            for step, batch in enumerate(loader, 1):
                out.write(json.dumps([epoch, batch["key"]]) + "\n")
                out.flush()
                done += len(batch["key"])
                with open(ckpt + ".tmp", "w") as f:
                    json.dump([epoch, done], f)
                os.replace(ckpt + ".tmp", ckpt)
                dist.barrier()
                if crash_after and epoch == 1 and step == crash_after:
                    os._exit(3)  # a preempted rank: no cleanup
            with open(ckpt, "w") as f:
                json.dump([epoch + 1, 0], f)
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.e2e
def test_ddp_run_killed_and_resumed_trains_each_sample_once(output, tmp_path):
    """Two real DDP ranks (gloo, spawned processes) killed in their second epoch and
    restarted: with the checkpointed position each rank trains on exactly its part of each
    epoch, once, the parts equal in size and covering every ok sample."""
    import torch.multiprocessing as mp

    world = 2
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    killed.mkdir(), clean.mkdir()
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_ddp_rank, (world, output, _free_port(), str(killed), 1), nprocs=world)
    mp.spawn(_ddp_rank, (world, output, _free_port(), str(killed), 0), nprocs=world)
    mp.spawn(_ddp_rank, (world, output, _free_port(), str(clean), 0), nprocs=world)

    def trained(folder, rank, *attempts) -> list[tuple[int, str]]:
        """(epoch, key) of every sample the rank trained on, attempt after attempt."""
        rows = []
        for attempt in attempts:
            for line in open(folder / f"keys{rank}.{attempt}.jsonl"):
                epoch, keys = json.loads(line)
                rows += [(epoch, key) for key in keys]
        return rows

    for rank in range(world):
        assert trained(killed, rank, "first", "resumed") == trained(clean, rank, "first")
        expected = ActprepDataset(output, modality="rgb", mode="train", seed=7, rank=rank,
                                  world_size=world)
        for epoch in (0, 1):
            expected.set_epoch(epoch)
            assert [k for e, k in trained(clean, rank, "first") if e == epoch] == \
                expected.keys()
    for epoch in (0, 1):
        parts = [[k for e, k in trained(clean, r, "first") if e == epoch] for r in range(world)]
        assert len(parts[0]) == len(parts[1]) and set(parts[0] + parts[1]) == set(KEYS)

"""Tests for the plan, the sample layout, the Parquet index and the planner step."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pytest

from actprep.extractors.rgb import encode_jpeg
from actprep.pipelines import layout
from actprep.pipelines.options import RunOptions
from actprep.pipelines.planfile import iter_entries
from actprep.pipelines.planner import PlanMismatch, load_or_create_plan
from actprep.schemas.index import FIELDS, INDEX_SCHEMA, index_table, read_index, write_index
from actprep.schemas.labels import LabelMap
from actprep.schemas.manifest import ManifestRow
from actprep.schemas.naming import shard_name
from actprep.schemas.plan import PlanEntry, join_root, make_plan, order_hash
from actprep.schemas.sample import (
    CLS,
    JSON,
    MFCC,
    cls_bytes,
    decode_sample,
    iter_samples,
    json_bytes,
    member_name,
    npy_bytes,
    rgb_suffix,
    sample_metadata,
    tar_info,
)
from actprep.schemas.version import LAYOUT_VERSION

# --------------------------------------------------------------------------- plan


def _rows():
    return [
        ManifestRow(5, "k_c", "train/c.mp4", "b", "train"),
        ManifestRow(2, "k_a", "a.mp4", "a", "train"),
        ManifestRow(3, "k_e", None, "a", "train", "video not found: k_e"),
        ManifestRow(9, "k_b", "b.mkv", None, "test"),
        ManifestRow(4, "k_d", "gs://bucket/d.mp4", "zz", "train", "unknown label 'zz'"),
        ManifestRow(7, "k_a", "a.mp4", "a", "train", "duplicate key k_a (first at line 2)"),
        ManifestRow(6, "k_f", "/abs/f.webm", "b", "val"),
    ]


def test_make_plan_order_shards_labels_paths_errors():
    labels = LabelMap(("b", "a"), "class list c.txt")
    plan = make_plan(_rows(), labels, "kinetics", "/data/videos/", 3)
    # by label, ranked by order_hash: a: k_a/2, k_a/7, k_e at 1/6, 3/6, 5/6; b: k_c, k_f at
    # 1/4, 3/4; None: k_b and zz: k_d at 1/2. Ties at 1/2 by hash: k_a/7, k_d, k_b. Shards of
    # 3 cut from k_a/2 k_c k_a/7 | k_d k_b k_f | k_e; each shard in (key, line) order.
    assert order_hash("k_a") < order_hash("k_d") < order_hash("k_b")
    assert [(e.key, e.line) for e in plan] == [
        ("k_a", 2), ("k_a", 7), ("k_c", 5), ("k_b", 9), ("k_d", 4), ("k_f", 6), ("k_e", 3)]
    assert [e.shard for e in plan] == [0, 0, 0, 1, 1, 1, 2]  # last shard partial
    assert [e.label_index for e in plan] == [1, 1, 0, None, None, 0, 1]
    assert [e.path for e in plan] == [
        "/data/videos/a.mp4", "/data/videos/a.mp4", "/data/videos/train/c.mp4",
        "/data/videos/b.mkv", "gs://bucket/d.mp4", "/abs/f.webm", None]
    assert plan[1].error == "duplicate key k_a (first at line 2)"
    assert plan[4].error == "unknown label 'zz'"
    assert plan[6].error == "video not found: k_e"
    assert [e.error for e in plan].count(None) == 4
    assert {e.dataset for e in plan} == {"kinetics"}
    assert [e.split for e in plan] == ["train", "train", "train", "test", "train", "val", "train"]


def test_make_plan_does_not_depend_on_row_order():
    labels = LabelMap.from_labels(r.label for r in _rows())
    a = make_plan(_rows(), labels, "kinetics", None, 2)
    b = make_plan(list(reversed(_rows())), labels, "kinetics", None, 2)
    assert a == b
    assert a[0].path == "a.mp4"  # no root: as given


@pytest.mark.parametrize("size", [0, -1])
def test_make_plan_rejects_shard_size_below_one(size):
    with pytest.raises(ValueError, match="shard size"):
        make_plan(_rows(), LabelMap((), "x"), "kinetics", None, size)


def test_make_plan_empty():
    assert make_plan([], LabelMap((), "x"), "generic", None, 10) == []


def test_plan_entry_json_round_trip():
    entry = PlanEntry(key="-aBc_DeF-12_000010_000020", line=12, shard=3, dataset="kinetics",
                      path="gs://b/v/x.mp4", label="dancing 'macarena'", label_index=7,
                      split="train", error=None)
    text = entry.to_json()
    assert "\n" not in text
    assert PlanEntry.from_json(text) == entry
    failed = PlanEntry("k", 1, 0, "mit", None, "café", None, None, "video not found: k")
    assert "café" in failed.to_json()
    assert PlanEntry.from_json(failed.to_json()) == failed


def test_join_root_and_shard_name():
    assert join_root("/data/v/", "a/b.mp4") == "/data/v/a/b.mp4"
    assert join_root("gs://bkt/v", "a.mp4") == "gs://bkt/v/a.mp4"
    assert join_root(None, "a.mp4") == "a.mp4"
    assert join_root("/data", "/abs/a.mp4") == "/abs/a.mp4"
    assert join_root("/data", "gs://b/a.mp4") == "gs://b/a.mp4"
    assert shard_name(0) == "shard-000000"
    assert shard_name(1234) == "shard-001234"


# --------------------------------------------------------------------------- sample layout


def test_rgb_member_names_sort_in_time_order():
    numbers = [1, 2, 9, 10, 11, 99, 100, 999, 1000, 99999, 100000, 999999]
    names = [member_name("-aBc_DeF-12_000010_000020", rgb_suffix(n)) for n in numbers]
    shuffled = names[::-1]
    assert sorted(shuffled) == names
    assert names[0] == "-aBc_DeF-12_000010_000020.rgb.000001.jpg"
    # WebDataset key = name up to the first dot
    assert {n.split(".", 1)[0] for n in names} == {"-aBc_DeF-12_000010_000020"}


def test_tar_info_fields_fixed_and_tar_byte_identical():
    def build() -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in [("k.json", b"{}"), ("k." + "x" * 150 + ".npy", b"abc")]:
                tar.addfile(tar_info(name, len(data)), io.BytesIO(data))
        return buf.getvalue()

    info = tar_info("key.rgb.000001.jpg", 1234)
    assert (info.name, info.size, info.mtime, info.mode, info.uid, info.gid,
            info.uname, info.gname, info.type) == (
        "key.rgb.000001.jpg", 1234, 0, 0o444, 0, 0, "", "", tarfile.REGTYPE)
    first = build()
    assert build() == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["k.json", "k." + "x" * 150 + ".npy"]
        for m in members:
            assert (m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) == (0, 0o444, 0, 0, "", "")
        assert tar.extractfile(members[1]).read() == b"abc"


@pytest.mark.parametrize("array", [
    np.arange(40 * 7, dtype=np.float32).reshape(40, 7),
    np.arange(12, dtype=np.int16).reshape(3, 4).T,  # not C-contiguous
    np.zeros((40, 0), np.float32),
    np.array([1.5, -2.25], np.float16),
])
def test_npy_bytes_round_trip_without_pickle(array):
    data = npy_bytes(array)
    assert data[:6] == b"\x93NUMPY"
    back = np.load(io.BytesIO(data), allow_pickle=False)
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_npy_bytes_refuses_object_arrays():
    with pytest.raises(ValueError):
        npy_bytes(np.array([{"a": 1}, None], dtype=object))


def test_npy_bytes_keeps_0d_shape():
    back = np.load(io.BytesIO(npy_bytes(np.array(3.5, np.float32))), allow_pickle=False)
    assert back.shape == ()


def test_json_and_cls_bytes():
    data = json_bytes({"b": 1, "a": "café", "c": None})
    assert data == '{"a":"café","b":1,"c":null}'.encode()
    assert cls_bytes(7) == b"7"


def _frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth frames (JPEG-friendly) that differ from one another."""
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        r = (x * 4 + t * 30) % 256
        g = (y * 5) % 256
        b = np.full_like(x, 40 + 60 * t)
        out.append(np.stack([r, g, b], -1).astype(np.uint8))
    return np.stack(out)


def _sample(key: str, frames: np.ndarray, label_index: int | None, mfcc: np.ndarray | None,
            numbers: list[int] | None = None) -> dict:
    h, w = frames.shape[1:3]
    meta = sample_metadata(
        key=key, dataset="kinetics", split="train", label="abseiling", label_index=label_index,
        source_path="/v/x.mp4", source_bytes=123, duration=1.0, fps=25.0, frames=len(frames),
        width=w, height=h, audio_sample_rate=16000 if mfcc is not None else None,
        source={"codec": "h264"}, params={"fps": None})
    sample = {"__key__": key, JSON: json_bytes(meta)}
    if label_index is not None:
        sample[CLS] = cls_bytes(label_index)
    numbers = numbers or list(range(1, len(frames) + 1))
    for n, frame in zip(numbers, frames):
        sample[rgb_suffix(n)] = encode_jpeg(frame)
    if mfcc is not None:
        sample[MFCC] = npy_bytes(mfcc)
    return sample


def test_decode_sample_round_trip():
    frames = _frames(12)
    mfcc = np.random.default_rng(0).standard_normal((40, 101)).astype(np.float32)
    sample = _sample("k_000001_000002", frames, 5, mfcc)
    # insertion order scrambled: decode must sort numerically
    sample = dict(reversed(list(sample.items())))
    out = decode_sample(sample)
    assert out["key"] == "k_000001_000002"
    assert out["label"] == 5 and isinstance(out["label"], int)
    assert out["meta"]["layout_version"] == LAYOUT_VERSION
    assert out["meta"]["frames"] == 12
    assert out["rgb"].dtype == np.uint8 and out["rgb"].shape == frames.shape
    diff = np.abs(out["rgb"].astype(np.int16) - frames.astype(np.int16))
    assert diff.mean() < 3.0
    # each decoded frame is nearest to its own original (time order, RGB not BGR)
    for t in range(len(frames)):
        errs = [np.abs(out["rgb"][t].astype(int) - f.astype(int)).mean() for f in frames]
        assert int(np.argmin(errs)) == t
    assert out["mfcc"].dtype == np.float32
    np.testing.assert_array_equal(out["mfcc"], mfcc)


def test_decode_sample_unlabelled_without_audio_or_frames():
    frames = _frames(2)
    out = decode_sample(_sample("k", frames, None, None))
    assert out["label"] is None and out["mfcc"] is None
    assert out["rgb"].shape == (2, 48, 64, 3)
    empty = _sample("k", frames[:0], None, None)
    empty[JSON] = json_bytes({**json.loads(empty[JSON]), "width": 64, "height": 48})
    assert decode_sample(empty)["rgb"].shape == (0, 48, 64, 3)


@pytest.mark.parametrize("numbers", [[0, 1, 2], [1, 2, 4], [2, 3, 4]])
def test_decode_sample_rejects_frames_not_numbered_1_to_n(numbers):
    with pytest.raises(ValueError, match="1..N"):
        decode_sample(_sample("k", _frames(3), 1, None, numbers))


def test_iter_samples_reads_a_tar_written_with_the_layout(tmp_path):
    frames = _frames(3, 32, 40)
    samples = [_sample("a_000001_000002", frames, 0, None),
               _sample("b_000001_000002", frames[::-1], 1, np.ones((40, 5), np.float32))]
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for s in samples:
            for suffix, data in s.items():
                if suffix != "__key__":
                    tar.addfile(tar_info(member_name(s["__key__"], suffix), len(data)),
                                io.BytesIO(data))
    out = list(iter_samples(str(path)))
    assert [o["key"] for o in out] == ["a_000001_000002", "b_000001_000002"]
    assert [o["label"] for o in out] == [0, 1]
    assert out[1]["mfcc"].shape == (40, 5)
    assert out[1]["rgb"].shape == (3, 32, 40, 3)


# --------------------------------------------------------------------------- index


def _index_rows():
    return [
        {"key": "k_a", "line": 2, "shard": "shard-000000", "dataset": "kinetics",
         "split": "train", "label": "abseiling", "label_index": 0, "status": "ok",
         "source_path": "/v/a.mp4", "source_bytes": 1 << 33, "duration": 10.01, "fps": 29.97,
         "frames": 300, "width": 340, "height": 256, "has_audio": True,
         "audio_sample_rate": 16000, "mfcc_frames": 1002, "members": 302,
         "sample_bytes": 123456, "sample_sha256": "ab" * 32},
        {"key": "k_b", "line": 3, "shard": "shard-000000", "dataset": "kinetics",
         "split": None, "label": None, "label_index": None, "status": "failed",
         "failure_stage": "manifest", "failure_reason": "video not found: k_b"},
    ]


def test_index_round_trip_with_nulls(tmp_path):
    path = str(tmp_path / "shard-000000.parquet")
    write_index(_index_rows(), path)
    table = read_index(path)
    assert table.schema == INDEX_SCHEMA
    assert table.num_rows == 2
    got = table.to_pylist()
    for want, row in zip(_index_rows(), got):
        assert row == {f: want.get(f) for f in FIELDS}
    assert got[1]["has_audio"] is None and got[1]["frames"] is None
    assert got[0]["source_bytes"] == 1 << 33


def test_index_is_byte_identical(tmp_path):
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    write_index(_index_rows(), a)
    write_index(_index_rows(), b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    buf = pa.BufferOutputStream()
    write_index(_index_rows(), buf)
    with open(a, "rb") as fa:
        assert buf.getvalue().to_pybytes() == fa.read()


def test_index_table_types_and_empty():
    table = index_table([])
    assert table.num_rows == 0 and table.schema == INDEX_SCHEMA
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        index_table([{"key": "k", "line": "not a number"}])


# --------------------------------------------------------------------------- planner


K_HEADER = "label,youtube_id,time_start,time_end,split\n"


@pytest.fixture
def kinetics_run(tmp_path):
    root = tmp_path / "videos"
    for rel in ["train/zumba/zz_id_00001_000000_000010.mp4",
                "train/abseiling/-aBc_DeF-12_000010_000020.mkv",
                "flat_vid_01_000005_000015.webm",
                "val/Avi_1_2_3_000001_000011.avi"]:
        (root / os.path.dirname(rel)).mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")  # the planner only lists names
    manifest = tmp_path / "train.csv"
    manifest.write_text(
        K_HEADER
        + "zumba,zz_id_00001,0,10,train\n"
        + "abseiling,-aBc_DeF-12,10,20,train\n"
        + '"passing American football (in game)",flat_vid_01,5,15,train\n'
        + "abseiling,Avi_1_2_3,1,11,val\n"
        + "abseiling,Not_There_1,1,11,val\n")
    opts = RunOptions(dataset="kinetics", manifest=str(manifest), output=str(tmp_path / "out"),
                      video_root=str(root), shard_size=2, progress=False)
    return opts


def test_planner_creates_then_reuses(kinetics_run):
    opts = kinetics_run
    first = load_or_create_plan(opts)
    assert first.reused is False
    for name in (layout.PLAN, layout.LABELS, layout.RUN):
        assert os.path.isfile(os.path.join(opts.output, name))
    assert first.labels.names == ("abseiling", "passing American football (in game)", "zumba")
    entries = list(iter_entries(opts.output))
    assert first.entries == len(entries) == 5 and first.shards == 3
    # class-stratified: the three abseiling rows go one to each shard, in key order within
    assert [(e.shard, e.key) for e in entries] == [
        (0, "Avi_1_2_3_000001_000011"), (0, "flat_vid_01_000005_000015"),
        (1, "-aBc_DeF-12_000010_000020"), (1, "zz_id_00001_000000_000010"),
        (2, "Not_There_1_000001_000011")]
    by_key = {e.key: e for e in entries}
    e = by_key["-aBc_DeF-12_000010_000020"]
    assert e.path == opts.video_root + "/train/abseiling/-aBc_DeF-12_000010_000020.mkv"
    assert e.label_index == 0 and e.error is None
    assert "video not found" in by_key["Not_There_1_000001_000011"].error
    run = json.loads(open(os.path.join(opts.output, layout.RUN)).read())
    assert run["shard_size"] == 2 and "manifest_sha256" in run and "output" not in run
    assert run["shard_order"] == "stratified-1"
    plan_lines = open(os.path.join(opts.output, layout.PLAN)).read().splitlines()
    assert [PlanEntry.from_json(x) for x in plan_lines] == entries

    # a video appearing later does not change a reused plan; nor does the progress flag
    open(os.path.join(opts.video_root, "Not_There_1_000001_000011.mp4"), "wb").close()
    again = load_or_create_plan(RunOptions(**{**opts.as_dict(), "progress": True,
                                              "mfcc": opts.mfcc}))
    assert again.reused is True
    assert again.spans == first.spans
    assert list(iter_entries(opts.output)) == entries
    assert again.labels == first.labels


def test_planner_mismatch_on_shard_size(kinetics_run):
    opts = kinetics_run
    load_or_create_plan(opts)
    other = RunOptions(**{**opts.as_dict(), "shard_size": 3, "mfcc": opts.mfcc})
    with pytest.raises(PlanMismatch) as exc:
        load_or_create_plan(other)
    assert "shard_size" in str(exc.value)
    assert "manifest_sha256" not in str(exc.value)


def test_planner_mismatch_on_changed_manifest(kinetics_run):
    opts = kinetics_run
    load_or_create_plan(opts)
    with open(opts.manifest, "a") as f:
        f.write("zumba,New_Row_001,0,10,train\n")
    with pytest.raises(PlanMismatch) as exc:
        load_or_create_plan(opts)
    assert "manifest_sha256" in str(exc.value)
    assert "shard_size" not in str(exc.value)


def test_planner_uses_class_list_order(kinetics_run, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("zumba\npassing American football (in game)\nabseiling\nyoga\n")
    opts = RunOptions(**{**kinetics_run.as_dict(), "classes": str(classes),
                         "mfcc": kinetics_run.mfcc})
    plan = load_or_create_plan(opts)
    assert plan.labels.names == ("zumba", "passing American football (in game)", "abseiling",
                                 "yoga")
    by_key = {e.key: e for e in iter_entries(opts.output)}
    assert by_key["zz_id_00001_000000_000010"].label_index == 0
    assert by_key["-aBc_DeF-12_000010_000020"].label_index == 2
    saved = LabelMap.from_json(open(os.path.join(opts.output, layout.LABELS)).read())
    assert saved == plan.labels


def test_planner_mit_categories_next_to_manifest(tmp_path):
    root = tmp_path / "Moments_in_Time"
    (root / "training" / "barking").mkdir(parents=True)
    (root / "training" / "barking" / "giphy-ZxYw.mp4").write_bytes(b"")
    (root / "training" / "abseiling").mkdir(parents=True)
    (root / "training" / "abseiling" / "getty-1.mp4").write_bytes(b"")
    (root / "moments_categories.txt").write_text("barking,1\nabseiling,0\n")
    manifest = root / "trainingSet.csv"
    manifest.write_text("barking/giphy-ZxYw.mp4,barking,3,0\n"
                        "abseiling/getty-1.mp4,abseiling,2,1\n"
                        "abseiling/getty-1.mp4,yawning,2,1\n")
    opts = RunOptions(dataset="mit", manifest=str(manifest), output=str(tmp_path / "out"),
                      video_root=str(root), shard_size=10, progress=False)
    plan = load_or_create_plan(opts)
    assert plan.labels.names == ("abseiling", "barking")
    entries = list(iter_entries(opts.output))
    assert [(e.key, e.line, e.label_index, e.split) for e in entries] == [
        ("abseiling__getty-1", 2, 0, "train"),
        ("abseiling__getty-1", 3, None, "train"),
        ("barking__giphy-ZxYw", 1, 1, "train"),
    ]
    assert plan.entries == 3
    assert entries[0].path == str(root) + "/training/abseiling/getty-1.mp4"
    assert "duplicate key" in entries[1].error

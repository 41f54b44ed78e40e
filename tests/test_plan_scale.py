"""Streaming planning: the SQLite-backed planner gives exactly the plan of the list-based
path (``make_plan(check_rows(read_manifest(...)))``), lists the root once, and holds no
per-row Python objects."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tracemalloc
from types import SimpleNamespace

import memfs  # registers mem://
import pytest

from actprep.pipelines import plansort, storage
from actprep.pipelines.options import RunOptions
from actprep.pipelines.planfile import iter_entries
from actprep.pipelines.planner import _class_list_path, load_or_create_plan
from actprep.pipelines.plansort import (SqliteVideos, iter_files, scratch_db, text_lines,
                                        text_sha256)
from actprep.schemas.labels import LabelMap, parse_class_list
from actprep.schemas.manifest import VideoIndex, check_rows, read_manifest
from actprep.schemas.plan import make_plan

CLASSES = [f"class {i}" for i in range(12)] + ["hitting baseball, slowly", "café ☕"]


def _touch(root, rel: str) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def _kinetics(tmp_path, rows: int = 3000, seed: int = 1):
    """A Kinetics CSV (BOM, CRLF, blank lines, quoted commas) and a root where videos are
    found, missing, ambiguous, upper-case or not videos; keys duplicated or unusable."""
    rnd = random.Random(seed)
    root = tmp_path / "videos"
    root.mkdir()
    lines = ["\ufefflabel,youtube_id,time_start,time_end,split"]
    for i in range(rows):
        yid = f"id{i:05d}" + rnd.choice(["", "", "", "-x", ".dot", "é", "_z+"])
        start = rnd.randrange(0, 300)
        label = rnd.choice(CLASSES + ["not a class"])
        key = f"{yid}_{start:06d}_{start + 10:06d}"
        kind = rnd.random()
        if kind < 0.6:
            _touch(root, f"train/{label}/{key}.mp4")
        elif kind < 0.7:
            _touch(root, f"{key}.MKV")
        elif kind < 0.75:
            _touch(root, f"a/{key}.mp4")
            _touch(root, f"b/{key}.webm")
        elif kind < 0.78:
            _touch(root, f"{key}.txt")
        field = f'"{label}"' if "," in label else label
        lines.append(f"{field},{yid},{start},{start + 10}.0,train")
        if rnd.random() < 0.05:
            lines.append(f"{field},{yid},{start},{start + 10},val")  # duplicate key
        if rnd.random() < 0.02:
            lines.append("")
    manifest = tmp_path / "kinetics_train.csv"
    manifest.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES[::-1]) + "\n")
    return manifest, root


def _mit(tmp_path, rows: int = 2000, seed: int = 2):
    rnd = random.Random(seed)
    root = tmp_path / "mit"
    root.mkdir()
    cats = [c.replace(" ", "+") for c in CLASSES[:10]]
    lines = []
    for i in range(rows):
        cat = rnd.choice(cats)
        rel = f"{cat}/vid-{i % 1800}.mp4"
        where = rnd.random()
        if where < 0.8:  # at the root, under training/ or under validation/ (not found)
            folder = "" if where < 0.2 else "training/" if where < 0.7 else "validation/"
            _touch(root, folder + rel)
        lines.append(f"{rel},{cat if rnd.random() < 0.97 else 'yawning'},3,0")
        if rnd.random() < 0.01:
            lines.append(f"../escape{i}.mp4,{cat},3,0")
    manifest = root / "trainingSet.csv"
    manifest.write_text("\n".join(lines) + "\n")
    (root / "moments_categories.txt").write_text("".join(f"{c},{i}\n" for i, c in enumerate(cats)))
    return manifest, root


def _generic(tmp_path, jsonl: bool, rows: int = 800, seed: int = 3):
    rnd = random.Random(seed)
    if jsonl:
        text = "\n\n".join(json.dumps({"path": f"clips/{rnd.choice('ab')}{i % 300}.mp4",
                                       "label": rnd.choice(CLASSES[:3])}) for i in range(rows))
        manifest = tmp_path / "list.jsonl"
    else:
        text = "path,label,split\n" + "\n".join(
            f"{rnd.choice(['/abs/', 'gs://b/', 'rel/', '../'])}v{i % 500}.mp4,"
            f"{rnd.choice(CLASSES[:4] + [''])},{rnd.choice(['train', 'val', ''])}"
            for i in range(rows))
        manifest = tmp_path / "list.csv"
    manifest.write_text(text + "\n")
    return manifest


def _list_based(opts: RunOptions) -> tuple[list, LabelMap]:
    """The plan as the planner made it before it streamed: every row in lists."""
    text = storage.read_text(opts.manifest)
    videos = VideoIndex(storage.list_files(opts.video_root)) if opts.video_root else None
    rows = read_manifest(opts.dataset, text, opts.manifest, videos, opts.split)
    class_path = _class_list_path(opts)
    if class_path:
        labels = parse_class_list(storage.read_text(class_path), class_path)
        rows = check_rows(rows, set(labels.names), class_path)
    else:
        labels = LabelMap.from_labels(r.label for r in rows)
        rows = check_rows(rows, None)
    root = opts.video_root or os.path.dirname(opts.manifest) or "."
    return make_plan(rows, labels, opts.dataset, root, opts.shard_size), labels


@pytest.mark.parametrize("case", ["kinetics", "kinetics_classes_split", "mit", "generic_csv",
                                  "generic_jsonl"])
def test_streaming_plan_equals_list_based_plan(tmp_path, case):
    if case.startswith("kinetics"):
        manifest, root = _kinetics(tmp_path)
        extra = (dict(classes=str(tmp_path / "classes.txt"), split="val", shard_size=500)
                 if case == "kinetics_classes_split" else dict(shard_size=97))
        kw = dict(dataset="kinetics", video_root=str(root), **extra)
    elif case == "mit":
        manifest, root = _mit(tmp_path)
        kw = dict(dataset="mit", video_root=str(root), shard_size=64)
    else:
        jsonl = case == "generic_jsonl"
        manifest = _generic(tmp_path, jsonl)
        kw = dict(dataset="generic", shard_size=33)
        if jsonl:
            kw["video_root"] = str(tmp_path / "clips_root")
            for i in range(0, 300, 2):
                _touch(tmp_path / "clips_root", f"clips/a{i}.mp4")
    opts = RunOptions(manifest=str(manifest), output=str(tmp_path / "out"), progress=False, **kw)
    want, want_labels = _list_based(opts)
    plan = load_or_create_plan(opts)
    got = list(iter_entries(opts.output))
    assert plan.labels == want_labels
    assert len(got) == len(want) == plan.entries
    for mine, theirs in zip(got, want):
        assert mine == theirs
    errors = " ".join(e.error or "" for e in got)
    expected = {"kinetics": ["duplicate key", "sample key", "video not found", "ambiguous"],
                "kinetics_classes_split": ["unknown label"],
                "mit": ["duplicate key", "unknown label", "escapes the video root",
                        "video not found"],
                "generic_csv": ["duplicate key", "escapes the video root"],
                "generic_jsonl": ["video not found"]}[case]
    assert all(kind in errors for kind in expected)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["manifest_sha256"] == hashlib.sha256(
        storage.read_text(str(manifest)).encode()).hexdigest()


def test_streaming_plan_errors_like_the_list_based_one(tmp_path):
    manifest = tmp_path / "k.csv"
    manifest.write_text("label,youtube_id,time_start,time_end,split\n"
                        "a,x,1,2,train\n\nb,y,1,2\n")
    (tmp_path / "v").mkdir()
    opts = RunOptions(dataset="kinetics", manifest=str(manifest), output=str(tmp_path / "o"),
                      video_root=str(tmp_path / "v"), progress=False)
    with pytest.raises(ValueError, match=r"k\.csv:4: expected 5 fields"):
        load_or_create_plan(opts)
    assert not (tmp_path / "o" / "run.json").exists()
    with pytest.raises(FileNotFoundError, match="video root"):
        load_or_create_plan(RunOptions(**{**opts.as_dict(), "video_root": str(tmp_path / "no"),
                                          "mfcc": opts.mfcc}))
    with pytest.raises(FileNotFoundError, match="file not found"):
        text_sha256(str(tmp_path / "missing.csv"))


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_text_lines_split_like_stringio(monkeypatch, chunk):
    monkeypatch.setattr(plansort, "CHUNK", chunk)
    text = "\ufeffa,é\r\nb,\"x\ny\"\r\n\nlast ☕ line\rno newline"
    lines = list(text_lines(plansort.decoded_chunks(io.BytesIO(text.encode()))))
    assert lines == list(io.StringIO(text[1:]))


def test_iter_files_streams_what_list_files_lists(tmp_path):
    for rel in ["a.mp4", "x/b.MKV", "x/y/z/c.webm", "x/y/readme.txt", "e m/ty.avi"]:
        _touch(tmp_path / "root", rel)
    (tmp_path / "root" / "empty").mkdir()
    os.symlink(tmp_path / "root" / "x" / "y", tmp_path / "root" / "link")
    root = str(tmp_path / "root") + "/"
    assert sorted(iter_files(root)) == sorted(storage.list_files(root))
    assert "link/z/c.webm" in set(iter_files(root))
    with pytest.raises(FileNotFoundError):
        iter_files(str(tmp_path / "nothing"))


def test_iter_files_on_object_stores(monkeypatch):
    memfs.clear()
    for rel in ["v/a.mp4", "v/s/b.mp4", "vv/not_under.mp4"]:
        memfs.put(f"mem://bkt/{rel}", b"")
    assert sorted(iter_files("mem://bkt/v")) == sorted(storage.list_files("mem://bkt/v"))
    with pytest.raises(FileNotFoundError, match="no files"):
        list(iter_files("mem://bkt/none"))
    memfs.clear()

    asked = []

    class Client:  # the google-cloud-storage client as GcsIO holds it
        def list_blobs(self, bucket, prefix, fields):
            asked.append((bucket, prefix))
            return iter([SimpleNamespace(name=f"{prefix}a.mp4"),
                         SimpleNamespace(name=f"{prefix}c/b.webm")])

    fake = SimpleNamespace(_gcsIO=lambda: SimpleNamespace(client=Client()))
    monkeypatch.setattr(storage.FileSystems, "get_filesystem", lambda path: fake)
    assert list(iter_files("gs://bkt/videos/")) == ["a.mp4", "c/b.webm"]
    assert asked == [("bkt", "videos/")]  # one listing


def test_sqlite_videos_answers_like_video_index():
    paths = ["/a/x.mp4", "b/x.webm", "b/x.txt", "c/y.MKV", "z.mp4.part", "d/é ☕.avi",
             "e/x.Mp4", "bad\udcffname/w.mp4"]
    index = VideoIndex(paths)
    with scratch_db() as db:
        videos = SqliteVideos(db, paths)
        for stem in ["x", "y", "z", "z.mp4", "é ☕", "w", "nothing"]:
            assert videos.find_stem(stem) == index.find_stem(stem)
        for rel in ["a/x.mp4", "/a/x.mp4", "b/x.txt", "c/y.MKV", "c/y.mkv", "d/é ☕.avi", "a"]:
            assert (rel in videos) == (rel in index)
    assert len(VideoIndex(["a/x.mp4"]).find_stem("x")) == 1


def test_planning_memory_does_not_grow_with_rows(tmp_path, monkeypatch):
    """Python-level peak (tracemalloc: SQLite's own pages are not counted) with 4x the rows
    and 4x the video files stays flat; the list-based planner grew ~1 KB per row."""
    monkeypatch.setattr(plansort, "CHUNK", 1 << 16)

    def peak(rows: int) -> int:
        folder = tmp_path / str(rows)
        (folder / "v").mkdir(parents=True)
        lines = ["label,youtube_id,time_start,time_end,split"]
        for i in range(rows):
            lines.append(f"class {i % 50},id{i:07d},0,10,train")
            if i % 2:
                open(folder / "v" / f"id{i:07d}_000000_000010.mp4", "wb").close()
        (folder / "k.csv").write_text("\n".join(lines) + "\n")
        opts = RunOptions(dataset="kinetics", manifest=str(folder / "k.csv"),
                          output=str(folder / "out"), video_root=str(folder / "v"),
                          shard_size=100, progress=False)
        tracemalloc.start()
        try:
            plan = load_or_create_plan(opts)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert plan.entries == rows

    small, large = peak(2000), peak(8000)
    assert large - small < 1_000_000, (small, large)

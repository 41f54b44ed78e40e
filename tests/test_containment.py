"""The video root is a boundary (issue 14): a video is read only when its real path
(symlinks resolved, the root's own included) lies inside the root (without --video-root:
the manifest's folder) and it is a regular file. Checked when the root is listed at
planning and again when the video is opened. Real symlinks and FIFOs, no mocks."""
from __future__ import annotations

import json
import os
import threading

import memfs  # registers mem://
import pyarrow.parquet as pq
import pytest

from actprep.extractors.errors import MediaError
from actprep.pipelines import storage
from actprep.pipelines.planfile import iter_entries
from actprep.pipelines.planner import load_or_create_plan
from actprep.pipelines.plansort import SqliteVideos, iter_files, scratch_db
from actprep.pipelines.process import _fetch
from actprep.extractors.synth import make_video
from actprep.schemas.manifest import (VideoIndex, listed_refusal, read_generic,
                                      read_kinetics)
from conftest import LOCAL_BEAM

FAILURES_EXPECTED = ["--max-failed-fraction", "1"]


def _touch(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def _video(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    make_video(path, duration=0.5, fps=10, size=(64, 48), audio_freq=None)


def _tree(base, make=_touch) -> dict:
    """A root with every kind of entry, and an outside folder its links lead to:

    root/a.mp4, root/sub/b.mp4          plain files
    root/in_link.mp4 -> sub/b.mp4       link to a file inside
    root/in_dir -> sub                  link to a folder inside
    root/out_link.mp4 -> OUT/secret.mp4 link to a file outside
    root/out_dir -> OUT/dir             link to a folder outside (holds clip.mp4)
    root/sub/up -> ..                   link back to a folder it is in (a loop)
    root/fifo.mp4, root/to_fifo.mp4     a FIFO and a link to it
    root/broken.mp4 -> nowhere.mp4      a link to nothing
    base/root_link -> root              the root given as a link
    """
    root, out = base / "root", base / "outside"
    for rel in ("a.mp4", "sub/b.mp4"):
        make(str(root / rel))
    for rel in ("secret.mp4", "dir/clip.mp4"):
        make(str(out / rel))
    os.symlink("sub/b.mp4", root / "in_link.mp4")
    os.symlink("sub", root / "in_dir")
    os.symlink(out / "secret.mp4", root / "out_link.mp4")
    os.symlink(out / "dir", root / "out_dir")
    os.symlink("..", root / "sub" / "up")
    os.mkfifo(root / "fifo.mp4")
    os.symlink("fifo.mp4", root / "to_fifo.mp4")
    os.symlink("nowhere.mp4", root / "broken.mp4")
    os.symlink(root, base / "root_link")
    return {"root": root, "out": out, "root_link": base / "root_link"}


def _expected_listing(out) -> dict:
    fifo = "not a regular file (a FIFO)"
    return {"a.mp4": None, "sub/b.mp4": None, "in_link.mp4": None, "in_dir/b.mp4": None,
            "out_link.mp4": f"escapes the video root: {out}/secret.mp4",
            "out_dir/": f"escapes the video root: {out}/dir",
            "fifo.mp4": fifo, "to_fifo.mp4": fifo, "broken.mp4": None}


# --------------------------------------------------------------------------- listing


@pytest.mark.parametrize("root_key", ["root", "root_link"])
def test_listing_refuses_what_leads_out_or_is_no_file(tmp_path, root_key):
    """Links inside the root are followed (the root may be a link itself); a link to a
    file or folder outside, a FIFO, a link to a FIFO are refused; the loop is walked once;
    the outside folder is not walked."""
    tree = _tree(tmp_path)
    root = str(tree[root_key])
    listed = {str(p): listed_refusal(p) for p in iter_files(root)}
    assert listed == _expected_listing(tree["out"])
    assert sorted(iter_files(root)) == sorted(storage.list_files(root))
    assert {str(p): listed_refusal(p) for p in storage.list_files(root)} == listed


def test_link_loops_and_names_that_are_not_utf8(tmp_path):
    """A link loop is refused, not followed; a link out to a file whose name is not UTF-8
    is refused with a reason that can be stored, and rows find both."""
    root, out = tmp_path / "root", os.fsencode(tmp_path / "outside")
    root.mkdir()
    os.mkdir(out)
    open(out + b"/caf\xe9.mp4", "wb").close()
    os.symlink(out + b"/caf\xe9.mp4", root / "latin.mp4")
    os.symlink("loop_b.mp4", root / "loop_a.mp4")
    os.symlink("loop_a.mp4", root / "loop_b.mp4")
    reasons = {str(p): listed_refusal(p) for p in iter_files(str(root))}
    outside = os.fsdecode(out)
    assert reasons == {"latin.mp4": f"escapes the video root: {outside}/caf\\xe9.mp4",
                       "loop_a.mp4": f"a symbolic link loop: {root}/loop_a.mp4",
                       "loop_b.mp4": f"a symbolic link loop: {root}/loop_b.mp4"}
    text = "path,label\nlatin.mp4,a\nloop_a.mp4,a\n"
    for videos in _lookups(str(root)):
        assert [r.error for r in read_generic(text, "l.csv", videos)] == [
            reasons["latin.mp4"], reasons["loop_a.mp4"]]


def test_object_store_names_climbing_out_are_refused():
    memfs.clear()
    for rel in ("v/a.mp4", "v/x/../b.mp4", "v/x/../../c.mp4"):
        memfs.put(f"mem://bkt/{rel}", b"")
    listed = {str(p): listed_refusal(p) for p in iter_files("mem://bkt/v")}
    assert listed == {"a.mp4": None, "x/../b.mp4": None,
                      "x/../../c.mp4": "escapes the video root: mem://bkt/v/x/../../c.mp4"}
    assert sorted(storage.list_files("mem://bkt/v")) == sorted(listed)
    memfs.clear()


# --------------------------------------------------------------------------- rows


def _lookups(root: str):
    """The planner's lookup and the in-memory one, over the same listing."""
    with scratch_db() as db:
        yield SqliteVideos(db, iter_files(root))
    yield VideoIndex(storage.list_files(root))


def test_rows_of_refused_videos_are_failures(tmp_path):
    tree = _tree(tmp_path)
    out = tree["out"]
    paths = ["a.mp4", "in_link.mp4", "in_dir/b.mp4", "out_link.mp4", "out_dir/clip.mp4",
             "out_dir/deeper/x.mp4", "fifo.mp4", "to_fifo.mp4", "missing.mp4"]
    text = "".join(json.dumps({"path": p, "label": "a"}) + "\n" for p in paths)
    for videos in _lookups(str(tree["root"])):
        rows = {r.path or paths[r.line - 1]: r.error
                for r in read_generic(text, "l.jsonl", videos)}
        assert rows == {
            "a.mp4": None, "in_link.mp4": None, "in_dir/b.mp4": None,
            "out_link.mp4": f"escapes the video root: {out}/secret.mp4",
            "out_dir/clip.mp4": f"escapes the video root: {out}/dir/clip.mp4",
            "out_dir/deeper/x.mp4": f"escapes the video root: {out}/dir/deeper/x.mp4",
            "fifo.mp4": "not a regular file (a FIFO)",
            "to_fifo.mp4": "not a regular file (a FIFO)",
            "missing.mp4": "video not found: missing.mp4 under the video root"}


def test_kinetics_rows_found_by_name_are_checked_too(tmp_path):
    """A video found by its name is refused like a path; one behind a link to a folder
    outside is not found, and the message says which folders were not searched."""
    root, out = tmp_path / "root", tmp_path / "outside"
    _touch(str(root / "ok_000001_000002.mp4"))
    _touch(str(out / "abseiling" / "far_000001_000002.mp4"))
    _touch(str(out / "near_000001_000002.mp4"))
    os.symlink(out / "abseiling", root / "abseiling")
    os.symlink(out / "near_000001_000002.mp4", root / "near_000001_000002.mp4")
    os.mkfifo(root / "pipe_000001_000002.mkv")
    text = "label,youtube_id,time_start,time_end,split\n" + "".join(
        f"a,{yid},1,2,train\n" for yid in ("ok", "near", "far", "pipe"))
    for videos in _lookups(str(root)):
        ok, near, far, pipe = read_kinetics(text, "k.csv", videos)
        assert ok.error is None and ok.path == "ok_000001_000002.mp4"
        assert near.error == f"escapes the video root: {out}/near_000001_000002.mp4"
        assert far.path is None and far.error == (
            "video not found: no far_000001_000002.{mp4/mkv/webm/avi} under the video root; "
            "1 linked folder(s) under it lead out of it and were not searched, e.g. "
            f"abseiling/ (escapes the video root: {out}/abseiling)")
        assert pipe.error == "not a regular file (a FIFO)"


# --------------------------------------------------------------------------- opening


def _returns_within(seconds: float, work):
    """``work()``'s result or exception, failing the test if it blocks (a FIFO opened)."""
    done: dict = {}

    def run():
        try:
            done["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            done["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked: the FIFO was opened"
    if "error" in done:
        raise done["error"]
    return done["result"]


def _fetched(path: str, root: str | None) -> str:
    with _fetch(path, root) as local:
        return local


def test_fetch_checks_again_when_the_video_is_opened(tmp_path):
    tree = _tree(tmp_path)
    root, out = str(tree["root_link"]), tree["out"]
    assert _fetched(f"{root}/in_link.mp4", root) == str(tree["root"] / "sub" / "b.mp4")
    cases = {"out_link.mp4": f"escapes the video root: {out}/secret.mp4",
             "out_dir/clip.mp4": f"escapes the video root: {out}/dir/clip.mp4",
             "fifo.mp4": "not a regular file (a FIFO)",
             "to_fifo.mp4": "not a regular file (a FIFO)",
             "sub": "not a regular file (a folder)",
             "broken.mp4": f"file not found: {root}/broken.mp4"}
    for rel, reason in cases.items():
        with pytest.raises(MediaError) as caught:
            _returns_within(10, lambda rel=rel: _fetched(f"{root}/{rel}", root))
        assert (caught.value.stage, caught.value.reason) == ("fetch", reason)
    with pytest.raises(MediaError, match="escapes the video root"):
        _fetched(str(out / "secret.mp4"), root)
    # without a root only the file itself is judged
    assert _fetched(str(out / "secret.mp4"), None) == str(out / "secret.mp4")
    with pytest.raises(MediaError, match="a FIFO"):
        _returns_within(10, lambda: _fetched(f"{root}/fifo.mp4", None))


def test_fetch_on_an_object_store_keeps_under_the_root():
    memfs.clear()
    memfs.put("mem://bkt/v/a.mp4", b"video")
    memfs.put("mem://bkt/other/a.mp4", b"secret")
    memfs.put("mem://bkt/v2/a.mp4", b"secret")
    with _fetch("mem://bkt/v/a.mp4", "mem://bkt/v") as local, open(local, "rb") as video:
        assert video.read() == b"video"
    for path in ("mem://bkt/other/a.mp4", "mem://bkt/v/../other/a.mp4", "mem://bkt/v2/a.mp4",
                 "mem://other/v/a.mp4", "/tmp/a.mp4"):
        with pytest.raises(MediaError, match="escapes the video root"):
            _fetch(path, "mem://bkt/v")
    with pytest.raises(MediaError, match="file not found: mem://bkt/v/b.mp4"):
        _fetch("mem://bkt/v/b.mp4", "mem://bkt/v")
    memfs.clear()


def _opts(manifest, out, root=None):
    from actprep.pipelines.options import RunOptions
    return RunOptions(dataset="generic", manifest=str(manifest), output=str(out),
                      video_root=str(root) if root else None, modalities=("rgb",),
                      progress=False)


def test_a_link_swapped_after_planning_is_refused_when_opened(tmp_path):
    """Planned while the link pointed inside the root, swapped to a file outside before
    the video is opened: the open refuses it."""
    tree = _tree(tmp_path)
    root = tree["root"]
    (tmp_path / "l.csv").write_text("path,label\nin_link.mp4,a\n")
    opts = _opts(tmp_path / "l.csv", tmp_path / "o", root)
    load_or_create_plan(opts)
    (entry,) = iter_entries(opts.output)
    assert entry.error is None and _fetched(entry.path, str(root)) == str(root / "sub/b.mp4")
    os.remove(root / "in_link.mp4")
    os.symlink(tree["out"] / "secret.mp4", root / "in_link.mp4")
    with pytest.raises(MediaError) as caught:
        _fetched(entry.path, str(root))
    assert caught.value.reason == f"escapes the video root: {tree['out']}/secret.mp4"


def test_process_entry_refuses_a_link_swapped_after_planning(tmp_path):
    from actprep.pipelines.process import process_entry

    tree = _tree(tmp_path, make=_video)
    root = tree["root"]
    (tmp_path / "l.csv").write_text("path,label\nin_link.mp4,a\n")
    opts = _opts(tmp_path / "l.csv", tmp_path / "o", root)
    load_or_create_plan(opts)
    (entry,) = iter_entries(opts.output)
    os.remove(root / "in_link.mp4")
    os.symlink(tree["out"] / "secret.mp4", root / "in_link.mp4")
    result = process_entry(entry, opts)
    assert result["failure_stage"] == "fetch"
    assert "escapes the video root" in result["failure_reason"]


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("containment")
    return _tree(base, make=_video)


def _run(run_cli, manifest, out, *extra) -> int:
    return run_cli(["run", "--dataset", "generic", "--manifest", manifest, "--output", out,
                    "--modalities", "rgb", "--no-progress", *FAILURES_EXPECTED, *extra,
                    *LOCAL_BEAM])


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_reads_only_regular_files_inside_the_root(run_cli, video_tree, tmp_path):
    """With the root given as a link: links inside it are samples, links leading out and
    FIFOs are manifest failures and nothing of the outside folder is read."""
    paths = ["a.mp4", "in_link.mp4", "in_dir/b.mp4", "out_link.mp4", "out_dir/clip.mp4",
             "fifo.mp4"]
    manifest = tmp_path / "l.jsonl"
    manifest.write_text("".join(json.dumps({"path": p, "label": "x"}) + "\n" for p in paths))
    out = tmp_path / "out"
    assert _run(run_cli, manifest, out, "--video-root", video_tree["root_link"]) == 0
    rows = {r["line"]: r for r in pq.read_table(out / "index").to_pylist()}
    assert [rows[i]["status"] for i in (1, 2, 3)] == ["ok"] * 3
    outside = video_tree["out"]
    assert [(rows[i]["failure_stage"], rows[i]["failure_reason"]) for i in (4, 5, 6)] == [
        ("manifest", f"escapes the video root: {outside}/secret.mp4"),
        ("manifest", f"escapes the video root: {outside}/dir/clip.mp4"),
        ("manifest", "not a regular file (a FIFO)")]
    assert sum(r["status"] == "ok" for r in rows.values()) == 3


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_without_video_root_keeps_to_the_manifests_folder(run_cli, video_tree, tmp_path):
    """Without --video-root the manifest's folder is the root: an absolute path inside it
    is read, one outside it (or a link, or '..', leading out) is a manifest failure."""
    base = video_tree["root"]
    manifest = base / "list-noroot.csv"
    outside = video_tree["out"]
    manifest.write_text(f"path,label\n{base}/a.mp4,x\nsub/b.mp4,x\n{outside}/secret.mp4,x\n"
                        f"out_link.mp4,x\n../outside/secret.mp4,x\n")
    try:
        out = tmp_path / "out"
        assert _run(run_cli, manifest, out) == 0
    finally:
        manifest.unlink()
    rows = {r["line"]: r for r in pq.read_table(out / "index").to_pylist()}
    assert rows[2]["status"] == rows[3]["status"] == "ok"
    assert [rows[i]["failure_reason"] for i in (4, 5)] == [
        f"escapes the video root: {outside}/secret.mp4"] * 2
    assert "escapes the video root (without --video-root" in rows[6]["failure_reason"]
    assert {rows[i]["failure_stage"] for i in (4, 5, 6)} == {"manifest"}


def test_cli_non_utf8_manifest_is_an_input_error(run_cli, tmp_path, capsys):
    manifest = tmp_path / "l.csv"
    manifest.write_bytes(b"path,label\na.mp4,x\nb.mp4,caf\xe9\n")
    out = tmp_path / "out"
    assert _run(run_cli, manifest, out) == 2
    err = capsys.readouterr().err
    assert f"{manifest}:3: not UTF-8 (0xe9: invalid continuation byte)" in err
    assert "Traceback" not in err and not out.exists()


def test_cli_jsonl_wrong_type_is_an_input_error(run_cli, tmp_path, capsys):
    manifest = tmp_path / "l.jsonl"
    manifest.write_text('{"path": "a.mp4", "label": "x"}\n{"path": "b.mp4", "label": 7}\n')
    assert _run(run_cli, manifest, tmp_path / "out") == 2
    assert f"{manifest}:2: 'label' is a number, expected a string or null" in \
        capsys.readouterr().err

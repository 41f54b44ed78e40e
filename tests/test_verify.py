"""``actprep verify``: a real output verifies clean; each kind of damage done to a copy of it
is reported by name, with exit status 1."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest

from actprep.pipelines.fragment import open_shard
from actprep.extractors.synth import make_garbage, make_video
from actprep.reports.tarstream import TarReader
from actprep.reports.verify import add_verify_parser, main
from actprep.schemas.sample import tar_info
from actprep.schemas.index import read_index, write_index
from conftest import LOCAL_BEAM

KEYS = ["v0", "v1", "v2", "v3"]  # v1, v3 without audio; "bad" (garbage) fails
# the fixture's shards (size 2, class-stratified plan; a: bad v0 v2, b: v1 v3), each in key
# order: bad v3 | v0 v1 | v2 (test_fixture_shards checks it)
SHARDS = [["bad", "v3"], ["v0", "v1"], ["v2"]]


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> str:
    """A 3-shard output (shard size 2): 4 ok samples (rgb + mfcc), one failed row."""
    from actprep.commands.cli import main as actprep

    root = tmp_path_factory.mktemp("verify_videos")
    with open(root / "clips.jsonl", "w") as f:
        for i, key in enumerate(KEYS):
            make_video(str(root / f"{key}.mp4"), duration=0.4, fps=10, size=(64, 48),
                       audio_freq=440.0 if i % 2 == 0 else None)
            f.write(json.dumps({"path": f"{key}.mp4", "label": "ab"[i % 2]}) + "\n")
        make_garbage(str(root / "bad.mp4"), 4096, seed=1)
        f.write(json.dumps({"path": "bad.mp4", "label": "a"}) + "\n")
    out = str(tmp_path_factory.mktemp("verify_out") / "out")
    code = actprep(["run", "--dataset", "generic", "--manifest", str(root / "clips.jsonl"),
                    "--output", out, "--size", "64x48", "--shard-size", "2",
                    "--modalities", "rgb,mfcc", "--no-progress", *LOCAL_BEAM])
    assert code == 0
    return out


@pytest.fixture
def copy(output, tmp_path) -> str:
    """A copy of the output to damage."""
    return shutil.copytree(output, str(tmp_path / "out"))


def verify_json(out: str, capsys, *extra: str) -> tuple[int, dict]:
    code = main([out, "--json", "--workers", "2", *extra])
    return code, json.loads(capsys.readouterr().out)


def kinds(report: dict) -> set[tuple[str | None, str | None, str]]:
    return {(p["shard"], p["key"], p["kind"]) for p in report["problems"]}


def shard_of(out: str, key: str) -> str:
    """The tar holding ``key``."""
    for name in sorted(os.listdir(out)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(out, name)) as tar:
                if any(m.name.startswith(key + ".") for m in tar):
                    return os.path.join(out, name)
    raise KeyError(key)


def member_offsets(tar_path: str, name: str) -> tuple[int, int, int]:
    """(header offset, data offset, size) of a member."""
    with tarfile.open(tar_path) as tar:
        m = tar.getmember(name)
        return m.offset, m.offset_data, m.size


@pytest.mark.e2e
def test_fixture_shards(output):
    """The membership the tests below are written for, from the plan."""
    entries = [json.loads(line) for line in open(os.path.join(output, "plan.jsonl"))]
    assert [[e["key"] for e in entries if e["shard"] == n] for n in range(3)] == SHARDS
    assert [e["key"] for e in entries] == [key for shard in SHARDS for key in shard]


@pytest.mark.e2e
def test_clean_output_verifies(output, capsys):
    code, report = verify_json(output, capsys)
    assert code == 0, report["problems"]
    assert report["ok"] is True and report["problems"] == []
    assert (report["shards"], report["samples"]) == (3, 4)
    files = [os.path.join(output, f) for f in os.listdir(output) if f.endswith(".tar")]
    files += [os.path.join(output, "index", f) for f in os.listdir(os.path.join(output, "index"))]
    assert report["bytes"] == sum(os.path.getsize(f) for f in files)
    assert main([output, "--workers", "1"]) == 0  # the human report
    text = capsys.readouterr().out
    assert "3 shards, 4 samples" in text and "no problems" in text


@pytest.mark.e2e
def test_flipped_jpeg_byte(copy, capsys):
    path = shard_of(copy, "v2")
    _, data, size = member_offsets(path, "v2.rgb.000002.jpg")
    with open(path, "r+b") as f:
        f.seek(data + size // 2)
        byte = f.read(1)
        f.seek(data + size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    code, report = verify_json(copy, capsys)
    assert code == 1
    assert ("shard-000002", "v2", "sha256") in kinds(report)
    assert {p["kind"] for p in report["problems"]} <= {"sha256", "decode"}
    main([copy])
    assert "shard-000002.tar: sample v2: sha256 mismatch" in capsys.readouterr().out


@pytest.mark.e2e
def test_truncated_tar(copy, capsys):
    path = shard_of(copy, "v0")
    _, data, size = member_offsets(path, "v0.rgb.000003.jpg")
    with open(path, "r+b") as f:
        f.truncate(data + size // 2)
    code, report = verify_json(copy, capsys)
    assert code == 1
    (corrupt,) = [p for p in report["problems"] if p["kind"] == "corrupt"]
    assert corrupt["shard"] == "shard-000001" and corrupt["key"] == "v0"
    assert "v0.rgb.000003.jpg" in corrupt["detail"] and "not reached: 1" in corrupt["detail"]
    assert len(report["problems"]) == 1  # v0 is incomplete, v1 not reached: no other noise


@pytest.mark.e2e
def test_tar_without_end_blocks_or_with_trailing_data(copy, capsys):
    last = os.path.join(copy, "shard-000002.tar")
    _, data, size = member_offsets(last, "v2.json")
    with open(last, "r+b") as f:  # cut right after the last member's padding
        f.truncate(data + size + (-size % 512))
    with open(os.path.join(copy, "shard-000000.tar"), "ab") as f:
        f.write(b"junk")
    code, report = verify_json(copy, capsys)
    assert code == 1
    assert kinds(report) == {("shard-000002", "v2", "corrupt"), ("shard-000000", "v3", "corrupt")}
    details = " ".join(p["detail"] for p in report["problems"])
    assert "without its end-of-archive blocks" in details and "data after" in details


@pytest.mark.e2e
def test_missing_unindexed_and_pending(copy, capsys):
    os.remove(os.path.join(copy, "shard-000001.tar"))
    os.remove(os.path.join(copy, "index", "shard-000002.parquet"))
    code, report = verify_json(copy, capsys)
    assert code == 1
    assert kinds(report) == {("shard-000001", None, "missing"),
                             ("shard-000001", None, "orphan-index"),
                             ("shard-000002", None, "unindexed")}
    assert report["shards"] == 2 and report["samples"] == 2  # the unindexed tar is still read
    work = os.path.join(copy, "_work", "shard-000001")
    os.makedirs(work)
    open(os.path.join(work, "000000002.result.json"), "w").write("{}")
    code, report = verify_json(copy, capsys)
    (missing,) = [p for p in report["problems"] if p["kind"] == "missing"]
    assert "pending" in missing["detail"] and "1 of 2 videos" in missing["detail"]


@pytest.mark.e2e
def test_extra_files(copy, capsys):
    shutil.copy(os.path.join(copy, "shard-000000.tar"), os.path.join(copy, "shard-000099.tar"))
    open(os.path.join(copy, "notes.txt"), "w").write("hi")
    os.makedirs(os.path.join(copy, "stray", "deeper"))
    open(os.path.join(copy, "stray", "deeper", "x"), "w").write("x")
    open(os.path.join(copy, "index", ".shard-000001.parquet.tmp-0123"), "w").write("x")
    code, report = verify_json(copy, capsys)
    assert code == 1
    details = sorted(p["detail"] for p in report["problems"])
    assert {p["kind"] for p in report["problems"]} == {"extra"}
    assert len(details) == 4 and any("shard-000099.tar" in d for d in details)
    assert any("notes.txt" in d for d in details) and any("stray/" in d for d in details)


@pytest.mark.e2e
def test_header_deviation(copy, capsys):
    path = shard_of(copy, "v0")
    header, _, _ = member_offsets(path, "v0.mfcc.npy")
    with open(path, "r+b") as f:
        f.seek(header)
        block = bytearray(f.read(512))
        block[136:148] = b"%011o\0" % 1234567  # mtime
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % tarfile.calc_chksums(bytes(block))[0]
        f.seek(header)
        f.write(block)
    code, report = verify_json(copy, capsys)
    assert code == 1
    (problem,) = report["problems"]
    assert (problem["shard"], problem["key"], problem["kind"]) == ("shard-000001", "v0", "header")
    assert "v0.mfcc.npy" in problem["detail"] and "mtime 1234567" in problem["detail"]


@pytest.mark.e2e
def test_bad_header_checksum_is_corrupt(copy, capsys):
    path = shard_of(copy, "v0")
    header, _, _ = member_offsets(path, "v0.rgb.000001.jpg")
    with open(path, "r+b") as f:
        f.seek(header + 140)  # inside mtime, checksum not updated
        f.write(b"7")
    code, report = verify_json(copy, capsys)
    assert kinds(report) == {("shard-000001", None, "corrupt")}
    assert "after member v0.cls" in report["problems"][0]["detail"]


@pytest.mark.e2e
def test_npy_replaced_by_garbage(copy, capsys):
    path = shard_of(copy, "v2")
    _, data, size = member_offsets(path, "v2.mfcc.npy")
    with open(path, "r+b") as f:
        f.seek(data)
        f.write(np.random.default_rng(0).bytes(size))
    code, report = verify_json(copy, capsys)
    assert code == 1
    assert kinds(report) == {("shard-000002", "v2", "sha256"), ("shard-000002", "v2", "decode")}
    decode = next(p for p in report["problems"] if p["kind"] == "decode")
    assert "v2.mfcc.npy does not load" in decode["detail"]
    code, report = verify_json(copy, capsys, "--no-decode")  # the hash still catches it
    assert kinds(report) == {("shard-000002", "v2", "sha256")}


def _rewrite_index(out: str, shard: str, edit) -> None:
    path = os.path.join(out, "index", f"{shard}.parquet")
    rows = read_index(path).to_pylist()
    buf = io.BytesIO()
    write_index(edit(rows), buf)
    open(path, "wb").write(buf.getvalue())


@pytest.mark.e2e
def test_index_disagrees_with_plan_and_tar(copy, capsys):
    def relabel_bad(rows):
        for r in rows:
            if r["key"] == "bad":
                r["label_index"] = 1
        return rows
    _rewrite_index(copy, "shard-000000", relabel_bad)

    def drop_v0_and_bad_cls(rows):
        for r in rows:
            if r["key"] == "v1":
                r["label_index"] = 0  # plan says 1, the tar's v1.cls says 1
        return [r for r in rows if r["key"] != "v0"]
    _rewrite_index(copy, "shard-000001", drop_v0_and_bad_cls)
    code, report = verify_json(copy, capsys)
    assert code == 1
    assert kinds(report) == {
        ("shard-000001", "v0", "index"),             # line of v0 has no row
        ("shard-000000", "bad", "index"),            # label_index differs from the plan
        ("shard-000001", "v0", "sample-unindexed"),  # v0's members without an ok row
        ("shard-000001", "v1", "index"),
        ("shard-000001", "v1", "content"),           # v1.cls is 1
    }


@pytest.mark.e2e
def test_failed_row_with_members(copy, capsys):
    def fail_v2(rows):
        for r in rows:
            if r["key"] == "v2":
                r.update(status="failed", failure_stage="decode", failure_reason="x")
        return rows
    _rewrite_index(copy, "shard-000002", fail_v2)
    code, report = verify_json(copy, capsys)
    (problem,) = report["problems"]
    assert (problem["key"], problem["kind"]) == ("v2", "sample-unindexed")
    assert "failed" in problem["detail"]


@pytest.mark.e2e
def test_unparseable_plan_line_is_a_problem_of_its_shard(copy, capsys):
    path = os.path.join(copy, "plan.jsonl")
    lines = open(path, "rb").read().splitlines(keepends=True)
    assert json.loads(lines[2])["key"] == "v0"  # the first line of shard-000001 (SHARDS)
    lines[2] = b"#" * (len(lines[2]) - 1) + b"\n"  # same length: the spans still hold
    open(path, "wb").write(b"".join(lines))
    code, report = verify_json(copy, capsys)
    assert code == 1
    assert kinds(report) == {("shard-000001", None, "plan"), ("shard-000001", "v0", "index")}
    plan = next(p for p in report["problems"] if p["kind"] == "plan")
    assert plan["detail"].startswith("plan.jsonl:3: ")
    assert report["shards"] == 3  # every shard still checked


@pytest.mark.e2e
def test_plan_shards_missing_or_damaged(copy, capsys):
    spans = os.path.join(copy, "plan-shards.json")
    good = open(spans).read()
    os.remove(spans)  # an output planned before spans existed: derived from plan.jsonl
    code, report = verify_json(copy, capsys)
    assert code == 0, report["problems"]
    assert not os.path.exists(spans)  # verify only reads
    open(spans, "w").write(good[: len(good) // 2])  # damaged
    code, report = verify_json(copy, capsys)
    assert code == 1 and kinds(report) == {(None, None, "plan")}
    assert "plan-shards.json" in report["problems"][0]["detail"]
    assert report["shards"] == 0
    main([copy])
    assert "delete plan-shards.json" in capsys.readouterr().out


@pytest.mark.e2e
def test_not_an_output_and_usage(tmp_path, output, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not an actprep output" in capsys.readouterr().err
    import argparse

    parser = argparse.ArgumentParser(prog="actprep")
    add_verify_parser(parser.add_subparsers(dest="command"))
    args, rest = parser.parse_known_args(["verify", output, "--runner=DirectRunner"])
    with pytest.raises(SystemExit) as exc:
        args.func(parser, args, rest)
    assert exc.value.code == 2
    args, rest = parser.parse_known_args(["verify", output, "--json"])
    assert args.func(parser, args, rest) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True



def _rebuild(path: str, edit) -> None:
    """Rewrites a shard tar as the writer would, with ``edit`` applied to its
    [(name, data)] list."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with open(path, "wb") as f:
        tar = open_shard(f)
        for name, data in edit(members):
            tar.addfile(tar_info(name, len(data)), io.BytesIO(data))
        tar.close()


@pytest.mark.e2e
def test_cut_jpeg_and_misordered_members(copy, capsys):
    def damage(members):
        names = [n for n, _ in members]
        members = [(n, d[:len(d) // 2] if n == "v1.rgb.000001.jpg" else d) for n, d in members]
        i, j = names.index("v0.mfcc.npy"), names.index("v0.json")
        members[i], members[j] = members[j], members[i]
        return members
    _rebuild(os.path.join(copy, "shard-000001.tar"), damage)
    code, report = verify_json(copy, capsys)
    assert code == 1
    assert kinds(report) == {("shard-000001", "v1", k) for k in ("decode", "bytes", "sha256")} | \
        {("shard-000001", "v0", k) for k in ("order", "sha256")}
    decode = next(p for p in report["problems"] if p["kind"] == "decode")
    assert "v1.rgb.000001.jpg is not a complete JPEG" in decode["detail"]


def test_reader_long_and_unicode_names():
    """Names over 100 bytes or not ASCII go into pax headers; the reader takes them from
    there and finds the writer's headers as expected."""
    names = ["k" * 160 + ".rgb.000001.jpg", "caf\u00e9_\u52d5\u753b.json", "short.cls"]
    buf = io.BytesIO()
    tar = open_shard(buf)
    for n in names:
        tar.addfile(tar_info(n, len(n.encode())), io.BytesIO(n.encode()))
    tar.close()
    read = [(m.name, data, m.deviations) for m, data in TarReader(io.BytesIO(buf.getvalue()))]
    assert read == [(n, n.encode(), ()) for n in names]

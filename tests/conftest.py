"""Shared fixtures: small real media generated with ffmpeg, and a runner for the CLI."""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass

import pytest

from actprep.extractors.synth import make_garbage, make_video, truncate_file

LOCAL_BEAM = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]

# Reference data (Middlebury flow, VGGish golden arrays): the shared folder beside the
# checkout, or $ACTPREP_SHARED_DATA.
SHARED_DATA = os.environ.get("ACTPREP_SHARED_DATA") or os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
MIDDLEBURY = os.path.join(SHARED_DATA, "middlebury")


def require_shared_data(path: str) -> str:
    """``path`` if the reference data is there; otherwise skip, except under CI, where its
    absence is an error (a silently skipped accuracy test is no test)."""
    if not os.path.exists(path):
        message = f"reference data not found: {path} (set ACTPREP_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def shards_and_index(out) -> dict[str, bytes]:
    """The shard tars and index files of an output, by relative path: what two runs that
    must agree byte for byte are compared on."""
    files = {}
    for dirpath, _, names in os.walk(out):
        for name in names:
            if name.endswith((".tar", ".parquet")):
                path = os.path.join(dirpath, name)
                files[os.path.relpath(path, out)] = open(path, "rb").read()
    return files


@dataclass(frozen=True)
class Clip:
    """One manifest row of the Kinetics fixture and what the job should make of it."""

    youtube_id: str
    label: str
    folder: str = ""
    ext: str = ".mp4"
    make: dict | None = None  # make_video kwargs; None = special file (see kind)
    kind: str = "ok"  # ok | truncated | empty | garbage | text | missing | audio_only
    fail_stage: str | None = None
    fail_text: str = ""


KINETICS_CLIPS = (
    Clip("-aBc_DeF-12", "abseiling", "train/abseiling",
         make=dict(duration=2.0, fps=25, size=(320, 240))),
    Clip("vp9_Opus_30", "applauding", "applauding", ".webm",
         make=dict(duration=2.0, fps=30, size=(480, 270), vcodec="libvpx-vp9", audio_freq=880)),
    Clip("Mpeg4_Avi15", "passing American football (in game)", "val", ".avi",
         make=dict(duration=2.0, fps=15, size=(320, 240), vcodec="mpeg4", audio_freq=300)),
    Clip("Ntsc_NoAud_", "dancing 'macarena'", "", ".mkv",
         make=dict(duration=2.0, fps=30000 / 1001, size=(240, 320), audio_freq=None)),
    Clip("Stereo_48k_", "abseiling", "",
         make=dict(duration=1.5, fps=24, size=(352, 288), audio_rate=48000, audio_channels=2)),
    Clip("Trunc_Fast_", "applauding", kind="truncated", fail_stage="decode",
         fail_text="truncated"),
    Clip("Trunc_Moov_", "applauding", kind="truncated_moov", fail_stage="probe"),
    Clip("Empty_File_", "abseiling", kind="empty", fail_stage="probe", fail_text="empty"),
    Clip("Garbage_Byt", "abseiling", kind="garbage", fail_stage="probe"),
    Clip("Text_As_Mp4", "abseiling", kind="text", fail_stage="probe"),
    Clip("Audio_Only_", "abseiling", kind="audio_only", fail_stage="probe",
         fail_text="no video stream"),
    Clip("Not_On_Disk", "abseiling", kind="missing", fail_stage="manifest",
         fail_text="video not found"),
)


def clip_key(clip: Clip) -> str:
    return f"{clip.youtube_id}_000010_000020"


def _make_special(clip: Clip, path: str, scratch: str) -> None:
    if clip.kind == "truncated":
        full = os.path.join(scratch, "full_fast.mp4")
        make_video(full, duration=4.0)
        _faststart(full, path + ".fs.mp4")
        truncate_file(path + ".fs.mp4", path, 0.5)
        os.remove(path + ".fs.mp4")
    elif clip.kind == "truncated_moov":
        full = os.path.join(scratch, "full.mp4")
        make_video(full, duration=2.0)
        truncate_file(full, path, 0.5)
    elif clip.kind == "empty":
        open(path, "wb").close()
    elif clip.kind == "garbage":
        make_garbage(path, 8192, seed=3)
    elif clip.kind == "text":
        with open(path, "w") as f:
            f.write("this is not a video\n" * 50)
    elif clip.kind == "audio_only":
        import subprocess

        from actprep.extractors.ffmpeg_bin import ffmpeg_exe
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                        "sine=frequency=500:duration=1", "-c:a", "aac", path], check=True)


def _faststart(src: str, dst: str) -> None:
    import subprocess

    from actprep.extractors.ffmpeg_bin import ffmpeg_exe
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", src, "-c", "copy",
                    "-movflags", "+faststart", dst], check=True)


@pytest.fixture(scope="session")
def kinetics_set(tmp_path_factory) -> dict:
    """A Kinetics-style video root and CSV covering codecs, rates, sizes, audio or not,
    and broken inputs. Returns paths and the clip table."""
    root = tmp_path_factory.mktemp("kinetics")
    videos, scratch = root / "videos", root / "scratch"
    scratch.mkdir()
    manifest = root / "kinetics_train.csv"
    with open(manifest, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for clip in KINETICS_CLIPS:
            out.writerow([clip.label, clip.youtube_id, 10, 20, "train"])
            if clip.kind == "missing":
                continue
            folder = videos / clip.folder
            folder.mkdir(parents=True, exist_ok=True)
            path = str(folder / (clip_key(clip) + clip.ext))
            if clip.make is not None:
                make_video(path, **clip.make)
            else:
                _make_special(clip, path, str(scratch))
    shutil.rmtree(scratch)
    return {"root": str(root), "videos": str(videos), "manifest": str(manifest),
            "clips": KINETICS_CLIPS}


@pytest.fixture
def run_cli():
    """Runs ``actprep ARGS`` in-process; returns (exit code, captured stderr)."""
    from actprep.commands.cli import main

    def run(args: list[str], capsys=None) -> int:
        try:
            return main([str(a) for a in args])
        except SystemExit as exc:
            return int(exc.code or 0)
    return run


@pytest.fixture
def middlebury() -> str:
    """The Middlebury sequences of the shared reference data."""
    return require_shared_data(MIDDLEBURY)


VGGISH_DATA = os.path.join(SHARED_DATA, "vggish")


@pytest.fixture(scope="session")
def vggish_ref(tmp_path_factory):
    """The VGGish reference data: ``golden`` (the npz), ``weights`` and ``pca`` (arrays from
    make_weights.py), and the files a user would pass: ``weights_path`` (torch state_dict
    .pth) and ``pca_path`` (vggish_pca_params.npz layout)."""
    import importlib.util
    import types

    import numpy as np
    import torch

    folder = require_shared_data(VGGISH_DATA)
    spec = importlib.util.spec_from_file_location("make_weights",
                                                  os.path.join(folder, "make_weights.py"))
    make_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_weights)
    ref = types.SimpleNamespace(golden=np.load(os.path.join(folder, "golden.npz")),
                                weights=make_weights.weights(), pca=make_weights.pca())
    out = tmp_path_factory.mktemp("vggish")
    ref.weights_path = str(out / "vggish.pth")
    torch.save({k: torch.from_numpy(v) for k, v in ref.weights.items()}, ref.weights_path)
    ref.pca_path = str(out / "vggish_pca_params.npz")
    np.savez(ref.pca_path, **ref.pca)
    return ref

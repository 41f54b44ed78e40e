"""Shared fixtures: small real media generated with ffmpeg, a runner for the CLI, and the
reference data of tests/data (Middlebury flow, VGGish golden arrays)."""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass

import pytest

from actprep.extractors.synth import make_garbage, make_video, truncate_file

LOCAL_BEAM = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]

# Reference data (Middlebury flow, VGGish golden arrays), carried in the repository:
# tests/data (README.md there: provenance, format; SHA256SUMS; make_data.py rebuilds it).
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def reference_data(*parts: str) -> str:
    """The path of a file or folder of tests/data. It is part of the repository, so a missing
    one is an error (a silently skipped accuracy test is no test)."""
    path = os.path.join(DATA, *parts)
    if not os.path.exists(path):
        pytest.fail(f"reference data missing: {path} (tests/data is part of the repository; "
                    "tests/data/make_data.py rebuilds it)")
    return path


def load_data_script(*parts: str):
    """A Python file of tests/data (make_data.py, vggish/make_weights.py) as a module."""
    import importlib.util

    path = reference_data(*parts)
    spec = importlib.util.spec_from_file_location(os.path.splitext(parts[-1])[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def middlebury_gray(seq: str):
    """frame10 and frame11 of a Middlebury sequence as uint8 gray [H, W]: the originals'
    cv2.cvtColor(cv2.imread(png), cv2.COLOR_BGR2GRAY), bit for bit."""
    import cv2

    frames = tuple(cv2.imread(reference_data("middlebury", seq, f"frame{n}.png"),
                              cv2.IMREAD_UNCHANGED) for n in (10, 11))
    assert all(f.ndim == 2 and f.dtype.name == "uint8" for f in frames), seq
    return frames


def middlebury_flow(seq: str):
    """The ground truth of a Middlebury sequence as float32 [H, W, 2], as ``read_flo`` gives
    the original flow10.flo (within 1/2048 px; unknown pixels above 1e9)."""
    make_data = load_data_script("make_data.py")
    return make_data.read_flow(reference_data("middlebury", seq, "flow10.npz"))


_MIDDLEBURY_FOLDERS: dict[str, str] = {}


def middlebury_folder(seq: str) -> str:
    """A folder laid out as the original sequence: frame10.png, frame11.png and the ground
    truth as a Middlebury flow10.flo; made once per test session, removed at exit."""
    if seq not in _MIDDLEBURY_FOLDERS:
        import atexit
        import tempfile

        from actprep.extractors.flow.flo import write_flo

        folder = tempfile.mkdtemp(prefix=f"actprep-middlebury-{seq}-")
        atexit.register(shutil.rmtree, folder, True)
        for n in (10, 11):
            shutil.copyfile(reference_data("middlebury", seq, f"frame{n}.png"),
                            os.path.join(folder, f"frame{n}.png"))
        write_flo(os.path.join(folder, "flow10.flo"), middlebury_flow(seq))
        _MIDDLEBURY_FOLDERS[seq] = folder
    return _MIDDLEBURY_FOLDERS[seq]


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


@pytest.fixture(scope="session")
def vggish_ref(tmp_path_factory):
    """The VGGish reference data: ``golden`` (the npz), ``weights`` and ``pca`` (arrays from
    make_weights.py), and the files a user would pass: ``weights_path`` (torch state_dict
    .pth) and ``pca_path`` (vggish_pca_params.npz layout)."""
    import types

    import numpy as np
    import torch

    make_weights = load_data_script("vggish", "make_weights.py")
    ref = types.SimpleNamespace(golden=np.load(reference_data("vggish", "golden.npz")),
                                weights=make_weights.weights(), pca=make_weights.pca())
    out = tmp_path_factory.mktemp("vggish")
    ref.weights_path = str(out / "vggish.pth")
    torch.save({k: torch.from_numpy(v) for k, v in ref.weights.items()}, ref.weights_path)
    ref.pca_path = str(out / "vggish_pca_params.npz")
    np.savez(ref.pca_path, **ref.pca)
    return ref

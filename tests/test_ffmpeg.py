"""One ffmpeg, chosen on purpose: the bundled build whatever is on PATH, another only when
asked and only from the minimum version on, and the version part of the run's settings
and of every sample's params."""
from __future__ import annotations

import json
import os
import shutil
import tarfile

import pytest

from actprep.extractors import ffmpeg_bin
from actprep.extractors.ffmpeg_bin import FfmpegError, bundled_path, inspect, locate
from conftest import LOCAL_BEAM

SYSTEM_FFMPEG = "/usr/bin/ffmpeg"  # Debian 12's 5.1 where installed (CI installs it)


def _system_too_old() -> bool:
    if not os.path.exists(SYSTEM_FFMPEG):
        return False
    try:
        inspect(SYSTEM_FFMPEG, "test")
    except FfmpegError:
        return True
    return False


old_ffmpeg = pytest.mark.skipif(not _system_too_old(), reason=f"no ffmpeg older than "
                                f"{ffmpeg_bin.MIN_VERSION} at {SYSTEM_FFMPEG} (apt-get "
                                f"install ffmpeg on Debian 12 gives one)")


@pytest.fixture
def path_with(tmp_path, monkeypatch):
    """Puts an executable named ``ffmpeg`` first on PATH; returns a function taking its
    target."""
    monkeypatch.delenv(ffmpeg_bin.ENV, raising=False)
    folder = tmp_path / "bin"
    folder.mkdir()

    def put(target: str) -> str:
        os.symlink(target, folder / "ffmpeg")
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
        return shutil.which("ffmpeg")
    return put


def test_the_bundled_ffmpeg_is_used_whatever_is_on_path(path_with):
    first = path_with(SYSTEM_FFMPEG if os.path.exists(SYSTEM_FFMPEG) else "/bin/false")
    chosen = locate()
    assert chosen.path == bundled_path() != first
    assert chosen.origin == "imageio-ffmpeg"
    assert chosen.libavformat >= ffmpeg_bin.MIN_LIBAVFORMAT


def test_another_ffmpeg_only_when_asked(tmp_path, monkeypatch):
    mine = tmp_path / "my-ffmpeg"
    os.symlink(bundled_path(), mine)
    assert locate(str(mine)).path == str(mine)
    assert locate(str(mine)).origin == "--ffmpeg"
    monkeypatch.setenv(ffmpeg_bin.ENV, str(mine))
    assert locate().origin == f"${ffmpeg_bin.ENV}" and locate().path == str(mine)
    with pytest.raises(FfmpegError, match="no-such-ffmpeg: no such executable"):
        locate(str(tmp_path / "no-such-ffmpeg"))
    with pytest.raises(FfmpegError, match="not an ffmpeg"):
        locate(shutil.which("true"))


@old_ffmpeg
def test_an_old_ffmpeg_is_refused_naming_both_versions():
    with pytest.raises(FfmpegError) as caught:
        locate(SYSTEM_FFMPEG)
    text = str(caught.value)
    need = ".".join(map(str, ffmpeg_bin.MIN_VERSION))
    assert f"ffmpeg {need} or newer" in text and "is ffmpeg 5." in text, text


@old_ffmpeg
def test_run_with_an_old_ffmpeg_stops_before_planning(run_cli, tmp_path, capsys):
    (tmp_path / "list.csv").write_text("path,label\na.mp4,x\n")
    out = tmp_path / "out"
    code = run_cli(["run", "--dataset", "generic", "--manifest", tmp_path / "list.csv",
                    "--output", out, "--ffmpeg", SYSTEM_FFMPEG, *LOCAL_BEAM])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--ffmpeg /usr/bin/ffmpeg is ffmpeg 5." in err and "Traceback" not in err
    assert not out.exists()


def _small_set(root) -> str:
    from actprep.extractors.synth import make_video

    for i in range(2):
        make_video(str(root / f"c{i}.mp4"), duration=1.0, fps=10, size=(64, 48),
                   audio_freq=400 + 100 * i)
    (root / "list.csv").write_text("path,label\nc0.mp4,a\nc1.mp4,b\n")
    return str(root / "list.csv")


@pytest.mark.slow
@pytest.mark.e2e
def test_the_ffmpeg_is_a_setting_of_the_run_and_of_each_sample(run_cli, tmp_path, capsys):
    manifest = _small_set(tmp_path)
    out = tmp_path / "out"
    args = ["run", "--dataset", "generic", "--manifest", manifest, "--output", out,
            "--modalities", "rgb,mfcc", "--no-progress", *LOCAL_BEAM]
    assert run_cli(args) == 0
    version = locate().version
    assert json.loads((out / "run.json").read_text())["ffmpeg_version"] == version
    with tarfile.open(out / "shard-000000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]
    assert len(metas) == 2 and all(m["params"]["ffmpeg"] == version for m in metas)
    # an output started with another ffmpeg: refused unless allowed
    run = json.loads((out / "run.json").read_text())
    run["ffmpeg_version"] = "6.1.1-other"
    (out / "run.json").write_text(json.dumps(run))
    capsys.readouterr()
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert f"started with ffmpeg 6.1.1-other, this run decodes with ffmpeg {version}" in err
    assert "--allow-ffmpeg-change" in err
    assert run_cli(args + ["--allow-ffmpeg-change"]) == 0

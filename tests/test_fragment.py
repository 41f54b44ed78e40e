"""Tar streams abandoned on an error (a full disk under the shard being committed) are
dropped quietly: tarfile must not flush their end blocks into the closed file when the
garbage collector takes them."""
from __future__ import annotations

import gc
import io
import sys

import pytest

from actprep.pipelines.fragment import sample_writer, shard_writer
from actprep.schemas.sample import tar_info


@pytest.fixture
def unraisable(monkeypatch) -> list:
    """What the interpreter reports as 'Exception ignored in ...' while the test runs."""
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


def _abandon(open_writer, add) -> None:
    stream = io.BytesIO()
    with pytest.raises(OSError, match="disk full"):
        with open_writer(stream) as writer:
            add(writer)
            stream.close()  # as atomic_writer does with its temporary on the way out
            raise OSError("disk full")
    del writer
    gc.collect()


def test_an_abandoned_shard_tar_is_dropped_quietly(unraisable):
    _abandon(shard_writer, lambda tar: tar.addfile(tar_info("k.cls", 1), io.BytesIO(b"1")))
    assert unraisable == []


def test_an_abandoned_sample_is_dropped_quietly(unraisable):
    _abandon(sample_writer, lambda w: None)
    assert unraisable == []


def test_the_control_an_unclosed_tar_does_flush_when_collected(unraisable):
    """Without the abort, the collector's flush into the closed file is reported."""
    from actprep.pipelines.fragment import open_shard

    stream = io.BytesIO()
    tar = open_shard(stream)
    tar.addfile(tar_info("k.cls", 1), io.BytesIO(b"1"))
    stream.close()
    del tar
    gc.collect()
    assert unraisable and isinstance(unraisable[0].exc_value, ValueError)

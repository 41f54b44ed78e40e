"""Where a video's processing time goes, per stage (fetch, probe, decode, rgb, flow, ...).

The stages of one video interleave (frames stream from the decoder through the JPEG
encoder into the flow kernel), so each stage is charged its own time only: while a nested
stage runs, the enclosing one is paused. The job turns the totals into Beam counters,
visible per step in the Dataflow UI and summed in the run summary.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

# in the order a video goes through them; the summary prints them so
STAGES = ("fetch", "probe", "decode", "rgb", "flow", "flow_jpeg", "audio_decode", "mfcc",
          "vggish", "write")


class StageClock:
    """Exclusive wall time per stage, for one thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._since = time.perf_counter()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._stack:
            top = self._stack[-1]
            self.seconds[top] = self.seconds.get(top, 0.0) + now - self._since
        self._since = now

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def iterate(self, items: Iterable[T], name: str) -> Iterator[T]:
        """``items`` unchanged, the time spent producing each one charged to ``name``."""
        iterator = iter(items)
        while True:
            with self.stage(name):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item


class NoClock(StageClock):
    """Charges nothing: for callers that do not ask where the time went."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def iterate(self, items: Iterable[T], name: str) -> Iterator[T]:
        return iter(items)

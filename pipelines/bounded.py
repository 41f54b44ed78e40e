"""``imap``: a thread pool's map that keeps only a few results in flight, so reading many
shards in parallel holds a handful of them at a time, never the whole output."""
from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def imap(fn: Callable[[T], R], items: Iterable[T], workers: int = 8) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads, results in input order, at most
    ``2 * workers`` of them computed ahead of the consumer."""
    pending: collections.deque[Future] = collections.deque()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for item in items:
            if len(pending) >= 2 * max(1, workers):
                yield pending.popleft().result()
            pending.append(pool.submit(fn, item))
        while pending:
            yield pending.popleft().result()

"""Which samples a rank reads in an epoch, and in what order: numpy only, no I/O.

The epoch's global sequence is a function of the per-shard sample counts (from the Parquet
index), the seed and the epoch; the part of a rank a function of that sequence, the rank
and the world size; the part of a DataLoader worker a function of the rank's part, the
position resumed from, the batch size and the worker count. Nothing depends on timing,
so every run (and every worker count) sees the same sequence.

Samples are numbered globally: shard 0's ok samples in index order, then shard 1's, ...
(``Catalog`` in ``readers/catalog.py`` holds the arrays behind the numbers).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# entropy mixed into the epoch generator, so that it never shares a stream with the
# per-sample generators of ``dataset.sample_rng`` (seed, epoch, key hash)
_ORDER_SALT = 0x6F72646572  # "order"


def check_int(name: str, value: int, low: int) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_rank(rank: int, world_size: int) -> tuple[int, int]:
    """(rank, world_size) as ints; ValueError unless 0 <= rank < world_size."""
    world_size = check_int("world_size", world_size, 1)
    rank = check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be below world_size ({world_size}), got {rank}")
    return rank, world_size


def shard_starts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Number of each shard's first sample, from the per-shard sample counts."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def epoch_sequence(counts: Sequence[int], seed: int, epoch: int, *, shuffle: bool,
                   shardshuffle: bool = False) -> np.ndarray:
    """The epoch's global sequence of sample numbers (int64, each sample once).

    ``shuffle``: one uniform permutation of all samples, from ``(seed, epoch)``. Why not
    shuffling within blocks of a few shards (MosaicML's py1b): each sample is read with one
    ranged read of its own bytes (a few MB for a video), so neighbours in the order share
    nothing worth keeping close, and a global permutation mixes classes best (shards hold
    samples in key order, which for class-folder keys groups a class).
    Without ``shuffle``: shards in order (permuted with ``(seed, epoch)`` when
    ``shardshuffle``), each shard's samples in index (key) order: sequential reads.
    """
    seed, epoch = check_int("seed", seed, 0), check_int("epoch", epoch, 0)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    rng = np.random.default_rng([_ORDER_SALT, seed, epoch])
    if shuffle:
        return rng.permutation(total).astype(np.int64, copy=False)
    starts = shard_starts(counts)
    shards = rng.permutation(len(counts)) if shardshuffle else np.arange(len(counts))
    parts = [np.arange(starts[s], starts[s] + counts[s], dtype=np.int64) for s in shards]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def per_rank(total: int, world_size: int, drop_last: bool) -> int:
    """Samples each rank gets: ``ceil(total / W)`` (padded), or ``total // W`` (dropped)."""
    return total // world_size if drop_last else -(-total // world_size)


def rank_sequence(sequence: np.ndarray, rank: int, world_size: int,
                  drop_last: bool = False) -> np.ndarray:
    """Rank ``rank``'s part of the epoch's ``sequence``: every rank gets the same count.

    The rule (DistributedSampler's): with ``drop_last`` False the sequence is padded to a
    multiple of W by repeating its first ``W * ceil(N / W) - N`` (at most W - 1) entries;
    with ``drop_last`` True its last ``N mod W`` (at most W - 1) entries are left out.
    Rank r then takes the r-th contiguous slice (contiguous rather than every W-th, so
    that in an unshuffled order each rank reads whole runs of a shard).
    """
    rank, world_size = check_rank(rank, world_size)
    count = per_rank(len(sequence), world_size, drop_last)
    padded = sequence if drop_last or len(sequence) == count * world_size else \
        np.resize(sequence, count * world_size)  # np.resize repeats from the start
    return padded[rank * count:(rank + 1) * count]


def worker_positions(remaining: int, batch_size: int, num_workers: int, worker: int
                     ) -> np.ndarray:
    """Positions (0-based, into the rank's remaining sequence) that DataLoader worker
    ``worker`` of ``num_workers`` produces: the samples of batches worker, worker +
    num_workers, ... in order. The DataLoader takes one batch from each worker in turn
    (``in_order=True``, its default), so its batches follow the sequence exactly, as
    with no workers; the last, partial batch is the last thing its worker yields."""
    batch_size = check_int("batch_size", batch_size, 1)
    num_workers = check_int("num_workers", num_workers, 1)
    positions = np.arange(remaining, dtype=np.int64)
    return positions[(positions // batch_size) % num_workers == worker]

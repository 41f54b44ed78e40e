"""The reader's view of an output: every ok sample's shard, byte range and key, from the
Parquet index alone (the tars are not opened to plan an epoch).

Input: an actprep output folder (its committed shards: the ``shard-NNNNNN.tar`` files
present, each with ``index/shard-NNNNNN.parquet``), or shard tar URLs (a brace pattern,
``::``-joined patterns or a list), whose index is where actprep puts it: ``index/`` beside
the tars. Local paths or fsspec URLs (``gs://``).

Memory: a few int arrays per sample and the keys in one Arrow string array (about 60 bytes
a sample: 40 MB for 650k samples), no Python object per sample.
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actprep.readers import order, sources
from actprep.schemas.index import OK, read_index
from actprep.schemas import naming
from actprep.schemas.naming import INDEX_DIR, SHARD_TAR_GLOB
COLUMNS = ["key", "status", "tar_offset", "tar_bytes"]
LOAD_THREADS = 16


@dataclasses.dataclass
class Catalog:
    """Ok samples of the input, numbered shard after shard in index (= tar) order.

    ``shard[i]``, ``offset[i]``, ``nbytes[i]``: sample i's shard (into ``shards``) and byte
    range; offset -1 where the index predates the range columns (found on first use,
    ``tarindex.shard_ranges``). ``keys[i]``: its key."""

    source: str
    shards: tuple[str, ...]
    counts: np.ndarray
    shard: np.ndarray
    offset: np.ndarray
    nbytes: np.ndarray
    keys: pa.Array

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def starts(self) -> np.ndarray:
        """Number of each shard's first sample."""
        return order.shard_starts(self.counts)

    def key(self, i: int) -> str:
        return self.keys[int(i)].as_py()

    def shard_keys(self, s: int) -> list[str]:
        start = int(self.starts[s])
        return self.keys[start:start + int(self.counts[s])].to_pylist()


def index_url(tar_url: str) -> str:
    """Where actprep writes the index of a shard tar: ``index/NAME.parquet`` beside it."""
    return sources.join(sources.dirname(tar_url), INDEX_DIR,
                        naming.index_stem(sources.basename(tar_url)))


def resolve(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[str, list[str]]:
    """(a description for messages, the shard tar URLs) of the reader's input: an output
    folder (its committed shards), or tar URLs and patterns. ValueError for inputs that
    name nothing."""
    if isinstance(inputs, (str, os.PathLike)):
        text = os.fspath(inputs)
        if "{" not in text and "::" not in text and not text.endswith(".tar"):
            if not sources.is_dir(text):
                raise ValueError(f"{text}: no such output folder (give an actprep output "
                                 f"folder or shard tar URLs)")
            tars = sources.glob(text, SHARD_TAR_GLOB)
            if not tars:
                raise ValueError(f"{text}: no committed shard (shard-NNNNNN.tar) in this "
                                 f"folder: not an actprep output, or no shard done yet")
            return text, tars
        inputs = [text]
    urls = [u for item in inputs for u in sources.expand(os.fspath(item))]
    if not urls:
        raise ValueError("no shard URLs given")
    bad = [u for u in urls if u.startswith("pipe:")]
    if bad:
        raise ValueError(f"{bad[0]}: pipe: URLs cannot be read at byte offsets; give the "
                         f"file or gs:// URL, or pass streaming=True")
    description = urls[0] if len(urls) == 1 else f"{urls[0]} .. {urls[-1]} ({len(urls)} shards)"
    return description, urls


def _load_shard(tar_url: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(keys, offsets, byte counts) of one shard's ok rows, offsets -1 when absent."""
    path = index_url(tar_url)
    try:
        data = sources.read_file(path)
    except FileNotFoundError:
        raise ValueError(f"{tar_url}: no index at {path} (the reader plans epochs from "
                         f"actprep's Parquet index: copy index/ beside the shards, or pass "
                         f"streaming=True)") from None
    try:
        table = read_index(pa.BufferReader(data), COLUMNS)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a readable actprep index ({exc})") from None
    table = table.filter(pc.equal(table["status"], OK))
    keys = table["key"].combine_chunks()
    if table["tar_offset"].null_count or table["tar_bytes"].null_count:  # an older output
        return keys, np.full(len(keys), -1, np.int64), np.full(len(keys), -1, np.int64)
    return (keys, table["tar_offset"].to_numpy().astype(np.int64),
            table["tar_bytes"].to_numpy().astype(np.int64))


def load(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> Catalog:
    """The catalog of ``inputs`` (see ``resolve``)."""
    return load_tars(*resolve(inputs))


def load_tars(description: str, tars: Sequence[str]) -> Catalog:
    """The catalog of shard tars ``tars``: every shard's index read once, a few at a time
    in threads (remote reads wait on the network)."""
    with ThreadPoolExecutor(min(LOAD_THREADS, len(tars))) as pool:
        parts = list(pool.map(_load_shard, tars))
    counts = np.array([len(keys) for keys, _, _ in parts], np.int64)
    empty = np.zeros(0, np.int64)
    keys = pa.concat_arrays([k for k, _, _ in parts]) if parts else pa.array([], pa.string())
    return Catalog(
        source=description, shards=tuple(tars), counts=counts,
        shard=np.repeat(np.arange(len(tars), dtype=np.int32), counts),
        offset=np.concatenate([o for _, o, _ in parts]) if parts else empty,
        nbytes=np.concatenate([n for _, _, n in parts]) if parts else empty,
        keys=keys)

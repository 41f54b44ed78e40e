"""The Parquet index: one row per manifest row (ok or failed), one file per shard."""
from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

OK = "ok"
FAILED = "failed"
INTERNAL = "internal"  # the failure stage of an internal error (a bug), retried by reruns

INDEX_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("line", pa.int64()),  # line of the row in the manifest
    ("shard", pa.string()),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("label", pa.string()),
    ("label_index", pa.int32()),
    ("status", pa.string()),  # "ok" or "failed"
    ("failure_stage", pa.string()),  # manifest, fetch, probe, decode, audio, ...
    ("failure_reason", pa.string()),
    ("attempts", pa.int32()),  # times processed: 1, more after --retry-failed
    ("source_path", pa.string()),
    ("source_bytes", pa.int64()),
    ("duration", pa.float64()),  # seconds of decoded video
    ("fps", pa.float64()),
    ("frames", pa.int32()),
    ("width", pa.int32()),  # stored frame size
    ("height", pa.int32()),
    ("source_width", pa.int32()),  # the video's display size as probed
    ("source_height", pa.int32()),
    ("has_audio", pa.bool_()),
    ("audio_sample_rate", pa.int32()),
    ("audio_rms_dbfs", pa.float32()),  # level of the decoded mono audio; null if not decoded
    ("mfcc_frames", pa.int32()),
    ("vggish_examples", pa.int32()),  # rows of KEY.vggish.npy; null without vggish or audio
    ("flow_pairs", pa.int32()),  # flow fields (frames - 1); null without flow
    ("flow_backend", pa.string()),  # "torch" or "opencv": what computed them
    ("flow_magnitude", pa.float32()),  # mean |flow| in px (stored size) over all pairs
    ("members", pa.int32()),  # tar members of the sample
    ("sample_bytes", pa.int64()),  # bytes of the sample's members (data only)
    ("sample_sha256", pa.string()),  # over member names and data, in tar order
    # the sample's byte range in the shard tar (its members are consecutive): offset of its
    # first header, bytes to the end of its last member's padding; null for failed rows and
    # in outputs written before they were recorded (readers then find them in the tar)
    ("tar_offset", pa.int64()),
    ("tar_bytes", pa.int64()),
])
FIELDS = tuple(INDEX_SCHEMA.names)


def index_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows (dicts, missing fields null) as a table in the index schema."""
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(FIELDS)
        if unknown:
            raise ValueError(f"index row {row.get('key')!r} has fields outside the index "
                             f"schema: {', '.join(sorted(unknown))}")
    return pa.table({f: [r.get(f) for r in rows] for f in FIELDS}, schema=INDEX_SCHEMA)


# key of the index file's metadata holding the size of its shard's tar, recorded at commit
# so that a rerun can check a committed shard from the index footer and a listing alone
TAR_BYTES = b"actprep.tar_bytes"


def write_index(rows: Iterable[dict[str, Any]], sink: Any, tar_bytes: int | None = None) -> None:
    """Writes deterministic Parquet (no creation timestamps, fixed writer settings)."""
    table = index_table(rows)
    if tar_bytes is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               TAR_BYTES: str(tar_bytes).encode()})
    pq.write_table(table, sink, compression="zstd", write_statistics=True, store_schema=True)


def index_footer(data: bytes) -> tuple[int, int | None]:
    """(rows, the shard tar's size recorded at commit, or None for older outputs) of an
    index file's bytes; pyarrow's ArrowInvalid when they are not a Parquet file."""
    meta = pq.read_metadata(pa.BufferReader(data))
    recorded = (meta.metadata or {}).get(TAR_BYTES)
    return meta.num_rows, int(recorded) if recorded else None


def read_index(source: Any, columns: list[str] | None = None) -> pa.Table:
    """An index file in the index schema (only ``columns`` when given)."""
    return pq.read_table(source, schema=INDEX_SCHEMA, columns=columns)

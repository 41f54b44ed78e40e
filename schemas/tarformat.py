"""What the shard tars' headers are made of, as both their readers parse them: the block
size and pax extended-header records (``verify``'s strict scan and the trainer reader's
header scan, ``readers/tarindex.py``)."""
from __future__ import annotations

BLOCK = 512  # tar header and padding unit


def pax_records(data: bytes) -> dict[str, str]:
    """The ``LENGTH KEY=VALUE\\n`` records of a pax extended header; ValueError when one
    is malformed."""
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1:pos + length]
        if length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError("malformed pax record")
        name, _, value = record[:-1].partition(b"=")
        records[name.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records

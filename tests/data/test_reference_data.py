"""The reference data of tests/data is what SHA256SUMS says (README.md there: provenance;
make_data.py rebuilds the files and the list)."""
from __future__ import annotations

import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _listed() -> dict[str, str]:
    sums = {}
    with open(os.path.join(HERE, "SHA256SUMS")) as f:
        for line in f:
            digest, name = line.rstrip("\n").split("  ", 1)
            sums[name] = digest
    return sums


def test_files_match_sha256sums():
    listed = _listed()
    assert any(n.startswith("middlebury/Urban2/") for n in listed)
    assert "vggish/golden.npz" in listed
    for name, digest in listed.items():
        path = os.path.join(HERE, name)
        assert os.path.isfile(path), f"{path}: listed in SHA256SUMS, missing"
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, f"{path}: checksum differs"


def test_every_data_file_is_listed():
    listed = _listed()
    on_disk = {os.path.relpath(os.path.join(dirpath, name), HERE)
               for top in ("middlebury", "vggish")
               for dirpath, _, names in os.walk(os.path.join(HERE, top))
               for name in names if "__pycache__" not in dirpath}
    assert on_disk == set(listed), on_disk ^ set(listed)

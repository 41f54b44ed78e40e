"""Rebuilds the compact reference data of tests/data from the original files (the shared
data folder: middlebury/<Sequence>/frame10.png, frame11.png, flow10.flo and vggish/), and
reads the compact ground-truth flow back (``read_flow``; the tests and benchmarks use it).

    python tests/data/make_data.py /path/to/shared/data [--out tests/data]

What it writes (tests/data/README.md has the provenance):
- middlebury/<Sequence>/frame10.png, frame11.png: 8-bit gray PNG of
  ``cv2.cvtColor(cv2.imread(original), cv2.COLOR_BGR2GRAY)``, exactly what every user of the
  frames computes (a gray PNG read in colour and converted back gives the same values);
- middlebury/<Sequence>/flow10.npz: the ground truth in 1/1024 px fixed point, stored as
  differences along each row (int16), with the mask and value of the unknown pixels; read
  back it is within 1/2048 px of the float32 original;
- vggish/golden.npz, vggish/make_weights.py: copied unchanged;
- SHA256SUMS over all of them (test_reference_data.py, beside this script, checks it).

The written files are deterministic (fixed zip timestamps), so rerunning this on the same
originals with the same numpy, OpenCV and zlib reproduces SHA256SUMS.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import zipfile

import numpy as np

SEQUENCES = ("RubberWhale", "Urban2", "Urban3")
FLOW_SCALE = 1024  # fixed point: round(flow * FLOW_SCALE)
UNKNOWN = 1e9  # Middlebury: components above this are unknown
VGGISH_FILES = ("golden.npz", "make_weights.py")
HERE = os.path.dirname(os.path.abspath(__file__))


def read_flow(path: str) -> np.ndarray:
    """A compact ground truth (flow10.npz) as float32 [H, W, 2], laid out as ``read_flo``
    gives the original: known pixels within 1/2048 px, unknown ones the original's value."""
    with np.load(path) as z:
        fixed = np.cumsum(z["dq"], axis=1, dtype=np.int32)
        flow = (fixed / np.float64(z["scale"])).astype(np.float32)
        flow[z["unknown"]] = z["unknown_value"]
    return flow


def encode_flow(flow: np.ndarray) -> dict[str, np.ndarray]:
    """float32 [H, W, 2] (unknown components above 1e9) to the arrays of flow10.npz."""
    unknown = ~(np.abs(flow) < UNKNOWN).all(-1)
    values = np.unique(flow[unknown])
    if len(values) > 1:
        raise ValueError(f"several unknown values: {values[:5]}")
    fixed = np.round(np.where(unknown[..., None], 0, flow).astype(np.float64) * FLOW_SCALE)
    dq = np.diff(fixed.astype(np.int64), axis=1, prepend=0)
    if np.abs(dq).max() > np.iinfo(np.int16).max:
        raise ValueError("flow differences too large for int16")
    return {"dq": dq.astype(np.int16), "scale": np.int32(FLOW_SCALE), "unknown": unknown,
            "unknown_value": np.float32(values[0] if len(values) else np.inf)}


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def gray_png(path: str) -> bytes:
    """The gray frame every user of the frames computes, as a PNG."""
    import cv2

    gray = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2GRAY)
    ok, png = cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_COMPRESSION, 9,
                                          cv2.IMWRITE_PNG_STRATEGY,
                                          cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])
    assert ok
    # checked: read back in colour and converted, as the tests and `actprep flow` do
    back = cv2.imdecode(png, cv2.IMREAD_COLOR)
    assert np.array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2GRAY), gray)
    assert np.array_equal(cv2.imdecode(png, cv2.IMREAD_UNCHANGED), gray)
    return png.tobytes()


def sha256sums(out: str) -> str:
    lines = []
    for top in ("middlebury", "vggish"):
        for dirpath, dirnames, names in os.walk(os.path.join(out, top)):
            dirnames.sort()
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                lines.append(f"{digest}  {os.path.relpath(path, out)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="the original data folder (holds middlebury/ and vggish/)")
    ap.add_argument("--out", default=HERE, help="where to write (default: tests/data)")
    ap.add_argument("--sequences", default=",".join(SEQUENCES))
    args = ap.parse_args(argv)
    from actprep.extractors.flow.flo import read_flo  # the reader the tests check

    for seq in args.sequences.split(","):
        src, dst = (os.path.join(d, "middlebury", seq) for d in (args.source, args.out))
        os.makedirs(dst, exist_ok=True)
        for n in (10, 11):
            with open(os.path.join(dst, f"frame{n}.png"), "wb") as f:
                f.write(gray_png(os.path.join(src, f"frame{n}.png")))
        gt = read_flo(os.path.join(src, "flow10.flo"))
        save_npz(os.path.join(dst, "flow10.npz"), encode_flow(gt))
        back = read_flow(os.path.join(dst, "flow10.npz"))
        known = (np.abs(gt) < UNKNOWN).all(-1)
        err = float(np.abs(back - gt)[known].max())
        assert err <= 0.5 / FLOW_SCALE and np.array_equal(back[~known], gt[~known]), seq
        print(f"{seq}: max |flow10.npz - flow10.flo| {err:.6f} px over known pixels, "
              f"{int((~known).sum())} unknown", file=sys.stderr)
    os.makedirs(os.path.join(args.out, "vggish"), exist_ok=True)
    for name in VGGISH_FILES:
        shutil.copyfile(os.path.join(args.source, "vggish", name),
                        os.path.join(args.out, "vggish", name))
    with open(os.path.join(args.out, "SHA256SUMS"), "w") as f:
        f.write(sha256sums(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

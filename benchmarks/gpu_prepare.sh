#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for benchmarks/gpu_check.sh on a GPU machine that has torch but
# neither the network, opencv-contrib nor the shared folder: the Middlebury frames, OpenCV's
# flows of the benchmark pairs (the agreement reference) and the VGGish test data.
# Run here, from the repository root, with ../shared/data beside it (or DATA=...; without
# either, the repository's tests/data: 3 of the 8 sequences, gray); then send .gpu along (the
# device tool's `carry`).
set -euo pipefail
if [ -z "${DATA:-}" ]; then
    DATA=../shared/data
    [ -d "$DATA" ] || DATA=tests/data
fi
rm -rf .gpu && mkdir -p .gpu/middlebury .gpu/vggish
for seq in "$DATA"/middlebury/*/; do
    name=$(basename "$seq")
    mkdir -p ".gpu/middlebury/$name"
    cp "$seq/frame10.png" "$seq/frame11.png" ".gpu/middlebury/$name/"
done
cp "$DATA"/vggish/make_weights.py "$DATA"/vggish/golden.npz .gpu/vggish/
python benchmarks/flow.py --data .gpu/middlebury --presets opencv,quality \
    --write-reference .gpu/opencv_flows.npz
du -sh .gpu

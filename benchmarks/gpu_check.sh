#!/usr/bin/env bash
# The GPU checks of the torch TV-L1 and VGGish, as one unattended run of at most 8 minutes
# (the timeouts below add up to 7.5): flow pairs/s against batch size, eager, compiled
# (the hand-written Triton kernels and Inductor's), each plain and as CUDA graphs, with
# first-call (compile) seconds, peak GPU memory and agreement with the CPU (and with OpenCV's
# flows from .gpu/opencv_flows.npz). Needs .gpu/ from benchmarks/gpu_prepare.sh and a
# Python with a CUDA torch (and its triton), numpy and opencv-python; actprep is put on the
# path as it is laid out in the repository (symbolic links in a scratch folder), no pip and
# no network needed.
# Writes flow.json, flow_memory.json and vggish.json to ${OUT:-.}.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
NS=$(mktemp -d)/site && mkdir -p "$NS/actprep"
for pkg in schemas extractors pipelines; do ln -s "$PWD/$pkg" "$NS/actprep/$pkg"; done
export PYTHONPATH="$NS${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
import importlib.util as u; t = u.find_spec('triton'); \
print(torch.__version__, torch.cuda.get_device_name(0), 'triton' if t else 'NO TRITON')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}  # cold: compile counted
timeout 300 python3 benchmarks/flow.py --data .gpu/middlebury --reference .gpu/opencv_flows.npz \
    --presets opencv,quality --batch-sizes 1 --seconds 3 \
    --cuda-batch-sizes 1,64,256 --cuda-compiled-batch-sizes 64,256 \
    --json "$OUT/flow.json" \
    || echo "flow.py stopped ($?): flow.json has the presets it finished" >&2
timeout 45 python3 benchmarks/flow_memory.py --device cuda --presets opencv,quality \
    --batch-sizes 8,64,256 --json "$OUT/flow_memory.json" || true
timeout 90 python3 benchmarks/vggish.py --data .gpu/vggish --no-tf --seconds 3 \
    --batch-sizes 64 --cuda-batch-sizes 16,64,256,1024 --json "$OUT/vggish.json"

#!/usr/bin/env bash
# Flow benchmark on a GPU machine: installs actprep with a CUDA build of torch and runs
# benchmarks/flow.py (CPU OpenCV, torch CPU, torch CUDA with a batch-size sweep), writing the
# table to stdout and the raw figures to ${OUT:-.}/flow.json.
# Usage (from the repository root, with ../shared/data beside it or DATA=...):
#   bash benchmarks/flow_gpu.sh
set -euo pipefail
python3 -m pip install --quiet -e . "torch>=2.1"
DATA=${DATA:-../shared/data/middlebury}
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
python3 benchmarks/flow.py --data "$DATA" --presets opencv,quality,tsn --seconds 5 \
    --cuda-batch-sizes 1,8,32,64,128,256,512 --json "${OUT:-.}/flow.json"

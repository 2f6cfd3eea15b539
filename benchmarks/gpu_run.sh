#!/usr/bin/env bash
# One scripted GPU measurement (about 10 minutes on an H100/H200): set the machine up, time every method next to
# fused dense DeiT-S (fp16, batch 256 and 1; eager with --check against the GPU targets, then compiled with CUDA
# graphs for the methods whose eager speed is launch- or sync-bound), and profile the kernels of those methods.
# Results go to $OUT (default benchmarks/results). Usage: bash benchmarks/gpu_run.sh
set -uo pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
bash benchmarks/gpu_setup.sh || exit 1
python -m pytest -q tests/test_optimize.py -k "dge or static" 2>&1 | tail -3
python benchmarks/speed.py --device cuda --dtypes fp16 --compile none --check --out "$out/speed_gpu_eager.json"
python benchmarks/speed.py --device cuda --dtypes fp16 --compile auto --methods tome,dge,evit \
    --out "$out/speed_gpu_compiled.json"
python benchmarks/kernels.py --device cuda --methods tome,dge,evit --out "$out/kernels_gpu.json"

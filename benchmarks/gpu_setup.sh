#!/usr/bin/env bash
# Prepare a bare GPU machine for the benchmarks: install the wheels carried in .whl/ (fvcore, iopath, yacs, termcolor,
# timm; nothing can be downloaded there) and this project without dependencies. Then run benchmarks/speed.py and
# benchmarks/kernels.py. Usage: bash benchmarks/gpu_setup.sh
set -euo pipefail
pip install -q --no-deps .whl/*.whl
pip install -q --no-deps -e .
python -c "import torch, timm, vitprune; print(torch.__version__, timm.__version__, torch.cuda.get_device_name())"

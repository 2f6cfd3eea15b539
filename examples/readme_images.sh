#!/usr/bin/env bash
# Remake every image in docs/performance.md with the commands a user would type (CPU, offline, a few minutes).
#   bash examples/readme_images.sh            (from the repository root, with the venv's vitprune on PATH or in .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VP=${VITPRUNE:-.venv/bin/vitprune}
PY=${PYTHON:-.venv/bin/python}
OUT=docs/images
mkdir -p "$OUT"

# accuracy-throughput curve of EViT off the shelf on the demo teacher (no fine-tuning: one model, five keep rates)
"$VP" sweep demo --method evit --keep-rates 0.5,0.6,0.7,0.8,0.9 --data demo --device cpu --out "$OUT"

# kept-token maps on demo digits (the first three images of the val split)
"$VP" visualize demo demo:0 demo:1 demo:2 --method evit --keep-rate 0.7 --out "$OUT/tokens_evit_demo.png"
"$VP" visualize demo demo:0 demo:1 demo:2 --method tome --r 8 --out "$OUT/tokens_tome_demo.png"

# ToMe on real photos (scikit-image's samples) with a random-weight DeiT-S: no weights can be downloaded here, so the
# merges follow random keys; with pretrained weights they follow the image content
PHOTOS=$(mktemp -d)
"$PY" - "$PHOTOS" <<'PYEOF'
import sys
from pathlib import Path
from PIL import Image
from skimage import data
for name in ("astronaut", "chelsea", "coffee"):
    Image.fromarray(getattr(data, name)()).save(Path(sys.argv[1]) / f"{name}.png")
PYEOF
"$VP" visualize deit_small_patch16_224 --no-weights --method tome --r 13 \
    "$PHOTOS/astronaut.png" "$PHOTOS/chelsea.png" "$PHOTOS/coffee.png" --blocks 0,3,6,9,11 \
    --out "$OUT/tokens_tome_deit_s_random_weights.png"
rm -rf "$PHOTOS"

#!/usr/bin/env bash
# Inception features per second, ddpm against pytorch-fid on the same machine and threads:
# N 32x32 PNG images (CIFAR-sized), the seeded weights for both, REPS alternating runs of
# `ddpm fid DIR --save-stats` and pytorch-fid's calculate_activation_statistics, batch 50.
#
#   REF_PY=/path/to/venv/bin/python N=500 REPS=3 THREADS=2 benches/fid/speed.sh
#
# Prints one JSON line per run and the statistics files' FID against each other at the end
# (the two implementations' features agree, so it is ~0).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${REF_PY:-python3}
N=${N:-500}
REPS=${REPS:-3}
THREADS=${THREADS:-2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cargo build --release --quiet
cargo bench --quiet --bench fid_seeded_weights -- "$WORK/w.safetensors"
"$PY" - "$WORK/img" "$N" <<'PYEOF'
import os, sys
import numpy as np
from PIL import Image
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out)
rs = np.random.RandomState(0)
for i in range(n):
    small = rs.uniform(0, 255, size=(8, 8, 3)).astype(np.uint8)
    big = np.asarray(Image.fromarray(small).resize((32, 32), Image.BILINEAR)).astype(np.float64)
    arr = np.clip(big + rs.normal(0, 10, size=big.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(f"{out}/{i:05}.png")
PYEOF

for rep in $(seq "$REPS"); do
    RAYON_NUM_THREADS=$THREADS target/release/ddpm fid "$WORK/img" --save-stats "$WORK/ours.npz" \
        --inception "$WORK/w.safetensors" --quiet --json |
        "$PY" -c 'import json,sys; j=json.loads(sys.stdin.read()); s=j["sides"][0]; print(json.dumps({"impl": "ddpm", "images": s["images"], "seconds": s["seconds"], "images_per_sec": s["images"] / s["seconds"]}))'
    OMP_NUM_THREADS=$THREADS "$PY" benches/fid/pytorch_fid_stats.py "$WORK/w.safetensors" "$WORK/img" \
        "$WORK/ref.npz" "$THREADS" | sed 's/^{/{"impl": "pytorch-fid", /'
done
target/release/ddpm fid "$WORK/ours.npz" "$WORK/ref.npz"

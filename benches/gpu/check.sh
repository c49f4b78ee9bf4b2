#!/usr/bin/env bash
# On a GPU machine: does the CUDA build compute what the CPU build computes? Uses the binary that
# benches/gpu/build-binary.sh built (both devices are in it) and prints one line per check,
# "ok"/"FAIL" with the measured numbers, then exits 1 if any check failed.
#
# The noise comes from the crate's CPU random streams on every device, so the same checkpoint,
# seed and deterministic sampler must give the same images up to float rounding:
#   train      configs/tiny.toml for 40 steps on cpu and cuda: final losses within 5% (the two
#              runs drift apart by rounding only; the data order and noise are the same)
#   ddim       DDIM-20 from the cpu checkpoint on cpu and cuda: mean |diff| < 1e-3 in [-1, 1]
#   ddim bf16  the same in bf16 on cuda against cpu f32: mean |diff| < 0.05
#   eval       `ddpm eval --method both` on 32 digits (ODE 50 steps): bound and ODE bits/dim within 1%
# Environment: as benches/gpu/run.sh (CUDA_LIB_DIR, REF_PY as the python with numpy, OUT).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

DIST=benches/gpu/dist
PY=${REF_PY:-python3}
WORK=$(mktemp -d)
say() { printf 'gpu check: %s\n' "$*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}
[[ -f "$DIST/ddpm.xz" ]] || die "no $DIST/ddpm.xz; build it with benches/gpu/build-binary.sh"
xz -dc "$DIST/ddpm.xz" >"$WORK/ddpm" && chmod +x "$WORK/ddpm" || die "cannot unpack $DIST/ddpm.xz"
BIN="$WORK/ddpm"
# shellcheck source=benches/gpu/cuda-libs.sh
source benches/gpu/cuda-libs.sh
PY=$PY cuda_lib_path
missing=$(ldd "$BIN" | grep 'not found')
[[ -z "$missing" ]] || die "the binary lacks libraries (set CUDA_LIB_DIR):"$'\n'"$missing"

failed=0
verdict() { # name ok(0/1) message
    if (($2)); then say "ok   $1: $3"; else say "FAIL $1: $3"; failed=1; fi
}
json_field() { "$PY" -c 'import json,sys; print(json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])[sys.argv[2]])' "$1" "$2"; }

for dev in cpu cuda; do
    "$BIN" train --config configs/tiny.toml --out "$WORK/tiny-$dev" --device "$dev" \
        --max-steps 40 --json --quiet >"$WORK/train-$dev.json" 2>"$WORK/train-$dev.err" ||
        { tail -n 5 "$WORK/train-$dev.err" >&2; die "training on $dev"; }
done
lc=$(json_field "$WORK/train-cpu.json" final_loss)
lg=$(json_field "$WORK/train-cuda.json" final_loss)
ok=$("$PY" -c "print(int(abs($lc - $lg) <= 0.05 * abs($lc)))")
verdict train "$ok" "final loss after 40 steps cpu $lc, cuda $lg"

CKPT="$WORK/tiny-cpu/latest.safetensors"
sample() { # device precision out.npy
    "$BIN" sample --checkpoint "$CKPT" -n 16 --steps 20 --ddim --seed 7 --device "$1" \
        --precision "$2" --format npy --out "$3" --quiet 2>"$3.err" ||
        { tail -n 5 "$3.err" >&2; die "sampling on $1 $2"; }
}
sample cpu f32 "$WORK/cpu.npy"
sample cuda f32 "$WORK/cuda.npy"
sample cuda bf16 "$WORK/cuda-bf16.npy"
compare() { # a.npy b.npy tolerance -> "ok mean max"
    "$PY" - "$@" <<'PY'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
d = np.abs(a.astype(np.float64) - b)
print(int(a.shape == b.shape and np.isfinite(b).all() and d.mean() < float(sys.argv[3])),
      f"shape {b.shape}, mean |diff| {d.mean():.2e}, max |diff| {d.max():.2e}")
PY
}
read -r ok msg < <(compare "$WORK/cpu.npy" "$WORK/cuda.npy" 1e-3)
verdict "ddim f32" "$ok" "$msg"
read -r ok msg < <(compare "$WORK/cpu.npy" "$WORK/cuda-bf16.npy" 0.05)
verdict "ddim bf16" "$ok" "$msg"

for dev in cpu cuda; do
    "$BIN" eval --checkpoint "$CKPT" -n 32 --method both --ode-steps 50 --device "$dev" --json --quiet \
        >"$WORK/eval-$dev.json" 2>"$WORK/eval-$dev.err" ||
        { tail -n 5 "$WORK/eval-$dev.err" >&2; die "eval on $dev"; }
done
read -r ok msg < <("$PY" - "$WORK/eval-cpu.json" "$WORK/eval-cuda.json" <<'PY'
import json, sys
c, g = (json.loads(open(p).read().splitlines()[-1]) for p in sys.argv[1:])
pairs = [(c["bound"]["total"]["mean"], g["bound"]["total"]["mean"]), (c["ode"]["bpd"]["mean"], g["ode"]["bpd"]["mean"])]
ok = all(abs(a - b) <= 0.01 * abs(a) for a, b in pairs)
print(int(ok), "bits/dim cpu vs cuda: bound %.4f vs %.4f, ode %.4f vs %.4f" % (pairs[0] + pairs[1]))
PY
)
verdict eval "$ok" "$msg"

[[ -n "${OUT:-}" ]] && cp "$WORK"/*.json "$OUT"/ 2>/dev/null
exit "$failed"

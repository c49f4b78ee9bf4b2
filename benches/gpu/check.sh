#!/usr/bin/env bash
# On a GPU machine: does the CUDA build compute what the CPU build computes? Uses the binaries
# that benches/gpu/build-binary.sh built (both devices are in them) and prints one line per
# check, "ok"/"FAIL" with the measured numbers, then exits 1 if any check failed.
#
#   ops        dist/gpu_ops (benches/gpu_ops.rs): every CUDA op (cuDNN convolutions, GroupNorm,
#              softmax, upsampling) against the CPU path, forward and every gradient, 1e-4 of
#              each tensor's scale in f32 with TF32 off (NVIDIA_TF32_OVERRIDE=0), 2e-2 / 4e-2 in
#              bf16 (reasoned in the example); the tiny UNet's loss and every parameter gradient;
#              AdamW, clipping and the EMA against the CPU optimizer. Then again with TF32 on
#              (PyTorch's default for convolutions) at 5e-3.
# The noise comes from the crate's CPU random streams on every device, so the same checkpoint,
# seed and deterministic sampler must give the same images up to float rounding:
#   train      configs/tiny.toml for 40 steps on cpu and cuda: final losses within 5% (the two
#              runs drift apart by rounding only; the data order and noise are the same); also
#              with DDPM_CUDNN=off (candle's convolutions, the fallback without cuDNN)
#   ddim       DDIM-20 from the cpu checkpoint on cpu and cuda: mean |diff| < 1e-3 in [-1, 1]
#              with TF32 off, < 1e-2 with it
#   ddim bf16  the same in bf16 on cuda against cpu f32: mean |diff| < 0.05
#   eval       `ddpm eval --method both` on 32 digits (ODE 50 steps): bound and ODE bits/dim within 1%
#   cudnn      DDPM_CUDNN naming a missing file: exit 1 with one line naming it and the fix
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
for b in ddpm gpu_ops; do
    [[ -f "$DIST/$b.xz" ]] || die "no $DIST/$b.xz; build it with benches/gpu/build-binary.sh"
    xz -dc "$DIST/$b.xz" >"$WORK/$b" && chmod +x "$WORK/$b" || die "cannot unpack $DIST/$b.xz"
done
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

# Every op against the CPU, strict (TF32 off), then as PyTorch runs by default (TF32 on).
for mode in strict tf32; do
    if [[ $mode == strict ]]; then
        NVIDIA_TF32_OVERRIDE=0 "$WORK/gpu_ops" >"$WORK/ops-$mode.txt" 2>&1
    else
        "$WORK/gpu_ops" --tf32 >"$WORK/ops-$mode.txt" 2>&1
    fi
    rc=$?
    sed "s/^/gpu check: ops $mode: /" "$WORK/ops-$mode.txt" >&2
    verdict "ops $mode" "$((rc == 0))" "$(grep -c '^ok' "$WORK/ops-$mode.txt") ok, exit $rc"
done

# A DDPM_CUDNN that names nothing is a clear error (exit 1, one line naming it), not a crash.
DDPM_CUDNN=/nonexistent/libcudnn.so.9 "$BIN" train --config configs/tiny.toml --out "$WORK/nocudnn" \
    --device cuda --max-steps 1 --quiet >/dev/null 2>"$WORK/nocudnn.err"
rc=$?
ok=$((rc == 1 && $(wc -l <"$WORK/nocudnn.err") == 1))
grep -q 'nvidia-cudnn-cu13' "$WORK/nocudnn.err" || ok=0
verdict "cudnn missing" "$ok" "exit $rc: $(head -c 300 "$WORK/nocudnn.err")"
json_field() { "$PY" -c 'import json,sys; print(json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])[sys.argv[2]])' "$1" "$2"; }

train() { # name device [env...]
    local name=$1 dev=$2
    shift 2
    env "$@" "$BIN" train --config configs/tiny.toml --out "$WORK/tiny-$name" --device "$dev" \
        --max-steps 40 --json --quiet >"$WORK/train-$name.json" 2>"$WORK/train-$name.err" ||
        { tail -n 5 "$WORK/train-$name.err" >&2; die "training $name"; }
}
train cpu cpu
train cuda cuda NVIDIA_TF32_OVERRIDE=0
train cuda-tf32 cuda
train cuda-nocudnn cuda DDPM_CUDNN=off
lc=$(json_field "$WORK/train-cpu.json" final_loss)
for name in cuda cuda-tf32 cuda-nocudnn; do
    lg=$(json_field "$WORK/train-$name.json" final_loss)
    ok=$("$PY" -c "print(int(abs($lc - $lg) <= 0.05 * abs($lc)))")
    verdict "train $name" "$ok" "final loss after 40 steps cpu $lc, $name $lg"
done

CKPT="$WORK/tiny-cpu/latest.safetensors"
sample() { # device precision out.npy [env...]
    local dev=$1 prec=$2 out=$3
    shift 3
    env "$@" "$BIN" sample --checkpoint "$CKPT" -n 16 --steps 20 --ddim --seed 7 --device "$dev" \
        --precision "$prec" --format npy --out "$out" --quiet 2>"$out.err" ||
        { tail -n 5 "$out.err" >&2; die "sampling on $dev $prec"; }
}
sample cpu f32 "$WORK/cpu.npy"
sample cuda f32 "$WORK/cuda.npy" NVIDIA_TF32_OVERRIDE=0
sample cuda f32 "$WORK/cuda-tf32.npy"
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
read -r ok msg < <(compare "$WORK/cpu.npy" "$WORK/cuda-tf32.npy" 1e-2)
verdict "ddim f32 tf32" "$ok" "$msg"
read -r ok msg < <(compare "$WORK/cpu.npy" "$WORK/cuda-bf16.npy" 0.05)
verdict "ddim bf16" "$ok" "$msg"

for dev in cpu cuda; do
    NVIDIA_TF32_OVERRIDE=0 "$BIN" eval --checkpoint "$CKPT" -n 32 --method both --ode-steps 50 --device "$dev" --json --quiet \
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

[[ -n "${OUT:-}" ]] && cp "$WORK"/*.json "$WORK"/ops-*.txt "$OUT"/ 2>/dev/null
exit "$failed"

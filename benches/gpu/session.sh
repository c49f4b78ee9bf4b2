#!/usr/bin/env bash
# One GPU session, prepared on a CPU machine and run as one command on the GPU machine (about
# 10 minutes on an H200): correctness (check.sh), the side-by-side speed table against PyTorch
# (run.sh: W1 train and W2 DDIM-50, f32 and bf16, eager and W1 under torch.compile, peak GPU
# memory), and where the time goes (the top kernels of one W1 step and one W2 sampling, ours
# with nsys where the machine has it, PyTorch's with torch.profiler). Everything lands in $OUT.
#
#   benches/gpu/build-binary.sh                 # here, once: dist/ddpm.xz, dist/gpu_ops.xz
#   OUT=/some/dir benches/gpu/session.sh        # on the GPU machine (REF_PY: python with torch)
#
# Exit status: that of check.sh (the table and profiles are reports, not verdicts).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
PY=${REF_PY:-python3}
WORK=$(mktemp -d)
say() { printf 'gpu session: %s\n' "$*" | tee -a "$OUT/session.log" >&2; }
start=$SECONDS

say "$(date -u +%FT%TZ) $(cat benches/gpu/dist/BUILD_INFO 2>/dev/null | tr '\n' ';')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader | tee -a "$OUT/session.log" >&2
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' \
    2>&1 | tee -a "$OUT/session.log" >&2

say "check.sh ($((SECONDS - start)) s)"
OUT="$OUT" REF_PY="$PY" bash benches/gpu/check.sh 2>&1 | tee "$OUT/check.log" >&2
check=${PIPESTATUS[0]}

say "run.sh ($((SECONDS - start)) s)"
OUT="$OUT" REF_PY="$PY" RUN_TIMEOUT=${RUN_TIMEOUT:-240} bash benches/gpu/run.sh \
    >"$OUT/table.txt" 2>"$OUT/run.log"
cat "$OUT/table.txt" >&2

say "profiles ($((SECONDS - start)) s)"
for wl in W1 W2; do
    for prec in f32 bf16; do
        timeout 120 "$PY" benches/reference/bench.py --device cuda --profile "$wl" \
            --precision "$prec" >"$OUT/profile-torch-$wl-$prec.txt" 2>&1
    done
done
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -n 1)
if [[ -n "$NSYS" ]]; then
    xz -dc benches/gpu/dist/ddpm.xz >"$WORK/ddpm" && chmod +x "$WORK/ddpm"
    # shellcheck source=benches/gpu/cuda-libs.sh
    source benches/gpu/cuda-libs.sh
    PY=$PY cuda_lib_path
    profile_ours() { # name precision command...
        local name=$1
        shift
        timeout 180 "$NSYS" profile -t cuda -o "$WORK/$name" --force-overwrite true "$@" \
            >"$WORK/$name.log" 2>&1 &&
            "$NSYS" stats -q --report cuda_gpu_kern_sum --format csv -o "$WORK/$name" \
                "$WORK/$name.nsys-rep" >/dev/null 2>&1
        "$PY" - "$WORK/${name}_cuda_gpu_kern_sum.csv" >"$OUT/profile-ddpm-$name.txt" 2>&1 <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
total = sum(float(r["Total Time (ns)"]) for r in rows) or 1.0
print(f"ddpm: {sum(int(r['Instances']) for r in rows)} kernel launches, {total / 1e6:.2f} ms of GPU time")
for r in sorted(rows, key=lambda r: -float(r["Total Time (ns)"]))[:12]:
    t = float(r["Total Time (ns)"])
    print(f"{100 * t / total:6.1f}%  {t / 1e6:8.3f} ms  {int(r['Instances']):5d}x  {r['Name'][:110]}")
PY
    }
    for prec in f32 bf16; do
        profile_ours "W1-$prec" "$WORK/ddpm" train --config configs/bench/w1.toml --out "$WORK/p-$prec" \
            --device cuda --precision "$prec" --max-steps 20 --quiet
    done
    profile_ours W2-f32 "$WORK/ddpm" sample --checkpoint "$WORK/p-f32/latest.safetensors" -n 16 \
        --batch-size 16 --steps 50 --ddim --device cuda --out-dir "$WORK/p-samples" --quiet
else
    say "no nsys on this machine: our kernels are not profiled (PyTorch's are)"
fi
for f in "$OUT"/profile-*.txt; do
    say "$(basename "$f"):"
    head -n 8 "$f" >&2
done
say "done in $((SECONDS - start)) s; check exit $check"
exit "$check"

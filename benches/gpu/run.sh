#!/usr/bin/env bash
# On a GPU machine (CUDA 13 libraries, PyTorch, no Rust): unpack the binary that
# benches/gpu/build-binary.sh built, run W1 (train) and W2 (DDIM-50 sample) of WORKLOADS.md in
# f32 and bf16 with it and with the PyTorch reference (ref_cuda.py), and print the ratios.
#
# Needs in the repo tree: benches/gpu/dist/ddpm.xz, and ref_unet.py from the shared bench folder
# (REF_DIR, else benches/gpu/dist/bench, shared/bench or ../shared/bench).
# Environment: CUDA_LIB_DIR (a folder with libcublas.so.13 etc., searched for otherwise),
# REF_PY (python with torch, default python3), W1_STEPS (default 200), W2_REPS (default 3),
# OUT (a folder to copy results.jsonl and the logs into), RUN_TIMEOUT (s per command, 300).
# Exit status: 0 when the table printed (failed runs show as "-" and "error:" lines), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

DIST=benches/gpu/dist
PY=${REF_PY:-python3}
W1_STEPS=${W1_STEPS:-200}
W2_REPS=${W2_REPS:-3}
TMO=${RUN_TIMEOUT:-300}
WORK=$(mktemp -d)
RESULTS="$WORK/results.jsonl"
say() { printf 'gpu bench: %s\n' "$*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}
# Results and logs only: the binary and checkpoints stay behind.
finish() {
    [[ -n "${OUT:-}" ]] && find "$WORK" -maxdepth 1 \( -name '*.json*' -o -name '*.err' \) \
        -exec cp -t "$OUT"/ {} +
}
trap finish EXIT

# --- the binary ---------------------------------------------------------------------------
[[ -f "$DIST/ddpm.xz" ]] || die "no $DIST/ddpm.xz; build it with benches/gpu/build-binary.sh"
(cd "$DIST" && sha256sum --quiet -c SHA256SUMS) || die "$DIST/ddpm.xz does not match SHA256SUMS"
xz -dc "$DIST/ddpm.xz" >"$WORK/ddpm" || die "cannot unpack $DIST/ddpm.xz"
chmod +x "$WORK/ddpm"
BIN="$WORK/ddpm"
cat "$DIST/BUILD_INFO" >&2

# --- its CUDA 13 libraries ----------------------------------------------------------------
# shellcheck source=benches/gpu/cuda-libs.sh
source benches/gpu/cuda-libs.sh
cuda_lib_path
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
missing=$(ldd "$BIN" | grep 'not found')
[[ -z "$missing" ]] || die "the binary lacks libraries (set CUDA_LIB_DIR):"$'\n'"$missing"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2

# --- the reference files ------------------------------------------------------------------
ref_dirs=(${REF_DIR:+"$REF_DIR"} "$DIST/bench" shared/bench ../shared/bench)
REF_DIR=
for d in "${ref_dirs[@]}"; do
    [[ -z "$REF_DIR" && -f "$d/ref_unet.py" ]] && REF_DIR=$d
done
[[ -n "$REF_DIR" ]] || say "warning: no ref_unet.py in ${ref_dirs[*]} (set REF_DIR); skipping PyTorch"

# --- runs ---------------------------------------------------------------------------------
# Appends one line to results.jsonl: the command's last JSON line plus who/what, or an error.
record() {
    local wl=$1 impl=$2 prec=$3 log=$4 rc=$5
    "$PY" - "$wl" "$impl" "$prec" "$log" "$rc" >>"$RESULTS" <<'PY'
import json, sys
wl, impl, prec, log, rc = sys.argv[1:]
lines = [l for l in open(log, errors="replace") if l.startswith("{")]
row = json.loads(lines[-1]) if rc == "0" and lines else {"error": f"exit {rc}, see {log}"}
row.update(workload=wl, impl=impl, precision=prec)
print(json.dumps(row))
PY
}

ours() { # workload precision log command...
    local wl=$1 prec=$2 log=$3 rc
    shift 3
    say "$wl $prec: $*"
    timeout "$TMO" "$@" >"$log" 2>"$log.err"
    rc=$?
    ((rc == 0)) || tail -n 5 "$log.err" >&2
    record "$wl" ddpm "$prec" "$log" "$rc"
    return "$rc"
}

W1_CONFIG=configs/bench/w1.toml
[[ -f "$W1_CONFIG" ]] || die "no $W1_CONFIG"

# A device that does not exist must be a clear error (exit 1), not a crash.
timeout "$TMO" "$BIN" train --config "$W1_CONFIG" --out "$WORK/nodev" --device cuda:4096 \
    --max-steps 1 >/dev/null 2>"$WORK/nodev.err"
rc=$?
if ((rc == 1)) && grep -q 'cuda:4096' "$WORK/nodev.err"; then
    say "--device cuda:4096: clear error: $(head -n 1 "$WORK/nodev.err")"
else
    say "--device cuda:4096: UNEXPECTED exit $rc: $(head -n 3 "$WORK/nodev.err")"
fi

for prec in f32 bf16; do
    ours W1 "$prec" "$WORK/w1-$prec.json" "$BIN" train --config "$W1_CONFIG" \
        --out "$WORK/w1-$prec" --device cuda --precision "$prec" --max-steps "$W1_STEPS" --json
done
# W2 samples from the f32 run's weights (speed does not depend on them); the first process pays
# for loading the kernels, so each precision runs W2_REPS times and the table takes the median.
ckpt="$WORK/w1-f32/latest.safetensors"
if [[ -f "$ckpt" ]]; then
    for prec in f32 bf16; do
        for rep in $(seq "$W2_REPS"); do
            ours W2 "$prec" "$WORK/w2-$prec-$rep.json" "$BIN" sample --checkpoint "$ckpt" \
                -n 16 --batch-size 16 --steps 50 --ddim --device cuda --precision "$prec" \
                --out-dir "$WORK/w2-$prec-$rep" --json
        done
    done
else
    say "no $ckpt: skipping W2"
fi

if [[ -n "$REF_DIR" ]]; then
    say "PyTorch reference: $PY benches/gpu/ref_cuda.py --ref-dir $REF_DIR"
    timeout "$TMO" "$PY" benches/gpu/ref_cuda.py --ref-dir "$REF_DIR" >"$WORK/ref.json" \
        2>"$WORK/ref.err" || tail -n 5 "$WORK/ref.err" >&2
    grep '^{' "$WORK/ref.json" >>"$RESULTS"
fi

# --- the table ----------------------------------------------------------------------------
"$PY" - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def rate(impl, wl, prec):
    v = [r.get("images_per_sec", r.get("images_per_s")) for r in rows
         if r["impl"] == impl and r["workload"] == wl and r["precision"] == prec]
    v = [x for x in v if isinstance(x, (int, float))]
    return statistics.median(v) if v else None
fmt = lambda x: f"{x:10.2f}" if x is not None else f"{'-':>10}"
div = lambda a, b: a / b if a is not None and b else None
print(f"{'workload':8} {'precision':9} {'ddpm img/s':>10} {'torch img/s':>11} {'ddpm/torch':>10}")
for wl in ("W1", "W2"):
    for prec in ("f32", "bf16"):
        a, b = rate("ddpm", wl, prec), rate("torch-ref", wl, prec)
        print(f"{wl:8} {prec:9} {fmt(a)} {fmt(b):>11} {fmt(div(a, b))}")
print()
print(f"{'bf16/f32':8} {'':9} {'ddpm':>10} {'torch':>11}")
for wl in ("W1", "W2"):
    print(f"{wl:8} {'':9} {fmt(div(rate('ddpm', wl, 'bf16'), rate('ddpm', wl, 'f32')))}"
          f" {fmt(div(rate('torch-ref', wl, 'bf16'), rate('torch-ref', wl, 'f32'))):>11}")
for r in rows:
    if "error" in r:
        print(f"error: {r['impl']} {r['workload']} {r['precision']}: {r['error']}")
PY
say "results: $RESULTS${OUT:+ (copied to $OUT)}"

#!/usr/bin/env bash
# On a GPU machine (CUDA 13 libraries, PyTorch, no Rust): unpack the binary that
# benches/gpu/build-binary.sh built, run W1 (train) and W2 (DDIM-50 sample) of the reference
# workloads in f32 and bf16 with it and with the PyTorch reference (benches/reference/bench.py:
# the same UNet, eager, and W1 under torch.compile), and print the ratios with the peak GPU
# memory of each run (nvidia-smi's per-process maximum, sampled every 100 ms, for both sides;
# PyTorch's own max_memory_allocated too).
#
# Environment: CUDA_LIB_DIR (a folder with libcublas.so.13 etc., searched for otherwise),
# REF_PY (python with torch, default python3), W1_STEPS (default 200), W2_REPS (default 3),
# OUT (a folder to copy results.jsonl and the logs into), RUN_TIMEOUT (s per command, 300),
# COMPILE (1: also W1 under torch.compile, the default; 0: skip).
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

# --- runs ---------------------------------------------------------------------------------
# Appends one line to results.jsonl: the command's last JSON line plus who/what and the peak GPU
# memory nvidia-smi saw for its process, or an error.
record() {
    local wl=$1 impl=$2 prec=$3 log=$4 rc=$5 mem=$6
    "$PY" - "$wl" "$impl" "$prec" "$log" "$rc" "$mem" >>"$RESULTS" <<'PY'
import json, sys
wl, impl, prec, log, rc, mem = sys.argv[1:]
lines = [l for l in open(log, errors="replace") if l.startswith("{")]
row = json.loads(lines[-1]) if rc == "0" and lines else {"error": f"exit {rc}, see {log}"}
row.update(workload=wl, impl=impl, precision=prec)
if mem:
    row["peak_gpu_smi_mb"] = float(mem)
print(json.dumps(row))
PY
}

# Runs a command with nvidia-smi sampling the GPU's compute processes; sets PEAK_MB, the largest
# memory one of them held (the runs are one at a time, and the command's own pid is that of
# `timeout`, not of the process on the GPU), or empty without nvidia-smi.
watched() { # log command...
    local log=$1 rc smi=""
    shift
    "$@" >"$log" 2>"$log.err" &
    local pid=$!
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits -lms 100 \
            >"$log.smi" 2>/dev/null &
        smi=$!
    fi
    wait "$pid"
    rc=$?
    [[ -n "$smi" ]] && kill "$smi" 2>/dev/null && wait "$smi" 2>/dev/null
    PEAK_MB=$([[ -f "$log.smi" ]] && awk -F', *' '$2 + 0 > m {m = $2 + 0} END {if (m) print m}' "$log.smi")
    return "$rc"
}

ours() { # workload precision log command...
    local wl=$1 prec=$2 log=$3 rc
    shift 3
    say "$wl $prec: $*"
    watched "$log" timeout "$TMO" "$@"
    rc=$?
    ((rc == 0)) || tail -n 5 "$log.err" >&2
    record "$wl" ddpm "$prec" "$log" "$rc" "$PEAK_MB"
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

# PyTorch: one process per (workload, precision, variant), so the memory peaks are per run.
torch_run() { # workload precision [--compile]
    local wl=$1 prec=$2 variant=${3:-} log="$WORK/torch-$1-$2${3:+-compile}.json" rc
    say "PyTorch $wl $prec ${variant:-eager}"
    watched "$log" timeout "$TMO" "$PY" benches/reference/bench.py --device cuda --workload "$wl" \
        --precision "$prec" $variant
    rc=$?
    ((rc == 0)) || tail -n 5 "$log.err" >&2
    record "$wl" "torch-ref${variant:++compile}" "$prec" "$log" "$rc" "$PEAK_MB"
}
for wl in W1 W2; do
    for prec in f32 bf16; do
        torch_run "$wl" "$prec"
    done
done
[[ "${COMPILE:-1}" == 1 ]] && torch_run W1 f32 --compile

# --- the table ----------------------------------------------------------------------------
"$PY" - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def rate(impl, wl, prec):
    v = [r.get("images_per_sec", r.get("images_per_s")) for r in rows
         if r["impl"] == impl and r["workload"] == wl and r["precision"] == prec]
    v = [x for x in v if isinstance(x, (int, float))]
    return statistics.median(v) if v else None
def mem(impl, wl, prec):
    v = [r.get("peak_gpu_smi_mb") for r in rows
         if r["impl"] == impl and r["workload"] == wl and r["precision"] == prec]
    v = [x for x in v if isinstance(x, (int, float))]
    return max(v) if v else None
fmt = lambda x: f"{x:10.2f}" if x is not None else f"{'-':>10}"
fmb = lambda x: f"{x:8.0f}" if x is not None else f"{'-':>8}"
div = lambda a, b: a / b if a is not None and b else None
print(f"{'workload':8} {'precision':9} {'ddpm img/s':>10} {'torch img/s':>11} {'ddpm/torch':>10}"
      f" {'ddpm MiB':>8} {'torch MiB':>9}")
for wl in ("W1", "W2"):
    for prec in ("f32", "bf16"):
        a, b = rate("ddpm", wl, prec), rate("torch-ref", wl, prec)
        print(f"{wl:8} {prec:9} {fmt(a)} {fmt(b):>11} {fmt(div(a, b))}"
              f" {fmb(mem('ddpm', wl, prec))} {fmb(mem('torch-ref', wl, prec)):>9}")
c = rate("torch-ref+compile", "W1", "f32")
print(f"{'W1':8} {'f32':9} {fmt(rate('ddpm', 'W1', 'f32'))} {fmt(c):>11} "
      f"{fmt(div(rate('ddpm', 'W1', 'f32'), c))} {'':>8} {fmb(mem('torch-ref+compile', 'W1', 'f32')):>9}"
      "  (torch.compile)")
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

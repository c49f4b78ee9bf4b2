#!/bin/sh
# Side by side with the PyTorch reference: W1-W4 (or those named), PyTorch and ours alternately,
# REPS repetitions, THREADS threads on both sides, each run isolated (own session, autogroup
# nice -20, when run as root); prints the ratio table (benches/compare.py summary OUT).
#
#   REF_PY=/path/to/venv/bin/python benches/compare.sh [W1 W2 W3 W4]
#
# REF_PY     a python with torch (default python3); the PyTorch side is benches/reference/
# REPS       repetitions (default 5); THREADS (default 2); OUT the JSON lines file
#            (default target/compare.jsonl, appended to: remove it for a fresh table)
set -eu
cd "$(dirname "$0")/.."
REF_PY=${REF_PY:-python3}
REPS=${REPS:-5}
THREADS=${THREADS:-2}
OUT=${OUT:-target/compare.jsonl}
# Our side: the `workloads` bench binary (benches/workloads.rs), timed as ref_bench.py times.
OURS=$(cargo bench --bench workloads --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
if [ -z "$OURS" ] || [ ! -x "$OURS" ]; then
    echo "compare.sh: could not build the workloads bench" >&2
    exit 1
fi
case "$OURS" in /*) ;; *) OURS="$PWD/$OURS" ;; esac
exec "$REF_PY" benches/compare.py run --ref-py "$REF_PY" \
    --ours "$OURS" --reps "$REPS" --threads "$THREADS" --out "$OUT" "$@"

#!/usr/bin/env bash
# Data-parallel scaling on one CPU machine: training images/s of one process with 2 threads
# against 2 MPI ranks with 1 thread each (Open MPI over shared memory), on the reference
# workloads W3 and W1 (configs/bench), runs alternating so both see the same machine. Prints each
# run's images/s (the --json summary's, steady state after the first step) and the medians.
#
#   cargo build --release --features mpi
#   REPS=5 benches/dist-scaling.sh            # or: benches/dist-scaling.sh w3
#
# Environment: BIN (default target/release/ddpm), REPS (default 3), STEPS_w3 / STEPS_w1 (steps
# per run, default 60 and 12). Needs mpirun; runs as root pass --allow-run-as-root. As root,
# each run gets its own session at autogroup nice -20 (as benches/compare.sh), so other work
# on a shared machine takes less of it; mpirun's ranks stay in mpirun's session.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ddpm}
REPS=${REPS:-3}
WORKLOADS=("${@:-w3 w1}")
read -r -a WORKLOADS <<<"${WORKLOADS[*]}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[[ -x "$BIN" ]] || { echo "no $BIN; cargo build --release --features mpi" >&2; exit 1; }
root=()
[[ $(id -u) -eq 0 ]] && root=(--allow-run-as-root)

isolated() { # command... in its own session, at autogroup nice -20 where permitted
    setsid bash -c 'echo -20 >/proc/self/autogroup 2>/dev/null; renice -n -20 $$ >/dev/null 2>&1; exec "$@"' -- "$@"
}
ips() { # log -> images_per_sec of its JSON line
    python3 -c 'import json,sys; print(json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])["images_per_sec"])' "$1"
}
run() { # workload layout steps
    local wl=$1 layout=$2 steps=$3 out="$WORK/$1-$2"
    rm -rf "$out"
    local args=(train --config "configs/bench/$wl.toml" --out "$out" --device cpu --max-steps "$steps" --json --quiet)
    case $layout in
    1x2) RAYON_NUM_THREADS=2 isolated "$BIN" "${args[@]}" --launcher none >"$out.json" ;;
    2x1) isolated mpirun "${root[@]}" -np 2 --bind-to none --mca pml ob1 --mca btl self,vader \
        --mca btl_vader_single_copy_mechanism none -x RAYON_NUM_THREADS=1 \
        "$BIN" "${args[@]}" >"$out.json" ;;
    esac
    ips "$out.json"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A all
for rep in $(seq 1 "$REPS"); do
    for wl in "${WORKLOADS[@]}"; do
        steps_var="STEPS_$wl"
        steps=${!steps_var:-$([[ $wl == w1 ]] && echo 12 || echo 60)}
        # Alternate which layout goes first.
        layouts=(1x2 2x1)
        ((rep % 2 == 0)) && layouts=(2x1 1x2)
        for layout in "${layouts[@]}"; do
            v=$(run "$wl" "$layout" "$steps")
            all[$wl-$layout]+="$v "
            printf '%s rep %d %s: %.2f images/s (load %s)\n' "$wl" "$rep" "$layout" "$v" \
                "$(cut -d' ' -f1 /proc/loadavg)"
        done
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n| workload | 1 process x 2 threads images/s | 2 ranks x 1 thread images/s | ratio of medians |\n|---|---|---|---|\n'
for wl in "${WORKLOADS[@]}"; do
    python3 - "$wl" "${all[$wl-1x2]}" "${all[$wl-2x1]}" <<'PY'
import statistics, sys
wl, a, b = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
ma, mb = statistics.median(a), statistics.median(b)
fmt = lambda v: ", ".join(f"{x:.1f}" for x in v)
print(f"| {wl.upper()} | {ma:.1f} ({fmt(a)}) | {mb:.1f} ({fmt(b)}) | {mb / ma:.2f} |")
PY
done

#!/usr/bin/env bash
# On a GPU machine: does training launched as a world of one over NCCL compute what training
# without a launcher computes? Uses the NCCL build of the binary (on a CPU machine:
# DDPM_FEATURES=cuda,nccl benches/gpu/build-binary.sh, which writes benches/gpu/dist/ddpm-nccl.xz)
# and prints one line per check, "ok"/"FAIL"/"skip" with the measured numbers, then exits 1 if
# any check failed:
#   nccl env   configs/tiny.toml for 40 steps on cuda, without a launcher and then with
#              torchrun's environment for rank 0 of 1 (RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1
#              MASTER_PORT=free): the second meets itself through the TCP rendezvous, joins an
#              NCCL communicator and sends every step's gradients through NCCL's all-to-all and
#              all-gather. The exchange only moves bytes, so the final losses must agree to
#              1e-6 (relative); whether the checkpoints are byte-identical is reported.
#   torchrun   the same under `torchrun --standalone --nproc-per-node 1 --no-python`, when
#              torchrun is installed (its agent keeps a store on MASTER_PORT; ddpm's rank 0
#              listens on the next port).
#   2 gpus     with two GPUs or more: `torchrun --nproc-per-node 2` against one process; each
#              rank computes half of every batch, so losses agree to rounding (1e-3 relative).
# Environment: as benches/gpu/run.sh (CUDA_LIB_DIR, REF_PY as a python3, OUT for the logs).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

DIST=benches/gpu/dist
PY=${REF_PY:-python3}
WORK=$(mktemp -d)
say() { printf 'dist check: %s\n' "$*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}
finish() { [[ -n "${OUT:-}" ]] && cp "$WORK"/*.json "$WORK"/*.err "$OUT"/ 2>/dev/null; }
trap finish EXIT

[[ -f "$DIST/ddpm-nccl.xz" ]] ||
    die "no $DIST/ddpm-nccl.xz; build it with DDPM_FEATURES=cuda,nccl benches/gpu/build-binary.sh"
xz -dc "$DIST/ddpm-nccl.xz" >"$WORK/ddpm" && chmod +x "$WORK/ddpm" || die "cannot unpack"
BIN="$WORK/ddpm"
# shellcheck source=benches/gpu/cuda-libs.sh
source benches/gpu/cuda-libs.sh
PY=$PY cuda_lib_path
# NCCL is not one of the toolkit libraries cuda_lib_path looks for: PyTorch's wheels bring it.
nccl_dir=$("$PY" -c '
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
for root in nvidia.__path__:
    for p in sorted(glob.glob(os.path.join(root, "**", "libnccl.so.2"), recursive=True)):
        print(os.path.dirname(p)); raise SystemExit' 2>/dev/null)
[[ -n "$nccl_dir" ]] && export LD_LIBRARY_PATH="$nccl_dir:$LD_LIBRARY_PATH"
missing=$(ldd "$BIN" | grep 'not found')
[[ -z "$missing" ]] || die "the binary lacks libraries (set CUDA_LIB_DIR):"$'\n'"$missing"

failed=0
verdict() { # name ok(0/1/skip) message
    case $2 in
    1) say "ok   $1: $3" ;;
    skip) say "skip $1: $3" ;;
    *) say "FAIL $1: $3"; failed=1 ;;
    esac
}
json_field() { "$PY" -c 'import json,sys; print(json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])[sys.argv[2]])' "$1" "$2"; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
close() { # a b tolerance -> "ok(0/1) message"
    "$PY" -c 'import sys; a,b,t=map(float,sys.argv[1:]); d=abs(a-b)/max(abs(a),1e-12); print(int(d<=t), f"final loss {a!r} vs {b!r}, relative difference {d:.1e}")' "$@"
}
train() { # name [launcher words...] -- [env words...]
    local name=$1
    shift
    "$@" train --config configs/tiny.toml --out "$WORK/$name" --device cuda --max-steps 40 \
        --json --quiet >"$WORK/$name.json" 2>"$WORK/$name.err"
}

train plain "$BIN" || { tail -n 5 "$WORK/plain.err" >&2; die "training without a launcher"; }
base=$(json_field "$WORK/plain.json" final_loss)

port=$(free_port)
if train env env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
    MASTER_PORT="$port" "$BIN"; then
    read -r ok msg < <(close "$base" "$(json_field "$WORK/env.json" final_loss)" 1e-6)
    if cmp -s "$WORK/plain/latest.safetensors" "$WORK/env/latest.safetensors"; then
        msg="$msg; checkpoints byte-identical"
    else
        msg="$msg; checkpoints differ in their bytes"
    fi
    engine=$(json_field "$WORK/env.json" engine)
    [[ $engine == NCCL ]] || { ok=0; msg="$msg; but the engine was $engine, not NCCL"; }
    verdict "nccl env" "$ok" "$msg"
else
    tail -n 5 "$WORK/env.err" >&2
    verdict "nccl env" 0 "a world of one under torchrun's environment failed"
fi

if command -v torchrun >/dev/null; then
    if train torchrun torchrun --standalone --nproc-per-node 1 --no-python "$BIN"; then
        read -r ok msg < <(close "$base" "$(json_field "$WORK/torchrun.json" final_loss)" 1e-6)
        verdict torchrun "$ok" "$msg"
    else
        tail -n 5 "$WORK/torchrun.err" >&2
        verdict torchrun 0 "torchrun --nproc-per-node 1 failed"
    fi
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    if ((gpus >= 2)); then
        if train two torchrun --standalone --nproc-per-node 2 --no-python "$BIN"; then
            read -r ok msg < <(close "$base" "$(json_field "$WORK/two.json" final_loss)" 1e-3)
            verdict "2 gpus" "$ok" "$msg"
        else
            tail -n 5 "$WORK/two.err" >&2
            verdict "2 gpus" 0 "torchrun --nproc-per-node 2 failed"
        fi
    else
        verdict "2 gpus" skip "$gpus GPU(s) on this machine"
    fi
else
    verdict torchrun skip "no torchrun on PATH"
fi
exit "$failed"

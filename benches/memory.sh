#!/usr/bin/env bash
# The peak memory behind `src/budget.rs`'s estimates: the peak RSS (/usr/bin/time) of one
# training step and of one DDIM step of sampling at two batch sizes each, for the configs that
# src/budget/tests.rs lists; the difference over the batch difference is the memory per example,
# which the test holds the estimates against.
#
#   benches/memory.sh [OUT]
#
# Prints one line per config: name, training KB/example, sampling KB/example. Environment:
# DDPM (the binary, default target/debug/ddpm: our crate at opt-level 1 and dependencies at 3,
# as the tests build it; the allocation pattern is the release build's).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ddpm=${DDPM:-$root/target/debug/ddpm}
out=${1:-$(mktemp -d)}
mkdir -p "$out"
tiny=$root/configs/tiny.toml

peak() { # peak RSS in KB of the command
    /usr/bin/time -f %M -o "$out/rss" "$@" >/dev/null 2>"$out/err" || { cat "$out/err" >&2; exit 1; }
    cat "$out/rss"
}

# name, config, batch sizes (small, large) for training and for sampling, --set overrides.
measure() {
    local name=$1 config=$2 t1=$3 t2=$4 s1=$5 s2=$6
    shift 6
    local sets=()
    for s in "$@"; do sets+=(--set "$s"); done
    local train=("$ddpm" train --config "$config" --max-steps 1 --quiet --device cpu
        --set train.sample_every=0 "${sets[@]}")
    rm -rf "$out/run"
    local a b
    a=$(peak "${train[@]}" --out "$out/run" --set train.batch_size="$t1")
    rm -rf "$out/run"
    b=$(peak "${train[@]}" --out "$out/run" --set train.batch_size="$t2")
    local train_kb=$(((b - a) / (t2 - t1)))
    rm -rf "$out/run"
    "$ddpm" train --config "$config" --out "$out/run" --max-steps 0 --quiet --device cpu \
        "${sets[@]}" >/dev/null
    local sample=("$ddpm" sample --checkpoint "$out/run/latest.safetensors" --steps 1
        --sampler ddim --out "$out/s.npy" --device cpu --quiet)
    a=$(peak "${sample[@]}" -n "$s1" --batch-size "$s1")
    b=$(peak "${sample[@]}" -n "$s2" --batch-size "$s2")
    echo "$name train_kb_per_example=$train_kb sample_kb_per_example=$(((b - a) / (s2 - s1)))"
}

c32=(data.image_size=32 data.channels=3 model.base_channels=32 'model.channel_mult=[1,2,2]'
    model.num_res_blocks=2)
measure tiny "$tiny" 128 1024 1024 8192
measure c32-no-attention "$tiny" 8 64 64 512 "${c32[@]}" 'model.attention_resolutions=[]'
measure c32-attention-16 "$tiny" 8 64 64 512 "${c32[@]}" 'model.attention_resolutions=[16]'
measure c32-attention-32 "$tiny" 8 32 32 128 "${c32[@]}" 'model.attention_resolutions=[32]'
measure v64 "$tiny" 8 64 128 512 data.image_size=32 data.channels=3 model.base_channels=64 \
    'model.channel_mult=[1,2,2,2]' 'model.attention_resolutions=[8]' model.num_res_blocks=1 \
    model.norm_groups=32
measure mlp512 "$root/configs/moons.toml" 4096 32768 10000 100000 model.mlp.width=512

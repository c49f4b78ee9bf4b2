#!/usr/bin/env bash
# The README's digits numbers and pictures, regenerated from scratch or from given checkpoints.
#
#   benches/showcase.sh OUT [DIGITS_CKPT COND_CKPT]
#
# Without checkpoints it trains configs/digits.toml and configs/digits_cond.toml into OUT/digits
# and OUT/digits_cond (timed with /usr/bin/time -v). Then it writes into OUT:
#   floor.json            the Frechet-distance noise floor of the real digits
#   sweep/, sweep.md      steps vs quality: FD of N samples per sampler and step count
#   eval.jsonl, eval.md   `ddpm eval --method both` of the trained and an untrained (step 0) model
#   guidance/, guidance.md  nearest-centroid rate of --class k samples labelled k, per w
#   pictures/             the README pictures (copy them to configs/ by hand)
#   inversion.txt         how far interpolate --from/--to's end frames are from five real digits
# The README's guidance picture and first row come from configs/digits_cond.toml as shipped;
# its second row from a smaller conditional model (its command is in the README).
#
# Environment (defaults: the README's numbers): DDPM (binary, target/release/ddpm), PYTHON (with
# numpy, python3), N (samples per sweep point, 500), STEPS (ddim, "5 10 20 50 100"), DPM_STEPS
# (dpm++2m, "5 10 20 50"), TWO_CALL_STEPS (heun, "3 6 11 26": 4, 10, 20, 50 model calls),
# DDPM_STEPS ("10 20 50 100"), PC_STEPS (pc, none), NE (examples for eval, 64), NG (samples
# per guidance scale, 200), GSTEPS (their DDIM steps, 20), NICE ("nice -n 10"), STAGES
# ("sweep eval guidance pictures": the parts to run). Finished sweep points, evals and guidance
# samples are kept, so an interrupted run continues. Each sweep point is one batch of N (the batch
# size does not change the images).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:?usage: benches/showcase.sh OUT [DIGITS_CKPT COND_CKPT]}
DIGITS=${2:-}
COND=${3:-}
DDPM=${DDPM:-target/release/ddpm}
PYTHON=${PYTHON:-python3}
N=${N:-500}
NG=${NG:-200}
NE=${NE:-64}
GSTEPS=${GSTEPS:-20}
read -r -a NICE <<<"${NICE:-nice -n 10}"
Q=(benches/quality.py)
mkdir -p "$OUT"
start=$SECONDS
say() { printf 'showcase: %s (%d s)\n' "$*" $((SECONDS - start)) >&2; }

train() { # config name
    local dir="$OUT/$2"
    say "training $1"
    "${NICE[@]}" /usr/bin/time -v "$DDPM" train --config "$1" --out "$dir" --quiet \
        2>"$OUT/train-$2.time" >/dev/null
    grep -E 'Elapsed|User time|System time|Maximum resident' "$OUT/train-$2.time" >&2
    tail -n 1 "$dir/metrics.csv" >&2
}
if [[ -z $DIGITS ]]; then
    train configs/digits.toml digits
    DIGITS=$OUT/digits/latest.safetensors
fi
if [[ -z $COND ]]; then
    train configs/digits_cond.toml digits_cond
    COND=$OUT/digits_cond/latest.safetensors
fi

sample() { # out.npy ckpt args...: N samples as npy, the --json line beside it
    local out=$1 ckpt=$2
    shift 2
    "${NICE[@]}" "$DDPM" sample --checkpoint "$ckpt" --format npy --out "$out" --json --quiet "$@" \
        >"${out%.npy}.json"
}

want() { [[ " ${STAGES:-sweep eval guidance pictures} " == *" $1 "* ]]; }

say "FD noise floor"
"$PYTHON" "${Q[@]}" floor "$N" | tee "$OUT/floor.json"

if want sweep; then
say "steps vs quality, $N samples per point"
mkdir -p "$OUT/sweep"
# heun and pc take two model calls per step (one on the last; heun also one on its first step,
# from sigma 2e4): their step counts give about the one-call samplers' 5, 10, 20, 50 model
# evaluations (NFE).
sweep() { # sampler steps...
    local s=$1 k
    shift
    for k in "$@"; do
        [[ -f $OUT/sweep/$s-$k.npy ]] ||
            sample "$OUT/sweep/$s-$k.npy" "$DIGITS" -n "$N" --batch-size "$N" --sampler "$s" --steps "$k"
    done
}
read -r -a one <<<"${STEPS:-5 10 20 50 100}"
read -r -a two <<<"${TWO_CALL_STEPS:-3 6 11 26}"
read -r -a anc <<<"${DDPM_STEPS:-10 20 50 100}"
sweep ddim "${one[@]}"
read -r -a dpm <<<"${DPM_STEPS:-5 10 20 50}"
sweep dpm++2m "${dpm[@]}"
sweep heun "${two[@]}"
[[ -n ${PC_STEPS:-} ]] && read -r -a pcs <<<"$PC_STEPS" && sweep pc "${pcs[@]}"
sweep ddpm "${anc[@]}"
"$PYTHON" "${Q[@]}" sweep "$OUT/sweep" | tee "$OUT/sweep.md"
fi

if want eval; then
say "likelihood, $NE examples"
untrained=$OUT/untrained
if [[ ! -f $untrained/latest.safetensors ]]; then
    "$DDPM" train --config configs/digits.toml --out "$untrained" --max-steps 0 \
        --quiet >/dev/null
fi
for m in trained untrained; do
    c=$DIGITS
    [[ $m == trained ]] || c=$untrained/latest.safetensors
    [[ -s $OUT/eval-$m.json ]] ||
        "${NICE[@]}" "$DDPM" eval --checkpoint "$c" -n "$NE" --method both --json --quiet \
            >"$OUT/eval-$m.json"
done
cat "$OUT"/eval-{trained,untrained}.json >"$OUT/eval.jsonl"
"$PYTHON" "${Q[@]}" eval "$OUT/eval.jsonl" | tee "$OUT/eval.md"
fi

if want guidance; then
say "guidance, $NG samples per scale"
mkdir -p "$OUT/guidance"
for w in 0 1 2 4; do
    [[ -f $OUT/guidance/w$w.npy ]] ||
        sample "$OUT/guidance/w$w.npy" "$COND" -n "$NG" --batch-size "$NG" --steps "$GSTEPS" \
            --class 0,1,2,3,4,5,6,7,8,9 --guidance "$w"
done
"$PYTHON" "${Q[@]}" guidance "$OUT/guidance" | tee "$OUT/guidance.md"
mkdir -p "$OUT/pictures"
"${NICE[@]}" "$DDPM" sample --checkpoint "$COND" -n 100 --class 0,1,2,3,4,5,6,7,8,9 \
    --guidance 2 --grid --scale 6 --quiet --out "$OUT/pictures/guidance.png" >/dev/null
fi

want pictures || exit 0
say "pictures"
P=$OUT/pictures
mkdir -p "$P"
for spec in "ddim 50" "dpm++2m 20" "ddpm 1000"; do
    read -r s k <<<"$spec"
    "${NICE[@]}" "$DDPM" sample --checkpoint "$DIGITS" --sampler "$s" --steps "$k" -n 16 --grid \
        --scale 6 --quiet --out "$P/sampler-${s//+/p}-$k.png" >/dev/null
done
"$PYTHON" "${Q[@]}" digit 0 "$P/digit0.png"
"$PYTHON" "${Q[@]}" digit 3 "$P/digit3.png"
"$PYTHON" "${Q[@]}" mask bottom "$P/mask-bottom.png"
for st in 0.3 0.6 0.9; do
    "${NICE[@]}" "$DDPM" sample --checkpoint "$DIGITS" --init "$P/digit0.png" --strength "$st" \
        -n 8 --format npy --quiet --out "$P/sdedit-$st.npy" >/dev/null
done
"${NICE[@]}" "$DDPM" sample --checkpoint "$DIGITS" --init "$P/digit0.png" --strength 0 -n 1 \
    --format npy --quiet --out "$P/init0.npy" >/dev/null
"$PYTHON" "${Q[@]}" sdedit "$P/sdedit.png" 6 "$P/init0.npy" "$P"/sdedit-0.{3,6,9}.npy
"${NICE[@]}" "$DDPM" sample --checkpoint "$DIGITS" --init "$P/digit3.png" --mask "$P/mask-bottom.png" \
    --resample 5 -n 8 --format npy --quiet --out "$P/inpaint.npy" >/dev/null
"${NICE[@]}" "$DDPM" sample --checkpoint "$DIGITS" --init "$P/digit3.png" --strength 0 -n 1 \
    --format npy --quiet --out "$P/init3.npy" >/dev/null
"$PYTHON" "${Q[@]}" inpaint "$P/inpaint.png" 6 "$P/init3.npy" bottom "$P/inpaint.npy"
"${NICE[@]}" "$DDPM" interpolate --checkpoint "$DIGITS" --seeds 3,4 --frames 10 --scale 6 --quiet \
    --out "$P/interpolation.png" >/dev/null
# Interpolation between real digits: each pair inverted and sampled back (2 frames, the ends);
# how far each end frame is from its digit, in grey levels.
for pair in "0 3" "1 7" "2 5" "4 9" "6 8"; do
    read -r i j <<<"$pair"
    for d in "$i" "$j"; do "$PYTHON" "${Q[@]}" digit "$d" "$P/digit$d.png"; done
    "${NICE[@]}" "$DDPM" interpolate --checkpoint "$DIGITS" --from "$P/digit$i.png" \
        --to "$P/digit$j.png" --frames 2 --quiet --out-dir "$P/ends-$i-$j" >/dev/null
    printf '%s -> %s: first frame %s, last frame %s\n' "$i" "$j" \
        "$("$PYTHON" "${Q[@]}" pngdiff "$P/digit$i.png" "$P/ends-$i-$j/frame-000.png")" \
        "$("$PYTHON" "${Q[@]}" pngdiff "$P/digit$j.png" "$P/ends-$i-$j/frame-001.png")"
done | tee "$OUT/inversion.txt"
"${NICE[@]}" "$DDPM" interpolate --checkpoint "$DIGITS" --from "$P/digit0.png" \
    --to "$P/digit3.png" --frames 10 --scale 6 --quiet --out "$P/interpolation-images.png" >/dev/null
ls -l "$P"/*.png >&2
say "done"

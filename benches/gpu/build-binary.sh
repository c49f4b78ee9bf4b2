#!/usr/bin/env bash
# Build the CUDA `ddpm` binary on a CPU-only machine, for benches/gpu/run.sh on a GPU machine.
#
# cudarc links the CUDA libraries at link time, so .ci/cuda-env's `cuda_link_env` installs them
# from PyPI wheels and builds a link-only stub of the driver; the GPU machine's real libraries
# replace both at run time through LD_LIBRARY_PATH.
#
# Output: benches/gpu/dist/ddpm.xz (stripped, xz), BUILD_INFO and SHA256SUMS (git-ignored).
# Environment: DDPM_CACHE (default ~/.cache/ddpm) holds the venv, the stub and the target dir
# (cuda-release-target/); CUDA_COMPUTE_CAP (default 90 = H100/H200); DDPM_FEATURES (default
# cuda): with nccl among them (cuda,nccl) the binary also links NCCL and is written as
# ddpm-nccl.xz (BUILD_INFO-nccl, SHA256SUMS-nccl), for benches/gpu/dist-check.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=.ci/cuda-env
source .ci/cuda-env

say() { printf 'build-binary: %s\n' "$*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}
LIMIT=$((64 * 1024 * 1024)) # what can be copied to the GPU machine
DIST=benches/gpu/dist
export CARGO_TARGET_DIR="$DDPM_CACHE/cuda-release-target"
FEATURES=${DDPM_FEATURES:-cuda}
NAME=ddpm SUFFIX=
if [[ ",$FEATURES," == *,nccl,* ]]; then
    NAME=ddpm-nccl SUFFIX=-nccl
    nccl_link_env || die "setting up the CUDA $CUDA_VERSION libraries, NCCL and the driver stub"
else
    cuda_link_env || die "setting up the CUDA $CUDA_VERSION libraries and the driver stub"
fi

say "$(nvcc --version | grep -o 'release [0-9.]*'), compute capability $CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR"
start=$SECONDS
cargo build --release --features "$FEATURES" --bin ddpm || die "cargo build --release --features $FEATURES"
say "built in $((SECONDS - start)) s"

BIN="$CARGO_TARGET_DIR/release/ddpm"
mkdir -p "$DIST"
strip -o "$DIST/$NAME" "$BIN"
# Smoke test against the stub: the binary must start (every library resolves).
if ! LD_LIBRARY_PATH="$CUDA_STUB_LIB:$CU/lib" "$DIST/$NAME" --help >/dev/null; then
    die "the built binary does not start (missing library?)"
fi
glibc=$(objdump -T "$DIST/$NAME" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -n 1)
needed=$(objdump -p "$DIST/$NAME" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')
xz -9 -T0 -f "$DIST/$NAME"
size=$(stat -c %s "$DIST/$NAME.xz")
((size < LIMIT)) || die "$DIST/$NAME.xz is $size bytes, over the 64 MiB limit"
{
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (dirty)')"
    echo "built: $(date -u +%FT%TZ) on $(uname -m)"
    echo "cuda: $CUDA_VERSION (nvcc $(nvcc --version | grep -o 'release [0-9.]*')), compute capability $CUDA_COMPUTE_CAP"
    echo "features: $FEATURES"
    echo "needs: $needed"
    echo "glibc: >= ${glibc#GLIBC_}"
} >"$DIST/BUILD_INFO$SUFFIX"
(cd "$DIST" && sha256sum "$NAME.xz" >"SHA256SUMS$SUFFIX")
say "$DIST/$NAME.xz: $((size / 1024 / 1024)) MiB (stripped $(xz -l --robot "$DIST/$NAME.xz" | awk '/^totals/ {printf "%d", $5/1048576}') MiB)"
cat "$DIST/BUILD_INFO$SUFFIX" >&2

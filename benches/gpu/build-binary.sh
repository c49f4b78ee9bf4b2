#!/usr/bin/env bash
# Build the CUDA `ddpm` binary and the op checker (examples/gpu_ops.rs) on a CPU-only machine,
# for benches/gpu/session.sh (check.sh, run.sh) on a GPU machine.
#
# cudarc links the CUDA libraries at link time, so .ci/cuda-env's `cuda_link_env` installs them
# from PyPI wheels and builds a link-only stub of the driver; the GPU machine's real libraries
# replace both at run time through LD_LIBRARY_PATH.
#
# Output: benches/gpu/dist/ddpm.xz and gpu_ops.xz (stripped, xz), BUILD_INFO and SHA256SUMS
# (git-ignored). cuDNN is not linked (it is opened at run time), so neither needs it to start.
# Environment: DDPM_CACHE (default ~/.cache/ddpm) holds the venv, the stub and the target dir
# (cuda-release-target/); CUDA_COMPUTE_CAP (default 90 = H100/H200).
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

cuda_link_env || die "setting up the CUDA $CUDA_VERSION libraries and the driver stub"

say "$(nvcc --version | grep -o 'release [0-9.]*'), compute capability $CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR"
start=$SECONDS
cargo build --release --features cuda --bin ddpm --example gpu_ops ||
    die "cargo build --release --features cuda"
say "built in $((SECONDS - start)) s"

mkdir -p "$DIST"
strip -o "$DIST/ddpm" "$CARGO_TARGET_DIR/release/ddpm"
strip -o "$DIST/gpu_ops" "$CARGO_TARGET_DIR/release/examples/gpu_ops"
# Smoke test against the stub: the binary must start (every library resolves), and the CUDA
# device must be refused with an error, not a crash.
if ! LD_LIBRARY_PATH="$CUDA_STUB_LIB:$CU/lib" "$DIST/ddpm" --help >/dev/null; then
    die "the built binary does not start (missing library?)"
fi
LD_LIBRARY_PATH="$CUDA_STUB_LIB:$CU/lib" "$DIST/gpu_ops" >/dev/null 2>&1
(($? == 1)) || die "gpu_ops without a GPU did not exit 1"
glibc=$(objdump -T "$DIST/ddpm" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -n 1)
needed=$(objdump -p "$DIST/ddpm" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')
xz -9 -T0 -f "$DIST/ddpm" "$DIST/gpu_ops"
size=$(($(stat -c %s "$DIST/ddpm.xz") + $(stat -c %s "$DIST/gpu_ops.xz")))
((size < LIMIT)) || die "the two binaries are $size bytes, over the 64 MiB limit"
{
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (dirty)')"
    echo "built: $(date -u +%FT%TZ) on $(uname -m)"
    echo "cuda: $CUDA_VERSION (nvcc $(nvcc --version | grep -o 'release [0-9.]*')), compute capability $CUDA_COMPUTE_CAP"
    echo "needs: $needed"
    echo "glibc: >= ${glibc#GLIBC_}"
} >"$DIST/BUILD_INFO"
(cd "$DIST" && sha256sum ddpm.xz gpu_ops.xz >SHA256SUMS)
say "$DIST/ddpm.xz: $((size / 1024 / 1024)) MiB (stripped $(xz -l --robot "$DIST/ddpm.xz" | awk '/^totals/ {printf "%d", $5/1048576}') MiB)"
cat "$DIST/BUILD_INFO" >&2

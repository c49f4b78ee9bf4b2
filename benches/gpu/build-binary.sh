#!/usr/bin/env bash
# Build the CUDA `ddpm` binary and the op checker (benches/gpu_ops.rs) on a CPU-only machine,
# for benches/gpu/session.sh (check.sh, run.sh) on a GPU machine.
#
# cudarc links the CUDA libraries at link time, so .ci/cuda-env's `cuda_link_env` installs them
# from PyPI wheels and builds a link-only stub of the driver; the GPU machine's real libraries
# replace both at run time through LD_LIBRARY_PATH.
#
# Output: benches/gpu/dist/ddpm.xz and gpu_ops.xz (stripped, xz), BUILD_INFO and SHA256SUMS
# (git-ignored). cuDNN is not linked (it is opened at run time), so neither needs it to start.
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
cargo build --release --features "$FEATURES" --bin ddpm --bench gpu_ops ||
    die "cargo build --release --features $FEATURES"
# A bench target's binary carries a hash in its name; the newest one is this build's.
OPS=$(ls -t "$CARGO_TARGET_DIR"/release/deps/gpu_ops-* | grep -v '\.d$' | head -n 1)
say "built in $((SECONDS - start)) s"

mkdir -p "$DIST"
strip -o "$DIST/$NAME" "$CARGO_TARGET_DIR/release/ddpm"
strip -o "$DIST/gpu_ops$SUFFIX" "$OPS"
# Smoke test against the stub: the binary must start (every library resolves), and the CUDA
# device must be refused with an error, not a crash.
if ! LD_LIBRARY_PATH="$CUDA_STUB_LIB:$CU/lib" "$DIST/$NAME" --help >/dev/null; then
    die "the built binary does not start (missing library?)"
fi
status=0
LD_LIBRARY_PATH="$CUDA_STUB_LIB:$CU/lib" "$DIST/gpu_ops$SUFFIX" >/dev/null 2>&1 || status=$?
((status == 1)) || die "gpu_ops without a GPU exited $status, not 1"
glibc=$(objdump -T "$DIST/$NAME" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -n 1)
needed=$(objdump -p "$DIST/$NAME" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')
xz -9 -T0 -f "$DIST/$NAME" "$DIST/gpu_ops$SUFFIX"
size=$(($(stat -c %s "$DIST/$NAME.xz") + $(stat -c %s "$DIST/gpu_ops$SUFFIX.xz")))
((size < LIMIT)) || die "the two binaries are $size bytes, over the 64 MiB limit"
{
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (dirty)')"
    echo "built: $(date -u +%FT%TZ) on $(uname -m)"
    echo "cuda: $CUDA_VERSION (nvcc $(nvcc --version | grep -o 'release [0-9.]*')), compute capability $CUDA_COMPUTE_CAP"
    echo "features: $FEATURES"
    echo "needs: $needed"
    echo "glibc: >= ${glibc#GLIBC_}"
} >"$DIST/BUILD_INFO$SUFFIX"
(cd "$DIST" && sha256sum "$NAME.xz" "gpu_ops$SUFFIX.xz" >"SHA256SUMS$SUFFIX")
say "$DIST/$NAME.xz: $((size / 1024 / 1024)) MiB (stripped $(xz -l --robot "$DIST/$NAME.xz" | awk '/^totals/ {printf "%d", $5/1048576}') MiB)"
cat "$DIST/BUILD_INFO$SUFFIX" >&2

# Sourced by benches/gpu/run.sh and check.sh: `cuda_lib_path` puts the CUDA 13 toolkit
# libraries the binary links (cuBLAS, cuRAND, cudart, NVRTC) on LD_LIBRARY_PATH, and cuDNN 9,
# which it opens at run time (libcudnn.so.9; without it convolutions fall back to candle's). The
# driver (libcuda.so.1) comes from the system; the toolkit libraries from CUDA_LIB_DIR, a CUDA 13
# install, or the nvidia/cu13 and nvidia/cudnn wheels PyTorch brought (found through $PY).
# shellcheck shell=bash
cuda_lib_path() {
    local candidates libdirs lib d
    candidates=("${CUDA_LIB_DIR:-}" /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64
        /usr/local/cuda-13*/targets/x86_64-linux/lib)
    mapfile -t -O "${#candidates[@]}" candidates < <("${PY:-python3}" -c '
import glob, os, sys
try:
    import nvidia
except ImportError:
    sys.exit()
for root in nvidia.__path__:
    for pat in ("lib*.so.1[03]", "libcudnn.so.9"):
        for d in sorted(set(os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", pat), recursive=True))):
            print(d)' 2>/dev/null)
    libdirs=()
    for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13 \
        libcudnn.so.9; do
        for d in "${candidates[@]}"; do
            if [[ -n "$d" && -e "$d/$lib" ]]; then
                [[ " ${libdirs[*]} " == *" $d "* ]] || libdirs+=("$d")
                continue 2
            fi
        done
        printf 'cuda libs: warning: %s not found in: %s\n' "$lib" "${candidates[*]:1}" >&2
    done
    LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LD_LIBRARY_PATH
}

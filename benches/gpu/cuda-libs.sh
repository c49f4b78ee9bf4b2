# Sourced by benches/gpu/run.sh and check.sh: `cuda_lib_path` puts the CUDA 13 toolkit
# libraries the binary links (cuBLAS, cuRAND, cudart, NVRTC) on LD_LIBRARY_PATH. The driver
# (libcuda.so.1) comes from the system; the toolkit libraries from CUDA_LIB_DIR, a CUDA 13
# install, or the nvidia/cu13 wheels PyTorch brought (found through the python in $PY).
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
    for d in sorted(set(os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "lib*.so.1[03]"), recursive=True))):
        print(d)' 2>/dev/null)
    libdirs=()
    for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
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

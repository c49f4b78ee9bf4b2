"""pytorch-fid's statistics of an image folder, timed, with weights from a file instead of the
download (the seeded safetensors of `cargo bench --bench fid_seeded_weights`, or the real .pth):

    python benches/fid/pytorch_fid_stats.py WEIGHTS DIR OUT.npz [THREADS]

Prints one JSON line: images, seconds (feature extraction and statistics, as `ddpm fid --json`
reports per side), images/s, and the CPU seconds of all the process's threads over the same
span. Used by benches/fid/speed.sh.
"""

import json
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reference import seeded_model  # noqa: E402
from pytorch_fid import fid_score  # noqa: E402


def main():
    weights, folder, out = sys.argv[1:4]
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    if weights.endswith(".safetensors"):
        model = seeded_model(weights)
    else:
        import pytorch_fid.inception as inception
        inception.load_state_dict_from_url = lambda *a, **k: torch.load(weights)
        model = inception.InceptionV3([3]).eval()
    files = sorted(p for p in pathlib.Path(folder).rglob("*.png"))
    start, cpu = time.perf_counter(), time.process_time()
    mu, sigma = fid_score.calculate_activation_statistics(files, model, 50, 2048, "cpu", 0)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    np.savez_compressed(out, mu=mu, sigma=sigma)
    print(json.dumps({"images": len(files), "seconds": seconds, "images_per_sec": len(files) / seconds,
                      "cpu_seconds": cpu}))


if __name__ == "__main__":
    main()

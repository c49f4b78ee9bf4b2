"""Is benches/reference/unet.py the same model as ddpm's? For each config (default: the four
workloads), ddpm's `ref_fixture` bench target writes its seeded weights, an input batch and its own
forward pass; this loads the weights into the PyTorch UNet (every key and shape must match),
compares the parameter counts, and runs the same forward in f32 (float64 too, as a yardstick).
Prints one line per config and exits 1 if a count differs or max |ours - torch| exceeds 1e-4
of the output's scale (max |y|).

    python3 benches/reference/parity.py [configs/bench/w1.toml ...]   # needs torch, safetensors
"""
import os
import subprocess
import sys
import tempfile
import tomllib

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import unet  # noqa: E402

TOLERANCE = 1e-4


def model_for(config_path):
    with open(config_path, "rb") as f:
        cfg = tomllib.load(f)
    m, d = cfg.get("model", {}), cfg.get("data", {})
    size = d.get("image_size", 8)
    size = size if isinstance(size, int) else size[0]
    return unet.UNet(in_channels=d.get("channels", 1), image_size=size,
                     ch=m.get("base_channels", 128), ch_mult=tuple(m.get("channel_mult", (1, 2, 2, 2))),
                     num_res_blocks=m.get("num_res_blocks", 2),
                     attn_resolutions=tuple(m.get("attention_resolutions", (16,))),
                     heads=m.get("num_heads", 1))


def check(config_path, workdir):
    out = os.path.join(workdir, os.path.basename(config_path) + ".safetensors")
    subprocess.run(["cargo", "bench", "--quiet", "--bench", "ref_fixture", "--", config_path, out],
                   cwd=ROOT, check=True)
    stored = load_file(out)
    ours_params = sum(v.numel() for k, v in stored.items() if not k.startswith("fixture."))
    model = model_for(config_path).eval()
    loaded = unet.load_ddpm_weights(model, out)
    x, t, y = stored["fixture.x"], stored["fixture.t"].long(), stored["fixture.y"]
    with torch.no_grad():
        y32 = model(x, t)
        y64 = model.double()(x.double(), t).float()
    scale = y.abs().max().item()
    d32 = (y32 - y).abs().max().item()
    d64 = (y64 - y).abs().max().item()
    ok = ours_params == unet.num_params(model) == loaded and d32 <= TOLERANCE * scale
    print(f"{'ok  ' if ok else 'FAIL'} {config_path}: parameters ddpm {ours_params:,}, torch "
          f"{unet.num_params(model):,}; output scale {scale:.4f}, max |ddpm - torch f32| {d32:.2e} "
          f"({d32 / scale:.1e} of scale), |ddpm - torch f64| {d64:.2e}", flush=True)
    return ok


def main():
    configs = sys.argv[1:] or [f"configs/bench/w{i}.toml" for i in range(1, 5)]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as workdir:
        results = [check(c, workdir) for c in configs]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()

"""PyTorch reference timings of W1 (train) and W2 (DDIM-50 sample) on a CUDA GPU.

The shared ref_bench.py is CPU-only (2 threads, tensors and autocast on the CPU), so this runs the
same model (ref_unet.py, the exact WORKLOADS.md layout) and the same steps on the GPU:
  W1: batch 32 of 3x32x32, one AdamW step (lr 2e-4) on L_simple; median of timed steps.
  W2: batch 16, 50 DDIM steps (eta 0, x0 clipped), timesteps 980, 960, ..., 0; median of runs.
bf16 = torch.autocast("cuda", bfloat16) around the forward passes (weights, AdamW state and the
backward's parameter gradients stay f32), the usual PyTorch mixed precision.
PyTorch defaults are kept (cuDNN may use TF32 for f32 convolutions; no cudnn.benchmark).
One JSON line per (workload, precision), keys as in ref_bench.py (images_per_s, step_ms_median).

  python3 ref_cuda.py --ref-dir ../../shared/bench --workload W1,W2 --precision f32,bf16
"""
import argparse
import contextlib
import json
import math
import statistics
import sys
import time

BATCH = {"W1": 32, "W2": 16}
DDIM_STEPS = 50


def timed(torch, fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def train(torch, ref_unet, amp, args):
    """W1: median seconds of one training step."""
    model = ref_unet.UNet(**ref_unet.CONFIGS["W1"]).cuda()
    diff = ref_unet.Diffusion(1000)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    x0 = torch.rand(BATCH["W1"], 3, 32, 32, device="cuda") * 2 - 1

    def step():
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = diff.loss(model, x0)
        loss.float().backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    times = [timed(torch, step) for _ in range(args.steps)]
    return statistics.median(times), len(times)


def ddim(torch, model, diff, amp, batch):
    """DDIM, eta 0, on the GPU (ref_unet's ddim_sample draws its noise on the CPU)."""
    ts = list(range(0, diff.T, diff.T // DDIM_STEPS))[::-1]
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    for i, t in enumerate(ts):
        with amp():
            eps = model(x, torch.full((batch,), t, dtype=torch.long, device="cuda")).float()
        ab = float(diff.ab[t])
        ab_prev = float(diff.ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return x


def sample(torch, ref_unet, amp, args):
    """W2: median seconds of one whole 50-step sampling of the batch."""
    model = ref_unet.UNet(**ref_unet.CONFIGS["W2"]).cuda().eval()
    diff = ref_unet.Diffusion(1000)
    with torch.no_grad():
        ddim(torch, model, diff, amp, BATCH["W2"])  # warm-up: kernels, allocator
        times = [timed(torch, lambda: ddim(torch, model, diff, amp, BATCH["W2"]))
                 for _ in range(args.reps)]
    return statistics.median(times), len(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref-dir", required=True, help="folder holding ref_unet.py")
    ap.add_argument("--workload", default="W1,W2")
    ap.add_argument("--precision", default="f32,bf16")
    ap.add_argument("--warmup", type=int, default=10, help="W1 untimed steps")
    ap.add_argument("--steps", type=int, default=50, help="W1 timed steps")
    ap.add_argument("--reps", type=int, default=5, help="W2 timed samplings")
    args = ap.parse_args()

    import torch
    if not torch.cuda.is_available():
        sys.exit("ref_cuda.py: torch sees no CUDA device")
    sys.path.insert(0, args.ref_dir)
    import ref_unet

    for wl in args.workload.split(","):
        for prec in args.precision.split(","):
            torch.manual_seed(0)
            amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if prec == "bf16" \
                else contextlib.nullcontext
            run = train if wl == "W1" else sample
            secs, n = run(torch, ref_unet, amp, args)
            res = {"workload": wl, "impl": "torch-ref", "precision": prec, "batch": BATCH[wl],
                   "images_per_s": round(BATCH[wl] / secs, 3),
                   "step_ms_median": round(secs * 1e3 / (1 if wl == "W1" else DDIM_STEPS), 3),
                   "timed": n, "torch": torch.__version__,
                   "gpu": torch.cuda.get_device_name(0)}
            print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()

"""PyTorch timings of the reference workloads (WORKLOADS.md; configs/bench/w1..w4.toml), taken
the way ddpm's own benches take them, so the two JSON lines compare one to one:

  CPU (benches/workloads.rs; REF_THREADS threads, default 2):
    W1, W3  warm-up training steps (2, 5), then the median of timed steps (6, 30); a step is
            zero_grad + L_simple forward + backward + AdamW (lr 2e-4, torch's default weight
            decay 0.01, as workloads.rs sets).
    W2      2 warm-up forwards, then one whole 50-step DDIM sampling of 16 images (per rep).
    W4      3 warm-up ancestral steps, then 100 of the 1000 steps of 64 images, scaled x10.
  CUDA (benches/gpu/run.sh runs `ddpm` the same way):
    W1      10 warm-up steps, the median of 50 timed steps (synchronised), batch 32.
    W2      one warm-up sampling, the median of 5 whole DDIM-50 samplings of 16 images.
    precision f32 (PyTorch defaults: TF32 in cuDNN convolutions, not in matmuls), bf16
    (torch.autocast around the forward; f32 weights, AdamW and loss), and `--compile`
    (torch.compile of the model, W1 only by default).

One JSON line per run on stdout: workload, impl ("torch-ref", "+bf16", "+compile"), device,
images_per_s, step_ms_median, peak memory (peak_rss_mb on CPU, peak_gpu_mb =
torch.cuda.max_memory_allocated on CUDA), other_load_cores (CPU). `--profile W1|W2` prints a
torch.profiler table of the top CUDA kernels instead (one step / one sampling).

    python3 benches/reference/bench.py --device cpu --workload W1,W3
    python3 benches/reference/bench.py --device cuda --workload W1,W2 --precision f32,bf16
    python3 benches/reference/bench.py --device cuda --workload W1 --compile
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

THREADS = int(os.environ.get("REF_THREADS", "2"))
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, str(THREADS))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unet  # noqa: E402

BATCH = {"W1": 32, "W2": 16, "W3": 64, "W4": 64}
KIND = {"W1": "train", "W2": "ddim", "W3": "train", "W4": "ancestral"}


def cpu_snapshot():
    """(wall, busy CPU seconds of the machine, CPU seconds of this process)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    return time.perf_counter(), busy, ru.ru_utime + ru.ru_stime


def other_cores(a, b):
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]))


class Run:
    def __init__(self, torch, wl, device, precision, compiled):
        self.torch, self.wl, self.device = torch, wl, device
        cfg = unet.CONFIGS[wl]
        self.shape = (BATCH[wl], cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        self.model = unet.UNet(**cfg).to(device)
        self.net = torch.compile(self.model) if compiled else self.model
        self.diff = unet.Diffusion(1000, device)
        self.amp = None
        if precision == "bf16":
            self.amp = lambda: torch.autocast(device, dtype=torch.bfloat16)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def timed(self, fn):
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def train_step_fn(self):
        torch = self.torch
        opt = torch.optim.AdamW(self.model.parameters(), lr=2e-4)
        x0 = torch.rand(self.shape, device=self.device) * 2 - 1

        def step():
            opt.zero_grad(set_to_none=True)
            if self.amp:
                with self.amp():
                    loss = self.diff.loss(self.net, x0)
            else:
                loss = self.diff.loss(self.net, x0)
            loss.backward()
            opt.step()
        return step

    def ddim_fn(self):
        x = self.torch.randn(self.shape, device=self.device)
        self.model.eval()
        return lambda: self.diff.ddim(self.net, x, 50, self.amp)


def run_cpu(torch, wl):
    torch.set_num_threads(THREADS)
    r = Run(torch, wl, "cpu", "f32", False)
    kind, batch = KIND[wl], BATCH[wl]
    times = []
    if kind == "train":
        step = r.train_step_fn()
        warm, timed = (2, 6) if wl == "W1" else (5, 30)
        for _ in range(warm):
            step()
        snap = cpu_snapshot()
        times = [r.timed(step) for _ in range(timed)]
        unit = statistics.median(times)
        step_ms = unit * 1e3
    elif kind == "ddim":
        with torch.no_grad():
            x = torch.randn(r.shape)
            for _ in range(2):
                r.model(x, torch.full((batch,), 999, dtype=torch.long))
        run = r.ddim_fn()
        snap = cpu_snapshot()
        times = [r.timed(run)]
        unit = statistics.median(times)
        step_ms = unit / 50 * 1e3
    else:
        x = torch.randn(r.shape)
        r.model.eval()
        r.diff.ancestral(r.model, x, 3)
        snap = cpu_snapshot()
        times = [r.timed(lambda: r.diff.ancestral(r.model, x, 100))]
        unit = statistics.median(times) * 10
        step_ms = statistics.median(times) / 100 * 1e3
    return {"workload": wl, "impl": "torch-ref", "device": "cpu", "batch": batch,
            "threads": torch.get_num_threads(), "images_per_s": round(batch / unit, 4),
            "step_ms_median": round(step_ms, 3), "timed": len(times),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "other_load_cores": round(other_cores(snap, cpu_snapshot()), 3),
            "torch": torch.__version__}


def run_cuda(torch, wl, precision, compiled, args):
    r = Run(torch, wl, "cuda", precision, compiled)
    batch = BATCH[wl]
    torch.cuda.reset_peak_memory_stats()
    if KIND[wl] == "train":
        step = r.train_step_fn()
        first = r.timed(step)
        for _ in range(args.warmup - 1):
            step()
        times = [r.timed(step) for _ in range(args.steps)]
        unit = statistics.median(times)
        step_ms = unit * 1e3
    else:
        with torch.no_grad():
            run = r.ddim_fn()
            first = r.timed(run)
            times = [r.timed(run) for _ in range(args.reps)]
        unit = statistics.median(times)
        step_ms = unit / 50 * 1e3
    impl = "torch-ref" + ("+compile" if compiled else "")
    return {"workload": wl, "impl": impl, "device": "cuda", "precision": precision,
            "batch": batch, "images_per_s": round(batch / unit, 3),
            "step_ms_median": round(step_ms, 3), "timed": len(times),
            "first_s": round(first, 3),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}


def profile(torch, wl, precision, top):
    """The top CUDA kernels of one W1 step or one W2 sampling (after warm-up), by total time."""
    from torch.profiler import ProfilerActivity, profile as prof
    r = Run(torch, wl, "cuda", precision, False)
    if KIND[wl] == "train":
        fn = r.train_step_fn()
        for _ in range(5):
            fn()
    else:
        run = r.ddim_fn()

        def fn():
            with torch.no_grad():
                run()
        fn()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    events = [e for e in p.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events) or 1.0
    print(f"PyTorch {wl} {precision}: {sum(e.count for e in events)} kernel launches, "
          f"{total / 1e3:.2f} ms of GPU time")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"{100 * e.self_device_time_total / total:6.1f}%  {e.self_device_time_total / 1e3:8.3f} ms"
              f"  {e.count:5d}x  {e.key[:110]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--workload", default=None, help="default: W1,W2,W3,W4 on cpu, W1,W2 on cuda")
    ap.add_argument("--precision", default="f32", help="cuda: f32,bf16")
    ap.add_argument("--compile", action="store_true", help="cuda: torch.compile the model")
    ap.add_argument("--warmup", type=int, default=10, help="cuda W1 untimed steps")
    ap.add_argument("--steps", type=int, default=50, help="cuda W1 timed steps")
    ap.add_argument("--reps", type=int, default=5, help="cuda W2 timed samplings")
    ap.add_argument("--profile", default=None, help="W1 or W2: print the top CUDA kernels")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()

    import torch
    torch.manual_seed(0)
    if args.profile:
        for prec in args.precision.split(","):
            profile(torch, args.profile, prec, args.top)
        return
    default = "W1,W2,W3,W4" if args.device == "cpu" else "W1,W2"
    for wl in (args.workload or default).split(","):
        if args.device == "cpu":
            row = run_cpu(torch, wl)
        else:
            if not torch.cuda.is_available():
                sys.exit("bench.py: torch sees no CUDA device")
            for prec in args.precision.split(","):
                print(json.dumps(run_cuda(torch, wl, prec, args.compile, args)), flush=True)
            continue
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""ddpm against diffusers, both ways, on tiny random or briefly trained models.

    /work/venv-ml/bin/python benches/interop/compare.py [--ddpm target/debug/ddpm] [--work DIR]

Import: a random-initialised UNet2DModel with the published DDPM models' options (TF padding,
eps 1e-6, [sin, cos] with freq_shift 1, one attention level) and google/ddpm-cifar10-32's
scheduler config, saved as a pipeline and imported with `ddpm import`; then from the same x_T
- DDIM-50: DDIMPipeline's loop with use_clipped_model_output True and False against
  `ddpm sample --sampler ddim --steps 50 --noise x_t.npy --use-clipped-model-output B`, with
  clip_sample on and off;
- DDPM-1000: DDPMPipeline against `ddpm sample --sampler ddpm --noise all.npy`, where all.npy
  holds x_T and the 999 draws the pipeline's generator made after it, in order.

Export: tiny models trained for a few steps by `ddpm train` (configs/tiny.toml, plain and with
the UNet2DModel options), exported with `ddpm export`, loaded by UNet2DModel, DDPMPipeline and
DDIMPipeline; ddpm's forward at several t (read off one DDIM step: x0 = ddpm's output, eps =
(x_t - sqrt(abar) x0) / sqrt(1 - abar)) against UNet2DModel's, and DDIM-50 against
DDIMPipeline.

The pipelines' own loops are rerun without their final clamp to [0, 1] (and checked bit for
bit against the pipelines where that clamp removes nothing), so unclipped samples compare in
full. Prints one line per comparison: the max abs difference of samples in [-1, 1], or the
relative error (max abs difference over max abs value) of forwards and unclipped samples.
Needs torch and diffusers.
"""

import argparse
import io
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, UNet2DModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One thread: on a shared machine torch's spinning OpenMP workers made a tiny UNet's forward
# 20x slower (0.06 s -> 1.2 s at load average 21 on 2 cores); the results do not depend on it.
torch.set_num_threads(1)


def ddpm(binary, *args):
    out = subprocess.run([binary, *args], check=True, capture_output=True)
    return out.stdout


def npy_bytes_to_array(data):
    return np.load(io.BytesIO(data))


def save_npy(path, x):
    np.save(path, np.ascontiguousarray(x.numpy().astype(np.float32)))


def report(what, value, bound):
    ok = "ok" if value <= bound else "FAIL"
    print(f"{what:<68} {value:.3e}  (bound {bound:g}) {ok}", flush=True)
    return value <= bound


def pipeline_loop(unet, scheduler, x_t, steps, generator=None, **step_kwargs):
    """DDPMPipeline's and DDIMPipeline's loop, without their final clamp to [0, 1]."""
    scheduler.set_timesteps(steps)
    image = x_t
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(image, t).sample
            image = scheduler.step(out, t, image, generator=generator, **step_kwargs).prev_sample
    return image


def as_pipeline_output(x):
    """What the pipelines return (output_type="pt"), for checking the loop above."""
    return (x / 2 + 0.5).clamp(0, 1)


def compare(what, ours, theirs, clip):
    """Max abs difference for clipped samples (in [-1, 1]); relative to the largest value
    otherwise (a random network's unclipped x0 reaches the hundreds)."""
    diff = np.abs(ours - theirs).max()
    if clip:
        return report(what + ", max abs", diff, 1e-3)
    return report(what + ", relative", diff / np.abs(theirs).max(), 1e-4)


def import_direction(binary, work):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        norm_eps=1e-6,
        norm_num_groups=32,
        attention_head_dim=None,
    ).eval()
    ok = True
    batch, shape = 4, (4, 3, 16, 16)
    for clip in [True, False]:
        sched = DDPMScheduler(
            num_train_timesteps=1000,
            beta_start=0.0001,
            beta_end=0.02,
            beta_schedule="linear",
            variance_type="fixed_large",
            clip_sample=clip,
        )
        folder = os.path.join(work, f"random-clip-{clip}")
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
        ckpt = os.path.join(work, f"random-clip-{clip}.safetensors")
        ddpm(binary, "import", folder, "--out", ckpt, "-q")
        x_npy = os.path.join(work, "x_t.npy")

        def ours(noise, sampler, steps, *extra):
            return npy_bytes_to_array(
                ddpm(binary, "sample", "--checkpoint", ckpt, "--noise", noise, "-n", str(batch),
                     "--sampler", sampler, "--steps", str(steps), "--format", "npy", "--out", "-",
                     "--quiet", *extra)
            )

        ddim = DDIMPipeline.from_pretrained(folder)
        ddim.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(1)
        x_t = torch.randn(shape, generator=g)
        save_npy(x_npy, x_t)
        for clipped_eps in [True, False]:
            # ddpm's DDIM derives eps from the clipped x0 (improved-diffusion's) unless told
            # to keep the model's, as DDIMPipeline does by default.
            flag = ["--use-clipped-model-output", str(clipped_eps).lower()]
            mine = ours(x_npy, "ddim", 50, *flag)
            theirs = pipeline_loop(ddim.unet, ddim.scheduler, x_t, 50, use_clipped_model_output=clipped_eps)
            what = f"import: DDIM-50, clip_sample={clip}, use_clipped_model_output={clipped_eps}"
            if clip and clipped_eps:
                with torch.no_grad():
                    piped = ddim(batch_size=batch, generator=torch.Generator().manual_seed(1),
                                 num_inference_steps=50, use_clipped_model_output=True,
                                 output_type="pt").images
                assert torch.equal(as_pipeline_output(theirs), piped), "the loop is not DDIMPipeline's"
            if clip and not clipped_eps:
                # Clipped x0 with the unclipped eps is ill-conditioned on a random network:
                # diffusers in f64 lands as far from diffusers in f32 as ddpm does. Bounded over
                # 5 steps; over 50, shown beside that spread.
                ddim.unet.double()
                ddim.scheduler.alphas_cumprod = ddim.scheduler.alphas_cumprod.double()
                ddim.scheduler.final_alpha_cumprod = ddim.scheduler.final_alpha_cumprod.double()
                f64 = pipeline_loop(ddim.unet, ddim.scheduler, x_t.double(), 50, use_clipped_model_output=False)
                ddim = DDIMPipeline.from_pretrained(folder)
                spread = np.abs(f64.numpy() - theirs.numpy()).max()
                d = np.abs(mine - theirs.numpy()).max()
                print(f"{what}, max abs {d:.3e}  (diffusers f64 vs f32: {spread:.3e}; not bounded)", flush=True)
                theirs = pipeline_loop(ddim.unet, ddim.scheduler, x_t, 5, use_clipped_model_output=False)
                ok &= compare(what.replace("DDIM-50", "DDIM-5"), ours(x_npy, "ddim", 5, *flag), theirs.numpy(), clip)
                continue
            ok &= compare(what, mine, theirs.numpy(), clip)

        ancestral = DDPMPipeline.from_pretrained(folder)
        g = torch.Generator().manual_seed(2)
        x_t = torch.randn(shape, generator=g)
        # The pipeline's generator draws x_T, then one tensor per step while t > 0; replay both.
        theirs = pipeline_loop(ancestral.unet, ancestral.scheduler, x_t, 1000, generator=g)
        if clip:
            ancestral.set_progress_bar_config(disable=True)
            with torch.no_grad():
                piped = ancestral(batch_size=batch, generator=torch.Generator().manual_seed(2),
                                  num_inference_steps=1000, output_type="pt").images
            assert torch.equal(as_pipeline_output(theirs), piped), "the loop is not DDPMPipeline's"
        g = torch.Generator().manual_seed(2)
        draws = torch.stack([torch.randn(shape, generator=g) for _ in range(1000)])
        all_npy = os.path.join(work, "all.npy")
        save_npy(all_npy, draws)
        ok &= compare(f"import: DDPM-1000 ancestral, same per-step noise, clip_sample={clip}",
                      ours(all_npy, "ddpm", 1000), theirs.numpy(), clip)
    return ok


def linear_abar(t, start=1e-4, end=0.02):
    scale = 1000.0 / t
    betas = np.linspace(start * scale, end * scale, t)
    return np.cumprod(1 - betas)


def export_direction(binary, work):
    ok = True
    variants = {
        "plain": [],
        "options": [
            "--set", "model.scale_shift=true", "--set", "model.downsample_padding=0",
            "--set", "model.norm_eps=1e-6", "--set", "model.flip_sin_to_cos=true",
            "--set", "model.freq_shift=0", "--set", "model.center_input_sample=true",
            "--set", "model.mid_block_scale_factor=1.5", "--set", "model.attention_head_dim=8",
        ],
    }
    for name, options in variants.items():
        run = os.path.join(work, f"trained-{name}")
        ddpm(binary, "train", "--config", os.path.join(ROOT, "configs/tiny.toml"), "--out", run,
             "--max-steps", "40", "--device", "cpu", "--quiet",
             "--set", 'sample.spacing="leading"', "--set", "sample.clip_x0=false", *options)
        ckpt = os.path.join(run, "latest.safetensors")
        folder = os.path.join(work, f"exported-{name}")
        ddpm(binary, "export", ckpt, "--out", folder)
        unet = UNet2DModel.from_pretrained(os.path.join(folder, "unet")).eval()
        DDPMPipeline.from_pretrained(folder)
        abar = linear_abar(100)
        g = torch.Generator().manual_seed(3)
        x = torch.randn((3, 1, 8, 8), generator=g)
        save_npy(os.path.join(work, "x.npy"), x)
        worst = 0.0
        for t in [0, 1, 37, 99]:
            x0 = npy_bytes_to_array(
                ddpm(binary, "sample", "--checkpoint", ckpt, "--noise", os.path.join(work, "x.npy"),
                     "-n", "3", "--sampler", "ddim", "--steps", "1", "--steps-offset", str(t),
                     "--format", "npy", "--out", "-", "--quiet")
            ).astype(np.float64)
            eps = (x.numpy().astype(np.float64) - np.sqrt(abar[t]) * x0) / np.sqrt(1 - abar[t])
            with torch.no_grad():
                theirs = unet(x, torch.full((3,), t)).sample.numpy().astype(np.float64)
            rel = np.abs(eps - theirs).max() / np.abs(theirs).max()
            worst = max(worst, rel)
        ok &= report(f"export ({name}): forward at t = 0, 1, 37, 99, relative", worst, 1e-4)
        pipe = DDIMPipeline.from_pretrained(folder)
        x_t = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(4))
        save_npy(os.path.join(work, "x_t.npy"), x_t)
        theirs = pipeline_loop(pipe.unet, pipe.scheduler, x_t, 50)
        ours = npy_bytes_to_array(
            ddpm(binary, "sample", "--checkpoint", ckpt, "--noise", os.path.join(work, "x_t.npy"),
                 "-n", "3", "--sampler", "ddim", "--steps", "50", "--format", "npy", "--out", "-",
                 "--quiet")
        )
        ok &= compare(f"export ({name}): DDIM-50, DDIMPipeline's loop vs ddpm (no clipping)",
                      ours, theirs.numpy(), False)
    return ok


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ddpm", default=os.path.join(ROOT, "target/debug/ddpm"))
    p.add_argument("--work", default=None)
    a = p.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="ddpm-interop-")
    os.makedirs(work, exist_ok=True)
    ok = import_direction(a.ddpm, work)
    ok &= export_direction(a.ddpm, work)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

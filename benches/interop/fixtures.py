"""Fixtures for the diffusers interop tests (tests/interop.rs), made with diffusers itself.

    /work/venv-ml/bin/python benches/interop/fixtures.py [OUT]   # OUT = tests/fixtures/diffusers

Writes, from fixed seeds (the same bytes on every run with the same torch and diffusers):

- three random-initialised UNet2DModels at tiny sizes that together use every option
  `ddpm import` maps (see CASES), each as diffusers saves it, with `io.safetensors`: inputs
  x (B, C, H, W), timesteps t (B,), class labels y (B,) where the model takes them, and the
  model's output `out` on them; the scheduler's alphas_cumprod; for the pipeline cases the
  DDIM-50 sample from a fixed x_T (`ddim_x_t` -> `ddim_out`, in [-1, 1], DDIMPipeline with
  use_clipped_model_output=True, the convention ddpm's DDIM follows);
- schedulers/<name>.json + .safetensors: scheduler configs covering every field `ddpm import`
  reads, with diffusers' alphas_cumprod and the timesteps set_timesteps(K) gives;
- keys/<model>.txt: the state-dict names and shapes, and the parameter count, of the full
  google/ddpm-cifar10-32 and google/ddpm-celebahq-256 UNets, built by diffusers from the
  config.json that tests/interop.rs quotes.

Needs torch, diffusers and safetensors (the repository's CI does not run it).
"""

import json
import os
import sys

import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/diffusers"

# Each case: (name, UNet2DModel kwargs, scheduler class and kwargs, layout, batch).
# layout "pipeline": model_index.json + unet/ + scheduler/ (safetensors);
# layout "unet-bin": a bare UNet folder with the PyTorch pickle (.bin) and a scheduler config.
CASES = [
    (
        # The published DDPM models' options: TF-style downsampling padding, [sin, cos] with
        # freq_shift 1, eps 1e-6, one head per attention block, attention at one level.
        "tf_pipeline",
        dict(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16, 16),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            downsample_padding=0,
            flip_sin_to_cos=False,
            freq_shift=1,
            norm_eps=1e-6,
            norm_num_groups=4,
            attention_head_dim=None,
            act_fn="silu",
            mid_block_scale_factor=1,
            time_embedding_type="positional",
        ),
        (
            DDPMScheduler,
            dict(
                num_train_timesteps=1000,
                beta_start=0.0001,
                beta_end=0.02,
                beta_schedule="linear",
                variance_type="fixed_large",
                clip_sample=True,
            ),
        ),
        "pipeline",
        2,
    ),
    (
        # diffusers' own training defaults and the rest: scale-shift conditioning (the middle
        # attention without a norm), heads of fixed width, a middle scale factor, centred
        # input, [cos, sin] with freq_shift 0, classes, a non-square size, attention at every
        # level, dropout (inactive in eval), "swish".
        "scale_shift_unet",
        dict(
            sample_size=(8, 16),
            in_channels=1,
            out_channels=1,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
            downsample_padding=1,
            resnet_time_scale_shift="scale_shift",
            attention_head_dim=4,
            mid_block_scale_factor=1.4142135623730951,
            center_input_sample=True,
            flip_sin_to_cos=True,
            freq_shift=0,
            norm_eps=1e-5,
            norm_num_groups=4,
            num_class_embeds=3,
            act_fn="swish",
            dropout=0.1,
        ),
        (
            DDIMScheduler,
            dict(
                num_train_timesteps=1000,
                beta_schedule="squaredcos_cap_v2",
                prediction_type="v_prediction",
                clip_sample=False,
                set_alpha_to_one=False,
                steps_offset=1,
                timestep_spacing="leading",
                rescale_betas_zero_snr=True,
            ),
        ),
        "unet-bin",
        3,
    ),
    (
        # A learned variance (2C outputs), x0 prediction, scaled_linear betas over T = 200,
        # trailing spacing, two levels without attention outside the middle.
        "learned_pipeline",
        dict(
            sample_size=8,
            in_channels=1,
            out_channels=2,
            block_out_channels=(8, 8),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=2,
            attention_head_dim=8,
        ),
        (
            DDPMScheduler,
            dict(
                num_train_timesteps=200,
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                variance_type="learned_range",
                prediction_type="sample",
                clip_sample=True,
                clip_sample_range=1.0,
                timestep_spacing="trailing",
            ),
        ),
        "pipeline",
        2,
    ),
]

# Scheduler configs for the schedule mapping alone: name -> (class, kwargs, step counts K).
SCHEDULERS = {
    "ddpm_linear_t500": (
        DDPMScheduler,
        dict(num_train_timesteps=500, beta_start=0.0002, beta_end=0.03, variance_type="fixed_small_log"),
        [1, 7, 50],
    ),
    "ddpm_trained_betas": (
        DDPMScheduler,
        dict(
            num_train_timesteps=50,
            trained_betas=[round(1e-3 + 0.02 * (i / 49) ** 2, 6) for i in range(50)],
            variance_type="fixed_large_log",
            timestep_spacing="linspace",
        ),
        [5, 50],
    ),
    "ddim_cosine_offset": (
        DDIMScheduler,
        dict(
            num_train_timesteps=1000,
            beta_schedule="squaredcos_cap_v2",
            steps_offset=1,
            set_alpha_to_one=False,
            clip_sample=False,
        ),
        [10, 50],
    ),
    "ddim_scaled_linear_zero_snr": (
        DDIMScheduler,
        dict(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            rescale_betas_zero_snr=True,
            prediction_type="v_prediction",
            timestep_spacing="trailing",
        ),
        [25],
    ),
}

# The published models' UNet configs, as quoted in tests/interop.rs.
PUBLISHED = {
    "ddpm-cifar10-32": dict(
        act_fn="silu",
        attention_head_dim=None,
        block_out_channels=[128, 256, 256, 256],
        center_input_sample=False,
        down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        in_channels=3,
        layers_per_block=2,
        mid_block_scale_factor=1,
        norm_eps=1e-06,
        norm_num_groups=32,
        out_channels=3,
        sample_size=32,
        time_embedding_type="positional",
        up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    ),
    "ddpm-celebahq-256": dict(
        act_fn="silu",
        attention_head_dim=None,
        block_out_channels=[128, 128, 256, 256, 512, 512],
        center_input_sample=False,
        down_block_types=[
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ],
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        in_channels=3,
        layers_per_block=2,
        mid_block_scale_factor=1,
        norm_eps=1e-06,
        norm_num_groups=32,
        out_channels=3,
        sample_size=256,
        time_embedding_type="positional",
        up_block_types=[
            "UpBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
        ],
    ),
}


def inputs(cfg, batch, seed, timesteps):
    """Fixed x, t and labels for a model of config `cfg`."""
    g = torch.Generator().manual_seed(seed)
    size = cfg["sample_size"]
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn((batch, cfg["in_channels"], h, w), generator=g)
    t = torch.randint(0, timesteps, (batch,), generator=g)
    t[0] = 0
    t[-1] = timesteps - 1
    y = None
    if cfg.get("num_class_embeds"):
        y = torch.arange(batch) % cfg["num_class_embeds"]
    return x, t, y


def make_case(name, unet_kwargs, scheduler, layout, batch, seed):
    torch.manual_seed(seed)
    unet = UNet2DModel(**unet_kwargs).eval()
    sched_cls, sched_kwargs = scheduler
    sched = sched_cls(**sched_kwargs)
    root = os.path.join(OUT, name)
    if layout == "pipeline":
        unet.save_pretrained(os.path.join(root, "unet"))
        sched.save_pretrained(os.path.join(root, "scheduler"))
        index = {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": __import__("diffusers").__version__,
            "scheduler": ["diffusers", sched_cls.__name__],
            "unet": ["diffusers", "UNet2DModel"],
        }
        with open(os.path.join(root, "model_index.json"), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
    else:
        unet.save_pretrained(root, safe_serialization=False)
        sched.save_config(root)
    x, t, y = inputs(unet_kwargs, batch, seed + 1, sched.config.num_train_timesteps)
    with torch.no_grad():
        out = unet(x, t, class_labels=y).sample
    tensors = {
        "x": x.contiguous(),
        "t": t.to(torch.int64),
        "out": out.contiguous(),
        "alphas_cumprod": sched.alphas_cumprod.contiguous(),
    }
    if y is not None:
        tensors["y"] = y.to(torch.int64)
    if layout == "pipeline" and unet_kwargs["out_channels"] == unet_kwargs["in_channels"]:
        pipe = DDIMPipeline(unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(seed + 2)
        x_t = torch.randn((batch,) + tuple(x.shape[1:]), generator=g)
        g = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            img = pipe(
                batch_size=batch,
                generator=g,
                num_inference_steps=50,
                eta=0.0,
                use_clipped_model_output=True,
                output_type="pt",
            ).images
        tensors["ddim_x_t"] = x_t
        tensors["ddim_out"] = (img * 2 - 1).contiguous()
    save_file(tensors, os.path.join(root, "io.safetensors"))
    print(name, "max |out|", out.abs().max().item(), "params", sum(p.numel() for p in unet.parameters()))


def make_schedulers():
    root = os.path.join(OUT, "schedulers")
    os.makedirs(root, exist_ok=True)
    for name, (cls, kwargs, ks) in SCHEDULERS.items():
        sched = cls(**kwargs)
        with open(os.path.join(root, name + ".json"), "w") as f:
            f.write(sched.to_json_string())
        tensors = {"alphas_cumprod": sched.alphas_cumprod.contiguous()}
        for k in ks:
            sched.set_timesteps(k)
            tensors[f"timesteps_{k}"] = sched.timesteps.to(torch.int64).contiguous()
        save_file(tensors, os.path.join(root, name + ".safetensors"))


def make_keys():
    root = os.path.join(OUT, "keys")
    os.makedirs(root, exist_ok=True)
    for name, cfg in PUBLISHED.items():
        with torch.device("meta"):
            unet = UNet2DModel(**cfg)
        state = unet.state_dict()
        total = sum(v.numel() for v in state.values())
        with open(os.path.join(root, name + ".txt"), "w") as f:
            f.write(f"# {name}: {len(state)} tensors, {total} parameters (diffusers {__import__('diffusers').__version__})\n")
            for key in sorted(state):
                f.write(key + " " + " ".join(str(d) for d in state[key].shape) + "\n")
        print(name, len(state), "tensors", total, "parameters")


if __name__ == "__main__":
    for i, case in enumerate(CASES):
        make_case(*case, seed=100 * (i + 1))
    make_schedulers()
    make_keys()

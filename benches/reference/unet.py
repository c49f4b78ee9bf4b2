"""The PyTorch twin of ddpm's UNet, schedule, loss and samplers: the reference every speed claim in
the README is measured against (benches/reference/bench.py times it).

Same layers, same parameter names and shapes as src/nn/ (so `load_ddpm_weights` takes a ddpm
safetensors file as it is), same arithmetic: GroupNorm(min(32, c)) + SiLU, the time embedding
added after conv1, a (res + attention) pair whose output is the skip, attention as two batched
matrix products around one softmax, nearest 2x upsampling. Plain eager PyTorch, as a user would
write it: no fused attention, no channels_last, no CUDA graphs (bench.py adds torch.compile and
autocast as variants).

    python3 benches/reference/unet.py           # parameter counts of W1..W4
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# WORKLOADS.md / configs/bench/w1..w4.toml: W2 and W4 sample with the W1 and W3 models.
CONFIGS = {
    "W1": dict(in_channels=3, image_size=32, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2,
               attn_resolutions=(8,)),
    "W3": dict(in_channels=1, image_size=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=()),
}
CONFIGS["W2"], CONFIGS["W4"] = CONFIGS["W1"], CONFIGS["W3"]


def norm(c, groups=32):
    return nn.GroupNorm(min(groups, c), c, eps=1e-5)


def sinusoidal(t, dim):
    """[sin(t f), cos(t f)], f_i = exp(-ln(1e4) i / (half - 1)), i < half = dim / 2."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64, device=t.device)
    freqs = torch.exp(-math.log(1e4) * i / max(half - 1, 1)).float()
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    """h = conv1(SiLU(GN(x))) + temb_proj(SiLU(temb)); out = conv2(SiLU(GN(h))) + skip(x)."""

    def __init__(self, cin, cout, temb_dim):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, cout)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb_act):
        h = self.conv1(F.silu(self.norm1(x))) + self.temb_proj(temb_act)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class Attention(nn.Module):
    """x + proj(v softmax(q^T k / sqrt(d))^T), per head of d = c / heads channels."""

    def __init__(self, c, heads=1):
        super().__init__()
        self.norm, self.heads = norm(c), heads
        self.q, self.k, self.v, self.proj = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        d, n = c // self.heads, hh * ww
        h = self.norm(x)
        q = self.q(h).reshape(b * self.heads, d, n) * (1.0 / math.sqrt(d))
        k = self.k(h).reshape(b * self.heads, d, n)
        v = self.v(h).reshape(b * self.heads, d, n)
        w = torch.softmax(torch.bmm(q.transpose(1, 2), k).float(), dim=-1).to(v.dtype)
        out = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj(out)


class Resample(nn.Module):
    """Conv3x3 stride 2 (down) or nearest x2 then Conv3x3 (up); key `conv` as in ddpm."""

    def __init__(self, c, up):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(c, c, 3, stride=1 if up else 2, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest") if self.up else x)


class UNet(nn.Module):
    """The DDPM UNet of ddpm's `[model]` (src/nn/config.rs `plan`): per level num_res_blocks
    residual blocks (attention after each at attn_resolutions), a downsampling except at the
    last level; middle Res-Attn-Res; the mirror image upwards with one more block per level."""

    def __init__(self, in_channels, image_size, ch, ch_mult, num_res_blocks, attn_resolutions,
                 heads=1):
        super().__init__()
        temb = 4 * ch
        self.ch = ch
        self.time_embed = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips, cur, last = [ch], ch, len(ch_mult) - 1
        for level, m in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(cur, ch * m, temb))
                cur = ch * m
                if image_size >> level in attn_resolutions:
                    self.down.append(Attention(cur, heads))
                skips.append(cur)
            if level != last:
                self.down.append(Resample(cur, up=False))
                skips.append(cur)
        self.mid = nn.ModuleList([ResBlock(cur, cur, temb), Attention(cur, heads),
                                  ResBlock(cur, cur, temb)])
        for level, m in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(cur + skips.pop(), ch * m, temb))
                cur = ch * m
                if image_size >> level in attn_resolutions:
                    self.up.append(Attention(cur, heads))
            if level != 0:
                self.up.append(Resample(cur, up=True))
        self.norm_out = norm(cur)
        self.conv_out = nn.Conv2d(cur, in_channels, 3, padding=1)

    def forward(self, x, t):
        temb_act = F.silu(self.time_embed(sinusoidal(t, self.ch).to(x.dtype)))
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, ResBlock):
                h = layer(h, temb_act)
                skips.append(h)
            elif isinstance(layer, Attention):
                h = layer(h)
                skips[-1] = h  # the skip is the (res + attention) pair's output
            else:
                h = layer(h)
                skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb_act)), temb_act)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), temb_act)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def load_ddpm_weights(model, path, prefix=""):
    """Copy the tensors of a ddpm safetensors file (keys `prefix + name`) into `model`; every
    parameter must be there with its shape. Returns the number of parameters loaded."""
    from safetensors.torch import load_file
    stored = load_file(path)
    state = {name: stored[prefix + name] for name in model.state_dict()}
    model.load_state_dict(state, strict=True)
    return sum(v.numel() for v in state.values())


class Diffusion:
    """Linear betas 1e-4..0.02 over T steps (ddpm's `Schedule`, computed in f64), with the
    coefficient tables on `device` so nothing is gathered on the host."""

    def __init__(self, T=1000, device="cpu"):
        self.T = T
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
        ab = torch.cumprod(1 - betas, 0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        self.ab = ab
        self.sqrt_ab = ab.sqrt().float().to(device)
        self.sqrt_1m_ab = (1 - ab).sqrt().float().to(device)
        self.post_var = betas * (1 - ab_prev) / (1 - ab)
        self.post_c0 = betas * ab_prev.sqrt() / (1 - ab)
        self.post_ct = (1 - ab_prev) * (1 - betas).sqrt() / (1 - ab)

    def loss(self, model, x0):
        """L_simple = mean (eps - eps_theta(sqrt(abar) x0 + sqrt(1 - abar) eps, t))^2."""
        t = torch.randint(0, self.T, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        a = self.sqrt_ab[t].view(-1, 1, 1, 1)
        s = self.sqrt_1m_ab[t].view(-1, 1, 1, 1)
        return F.mse_loss(model(a * x0 + s * eps, t).float(), eps)

    def ddim_timesteps(self, steps):
        """Leading spacing, as configs/bench/w2.toml: T - T/steps, ..., T/steps, 0."""
        return list(range(0, self.T, self.T // steps))[::-1]

    @torch.no_grad()
    def ddim(self, model, x, steps=50, amp=None):
        """DDIM, eta 0, x0 clipped to [-1, 1] and eps recomputed from it (ddpm's `Ddim`)."""
        ts = self.ddim_timesteps(steps)
        t_all = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        for i, t in enumerate(ts):
            with amp() if amp else _nothing():
                eps = model(x, t_all.fill_(t)).float()
            ab = float(self.ab[t])
            ab_prev = float(self.ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
        return x

    @torch.no_grad()
    def ancestral(self, model, x, steps):
        """The first `steps` of the T ancestral steps (posterior mean from the clipped x0,
        fixed-small variance), from t = T - 1 down."""
        t_all = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        for t in range(self.T - 1, self.T - 1 - steps, -1):
            eps = model(x, t_all.fill_(t))
            ab = float(self.ab[t])
            x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
            x = float(self.post_c0[t]) * x0 + float(self.post_ct[t]) * x
            if t > 0:
                x = x + math.sqrt(float(self.post_var[t])) * torch.randn_like(x)
        return x


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def num_params(model):
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    for name, cfg in CONFIGS.items():
        print(f"{name}: {num_params(UNet(**cfg)):,} parameters  {cfg}")

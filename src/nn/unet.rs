//! The DDPM noise-prediction UNet (Ho et al. 2020, appendix B; WORKLOADS.md; ref_unet.py): its
//! construction from a `UNetConfig` and its forward pass with per-example timesteps, optional
//! class labels and seeded dropout. Layers live in `embedding`, `resblock` and `attention`;
//! initial values in `init`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::nn::attention::{Attention, AttnOptions};
use crate::nn::config::UNetConfig;
use crate::nn::embedding::{Sinusoid, TimeEmbedding};
use crate::nn::kernels;
use crate::nn::layers::{Conv, Norm, Padding};
use crate::nn::plan::Block;
use crate::nn::resblock::{Masks, ResBlock, ResOptions};
use crate::nn::shard;
use crate::rng::Stream;

/// One entry of the down / up paths (keys `down.{i}` / `up.{i}`, as ref_unet.py's ModuleLists).
#[derive(Clone, Debug)]
enum Layer {
    Res(ResBlock),
    Attn(Attention),
    /// Conv3x3 stride 2 (key `conv`).
    Down(Conv),
    /// Nearest x2, then Conv3x3 (key `conv`).
    Up(Conv),
}

/// The UNet. Keys: `time_embed.{0,2}`, `label_embed`, `conv_in`, `down.{i}.*`, `mid.{0,1,2}.*`,
/// `up.{i}.*`, `norm_out`, `conv_out`.
#[derive(Clone, Debug)]
pub struct UNet {
    time_embed: TimeEmbedding,
    conv_in: Conv,
    down: Vec<Layer>,
    mid: (ResBlock, Attention, ResBlock),
    up: Vec<Layer>,
    norm_out: Norm,
    conv_out: Conv,
    in_channels: usize,
    downsamplings: usize,
    dropout: f64,
    center_input: bool,
}

impl UNet {
    /// Build the layers of `cfg` for `image_size` = (height, width) images of `in_channels`
    /// channels, predicting `out_channels` (2 * in_channels when the variance is learned).
    /// Variables come from `vb` (a VarMap-backed builder creates them; call
    /// `nn::init_weights` afterwards for seeded values).
    pub fn new(
        vb: VarBuilder,
        cfg: &UNetConfig,
        in_channels: usize,
        out_channels: usize,
        image_size: (usize, usize),
    ) -> Result<UNet> {
        cfg.validate(image_size)?;
        if in_channels == 0 || out_channels == 0 {
            return Err(Error::Invalid(format!(
                "a UNet needs at least one input and output channel (got {in_channels} in, {out_channels} out)"
            )));
        }
        let ch = cfg.base_channels;
        let plan = cfg.plan(image_size.0);
        let groups = |c| cfg.groups(c);
        let res_opts = |output_scale| ResOptions {
            temb_dim: cfg.temb_dim(),
            eps: cfg.norm_eps,
            scale_shift: cfg.scale_shift,
            output_scale,
        };
        let res = |vb: VarBuilder, b: Block, output_scale| match b {
            Block::Res { cin, cout, level } => {
                ResBlock::new(vb, (cin, cout), level, groups, res_opts(output_scale))
            }
            _ => Err(Error::Invalid(format!(
                "expected a residual block, planned {b:?}"
            ))),
        };
        // diffusers' middle attention has a GroupNorm only under the default conditioning.
        let attn = |vb: VarBuilder, c: usize, norm: bool, output_scale| -> Result<Attention> {
            let opts = AttnOptions {
                heads: cfg.heads(c)?,
                norm: norm.then(|| (groups(c), cfg.norm_eps)),
                output_scale,
            };
            Attention::new(vb, c, opts)
        };
        let down_padding = match cfg.downsample_padding {
            0 => Padding::After,
            p => Padding::Same(p),
        };
        let layers = |vb: VarBuilder, blocks: &[Block]| -> Result<Vec<Layer>> {
            blocks
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    let vb = vb.pp(i);
                    Ok(match b {
                        Block::Res { .. } => Layer::Res(res(vb, b, 1.0)?),
                        Block::Attn { c, .. } => Layer::Attn(attn(vb, c, true, 1.0)?),
                        Block::Down { c, .. } => {
                            Layer::Down(Conv::down(c, down_padding, vb.pp("conv"))?)
                        }
                        Block::Up { c, .. } => Layer::Up(Conv::k3(c, c, 1, vb.pp("conv"))?),
                    })
                })
                .collect()
        };
        let (mid_vb, [m0, m1, m2]) = (vb.pp("mid"), plan.mid);
        let mid_c = match m1 {
            Block::Attn { c, .. } => c,
            _ => {
                return Err(Error::Invalid(format!(
                    "expected attention, planned {m1:?}"
                )))
            }
        };
        let c_out = plan.out_channels;
        let sinusoid = Sinusoid {
            freq_shift: cfg.freq_shift,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
        };
        let labels = cfg.num_classes.zip(cfg.label_rows());
        let mid_scale = cfg.mid_block_scale_factor;
        Ok(UNet {
            time_embed: TimeEmbedding::new(vb.clone(), ch, sinusoid, labels)?,
            conv_in: Conv::k3(in_channels, ch, 1, vb.pp("conv_in"))?,
            down: layers(vb.pp("down"), &plan.down)?,
            mid: (
                res(mid_vb.pp(0), m0, mid_scale)?,
                attn(mid_vb.pp(1), mid_c, !cfg.scale_shift, mid_scale)?,
                res(mid_vb.pp(2), m2, mid_scale)?,
            ),
            up: layers(vb.pp("up"), &plan.up)?,
            norm_out: Norm::new(groups(c_out), c_out, cfg.norm_eps, vb.pp("norm_out"))?,
            conv_out: Conv::k3(c_out, out_channels, 1, vb.pp("conv_out"))?,
            in_channels,
            downsamplings: cfg.downsamplings(),
            dropout: cfg.dropout,
            center_input: cfg.center_input_sample,
        })
    }

    /// Every residual block in forward order.
    fn res_blocks(&self) -> impl Iterator<Item = &ResBlock> {
        fn pick(l: &Layer) -> Option<&ResBlock> {
            match l {
                Layer::Res(r) => Some(r),
                _ => None,
            }
        }
        let down = self.down.iter().filter_map(pick);
        let up = self.up.iter().filter_map(pick);
        down.chain([&self.mid.0, &self.mid.2]).chain(up)
    }

    /// The model output eps_theta(x, t[, y]): x (B, C, H, W) -> (B, out_channels, H, W).
    /// `t`: one timestep per example; `labels`: one class per example (num_classes = "no
    /// label"), None = all unlabelled; `dropout`: one stream per example that its masks are
    /// drawn from (training), None = eval mode. H and W must be divisible by 2^(levels - 1); attention placement was
    /// fixed for the image size given to `new`.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &[usize],
        labels: Option<&[u32]>,
        dropout: Option<&mut [Stream]>,
    ) -> Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        let factor = 1usize << self.downsamplings;
        if c != self.in_channels || hh % factor != 0 || ww % factor != 0 || t.len() != b {
            return Err(Error::Invalid(format!(
                "UNet input {:?} with {} timesteps: expected (B, {}, H, W) with H and W divisible by {factor} and one timestep per example",
                x.dims(),
                t.len(),
                self.in_channels
            )));
        }
        let (dev, dtype) = (x.device(), x.dtype());
        let temb_act = self.time_embed.forward(t, labels, dev, dtype)?.silu()?;
        let mut masks = match dropout {
            Some(streams) if self.dropout > 0.0 => {
                if streams.len() != b {
                    return Err(Error::Invalid(format!(
                        "UNet: {} dropout streams for a batch of {b}",
                        streams.len()
                    )));
                }
                let lens: Vec<usize> = self.res_blocks().map(|r| r.mask_len(1, hh, ww)).collect();
                Some(Masks::draw(streams, self.dropout, &lens, dev, dtype)?)
            }
            _ => None,
        };
        let mut run = |r: &ResBlock, h: &Tensor| -> Result<Tensor> {
            let mask = match masks.as_mut() {
                Some(m) => Some(m.take(&[b, r.cout(), h.dim(2)?, h.dim(3)?])?),
                None => None,
            };
            r.forward(h, &temb_act, mask.as_ref())
        };
        let mut h = if self.center_input {
            // x -> 2x - 1, for a model of data in [0, 1].
            self.conv_in.forward(&x.affine(2.0, -1.0)?)?
        } else {
            self.conv_in.forward(x)?
        };
        let mut skips = vec![h.clone()];
        for layer in &self.down {
            match layer {
                Layer::Res(r) => {
                    h = run(r, &h)?;
                    skips.push(h.clone());
                }
                Layer::Attn(a) => {
                    h = a.forward(&h)?;
                    // The skip is the output of the (residual + attention) pair.
                    skips.pop();
                    skips.push(h.clone());
                }
                Layer::Down(conv) => {
                    h = conv.forward(&h)?;
                    skips.push(h.clone());
                }
                Layer::Up(_) => {}
            }
        }
        h = run(&self.mid.0, &h)?;
        h = self.mid.1.forward(&h)?;
        h = run(&self.mid.2, &h)?;
        for layer in &self.up {
            h = match layer {
                Layer::Res(r) => {
                    let skip = skips.pop().ok_or_else(|| {
                        Error::Invalid("UNet: ran out of skip connections".into())
                    })?;
                    run(r, &Tensor::cat(&[&h, &skip], 1)?)?
                }
                Layer::Attn(a) => a.forward(&h)?,
                Layer::Up(conv) => conv.forward(&kernels::upsample_nearest2x(&h)?)?,
                Layer::Down(_) => h,
            };
        }
        self.conv_out
            .forward_after_norm(&self.norm_out, &h, None, None)
    }

    /// The same model over the same weights (updates to them show through) that records no
    /// autograd graph: for sampling and evaluation, where every intermediate can be freed as
    /// soon as the next layer has read it.
    pub fn detached(&self) -> UNet {
        let layer = |l: &Layer| match l {
            Layer::Res(r) => Layer::Res(r.detached()),
            Layer::Attn(a) => Layer::Attn(a.detached()),
            Layer::Down(c) => Layer::Down(c.detached()),
            Layer::Up(c) => Layer::Up(c.detached()),
        };
        UNet {
            time_embed: self.time_embed.detached(),
            conv_in: self.conv_in.detached(),
            down: self.down.iter().map(layer).collect(),
            mid: (
                self.mid.0.detached(),
                self.mid.1.detached(),
                self.mid.2.detached(),
            ),
            up: self.up.iter().map(layer).collect(),
            norm_out: self.norm_out.detached(),
            conv_out: self.conv_out.detached(),
            ..*self
        }
    }
}

impl Denoiser for UNet {
    /// Eval mode (no dropout), no labels, and no autograd graph through the weights. The input
    /// is not detached: a caller that differentiates with respect to x_t (the probability-flow
    /// ODE likelihood's divergence) gets its graph, and a plain x_t (sampling) builds none.
    /// On the CPU the batch is computed in shards, one per thread (`shard::map_batch`).
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let net = self.detached();
        let shards = shard::count(x_t.dim(0)?, x_t.device());
        shard::map_batch(x_t, t, None, shards, |x, t, _| {
            UNet::forward(&net, x, t, None, None)
        })
    }
}

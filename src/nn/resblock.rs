//! The residual block of the DDPM UNet and its dropout. candle_nn's `Dropout` draws from the
//! unseedable global generator, so masks here come from a `crate::rng::Stream`: drawn on the
//! host for the whole forward pass at once, uploaded once, and sliced block by block. The
//! block also takes diffusers' ResnetBlock2D options: the adaptive-GroupNorm time conditioning
//! (`scale_shift`) and an output scale.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::error::{Error, Result};
use crate::nn::layers::{detached_linear, Conv, Norm};
use crate::rng::Stream;

/// ResBlock(cin, cout) (Ho et al. 2020, appendix B):
/// h = conv1(SiLU(GN(x))) + temb_proj(SiLU(temb))[:, :, None, None];
/// out = (conv2(Dropout(SiLU(GN(h)))) + (x if cin == cout else skip(x))) / output_scale.
/// With scale_shift, temb_proj gives 2 cout values, (scale, shift), and
/// h = conv1(SiLU(GN(x))), out = (conv2(Dropout(SiLU(GN(h) (1 + scale) + shift))) + ...) / output_scale
/// (Dhariwal & Nichol 2021, section 3.3; diffusers' time_embedding_norm = "scale_shift").
/// x: (B, cin, H, W) -> (B, cout, H, W). Keys: norm1, conv1, temb_proj, norm2, conv2, skip.
#[derive(Clone, Debug)]
pub struct ResBlock {
    norm1: Norm,
    conv1: Conv,
    temb_proj: Linear,
    norm2: Norm,
    conv2: Conv,
    skip: Option<Conv>,
    cout: usize,
    level: usize,
    scale_shift: bool,
    output_scale: f64,
}

/// How a residual block is built besides its channels and level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResOptions {
    /// Width of the time embedding.
    pub temb_dim: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// The adaptive-GroupNorm time conditioning.
    pub scale_shift: bool,
    /// The output is divided by this.
    pub output_scale: f64,
}

impl ResBlock {
    /// A block at `level` (downsamplings before it, used to size its dropout mask);
    /// `groups(c)` gives the GroupNorm groups over c channels.
    pub fn new(
        vb: VarBuilder,
        (cin, cout): (usize, usize),
        level: usize,
        groups: impl Fn(usize) -> usize,
        opts: ResOptions,
    ) -> Result<Self> {
        let temb_out = if opts.scale_shift { 2 * cout } else { cout };
        Ok(ResBlock {
            norm1: Norm::new(groups(cin), cin, opts.eps, vb.pp("norm1"))?,
            conv1: Conv::k3(cin, cout, 1, vb.pp("conv1"))?,
            temb_proj: candle_nn::linear(opts.temb_dim, temb_out, vb.pp("temb_proj"))?,
            norm2: Norm::new(groups(cout), cout, opts.eps, vb.pp("norm2"))?,
            conv2: Conv::k3(cout, cout, 1, vb.pp("conv2"))?,
            skip: if cin != cout {
                Some(Conv::k1(cin, cout, vb.pp("skip"))?)
            } else {
                None
            },
            cout,
            level,
            scale_shift: opts.scale_shift,
            output_scale: opts.output_scale,
        })
    }

    /// Output channels.
    pub fn cout(&self) -> usize {
        self.cout
    }

    /// Elements of this block's dropout mask for a (batch, _, height, width) input image.
    pub(crate) fn mask_len(&self, batch: usize, height: usize, width: usize) -> usize {
        batch * self.cout * (height >> self.level) * (width >> self.level)
    }

    /// `temb_act` = SiLU(temb): (B, temb_dim), shared by all blocks; `mask` = the dropout mask
    /// (B, cout, H, W) already scaled by 1/(1-p), or None in eval mode. The time embedding's
    /// projection (B, cout) rides in conv1's bias.
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let t = self.temb_proj.forward(temb_act)?;
        let residual = match &self.skip {
            Some(skip) => skip.forward(x)?,
            None => x.clone(),
        };
        let out = if self.scale_shift {
            self.forward_scale_shift(x, &t, mask, &residual)?
        } else {
            let h = self
                .conv1
                .forward_after_norm(&self.norm1, x, Some(&t), None)?;
            match mask {
                Some(mask) => {
                    let h = (self.norm2.forward_silu(&h)? * mask)?;
                    self.conv2.forward_add(&h, &residual)?
                }
                None => self
                    .conv2
                    .forward_after_norm(&self.norm2, &h, None, Some(&residual))?,
            }
        };
        if self.output_scale == 1.0 {
            Ok(out)
        } else {
            Ok((out / self.output_scale)?)
        }
    }

    /// The scale-shift body, conv2(Dropout(SiLU(GN(h) (1 + scale) + shift))) + residual with
    /// h = conv1(SiLU(GN(x))); `t` = temb_proj(SiLU(temb)): (B, 2 cout). The per-example affine
    /// sits between the GroupNorm and its SiLU, which the fused norm-conv kernel does not
    /// take, so the second norm runs on its own.
    fn forward_scale_shift(
        &self,
        x: &Tensor,
        t: &Tensor,
        mask: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let h = self.conv1.forward_after_norm(&self.norm1, x, None, None)?;
        let per_channel = |i: usize| -> Result<Tensor> {
            Ok(t.narrow(1, i * self.cout, self.cout)?
                .unsqueeze(2)?
                .unsqueeze(3)?)
        };
        let (scale, shift) = (per_channel(0)?, per_channel(1)?);
        let h = self
            .norm2
            .forward(&h)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)?
            .silu()?;
        let h = match mask {
            Some(mask) => (h * mask)?,
            None => h,
        };
        self.conv2.forward_add(&h, residual)
    }

    /// The same block over the same storage, recording no autograd graph.
    pub fn detached(&self) -> Self {
        ResBlock {
            norm1: self.norm1.detached(),
            conv1: self.conv1.detached(),
            temb_proj: detached_linear(&self.temb_proj),
            norm2: self.norm2.detached(),
            conv2: self.conv2.detached(),
            skip: self.skip.as_ref().map(Conv::detached),
            ..*self
        }
    }
}

/// Inverted-dropout mask values: each is 1/(1-p) with probability 1-p, else 0. Two 32-bit draws
/// per `next_u64`; an element is kept when its draw u (uniform on 0..2^32) has u >= p 2^32.
pub fn mask_values(stream: &mut Stream, p: f64, n: usize) -> Vec<f32> {
    let threshold = (p * 4_294_967_296.0) as u64;
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let bits = stream.next_u64();
        for u in [bits & 0xFFFF_FFFF, bits >> 32] {
            out.push(if u >= threshold { keep } else { 0.0 });
        }
    }
    out.truncate(n);
    out
}

/// All dropout masks of one forward pass, as one uploaded buffer handed out in order.
pub(crate) struct Masks {
    data: Tensor,
    offset: usize,
}

impl Masks {
    /// The masks of a batch whose example i draws from `streams[i]`: `block_lens` values per
    /// example for each block in order (C H W of its mask), laid out block by block as
    /// (B, C, H, W) for `take`. An example's masks depend only on its own stream, not on which
    /// examples share its batch or shard.
    pub fn draw(
        streams: &mut [Stream],
        p: f64,
        block_lens: &[usize],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let per_example: usize = block_lens.iter().sum();
        let draws: Vec<Vec<f32>> = streams
            .iter_mut()
            .map(|s| mask_values(s, p, per_example))
            .collect();
        let mut data = Vec::with_capacity(per_example * streams.len());
        let mut start = 0;
        for &len in block_lens {
            for d in &draws {
                data.extend_from_slice(&d[start..start + len]);
            }
            start += len;
        }
        let n = data.len();
        let data = Tensor::from_vec(data, n, device)?.to_dtype(dtype)?;
        Ok(Masks { data, offset: 0 })
    }

    /// The next mask of shape `dims`, a view into the buffer.
    pub fn take(&mut self, dims: &[usize]) -> Result<Tensor> {
        let len: usize = dims.iter().product();
        if self.offset + len > self.data.elem_count() {
            return Err(Error::Invalid(format!(
                "dropout masks exhausted: {} of {} values used, {len} more asked",
                self.offset,
                self.data.elem_count()
            )));
        }
        let mask = self.data.narrow(0, self.offset, len)?.reshape(dims)?;
        self.offset += len;
        Ok(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Purpose;

    #[test]
    fn mask_keeps_fraction_and_scales() {
        let n = 100_001;
        let m = mask_values(&mut Stream::new(3, Purpose::Dropout, 0), 0.25, n);
        assert_eq!(m.len(), n);
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        // Binomial standard error sqrt(0.75 * 0.25 / n) = 0.0014; allow 5 of them.
        assert!((kept - 0.75).abs() < 0.007, "kept {kept}");
        assert!(m.iter().all(|&v| v == 0.0 || v == (1.0f32 / 0.75)));
        let mean = m.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!(
            mask_values(&mut Stream::new(3, Purpose::Dropout, 0), 0.0, 64)
                .iter()
                .all(|&v| v == 1.0)
        );
    }
}

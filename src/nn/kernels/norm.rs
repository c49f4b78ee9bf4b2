//! GroupNorm, optionally fused with the SiLU after it, as a candle custom op with backward.
//! One work item is one (example, group): its channels are contiguous in NCHW, so statistics,
//! normalisation, activation and the whole backward run over a few KB that stay in cache,
//! instead of candle's chain of ~10 full-tensor ops (and as many again backwards).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::par::{self, multiversion, Shared};
use crate::error::Result;

/// Fast e^x for |x| < 88: x = k ln 2 + r, e^r by its degree-6 Taylor polynomial on
/// |r| <= ln 2 / 2 (relative error < 2e-7), 2^k through the exponent bits. Branch-free, so
/// loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// sigmoid(z) = 1 / (1 + e^-z).
#[inline(always)]
pub(crate) fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// (mean, 1 / sqrt(var + eps)) of one group, two passes (exact enough for any offset).
#[inline(always)]
fn moments(v: &[f32], eps: f32) -> (f32, f32) {
    let n = v.len() as f32;
    let mean = super::conv::sum(v) / n;
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let mut tail = 0f32;
    for x in chunks.remainder() {
        tail += (x - mean) * (x - mean);
    }
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += (x - mean) * (x - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The op's settings.
#[derive(Clone, Copy, Debug)]
struct Norm {
    groups: usize,
    eps: f32,
    silu: bool,
}

/// (batch, channels, spatial size) of an NC... tensor.
fn dims(l: &Layout, groups: usize) -> candle_core::Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 3 || groups == 0 || d[1] % groups != 0 {
        candle_core::bail!("group_norm: input {d:?} with {groups} groups");
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

fn values<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("group_norm: {what} must be contiguous"),
    }
}

multiversion! {
/// One group forward: y = act(x a_c + b_c), a_c = rstd gamma_c, b_c = beta_c - mean a_c.
fn forward_group(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], hw: usize, eps: f32, silu: bool) {
    let (mean, rstd) = moments(x, eps);
    for (c, (xs, ys)) in x.chunks_exact(hw).zip(y.chunks_exact_mut(hw)).enumerate() {
        let a = rstd * gamma[c];
        let b = beta[c] - mean * a;
        if silu {
            for (y, x) in ys.iter_mut().zip(xs) {
                let z = x * a + b;
                *y = z * sigmoid(z);
            }
        } else {
            for (y, x) in ys.iter_mut().zip(xs) {
                *y = x * a + b;
            }
        }
    }
}
}

multiversion! {
/// One group backward. With xh = (x - mean) rstd, z = xh gamma + beta and dz = dy act'(z):
/// dgamma_c += sum dz xh, dbeta_c += sum dz, and with g = dz gamma,
/// dx = rstd (g - mean(g) - xh mean(g xh))   (means over the group).
fn backward_group(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    dgb: &mut [f32],
    hw: usize,
    eps: f32,
    silu: bool,
) {
    let (mean, rstd) = moments(x, eps);
    let cpg = gamma.len();
    let (mut sum_g, mut sum_gx) = (0f32, 0f32);
    for c in 0..cpg {
        let (xs, dys) = (&x[c * hw..][..hw], &dy[c * hw..][..hw]);
        let dzs = &mut dx[c * hw..][..hw];
        let (a, b) = (rstd * gamma[c], beta[c] - mean * rstd * gamma[c]);
        let (mut s_dz, mut s_dzx) = ([0f32; 8], [0f32; 8]);
        let dz_at = |x: f32, dy: f32| {
            if silu {
                let z = x * a + b;
                let s = sigmoid(z);
                dy * s * (1.0 + z * (1.0 - s))
            } else {
                dy
            }
        };
        let whole = hw / 8 * 8;
        for ((xc, dyc), dzc) in xs[..whole]
            .chunks_exact(8)
            .zip(dys[..whole].chunks_exact(8))
            .zip(dzs[..whole].chunks_exact_mut(8))
        {
            for i in 0..8 {
                let dz = dz_at(xc[i], dyc[i]);
                dzc[i] = dz;
                s_dz[i] += dz;
                s_dzx[i] += dz * ((xc[i] - mean) * rstd);
            }
        }
        for i in whole..hw {
            let dz = dz_at(xs[i], dys[i]);
            dzs[i] = dz;
            s_dz[0] += dz;
            s_dzx[0] += dz * ((xs[i] - mean) * rstd);
        }
        let (s_dz, s_dzx): (f32, f32) = (s_dz.iter().sum(), s_dzx.iter().sum());
        dgb[c] += s_dzx;
        dgb[cpg + c] += s_dz;
        sum_g += s_dz * gamma[c];
        sum_gx += s_dzx * gamma[c];
    }
    let n = x.len() as f32;
    let (mg, mgx) = (sum_g / n, sum_gx / n);
    for c in 0..cpg {
        let xs = &x[c * hw..][..hw];
        let dxs = &mut dx[c * hw..][..hw];
        let k = rstd * gamma[c];
        for (d, x) in dxs.iter_mut().zip(xs) {
            let xh = (x - mean) * rstd;
            *d = k * *d - rstd * (mg + xh * mgx);
        }
    }
}
}

impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        "ddpm-group-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, hw) = dims(xl, self.groups)?;
        let (x, gamma, beta) = (
            values(xs, xl, "x")?,
            values(gs, gl, "weight")?,
            values(bs, bl, "bias")?,
        );
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "group_norm: {} weights, {} biases for {c} channels",
                gamma.len(),
                beta.len()
            );
        }
        let cpg = c / self.groups;
        let n = cpg * hw;
        // SAFETY: the items cover every group of every example.
        let mut y = unsafe { par::output(x.len()) };
        let out = Shared::new(&mut y);
        par::for_each(b * self.groups, |item, _| {
            let g = item % self.groups;
            // SAFETY: item (b, g) alone writes its group's values.
            let ys = unsafe { out.slice(item * n, n) };
            let (gamma, beta) = (&gamma[g * cpg..][..cpg], &beta[g * cpg..][..cpg]);
            forward_group(
                &x[item * n..][..n],
                ys,
                gamma,
                beta,
                hw,
                self.eps,
                self.silu,
            );
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gb = Tensor::cat(&[gamma, beta], 0)?;
        let packed = dy
            .contiguous()?
            .apply_op3_no_bwd(x, &gb, &NormBackward(*self))?;
        let (n, c) = (x.elem_count(), gamma.elem_count());
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, n, c)?;
        let dbeta = packed.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// [dx, dgamma, dbeta] packed into one vector, from (dy, x, [gamma, beta]).
struct NormBackward(Norm);

impl CustomOp3 for NormBackward {
    fn name(&self) -> &'static str {
        "ddpm-group-norm-backward"
    }

    fn cpu_fwd(
        &self,
        dys: &CpuStorage,
        dyl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        gbs: &CpuStorage,
        gbl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Norm { groups, eps, silu } = self.0;
        let (b, c, hw) = dims(xl, groups)?;
        let (dy, x, gb) = (
            values(dys, dyl, "dy")?,
            values(xs, xl, "x")?,
            values(gbs, gbl, "weight")?,
        );
        if dy.len() != x.len() || gb.len() != 2 * c {
            candle_core::bail!(
                "group_norm backward: dy {:?} for x {:?}",
                dyl.dims(),
                xl.dims()
            );
        }
        let (gamma, beta) = gb.split_at(c);
        let cpg = c / groups;
        let n = cpg * hw;
        // SAFETY: the items assign every value of dx; dgamma and dbeta are zeroed below.
        let mut out = unsafe { par::output(x.len() + 2 * c) };
        out[x.len()..].fill(0.0);
        // Per-example (dgamma, dbeta) partial sums, reduced over the batch at the end.
        let mut partial = vec![0f32; b * 2 * c];
        let (dx_out, parts) = (Shared::new(&mut out), Shared::new(&mut partial));
        par::for_each(b * groups, |item, _| {
            let (bi, g) = (item / groups, item % groups);
            // SAFETY: item (b, g) alone writes its group's dx and its channels' partial sums.
            let dx = unsafe { dx_out.slice(item * n, n) };
            let dgb = unsafe { parts.slice(bi * 2 * c + g * 2 * cpg, 2 * cpg) };
            let (gamma, beta) = (&gamma[g * cpg..][..cpg], &beta[g * cpg..][..cpg]);
            let (x, dy) = (&x[item * n..][..n], &dy[item * n..][..n]);
            backward_group(x, dy, dx, gamma, beta, dgb, hw, eps, silu);
        });
        let (dgamma, dbeta) = out[x.len()..].split_at_mut(c);
        for per_example in partial.chunks_exact(2 * c) {
            for (g, group) in per_example.chunks_exact(2 * cpg).enumerate() {
                let (dg, db) = group.split_at(cpg);
                dgamma[g * cpg..][..cpg]
                    .iter_mut()
                    .zip(dg)
                    .for_each(|(a, v)| *a += v);
                dbeta[g * cpg..][..cpg]
                    .iter_mut()
                    .zip(db)
                    .for_each(|(a, v)| *a += v);
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// GroupNorm over `groups` groups of x (B, C, ...) with per-channel weight and bias (C), then
/// SiLU when `silu`: y = act((x - mean_g) / sqrt(var_g + eps) weight_c + bias_c). f32 CPU
/// tensors run our kernel; anything else candle_nn's GroupNorm (and candle's SiLU).
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    if super::enabled(x) && weight.dtype() == x.dtype() && bias.dtype() == x.dtype() {
        let op = Norm {
            groups,
            eps: eps as f32,
            silu,
        };
        return Ok(x
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?);
    }
    let norm = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, groups, eps)?;
    let y = candle_core::Module::forward(&norm, x)?;
    Ok(if silu { y.silu()? } else { y })
}

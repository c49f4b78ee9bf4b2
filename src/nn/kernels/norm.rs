//! GroupNorm, optionally fused with the SiLU after it, as a candle custom op with backward.
//! One work item is one (example, group): its channels are contiguous in NCHW, so statistics,
//! normalisation, activation and the whole backward run over a few KB that stay in cache,
//! instead of candle's chain of ~10 full-tensor ops (and as many again backwards).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::par::{self, multiversion, Shared};
use crate::error::Result;

/// Fast e^x for |x| < 88: x = k ln 2 + r, e^r by its degree-6 Taylor polynomial on
/// |r| <= ln 2 / 2 (relative error < 2e-7), 2^k through the exponent bits. Branch-free and
/// without float-to-int casts (Rust's saturating `as` compiles to scalar code), so loops over
/// it vectorise. NaN in, NaN out.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // t = x log2(e) + 1.5 * 2^23 lies in [2^23, 2^24), where the float spacing is 1: its low
    // mantissa bits hold k = round(x log2 e), with no libm call and no cast.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let k = t - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let k_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(k_bits.wrapping_add(127) << 23)
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
pub(super) struct Settings {
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
}

/// The forward op: its settings, and the (mean, rstd) of every (example, group) its forward
/// computed, kept for its backward (the graph holds the op until then), which so skips two of
/// its four passes.
#[derive(Debug)]
pub(super) struct Norm {
    settings: Settings,
    stats: Mutex<Option<Arc<Vec<f32>>>>,
}

impl Norm {
    pub(super) fn new(settings: Settings) -> Self {
        Norm {
            settings,
            stats: Mutex::new(None),
        }
    }
}

/// Groups per work item: enough to amortise scheduling when groups are small.
fn groups_per_item(n: usize) -> usize {
    (4096 / n.max(1)).max(1)
}

/// (batch, channels, spatial size) of an NC... tensor.
pub(super) fn dims(l: &Layout, groups: usize) -> candle_core::Result<(usize, usize, usize)> {
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
/// Consecutive groups forward (the first being global group `first`), `stats` receiving
/// (mean, rstd) per group: y = act(x a_c + b_c), a_c = rstd gamma_c, b_c = beta_c - mean a_c.
/// gamma, beta: all C channels, `cpg` per group.
fn forward_groups(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], stats: &mut [f32], first: usize, cpg: usize, eps: f32, silu: bool) {
    let n = x.len() / (stats.len() / 2);
    let hw = n / cpg;
    for (gi, ((xg, yg), st)) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)).zip(stats.chunks_exact_mut(2)).enumerate() {
        let (mean, rstd) = moments(xg, eps);
        st[0] = mean;
        st[1] = rstd;
        for (ci, (xs, ys)) in xg.chunks_exact(hw).zip(yg.chunks_exact_mut(hw)).enumerate() {
            let c = ((first + gi) * cpg + ci) % gamma.len();
            let a = rstd * gamma[c];
            let b = beta[c] - mean * a;
            if silu {
                for (y, x) in ys.iter_mut().zip(xs) {
                    let z = x * a + b;
                    *y = z / (1.0 + exp(-z));
                }
            } else {
                for (y, x) in ys.iter_mut().zip(xs) {
                    *y = x * a + b;
                }
            }
        }
    }
}
}

multiversion! {
/// One group backward, given its (mean, rstd). With xh = (x - mean) rstd, z = xh gamma + beta and dz = dy act'(z):
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
    stats: (f32, f32),
    silu: bool,
) {
    let (mean, rstd) = stats;
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

/// act(GN(x)) of x (b, c, hw) and the (mean, rstd) of each (example, group).
pub(super) fn forward_values(
    settings: Settings,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    (b, c, hw): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let Settings { groups, eps, silu } = settings;
    let (cpg, total) = (c / groups, b * groups);
    let n = cpg * hw;
    let per = groups_per_item(n);
    // SAFETY: the items cover every group of every example.
    let mut y = unsafe { par::output(x.len()) };
    let mut stats = vec![0f32; 2 * total];
    let (out, st) = (Shared::new(&mut y), Shared::new(&mut stats));
    par::for_each(total.div_ceil(per), |item, _| {
        let first = item * per;
        let count = per.min(total - first);
        // SAFETY: the item alone writes its groups' values and statistics.
        let (ys, sts) = unsafe {
            (
                out.slice(first * n, count * n),
                st.slice(2 * first, 2 * count),
            )
        };
        let xs = &x[first * n..][..count * n];
        forward_groups(xs, ys, gamma, beta, sts, first, cpg, eps, silu);
    });
    (y, stats)
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
        let (b, c, hw) = dims(xl, self.settings.groups)?;
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
        let (y, stats) = forward_values(self.settings, x, gamma, beta, (b, c, hw));
        if let Ok(mut slot) = self.stats.lock() {
            *slot = Some(Arc::new(stats));
        }
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
        let stats = self.stats.lock().ok().and_then(|s| s.clone());
        let (dx, dgamma, dbeta) = backward(self.settings, stats, x, &gb, dy)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// (dx, dgamma, dbeta) of y = act(GN(x)) given dy; gb = [gamma, beta]; `stats` those of the
/// forward over x (recomputed when None).
pub(super) fn backward(
    settings: Settings,
    stats: Option<Arc<Vec<f32>>>,
    x: &Tensor,
    gb: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let op = NormBackward { settings, stats };
    let packed = dy.contiguous()?.apply_op3_no_bwd(x, gb, &op)?;
    let (n, c) = (x.elem_count(), gb.elem_count() / 2);
    let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
    let dgamma = packed.narrow(0, n, c)?;
    let dbeta = packed.narrow(0, n + c, c)?;
    Ok((dx, dgamma, dbeta))
}

/// [dx, dgamma, dbeta] packed into one vector, from (dy, x, [gamma, beta]) and, when the
/// forward left them, its statistics.
struct NormBackward {
    settings: Settings,
    stats: Option<Arc<Vec<f32>>>,
}

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
        let Settings { groups, eps, silu } = self.settings;
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
        let (cpg, total) = (c / groups, b * groups);
        let n = cpg * hw;
        let per = groups_per_item(n);
        let stats = self.stats.as_deref().filter(|s| s.len() == 2 * total);
        // SAFETY: the items assign every value of dx; dgamma and dbeta are zeroed below.
        let mut out = unsafe { par::output(x.len() + 2 * c) };
        out[x.len()..].fill(0.0);
        // Per-(example, group) (dgamma, dbeta) partial sums, reduced over the batch at the end.
        let mut partial = vec![0f32; b * 2 * c];
        let (dx_out, parts) = (Shared::new(&mut out), Shared::new(&mut partial));
        par::for_each(total.div_ceil(per), |item, _| {
            let first = item * per;
            for gg in first..(first + per).min(total) {
                let g = gg % groups;
                // SAFETY: group gg (of this item alone) owns its dx and partial sums.
                let (dx, dgb) =
                    unsafe { (dx_out.slice(gg * n, n), parts.slice(gg * 2 * cpg, 2 * cpg)) };
                let (gamma, beta) = (&gamma[g * cpg..][..cpg], &beta[g * cpg..][..cpg]);
                let (x, dy) = (&x[gg * n..][..n], &dy[gg * n..][..n]);
                let st = match stats {
                    Some(s) => (s[2 * gg], s[2 * gg + 1]),
                    None => moments(x, eps),
                };
                backward_group(x, dy, dx, gamma, beta, dgb, hw, st, silu);
            }
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
        let settings = Settings {
            groups,
            eps: eps as f32,
            silu,
        };
        let op = Norm::new(settings);
        return Ok(x
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?);
    }
    if super::cuda::enabled(x) {
        return super::cuda::group_norm(x, weight, bias, groups, eps, silu);
    }
    // Under bf16 the parameters stay f32 (`crate::precision`); candle's GroupNorm takes them
    // in x's dtype.
    let (weight, bias) = (weight.to_dtype(x.dtype())?, bias.to_dtype(x.dtype())?);
    let norm = candle_nn::GroupNorm::new(weight, bias, c, groups, eps)?;
    let y = candle_core::Module::forward(&norm, x)?;
    Ok(if silu { y.silu()? } else { y })
}

//! Self-attention over the H x W positions of a feature map, with a residual connection (the
//! DDPM UNet's AttnBlock). Everything else about the UNet lives in `unet`.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::nn::kernels;
use crate::nn::layers::{Conv, Norm};
use crate::precision::{Autocast, Op};
// The naive-loop test below reads the epsilon through `super::*`.
#[cfg(test)]
use crate::nn::layers::GN_EPS;

/// out = (x + proj(softmax(q^T k / sqrt(d)) v)) / output_scale, q, k, v = 1x1 convolutions
/// of GN(x) (of x itself when the block has no norm), per head of d = c / heads channels.
/// x: (B, c, H, W). Keys: norm, q, k, v, proj.
#[derive(Clone, Debug)]
pub struct Attention {
    norm: Option<Norm>,
    q: Conv,
    k: Conv,
    v: Conv,
    proj: Conv,
    heads: usize,
    output_scale: f64,
}

/// How an attention block is built besides its channels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnOptions {
    pub heads: usize,
    /// GroupNorm (groups, epsilon) before q, k, v; None: no norm (diffusers' middle attention
    /// under scale-shift conditioning).
    pub norm: Option<(usize, f64)>,
    /// The output is divided by this.
    pub output_scale: f64,
}

impl Attention {
    /// Attention over `c` channels.
    pub fn new(vb: VarBuilder, c: usize, opts: AttnOptions) -> Result<Self> {
        Ok(Attention {
            norm: match opts.norm {
                Some((groups, eps)) => Some(Norm::new(groups, c, eps, vb.pp("norm"))?),
                None => None,
            },
            q: Conv::k1(c, c, vb.pp("q"))?,
            k: Conv::k1(c, c, vb.pp("k"))?,
            v: Conv::k1(c, c, vb.pp("v"))?,
            proj: Conv::k1(c, c, vb.pp("proj"))?,
            heads: opts.heads,
            output_scale: opts.output_scale,
        })
    }

    /// The same block over the same storage, recording no autograd graph.
    pub fn detached(&self) -> Self {
        Attention {
            norm: self.norm.as_ref().map(Norm::detached),
            q: self.q.detached(),
            k: self.k.detached(),
            v: self.v.detached(),
            proj: self.proj.detached(),
            ..*self
        }
    }

    /// x: (B, c, H, W) -> (B, c, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        let (n, d) = (hh * ww, c / self.heads);
        let h = match &self.norm {
            Some(norm) => norm.forward(x)?,
            None => x.clone(),
        };
        // (B, c, H, W) -> (B heads, d, N): a free reshape of the contiguous conv output.
        let split = |t: Tensor| t.reshape((b * self.heads, d, n));
        let scale = 1.0 / (d as f64).sqrt();
        let k = split(self.k.forward(&h)?)?;
        let v = split(self.v.forward(&h)?)?;
        // w[i, j] = softmax_j(q_i . k_j / sqrt(d)): (B heads, N, N). On CUDA the scale rides in
        // our one-kernel softmax; elsewhere q is scaled first.
        let w = if kernels::cuda::enabled(&h) {
            let q = split(self.q.forward(&h)?)?;
            kernels::cuda::softmax_last(&q.t()?.matmul(&k)?, scale)?
        } else {
            let q = (split(self.q.forward(&h)?)? * scale)?;
            softmax_last(&q.t()?.matmul(&k)?)?
        };
        // out[:, i] = sum_j w[i, j] v_j, computed as v w^T: (B heads, d, N).
        let out = v.matmul(&w.t()?)?.reshape((b, c, hh, ww))?;
        let out = (x + self.proj.forward(&out)?)?;
        if self.output_scale == 1.0 {
            Ok(out)
        } else {
            Ok((out / self.output_scale)?)
        }
    }
}

/// Softmax over the last dimension, in f32 for half-precision inputs; the max subtracted for
/// stability is detached (the softmax does not depend on it, so neither does its gradient).
fn softmax_last(s: &Tensor) -> Result<Tensor> {
    let dtype = s.dtype();
    let s = s.to_dtype(Autocast::dtype(dtype, Op::Softmax))?;
    let e = s
        .broadcast_sub(&s.max_keepdim(D::Minus1)?.detach())?
        .exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    Ok(p.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Purpose, Stream};
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    // Index loops on purpose: the reference reads like the formula, not like the code under test.
    #[allow(clippy::needless_range_loop)]
    #[test]
    fn two_head_attention_matches_naive_loops() {
        let (b, c, hh, ww, heads, groups) = (2, 4, 2, 3, 2, 2);
        let (n, d) = (hh * ww, c / heads);
        let mut s = Stream::new(0, Purpose::Eval, 0);
        let mut draw = |len: usize| s.normal_vec(len);
        let mut ts = HashMap::new();
        let mut w = HashMap::new();
        for layer in ["q", "k", "v", "proj"] {
            let (wt, bs) = (draw(c * c), draw(c));
            ts.insert(
                format!("{layer}.weight"),
                Tensor::from_vec(wt.clone(), (c, c, 1, 1), &Device::Cpu).unwrap(),
            );
            ts.insert(
                format!("{layer}.bias"),
                Tensor::from_vec(bs.clone(), c, &Device::Cpu).unwrap(),
            );
            w.insert(layer, (wt, bs));
        }
        let (gamma, beta) = (draw(c), draw(c));
        ts.insert(
            "norm.weight".into(),
            Tensor::from_vec(gamma.clone(), c, &Device::Cpu).unwrap(),
        );
        ts.insert(
            "norm.bias".into(),
            Tensor::from_vec(beta.clone(), c, &Device::Cpu).unwrap(),
        );
        let xv = draw(b * c * n);
        let x = Tensor::from_vec(xv.clone(), (b, c, hh, ww), &Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
        let opts = AttnOptions {
            heads,
            norm: Some((groups, GN_EPS)),
            output_scale: 1.0,
        };
        let got: Vec<f32> = Attention::new(vb, c, opts)
            .unwrap()
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();

        let at = |v: &[f32], bi: usize, ci: usize, p: usize| v[(bi * c + ci) * n + p] as f64;
        let conv = |layer: &str, h: &[Vec<f64>]| -> Vec<Vec<f64>> {
            let (wt, bs) = &w[layer];
            (0..c)
                .map(|o| {
                    (0..n)
                        .map(|p| {
                            bs[o] as f64
                                + (0..c).map(|i| wt[o * c + i] as f64 * h[i][p]).sum::<f64>()
                        })
                        .collect()
                })
                .collect()
        };
        for bi in 0..b {
            // GroupNorm: statistics over the c / groups channels of a group and all positions.
            let per = c / groups;
            let mut h = vec![vec![0.0; n]; c];
            for g in 0..groups {
                let vals: Vec<f64> = (g * per..(g + 1) * per)
                    .flat_map(|ci| (0..n).map(move |p| (ci, p)))
                    .map(|(ci, p)| at(&xv, bi, ci, p))
                    .collect();
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                for ci in g * per..(g + 1) * per {
                    for p in 0..n {
                        let z = (at(&xv, bi, ci, p) - mean) / (var + GN_EPS).sqrt();
                        h[ci][p] = z * gamma[ci] as f64 + beta[ci] as f64;
                    }
                }
            }
            let (q, k, v) = (conv("q", &h), conv("k", &h), conv("v", &h));
            let mut out = vec![vec![0.0; n]; c];
            for head in 0..heads {
                let chans = head * d..(head + 1) * d;
                for i in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            chans.clone().map(|ci| q[ci][i] * k[ci][j]).sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                    for ci in chans.clone() {
                        out[ci][i] = (0..n).map(|j| (scores[j] - m).exp() / z * v[ci][j]).sum();
                    }
                }
            }
            let proj = conv("proj", &out);
            for ci in 0..c {
                for p in 0..n {
                    let want = at(&xv, bi, ci, p) + proj[ci][p];
                    let g = got[(bi * c + ci) * n + p] as f64;
                    assert!(
                        (g - want).abs() < 1e-4,
                        "b {bi} c {ci} p {p}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_match_closed_form() {
        let s = Tensor::new(&[[1f32, 2., 3.], [1000., 1000., 1000.]], &Device::Cpu).unwrap();
        let p: Vec<Vec<f32>> = softmax_last(&s).unwrap().to_vec2().unwrap();
        let z = 1f64.exp() + 2f64.exp() + 3f64.exp();
        for (j, e) in [1f64, 2., 3.].iter().enumerate() {
            assert!((p[0][j] as f64 - e.exp() / z).abs() < 1e-6);
            assert!((p[1][j] as f64 - 1.0 / 3.0).abs() < 1e-6);
        }
    }
}

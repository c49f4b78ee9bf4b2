//! GroupNorm + SiLU and the convolution after it as one op, optionally with a residual added:
//! y = conv(SiLU(GN(x)), w) + bias (+ residual). As separate ops the activation is one more
//! full-size tensor in the graph, which candle's backward gives a zero-filled gradient buffer
//! and an add pass; fused, the activation lives only inside the op, kept (as the graph kept
//! it before) for the backward, which feeds the convolution's input gradient straight into
//! the GroupNorm backward and drops it. candle's custom ops take
//! at most three tensors, so the parameters travel packed as one vector.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use super::conv;
use super::conv_add::add_in_place;
use super::geom::Geom;
use super::norm::{self, Settings};
use crate::error::{Error, Result};

/// A GroupNorm layer's parameters: weight and bias (C), its groups and epsilon.
#[derive(Clone, Copy, Debug)]
pub struct GroupNormParams<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub groups: usize,
    pub eps: f64,
}

/// What the op's third tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Third {
    /// The per-example conv bias (B, Cout); the packed parameters are [gamma, beta, w].
    Bias,
    /// A residual (B, Cout, Ho, Wo); the packed parameters are [gamma, beta, w, bias (Cout)].
    Residual,
}

/// What the forward keeps for the backward: the group statistics and the activation.
type Kept = (Arc<Vec<f32>>, Vec<f32>);

/// The fused op over (x (B, Cin, H, W), packed parameters, `third`). Only an op in a graph
/// lives until a backward, so sampling keeps nothing.
struct NormConv {
    norm: Settings,
    stride: usize,
    pad: usize,
    w_dims: [usize; 4],
    third: Third,
    kept: Mutex<Option<Kept>>,
}

impl NormConv {
    fn w_len(&self) -> usize {
        self.w_dims.iter().product()
    }

    fn p_len(&self) -> usize {
        let bias = match self.third {
            Third::Bias => 0,
            Third::Residual => self.w_dims[0],
        };
        2 * self.w_dims[1] + self.w_len() + bias
    }
}

impl CustomOp3 for NormConv {
    fn name(&self) -> &'static str {
        "ddpm-norm-silu-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(xl.dims(), &self.w_dims, self.stride, self.pad)?;
        let (b, c, hw) = norm::dims(xl, self.norm.groups)?;
        let (x, p, t) = (
            conv::values(xs, xl, "x")?,
            conv::values(ps, pl, "parameters")?,
            conv::values(ts, tl, "bias or residual")?,
        );
        let third_dims = match self.third {
            Third::Bias => vec![g.b, g.cout],
            Third::Residual => vec![g.b, g.cout, g.ho, g.wo],
        };
        if p.len() != self.p_len() || tl.dims() != third_dims {
            candle_core::bail!(
                "norm_silu_conv2d: {} parameters and {:?} {:?} for {g:?}",
                p.len(),
                self.third,
                tl.dims()
            );
        }
        let (gamma, rest) = p.split_at(c);
        let (beta, rest) = rest.split_at(c);
        let (w, bias) = rest.split_at(self.w_len());
        let (act, stats) = norm::forward_values(self.norm, x, gamma, beta, (b, c, hw));
        let mut y = match self.third {
            Third::Bias => conv::forward(&g, &act, w, t),
            Third::Residual => conv::forward(&g, &act, w, &bias.repeat(g.b)),
        };
        if self.third == Third::Residual {
            add_in_place(&mut y, t);
        }
        if let Ok(mut slot) = self.kept.lock() {
            *slot = Some((Arc::new(stats), act));
        }
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        third: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = self.w_dims[1];
        let gb = p.narrow(0, 0, 2 * c)?;
        let (gamma, beta) = (p.narrow(0, 0, c)?, p.narrow(0, c, c)?);
        let w = p
            .narrow(0, 2 * c, self.w_len())?
            .reshape(&self.w_dims[..])?;
        let kept = self.kept.lock().ok().and_then(|mut k| k.take());
        let (stats, act) = match kept {
            Some((stats, act)) => (Some(stats), Tensor::from_vec(act, x.shape(), x.device())?),
            // A second backward through the same graph: recompute what the first one took.
            None => {
                let norm = norm::Norm::new(self.norm);
                (None, x.apply_op3_no_bwd(&gamma, &beta, &norm)?)
            }
        };
        let (dact, dw, db) = conv::backward_with(&act, &w, dy, (self.stride, self.pad), true)?;
        let dact = dact.ok_or_else(|| candle_core::Error::Msg("no activation gradient".into()))?;
        drop(act);
        let (dx, dgamma, dbeta) = norm::backward(self.norm, stats, x, &gb, &dact)?;
        let dw = dw.flatten_all()?;
        Ok(match self.third {
            Third::Bias => {
                let dp = Tensor::cat(&[&dgamma, &dbeta, &dw], 0)?;
                (Some(dx), Some(dp), Some(db))
            }
            Third::Residual => {
                let dp = Tensor::cat(&[&dgamma, &dbeta, &dw, &db.sum(0)?], 0)?;
                let dr = third.track_op().then(|| dy.clone());
                (Some(dx), Some(dp), dr)
            }
        })
    }
}

/// conv2d(SiLU(GN(x)), w) + bias (+ residual) with `stride` and `padding`: x (B, Cin, H, W),
/// the GroupNorm's parameters over Cin, w (Cout, Cin, k, k), bias (Cout) or (B, Cout),
/// residual (B, Cout, Ho, Wo). f32 CPU tensors run one fused op on our kernels; anything else
/// runs `group_norm`, `conv2d` and an add.
pub fn norm_silu_conv2d(
    x: &Tensor,
    gn: GroupNormParams,
    w: &Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let on_cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let fused = super::enabled(x)
        && [gn.weight, gn.bias, w, bias].into_iter().all(on_cpu_f32)
        && residual.is_none_or(on_cpu_f32)
        && x.rank() == 4
        && (residual.is_none() || bias.rank() == 1);
    if !fused {
        let act = norm::group_norm(x, gn.weight, gn.bias, gn.groups, gn.eps, true)?;
        // With a residual, conv2d_add (one op on CUDA) takes a (Cout) bias only.
        return match residual {
            Some(r) if bias.rank() == 1 => {
                super::conv_add::conv2d_add(&act, w, bias, r, stride, padding)
            }
            Some(r) => Ok((conv::conv2d(&act, w, bias, stride, padding)? + r)?),
            None => conv::conv2d(&act, w, bias, stride, padding),
        };
    }
    let w_dims: [usize; 4] = w.dims().try_into().map_err(|_| {
        Error::Invalid(format!(
            "norm_silu_conv2d: weight {:?} must be 4-d",
            w.dims()
        ))
    })?;
    let (b, cout) = (x.dim(0)?, w_dims[0]);
    let bias_ok = match bias.rank() {
        1 => bias.dims() == [cout],
        _ => bias.dims() == [b, cout],
    };
    if !bias_ok || gn.weight.dims() != [w_dims[1]] || gn.bias.dims() != [w_dims[1]] {
        return Err(Error::Invalid(format!(
            "norm_silu_conv2d: bias {:?}, norm weight {:?} and bias {:?} for weight {w_dims:?}",
            bias.dims(),
            gn.weight.dims(),
            gn.bias.dims()
        )));
    }
    let norm = Settings {
        groups: gn.groups,
        eps: gn.eps as f32,
        silu: true,
    };
    let w = w.flatten_all()?;
    let (p, third, kind) = match residual {
        Some(r) => (
            Tensor::cat(&[gn.weight, gn.bias, &w, bias], 0)?,
            r.contiguous()?,
            Third::Residual,
        ),
        None => (
            Tensor::cat(&[gn.weight, gn.bias, &w], 0)?,
            bias.broadcast_as((b, cout))?.contiguous()?,
            Third::Bias,
        ),
    };
    let op = NormConv {
        norm,
        stride,
        pad: padding,
        w_dims,
        third: kind,
        kept: Mutex::new(None),
    };
    Ok(x.contiguous()?.apply_op3(&p, &third, op)?)
}

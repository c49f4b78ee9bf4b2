//! The UNet's convolution and GroupNorm layers: the same variables as candle_nn's `conv2d` and
//! `group_norm` (same keys, shapes and init hints, so checkpoints and `init` see no
//! difference), run through `kernels` (our CPU kernels; candle's ops on other devices).

use candle_core::Tensor;
use candle_nn::{Conv2dConfig, Init, VarBuilder};

use crate::error::{Error, Result};
use crate::nn::kernels;
use crate::precision::{Autocast, Op};

/// PyTorch's GroupNorm epsilon (`model.norm_eps`'s default).
#[cfg(test)]
pub(crate) const GN_EPS: f64 = 1e-5;

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// `p` zeros on every side.
    Same(usize),
    /// One row and one column of zeros after the image (bottom, right) and none before:
    /// TensorFlow's SAME padding for a 3x3 stride-2 convolution on an even size.
    After,
}

/// A 2-D convolution with bias. Keys: `weight` (cout, cin, k, k), `bias` (cout).
#[derive(Clone, Debug)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    /// Zero rows and columns added after the image before the convolution (Padding::After).
    pad_after: usize,
}

impl Conv {
    /// A k x k convolution `cin -> cout`.
    pub fn new(
        (cin, cout): (usize, usize),
        k: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let conv = candle_nn::conv2d(cin, cout, k, cfg, vb)?;
        let bias = conv
            .bias()
            .cloned()
            .ok_or_else(|| Error::Invalid("conv2d was built without a bias".into()))?;
        Ok(Conv {
            weight: conv.weight().clone(),
            bias,
            stride,
            padding,
            pad_after: 0,
        })
    }

    /// A 3x3 convolution with padding 1 and the given stride.
    pub fn k3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Conv::new((cin, cout), 3, stride, 1, vb)
    }

    /// A 3x3 stride-2 convolution over `c` channels with the given padding.
    pub fn down(c: usize, padding: Padding, vb: VarBuilder) -> Result<Self> {
        Ok(match padding {
            Padding::Same(p) => Conv::new((c, c), 3, 2, p, vb)?,
            Padding::After => Conv {
                pad_after: 1,
                ..Conv::new((c, c), 3, 2, 0, vb)?
            },
        })
    }

    /// A 1x1 convolution.
    pub fn k1(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Conv::new((cin, cout), 1, 1, 0, vb)
    }

    /// x (B, cin, H, W) -> (B, cout, H', W').
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_after > 0 {
            let x = x
                .pad_with_zeros(2, 0, self.pad_after)?
                .pad_with_zeros(3, 0, self.pad_after)?;
            return kernels::conv2d(&x, &self.weight, &self.bias, self.stride, self.padding);
        }
        kernels::conv2d(x, &self.weight, &self.bias, self.stride, self.padding)
    }

    /// The convolution plus `residual` (B, cout, H', W') in one op (a residual block's end).
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        kernels::conv2d_add(
            x,
            &self.weight,
            &self.bias,
            residual,
            self.stride,
            self.padding,
        )
    }

    /// The convolution of SiLU(norm(x)), plus a per-example bias `shift` (B, cout) and a
    /// `residual` (B, cout, H', W') when given, as one op (the activation never becomes a
    /// graph tensor).
    pub fn forward_after_norm(
        &self,
        norm: &Norm,
        x: &Tensor,
        shift: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let bias = match shift {
            Some(shift) => shift.broadcast_add(&self.bias)?,
            None => self.bias.clone(),
        };
        let gn = kernels::GroupNormParams {
            weight: &norm.weight,
            bias: &norm.bias,
            groups: norm.groups,
            eps: norm.eps,
        };
        kernels::norm_silu_conv2d(
            x,
            gn,
            &self.weight,
            &bias,
            residual,
            self.stride,
            self.padding,
        )
    }

    /// The same layer over the same storage, recording no autograd graph.
    pub fn detached(&self) -> Self {
        Conv {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            ..*self
        }
    }
}

/// GroupNorm over `groups` groups with epsilon `eps`, optionally followed by SiLU. Keys:
/// `weight`, `bias` (c).
#[derive(Clone, Debug)]
pub struct Norm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl Norm {
    pub fn new(groups: usize, c: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || c % groups != 0 {
            return Err(Error::Invalid(format!(
                "GroupNorm: {groups} groups do not divide {c} channels"
            )));
        }
        // Autocast keeps normalisation parameters in f32 whatever the compute dtype.
        let dtype = Autocast::dtype(vb.dtype(), Op::NormParams);
        Ok(Norm {
            weight: vb.get_with_hints_dtype(c, "weight", Init::Const(1.), dtype)?,
            bias: vb.get_with_hints_dtype(c, "bias", Init::Const(0.), dtype)?,
            groups,
            eps,
        })
    }

    /// GN(x): x (B, c, ...).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }

    /// SiLU(GN(x)) in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        kernels::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, true)
    }

    /// The same layer over the same storage, recording no autograd graph.
    pub fn detached(&self) -> Self {
        Norm {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            ..*self
        }
    }
}

/// A candle_nn Linear over the same storage, recording no autograd graph.
pub(crate) fn detached_linear(l: &candle_nn::Linear) -> candle_nn::Linear {
    candle_nn::Linear::new(l.weight().detach(), l.bias().map(Tensor::detach))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// Autocast: a network built to compute in a 16-bit type keeps its GroupNorm parameters in
    /// f32 (the convolution weights follow the compute type), and the norm still runs on a
    /// 16-bit input, close to its f32 result.
    #[test]
    fn norm_parameters_stay_f32_under_half_precision() {
        let dev = Device::Cpu;
        let c = 8;
        let gamma: Vec<f32> = (0..c).map(|i| 1.0 + 0.01 * i as f32).collect();
        let map = HashMap::from([
            (
                "n.weight".to_string(),
                Tensor::new(gamma.as_slice(), &dev).unwrap(),
            ),
            (
                "n.bias".to_string(),
                Tensor::zeros(c, DType::F32, &dev).unwrap(),
            ),
            (
                "c.weight".to_string(),
                Tensor::zeros((c, c, 1, 1), DType::F32, &dev).unwrap(),
            ),
            (
                "c.bias".to_string(),
                Tensor::zeros(c, DType::F32, &dev).unwrap(),
            ),
        ]);
        let vb = VarBuilder::from_tensors(map, DType::F16, &dev);
        let norm = Norm::new(4, c, GN_EPS, vb.pp("n")).unwrap();
        let conv = Conv::k1(c, c, vb.pp("c")).unwrap();
        assert_eq!(norm.weight.dtype(), DType::F32);
        assert_eq!(norm.bias.dtype(), DType::F32);
        assert_eq!(conv.weight.dtype(), DType::F16);
        // 1.07 is not an f16 value: the f32 parameter kept it exactly.
        assert_eq!(norm.weight.to_vec1::<f32>().unwrap()[7], 1.07);
        let x = crate::rng::Stream::new(0, crate::rng::Purpose::Eval, 0)
            .randn((2, c, 3, 3), &dev)
            .unwrap();
        let low = norm.forward_silu(&x.to_dtype(DType::F16).unwrap()).unwrap();
        assert_eq!(low.dtype(), DType::F16);
        let full = norm.forward_silu(&x).unwrap();
        let diff = crate::testing::max_abs_diff(&low.to_dtype(DType::F32).unwrap(), &full);
        assert!(diff < 1e-2, "{diff}");
    }
}

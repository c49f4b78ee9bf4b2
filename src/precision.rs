//! The arithmetic precision of the network's forward and backward passes (`train.precision`,
//! `--precision`): f32, or bf16 mixed precision on CUDA. Owns the names, the compute dtype, the
//! device check, and the autocast policy (`Autocast`: which op runs in which dtype, as
//! PyTorch's `torch.autocast`); it does not cast anything itself (training keeps f32 master
//! weights, optimizer state and loss, and casts to [`Precision::dtype`] for the passes).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The valid precision names, for error messages and `--help`.
pub const PRECISION_FORMS: &str = "f32 or bf16";

/// Compute precision of the network passes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 forward and backward passes; f32 master weights, optimizer state and loss.
    Bf16,
}

impl Precision {
    /// The dtype the network computes in.
    pub fn dtype(&self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// Whether this precision is worth running on `device`. bf16 needs a CUDA device: CPUs
    /// without native bf16 emulate it (PyTorch's bf16 W1 training step ran ~20x slower than its
    /// f32 one on the reference machine).
    pub fn check(&self, device: &Device) -> Result<()> {
        match self {
            Precision::F32 => Ok(()),
            Precision::Bf16 if device.is_cuda() => Ok(()),
            Precision::Bf16 => Err(Error::Invalid(
                "precision bf16 needs a CUDA device: on the CPU bf16 is emulated, about 20x \
                 slower than f32; use --precision f32, or --device cuda on a GPU build"
                    .to_string(),
            )),
        }
    }
}

/// The kinds of op whose dtype autocast decides, for the ops the networks have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Convolutions (cuDNN, im2col): autocast's lower-precision list.
    Conv,
    /// Matrix products, Linear layers included: lower-precision list.
    Matmul,
    /// GroupNorm's mean and variance: autocast's f32 list (`group_norm`).
    NormStats,
    /// GroupNorm's weight and bias: kept f32 (autocast never casts them down).
    NormParams,
    /// The attention softmax: f32 list (`softmax`).
    Softmax,
    /// The training loss: f32 list (`mse_loss`).
    Loss,
}

/// PyTorch autocast's semantics for a compute dtype: convolutions and matmuls in the compute
/// dtype; normalisation statistics and parameters, softmax and the loss in f32 when the
/// compute dtype is a 16-bit one (and in the compute dtype otherwise). Master weights and the
/// optimizer stay f32 regardless (`optim`, `ema`).
pub struct Autocast;

impl Autocast {
    /// The dtype `op` runs in when the network computes in `compute`.
    pub fn dtype(compute: DType, op: Op) -> DType {
        let half = matches!(compute, DType::BF16 | DType::F16);
        match op {
            Op::Conv | Op::Matmul => compute,
            Op::NormStats | Op::NormParams | Op::Softmax | Op::Loss if half => DType::F32,
            _ => compute,
        }
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::Invalid(format!(
                "unknown precision `{s}`; expected {PRECISION_FORMS}"
            ))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_both_names() {
        for (name, p, dtype) in [
            ("f32", Precision::F32, DType::F32),
            ("bf16", Precision::Bf16, DType::BF16),
        ] {
            assert_eq!(name.parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string(), name);
            assert_eq!(p.dtype(), dtype);
        }
        assert_eq!(Precision::default(), Precision::F32);
    }

    #[test]
    fn rejects_bad_names_naming_them() {
        for bad in ["", "fp32", "F32", "f16", "bfloat16", "bf16 "] {
            let msg = bad.parse::<Precision>().unwrap_err().to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{bad:?}: {msg}");
            assert!(msg.contains(PRECISION_FORMS), "{bad:?}: {msg}");
        }
    }

    #[test]
    fn config_key_uses_the_same_names() {
        #[derive(Deserialize, Serialize)]
        struct Train {
            precision: Precision,
        }
        let t: Train = toml::from_str("precision = \"bf16\"").unwrap();
        assert_eq!(t.precision, Precision::Bf16);
        let text = toml::to_string(&Train {
            precision: Precision::F32,
        })
        .unwrap();
        assert_eq!(text.trim(), "precision = \"f32\"");
        assert!(toml::from_str::<Train>("precision = \"fp16\"").is_err());
    }

    #[test]
    fn autocast_runs_convs_and_matmuls_low_and_the_rest_in_f32() {
        use Op::*;
        for compute in [DType::BF16, DType::F16] {
            assert_eq!(Autocast::dtype(compute, Conv), compute);
            assert_eq!(Autocast::dtype(compute, Matmul), compute);
            for op in [NormStats, NormParams, Softmax, Loss] {
                assert_eq!(Autocast::dtype(compute, op), DType::F32, "{op:?}");
            }
        }
        // f32 (and wider) runs everything as it is: the f32 path is untouched.
        for compute in [DType::F32, DType::F64] {
            for op in [Conv, Matmul, NormStats, NormParams, Softmax, Loss] {
                assert_eq!(Autocast::dtype(compute, op), compute, "{op:?}");
            }
        }
        assert_eq!(
            Autocast::dtype(Precision::Bf16.dtype(), Softmax),
            DType::F32
        );
    }

    #[test]
    fn bf16_is_refused_on_the_cpu_with_the_reason() {
        Precision::F32.check(&Device::Cpu).unwrap();
        let msg = Precision::Bf16.check(&Device::Cpu).unwrap_err().to_string();
        assert!(msg.contains("CUDA"), "{msg}");
        assert!(msg.contains("20x slower"), "{msg}");
    }
}

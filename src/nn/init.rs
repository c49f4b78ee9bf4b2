//! Deterministic weight initialisation and parameter counting for a `VarMap`. candle initialises
//! variables from its unseedable generator, so after building a model every variable is
//! overwritten here from its own stream `Stream::new(seed, Purpose::Init, fnv1a(name))`: the
//! values depend only on (seed, name, shape), never on HashMap order or on which other
//! variables exist. Checkpoint loading is not this module's business.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::error::{Error, Result};
use crate::rng::{Purpose, Stream};

/// Parameters of a VarMap (the sum of its variables' element counts).
pub fn num_parameters(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// How one variable starts, decided from its key `<path>.<layer>.<weight|bias>`:
///
/// | layer                               | weight                   | bias                     |
/// |-------------------------------------|--------------------------|--------------------------|
/// | `norm*` (GroupNorm)                 | 1                        | 0                        |
/// | `conv2`, `proj`, `conv_out`         | 0                        | 0                        |
/// | `label_embed` (Embedding)           | N(0, 1)                  | -                        |
/// | any other conv / linear             | U(-1/sqrt(fan_in), +...) | U(-1/sqrt(fan_in), +...) |
///
/// fan_in = in_channels * kernel area (PyTorch's default for nn.Conv2d / nn.Linear; the bias
/// uses its weight's fan_in). The zeros are DDPM's init_scale = 0 layers: the last conv of every
/// residual block, the attention output projection and the output conv, so each residual branch
/// starts as the identity and a fresh model predicts exactly 0.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Const(f64),
    Normal,
    Uniform(f64),
}

fn rule(name: &str, fan_in: impl Fn(&str) -> Option<usize>) -> Result<Rule> {
    let unknown = || Error::Invalid(format!("init: no rule for variable `{name}`"));
    let (path, param) = name.rsplit_once('.').ok_or_else(unknown)?;
    let layer = path.rsplit('.').next().unwrap_or(path);
    Ok(match (layer, param) {
        (l, "weight") if l.starts_with("norm") => Rule::Const(1.0),
        (l, "bias") if l.starts_with("norm") => Rule::Const(0.0),
        ("conv2" | "proj" | "conv_out", "weight" | "bias") => Rule::Const(0.0),
        ("label_embed", "weight") => Rule::Normal,
        (_, "weight" | "bias") => {
            let fan = fan_in(&format!("{path}.weight")).ok_or_else(unknown)?;
            Rule::Uniform(1.0 / (fan.max(1) as f64).sqrt())
        }
        _ => return Err(unknown()),
    })
}

/// FNV-1a, 64 bit: a stable stream index for a variable name.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Set every variable of `varmap` by the rules above from `seed`. Same seed => bit-identical
/// weights, on any device and in any dtype (values are drawn as f32 and converted).
pub fn init_weights(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("init: the VarMap's lock is poisoned".into()))?;
    let fan_in = |weight: &str| {
        data.get(weight)
            .map(|w| w.dims().iter().skip(1).product::<usize>())
    };
    for (name, var) in data.iter() {
        let value = draw(rule(name, fan_in)?, name, var, seed)?;
        var.set(&value)?;
    }
    Ok(())
}

fn draw(rule: Rule, name: &str, var: &Var, seed: u64) -> Result<Tensor> {
    let n = var.elem_count();
    let mut stream = Stream::new(seed, Purpose::Init, fnv1a(name));
    let values: Vec<f32> = match rule {
        Rule::Const(c) => vec![c as f32; n],
        Rule::Normal => stream.normal_vec(n),
        Rule::Uniform(bound) => (0..n)
            .map(|_| ((2.0 * stream.uniform() - 1.0) * bound) as f32)
            .collect(),
    };
    Ok(Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_names() {
        let fan = |w: &str| match w {
            "down.0.conv1.weight" => Some(4 * 9),
            "time_embed.0.weight" => Some(16),
            _ => None,
        };
        assert_eq!(rule("down.0.norm1.weight", fan).unwrap(), Rule::Const(1.0));
        assert_eq!(rule("norm_out.bias", fan).unwrap(), Rule::Const(0.0));
        assert_eq!(rule("down.0.conv2.bias", fan).unwrap(), Rule::Const(0.0));
        assert_eq!(rule("mid.1.proj.weight", fan).unwrap(), Rule::Const(0.0));
        assert_eq!(rule("conv_out.weight", fan).unwrap(), Rule::Const(0.0));
        assert_eq!(rule("label_embed.weight", fan).unwrap(), Rule::Normal);
        assert_eq!(
            rule("down.0.conv1.bias", fan).unwrap(),
            Rule::Uniform(1.0 / 6.0)
        );
        assert_eq!(
            rule("time_embed.0.weight", fan).unwrap(),
            Rule::Uniform(0.25)
        );
        assert!(rule("mystery", fan).is_err());
        assert!(rule("down.9.conv1.bias", fan).is_err());
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a("a"), 0xAF63_DC4C_8601_EC8C);
    }
}

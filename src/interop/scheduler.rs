//! diffusers' DDPMScheduler and DDIMScheduler configs and the `[diffusion]` and `[sample]`
//! sections, both ways. diffusers computes its betas in f32 without rescaling for T, ddpm in
//! f64 with the linear ends scaled by 1000/T (`schedule::linear_betas`); the mapping converts
//! the ends so the two describe the same betas. Which steps a sampler visits maps onto
//! `sample.spacing` and `sample.steps_offset`; DDIM's last step onto `sample.set_alpha_to_one`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::{Config, DiffusionConfig, SampleConfig};
use crate::diffusion::{Prediction, VarianceType};
use crate::error::{Error, Result};
use crate::interop::json::Fields;
use crate::interop::unet_config::DIFFUSERS_VERSION;
use crate::loss::LossKind;
use crate::sampler::SamplerKind;
use crate::schedule::{sigmoid_betas, BetaSchedule, Spacing};

/// The scheduler classes ddpm reads and writes.
const DDPM: &str = "DDPMScheduler";
const DDIM: &str = "DDIMScheduler";

/// Read a DDPMScheduler or DDIMScheduler config (absent fields take diffusers' defaults) into
/// `diffusion` and `sample`, which hold the defaults of everything the scheduler does not say.
pub(crate) fn from_diffusers(
    f: &mut Fields,
    diffusion: &mut DiffusionConfig,
    sample: &mut SampleConfig,
) -> Result<()> {
    let class: String = f.or("_class_name", DDPM.to_string())?;
    sample.sampler = match class.as_str() {
        DDPM => SamplerKind::Ddpm,
        DDIM => SamplerKind::Ddim,
        _ => {
            return Err(f.bad(
                "_class_name",
                format!("ddpm reads {DDPM} and {DDIM} configs"),
            ))
        }
    };
    let t: usize = f.or("num_train_timesteps", 1000)?;
    let start: f64 = f.or("beta_start", 0.0001)?;
    let end: f64 = f.or("beta_end", 0.02)?;
    let kind: String = f.or("beta_schedule", "linear".to_string())?;
    // ddpm scales the linear ends by 1000/T; diffusers does not.
    let per_t = t as f64 / 1000.0;
    diffusion.timesteps = t;
    diffusion.beta_start = start * per_t;
    diffusion.beta_end = end * per_t;
    match f.get::<Vec<f64>>("trained_betas")? {
        Some(betas) => {
            if betas.len() != t {
                return Err(f.bad(
                    "trained_betas",
                    format!("{} betas for num_train_timesteps = {t}", betas.len()),
                ));
            }
            diffusion.beta_schedule = BetaSchedule::Custom;
            diffusion.betas = Some(betas);
        }
        None => {
            diffusion.beta_schedule = match kind.as_str() {
                "linear" => BetaSchedule::Linear,
                "scaled_linear" => BetaSchedule::ScaledLinear,
                "squaredcos_cap_v2" => BetaSchedule::Cosine,
                _ => {
                    return Err(f.bad(
                        "beta_schedule",
                        "ddpm reads linear, scaled_linear, squaredcos_cap_v2 or trained_betas",
                    ))
                }
            }
        }
    }
    diffusion.variance = match f.or("variance_type", "fixed_small".to_string())?.as_str() {
        // The _log forms compute the same variance through its logarithm.
        "fixed_small" | "fixed_small_log" => VarianceType::FixedSmall,
        "fixed_large" | "fixed_large_log" => VarianceType::FixedLarge,
        "learned_range" => VarianceType::Learned,
        _ => {
            return Err(f.bad(
                "variance_type",
                "ddpm reads fixed_small(_log), fixed_large(_log) and learned_range (its learned variance)",
            ))
        }
    };
    if diffusion.variance == VarianceType::Learned {
        // A learned variance only trains under a loss with the bound in it.
        diffusion.loss = LossKind::Hybrid;
    }
    diffusion.prediction = match f.or("prediction_type", "epsilon".to_string())?.as_str() {
        "epsilon" => Prediction::Eps,
        "sample" => Prediction::X0,
        "v_prediction" => Prediction::V,
        _ => {
            return Err(f.bad(
                "prediction_type",
                "ddpm reads epsilon, sample and v_prediction",
            ))
        }
    };
    diffusion.zero_terminal_snr = f.or("rescale_betas_zero_snr", false)?;
    if diffusion.zero_terminal_snr && diffusion.prediction == Prediction::Eps {
        return Err(f.bad(
            "rescale_betas_zero_snr",
            "with prediction_type epsilon the last step cannot recover x0 (abar_T = 0); ddpm needs v_prediction or sample",
        ));
    }
    sample.clip_x0 = f.or("clip_sample", true)?;
    let range: f64 = f.or("clip_sample_range", 1.0)?;
    if sample.clip_x0 && range != 1.0 {
        return Err(f.bad("clip_sample_range", "ddpm clips x0 to [-1, 1]"));
    }
    if f.or("thresholding", false)? {
        return Err(f.bad(
            "thresholding",
            "ddpm does not do dynamic thresholding; it clips x0 to [-1, 1]",
        ));
    }
    // Read by dynamic thresholding only, which is off.
    f.get::<Value>("dynamic_thresholding_ratio")?;
    f.get::<Value>("sample_max_value")?;
    sample.spacing = match f.or("timestep_spacing", "leading".to_string())?.as_str() {
        "linspace" => Spacing::Linspace,
        "leading" => Spacing::Leading,
        "trailing" => Spacing::Trailing,
        _ => {
            return Err(f.bad(
                "timestep_spacing",
                "ddpm reads linspace, leading and trailing",
            ))
        }
    };
    let offset: usize = f.or("steps_offset", 0)?;
    // diffusers adds the offset to the leading spacing only.
    sample.steps_offset = if sample.spacing == Spacing::Leading {
        offset
    } else {
        0
    };
    // DDIM's; a DDPMScheduler config may carry it for DDIMPipeline, which converts it.
    sample.set_alpha_to_one = f.or("set_alpha_to_one", true)?;
    Ok(())
}

/// The scheduler config of `cfg`: a DDIMScheduler when its sampler is DDIM, else a
/// DDPMScheduler (both carry every field, which the other class ignores). Betas diffusers has
/// no name for (the sigmoid schedule) are written out as `trained_betas`.
pub fn to_diffusers(cfg: &Config) -> Result<Value> {
    let d = &cfg.diffusion;
    let s = &cfg.sample;
    let t = d.timesteps;
    let per_1000 = 1000.0 / t as f64;
    let (kind, trained) = match d.beta_schedule {
        BetaSchedule::Linear => ("linear", None),
        BetaSchedule::ScaledLinear => ("scaled_linear", None),
        BetaSchedule::Cosine => ("squaredcos_cap_v2", None),
        BetaSchedule::Sigmoid => ("linear", Some(sigmoid_betas(t))),
        BetaSchedule::Custom => (
            "linear",
            Some(d.betas.clone().ok_or_else(|| {
                Error::Config("diffusion.beta_schedule = \"custom\" without diffusion.betas".into())
            })?),
        ),
    };
    let variance = match d.variance {
        VarianceType::FixedSmall => "fixed_small",
        VarianceType::FixedLarge => "fixed_large",
        VarianceType::Learned => "learned_range",
    };
    let prediction = match d.prediction {
        Prediction::Eps => "epsilon",
        Prediction::X0 => "sample",
        Prediction::V => "v_prediction",
    };
    let spacing = match s.spacing {
        Spacing::Linspace => "linspace",
        Spacing::Leading => "leading",
        Spacing::Trailing => "trailing",
    };
    let class = match s.sampler {
        SamplerKind::Ddim => DDIM,
        _ => DDPM,
    };
    let mut c: BTreeMap<&str, Value> = BTreeMap::new();
    c.insert("_class_name", json!(class));
    c.insert("_diffusers_version", json!(DIFFUSERS_VERSION));
    c.insert("beta_end", json!(d.beta_end * per_1000));
    c.insert("beta_schedule", json!(kind));
    c.insert("beta_start", json!(d.beta_start * per_1000));
    c.insert("clip_sample", json!(s.clip_x0));
    c.insert("clip_sample_range", json!(1.0));
    c.insert("dynamic_thresholding_ratio", json!(0.995));
    c.insert("num_train_timesteps", json!(t));
    c.insert("prediction_type", json!(prediction));
    c.insert("rescale_betas_zero_snr", json!(d.zero_terminal_snr));
    c.insert("sample_max_value", json!(1.0));
    c.insert("set_alpha_to_one", json!(s.set_alpha_to_one));
    c.insert("steps_offset", json!(s.steps_offset));
    c.insert("thresholding", json!(false));
    c.insert("timestep_spacing", json!(spacing));
    c.insert("trained_betas", json!(trained));
    c.insert("variance_type", json!(variance));
    Ok(json!(c))
}

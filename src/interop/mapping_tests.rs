//! The config mappings on their own: what ddpm writes for diffusers reads back as the same
//! model and schedule, and each value ddpm cannot honour is refused naming its field.

use std::path::Path;

use serde_json::Value;

use super::json::Fields;
use super::{scheduler, unet_config};
use crate::config::Config;
use crate::nn::{Arch, UNetConfig};
use crate::schedule::BetaSchedule;

fn unet_from(v: &Value) -> crate::error::Result<unet_config::UNetSpec> {
    let mut f = Fields::parse(&v.to_string(), Path::new("config.json"))?;
    let spec = unet_config::from_diffusers(&mut f)?;
    f.finish("UNet2DModel")?;
    Ok(spec)
}

fn small() -> UNetConfig {
    UNetConfig {
        base_channels: 16,
        channel_mult: vec![1, 2, 2],
        num_res_blocks: 1,
        attention_resolutions: Some(vec![4]),
        norm_groups: 8,
        dropout: 0.0,
        ..UNetConfig::default()
    }
}

#[test]
fn exported_unet_configs_import_as_the_same_model() {
    let variants = [
        small(),
        UNetConfig {
            num_classes: Some(10),
            dropout: 0.1,
            attention_resolutions: Some(vec![8, 2]),
            ..small()
        },
        UNetConfig {
            norm_eps: 1e-6,
            freq_shift: 0,
            flip_sin_to_cos: true,
            scale_shift: true,
            attention_head_dim: Some(8),
            mid_block_scale_factor: 2f64.sqrt(),
            center_input_sample: true,
            downsample_padding: 0,
            num_classes: Some(3),
            null_class: false,
            ..small()
        },
    ];
    for model in variants {
        for (size, in_c, out_c) in [((8, 8), 1, 1), ((8, 16), 3, 6)] {
            let v = unet_config::to_diffusers(&model, size, in_c, out_c).unwrap();
            let spec = unet_from(&v).unwrap();
            assert_eq!(spec.model, model, "{v}");
            assert_eq!(
                (spec.image_size, spec.in_channels, spec.out_channels),
                (size, in_c, out_c)
            );
        }
    }
}

#[test]
fn unet_fields_ddpm_cannot_honour_are_refused_by_name() {
    let base = unet_config::to_diffusers(&small(), (8, 8), 3, 3).unwrap();
    let cases: [(&str, Value, &str); 13] = [
        (
            "time_embedding_type",
            "fourier".into(),
            "time_embedding_type = \"fourier\"",
        ),
        (
            "up_block_types",
            serde_json::json!(["UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]),
            "mirrors down_block_types[0]",
        ),
        (
            "class_embed_type",
            "timestep".into(),
            "class_embed_type = \"timestep\"",
        ),
        (
            "block_out_channels",
            serde_json::json!([16, 24, 32]),
            "24 is not",
        ),
        ("downsample_padding", 2.into(), "downsample_padding = 2"),
        ("act_fn", "gelu".into(), "act_fn = \"gelu\""),
        ("add_attention", false.into(), "add_attention = false"),
        ("mid_block_type", Value::Null, "mid_block_type = null"),
        ("foo", 1.into(), "foo = 1: ddpm does not read"),
        ("sample_size", Value::Null, "sample_size = null"),
        (
            "layers_per_block",
            serde_json::json!([1, 2]),
            "layers_per_block = [1,2]",
        ),
        ("attention_head_dim", 3.into(), "attention_head_dim = 3"),
        (
            "resnet_time_scale_shift",
            "spatial".into(),
            "resnet_time_scale_shift = \"spatial\"",
        ),
    ];
    for (key, value, want) in cases {
        let mut v = base.clone();
        v[key] = value;
        let e = unet_from(&v).unwrap_err().to_string();
        assert!(
            e.starts_with("config.json: ") && e.contains(want),
            "{key}: {e}"
        );
    }
    // Absent fields take UNet2DModel's defaults: 8-channel heads, [cos, sin], shift 0.
    let mut v = base.clone();
    for key in ["attention_head_dim", "flip_sin_to_cos", "freq_shift"] {
        v.as_object_mut().unwrap().remove(key);
    }
    let m = unet_from(&v).unwrap().model;
    assert_eq!(
        (m.attention_head_dim, m.flip_sin_to_cos, m.freq_shift),
        (Some(8), true, 0)
    );
}

#[test]
fn models_diffusers_cannot_express_are_not_exported() {
    let e = |m: UNetConfig| {
        unet_config::to_diffusers(&m, (8, 8), 1, 1)
            .unwrap_err()
            .to_string()
    };
    assert!(e(UNetConfig {
        arch: Arch::Mlp,
        ..small()
    })
    .contains("model.arch"));
    // The first level's 16 channels get 16 groups in ddpm, 32 in UNet2DModel.
    assert!(e(UNetConfig {
        norm_groups: 32,
        ..small()
    })
    .contains("model.norm_groups = 32"));
    // Heads of 8 channels at the 16-channel level, 16 at the 32-channel middle.
    assert!(e(UNetConfig {
        num_heads: 2,
        attention_resolutions: Some(vec![8]),
        ..small()
    })
    .contains("model.num_heads = 2"));
}

fn scheduler_from(v: &Value) -> crate::error::Result<Config> {
    let mut cfg = Config::default();
    let mut f = Fields::parse(&v.to_string(), Path::new("scheduler_config.json"))?;
    scheduler::from_diffusers(&mut f, &mut cfg.diffusion, &mut cfg.sample)?;
    f.finish("scheduler")?;
    Ok(cfg)
}

#[test]
fn exported_schedulers_import_as_the_same_schedule_and_sampler() {
    let mut cfgs = vec![Config::default()];
    let mut c = Config::default();
    c.diffusion.beta_schedule = BetaSchedule::Cosine;
    c.diffusion.prediction = crate::diffusion::Prediction::V;
    c.diffusion.zero_terminal_snr = true;
    c.sample.sampler = crate::sampler::SamplerKind::Ddim;
    c.sample.spacing = crate::schedule::Spacing::Leading;
    c.sample.steps_offset = 1;
    c.sample.set_alpha_to_one = false;
    c.sample.clip_x0 = false;
    cfgs.push(c);
    let mut c = Config::default();
    c.diffusion.beta_schedule = BetaSchedule::ScaledLinear;
    c.diffusion.variance = crate::diffusion::VarianceType::Learned;
    c.diffusion.loss = crate::loss::LossKind::Hybrid;
    c.diffusion.prediction = crate::diffusion::Prediction::X0;
    c.sample.spacing = crate::schedule::Spacing::Linspace;
    cfgs.push(c);
    for cfg in cfgs {
        let back = scheduler_from(&scheduler::to_diffusers(&cfg).unwrap()).unwrap();
        assert_eq!(back.diffusion, cfg.diffusion);
        let s = |c: &Config| {
            let s = &c.sample;
            (
                s.sampler,
                s.spacing,
                s.steps_offset,
                s.set_alpha_to_one,
                s.clip_x0,
            )
        };
        assert_eq!(s(&back), s(&cfg));
    }
    // The sigmoid schedule has no diffusers name: its betas are written out.
    let mut c = Config::default();
    c.diffusion.beta_schedule = BetaSchedule::Sigmoid;
    c.diffusion.timesteps = 100;
    let back = scheduler_from(&scheduler::to_diffusers(&c).unwrap()).unwrap();
    assert_eq!(back.diffusion.beta_schedule, BetaSchedule::Custom);
    assert_eq!(
        back.diffusion.schedule().unwrap().alphas_cumprod,
        c.diffusion.schedule().unwrap().alphas_cumprod
    );
}

#[test]
fn scheduler_fields_ddpm_cannot_honour_are_refused_by_name() {
    let base = scheduler::to_diffusers(&Config::default()).unwrap();
    let cases: [(&str, Value, &str); 8] = [
        (
            "beta_schedule",
            "sigmoid".into(),
            "beta_schedule = \"sigmoid\"",
        ),
        (
            "variance_type",
            "learned".into(),
            "variance_type = \"learned\"",
        ),
        ("thresholding", true.into(), "thresholding = true"),
        ("clip_sample_range", 2.0.into(), "clip_sample_range = 2.0"),
        (
            "prediction_type",
            "noise".into(),
            "prediction_type = \"noise\"",
        ),
        (
            "_class_name",
            "PNDMScheduler".into(),
            "_class_name = \"PNDMScheduler\"",
        ),
        (
            "trained_betas",
            serde_json::json!([0.1, 0.2]),
            "2 betas for num_train_timesteps = 1000",
        ),
        (
            "rescale_betas_zero_snr",
            true.into(),
            "rescale_betas_zero_snr = true",
        ),
    ];
    for (key, value, want) in cases {
        let mut v = base.clone();
        v[key] = value;
        let e = scheduler_from(&v).unwrap_err().to_string();
        assert!(
            e.starts_with("scheduler_config.json: ") && e.contains(want),
            "{key}: {e}"
        );
    }
}

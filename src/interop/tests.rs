//! The import against diffusers itself: random-initialised UNet2DModels and scheduler configs
//! saved by diffusers with their outputs (tests/fixtures/diffusers, written by
//! `benches/interop/fixtures.py`), and the key lists of the published DDPM models.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::json::Fields;
use super::keys::key_pairs;
use super::{read, scheduler, unet_config};
use crate::config::Config;
use crate::generate::sample_options;
use crate::model::{self, Network};
use crate::nn::kernels::with_candle_ops;
use crate::sampler::{sample_from_latent, SamplerKind};
use crate::testing::{max_abs, max_abs_diff};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers")
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.to_vec1::<i64>().unwrap()
}

/// The imported model of fixture `name` and the fixture's recorded tensors.
fn imported(name: &str) -> (Config, Network, HashMap<String, Tensor>) {
    let dir = fixtures().join(name);
    let imp = read(&dir, None).unwrap();
    let weights: HashMap<String, Tensor> = imp.weights.iter().cloned().collect();
    let net = model::from_tensors(&imp.config, weights, DType::F32, &Device::Cpu).unwrap();
    (imp.config, net, load(&dir.join("io.safetensors")))
}

/// Each fixture model's output on its recorded inputs matches diffusers' within 1e-4 of the
/// output's scale, through our CPU kernels and through candle's ops (what other devices run).
#[test]
fn imported_models_compute_what_diffusers_computes() {
    for name in ["tf_pipeline", "scale_shift_unet", "learned_pipeline"] {
        let (_, net, io) = imported(name);
        let t: Vec<usize> = ints(&io["t"]).iter().map(|&v| v as usize).collect();
        let y: Option<Vec<u32>> = io
            .get("y")
            .map(|y| ints(y).iter().map(|&v| v as u32).collect());
        let want = &io["out"];
        let run = || net.forward(&io["x"], &t, y.as_deref(), None).unwrap();
        for (path, out) in [("kernels", run()), ("candle ops", with_candle_ops(run))] {
            let rel = max_abs_diff(&out, want) / max_abs(want);
            assert!(rel < 1e-4, "{name} through {path}: relative error {rel}");
        }
    }
}

/// DDIM-50 from diffusers' x_T (DDIMPipeline, eta 0, use_clipped_model_output=True, the
/// DDPMScheduler config converted as DDIMPipeline does) within 1e-3 of its image.
#[test]
fn ddim_50_from_the_same_noise_matches_diffusers() {
    let (cfg, net, io) = imported("tf_pipeline");
    let schedule = cfg.diffusion.schedule().unwrap();
    let mut opts = sample_options(&cfg, SamplerKind::Ddim, 0);
    opts.steps = 50;
    let x = sample_from_latent(
        &net,
        &schedule,
        cfg.diffusion.parameterization(),
        &opts,
        &io["ddim_x_t"],
        opts.steps,
        &mut |_| Ok(()),
    )
    .unwrap()
    .clamp(-1f32, 1f32)
    .unwrap();
    let diff = max_abs_diff(&x, &io["ddim_out"]);
    assert!(diff < 1e-3, "max abs difference {diff}");
}

/// Every scheduler config maps to a schedule with diffusers' alphas_cumprod (theirs in f32)
/// and to sampling options that visit diffusers' timesteps.
#[test]
fn schedulers_give_diffusers_alphas_cumprod_and_timesteps() {
    let dir = fixtures().join("schedulers");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 4);
    for json in names {
        let mut cfg = Config::default();
        let mut f = Fields::read(&json).unwrap();
        scheduler::from_diffusers(&mut f, &mut cfg.diffusion, &mut cfg.sample).unwrap();
        f.finish("scheduler").unwrap();
        let io = load(&json.with_extension("safetensors"));
        let ours = cfg.diffusion.schedule().unwrap().alphas_cumprod;
        let theirs = io["alphas_cumprod"].to_vec1::<f32>().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{}", json.display());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            // f32 cumulative products: a few ulp per factor.
            assert!(
                (a - *b as f64).abs() <= 2e-5 * a.max(1e-3),
                "{} abar[{i}] {a} vs {b}",
                json.display()
            );
        }
        for (key, t) in &io {
            let Some(k) = key.strip_prefix("timesteps_") else {
                continue;
            };
            let mut opts = sample_options(&cfg, cfg.sample.sampler, 0);
            opts.steps = k.parse().unwrap();
            let mut want: Vec<usize> = ints(t).iter().map(|&v| v as usize).collect();
            want.reverse();
            assert_eq!(
                opts.timesteps(ours.len()).unwrap(),
                want,
                "{} {key}",
                json.display()
            );
        }
    }
}

/// google/ddpm-cifar10-32's unet/config.json. No file from the Hugging Face hub is fetched
/// here: the text is as copies of it in public repositories quote it (diffusers 0.0.4; later
/// hub revisions add "attention_head_dim": null, which keeps one head per attention block,
/// as 0.0.4 built them).
const CIFAR10_32: &str = r#"{
  "_class_name": "UNet2DModel",
  "_diffusers_version": "0.0.4",
  "act_fn": "silu",
  "attention_head_dim": null,
  "block_out_channels": [128, 256, 256, 256],
  "center_input_sample": false,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
  "downsample_padding": 0,
  "flip_sin_to_cos": false,
  "freq_shift": 1,
  "in_channels": 3,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-06,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 32,
  "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
}"#;

/// google/ddpm-celebahq-256's unet/config.json, quoted the same way (the LSUN 256 models share
/// it).
const CELEBAHQ_256: &str = r#"{
  "_class_name": "UNet2DModel",
  "_diffusers_version": "0.0.4",
  "act_fn": "silu",
  "attention_head_dim": null,
  "block_out_channels": [128, 128, 256, 256, 512, 512],
  "center_input_sample": false,
  "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 0,
  "flip_sin_to_cos": false,
  "freq_shift": 1,
  "in_channels": 3,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-06,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 256,
  "time_embedding_type": "positional",
  "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]
}"#;

/// The published models' configs build exactly diffusers' state dict: the same names, shapes
/// and parameter count as UNet2DModel built from them (keys/*.txt, from fixtures.py).
#[test]
fn published_ddpm_configs_build_diffusers_state_dicts() {
    for (name, text, params) in [
        ("ddpm-cifar10-32", CIFAR10_32, 35_746_307),
        ("ddpm-celebahq-256", CELEBAHQ_256, 113_673_219),
    ] {
        let mut f = Fields::parse(text, Path::new(name)).unwrap();
        let spec = unet_config::from_diffusers(&mut f).unwrap();
        f.finish("UNet2DModel").unwrap();
        let pairs = key_pairs(
            &spec.model,
            spec.in_channels,
            spec.out_channels,
            spec.image_size,
        )
        .unwrap();
        let ours: BTreeMap<String, Vec<usize>> = pairs
            .iter()
            .map(|p| (p.theirs.clone(), p.their_shape.clone()))
            .collect();
        let listed = std::fs::read_to_string(fixtures().join(format!("keys/{name}.txt"))).unwrap();
        let theirs: BTreeMap<String, Vec<usize>> = listed
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let mut parts = l.split(' ');
                let key = parts.next().unwrap().to_string();
                (key, parts.map(|d| d.parse().unwrap()).collect())
            })
            .collect();
        assert_eq!(ours, theirs, "{name}");
        let total: usize = pairs
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        assert_eq!(total, params, "{name}");
        assert!(listed.starts_with(&format!(
            "# {name}: {} tensors, {params} parameters",
            theirs.len()
        )));
    }
}

/// The fixtures pin the options they use: built with one option back at the DDPM paper's
/// setting (same weights), each model's output moves far past the tolerance above.
#[test]
fn each_option_the_fixtures_use_moves_the_output() {
    type Change = fn(&mut crate::nn::UNetConfig);
    let cases: [(&str, &str, Change); 9] = [
        ("tf_pipeline", "downsample_padding", |m| {
            m.downsample_padding = 1
        }),
        ("tf_pipeline", "freq_shift", |m| m.freq_shift = 0),
        ("tf_pipeline", "flip_sin_to_cos", |m| {
            m.flip_sin_to_cos = true
        }),
        // Plumbing only: at 1e-6 against 1e-5 the difference is below the tolerance.
        ("tf_pipeline", "norm_eps", |m| m.norm_eps = 1.0),
        ("scale_shift_unet", "center_input_sample", |m| {
            m.center_input_sample = false
        }),
        ("scale_shift_unet", "mid_block_scale_factor", |m| {
            m.mid_block_scale_factor = 1.0
        }),
        ("scale_shift_unet", "attention_head_dim", |m| {
            m.attention_head_dim = None
        }),
        ("scale_shift_unet", "flip_sin_to_cos", |m| {
            m.flip_sin_to_cos = false
        }),
        ("scale_shift_unet", "freq_shift", |m| m.freq_shift = 1),
    ];
    for (name, option, change) in cases {
        let dir = fixtures().join(name);
        let imp = read(&dir, None).unwrap();
        let io = load(&dir.join("io.safetensors"));
        let mut cfg = imp.config.clone();
        change(&mut cfg.model);
        let weights: HashMap<String, Tensor> = imp.weights.iter().cloned().collect();
        let net = model::from_tensors(&cfg, weights, DType::F32, &Device::Cpu).unwrap();
        let t: Vec<usize> = ints(&io["t"]).iter().map(|&v| v as usize).collect();
        let y: Option<Vec<u32>> = io
            .get("y")
            .map(|y| ints(y).iter().map(|&v| v as u32).collect());
        let out = net.forward(&io["x"], &t, y.as_deref(), None).unwrap();
        let rel = max_abs_diff(&out, &io["out"]) / max_abs(&io["out"]);
        assert!(
            rel > 1e-3,
            "{name} without {option}: relative change only {rel}"
        );
    }
}

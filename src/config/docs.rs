//! What each config key means, in one line, and a config written out with those lines as
//! comments (`ddpm init`). The list is checked against the serialised config (every key has a
//! line, every line a key) and against README.md's configuration table, so neither can fall
//! behind a new key.

use std::collections::BTreeSet;

use super::Config;
use crate::error::{Error, Result};
use crate::nn::Arch;

/// A key (`section.key`), its meaning, and for a key without a default value (absent means
/// "off" or "derived") an example value that `commented` shows commented out.
pub struct KeyDoc {
    pub key: &'static str,
    pub doc: &'static str,
    pub example: Option<&'static str>,
}

const fn key(key: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        doc,
        example: None,
    }
}

const fn optional(key: &'static str, doc: &'static str, example: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        doc,
        example: Some(example),
    }
}

/// Every key of the config, in declaration order.
pub const KEYS: &[KeyDoc] = &[
    key("model.arch", "\"unet\" for images, \"mlp\" for vectors (sizes in [model.mlp])"),
    key("model.base_channels", "channels of the first level; the time embedding has 4x"),
    key("model.channel_mult", "channel multiplier per level; each level after the first halves the size"),
    key("model.num_res_blocks", "residual blocks per level on the way down (one more on the way up)"),
    optional(
        "model.attention_resolutions",
        "feature-map heights with self-attention (absent: 16 where reached, else the 2nd level's)",
        "[16]",
    ),
    key("model.num_heads", "attention heads (must divide the channels where attention is)"),
    key("model.dropout", "dropout in the residual blocks, in [0, 1)"),
    key("model.norm_groups", "GroupNorm groups (at most the channel count)"),
    optional(
        "model.num_classes",
        "a class-conditional model with this many classes (absent: unconditional)",
        "10",
    ),
    optional("model.norm_eps", "GroupNorm epsilon (absent: 1e-5; the DDPM checkpoints use 1e-6)", "1e-6"),
    optional(
        "model.freq_shift",
        "time-embedding frequencies exp(-ln(1e4) i / (C/2 - it)) (absent: 1; diffusers: 0)",
        "0",
    ),
    optional("model.flip_sin_to_cos", "time embedding as [cos, sin], not [sin, cos] (absent: false)", "true"),
    optional(
        "model.scale_shift",
        "residual blocks take the time embedding as GN(h)(1 + scale) + shift (absent: false)",
        "true",
    ),
    optional(
        "model.attention_head_dim",
        "channels per attention head, instead of num_heads (absent: num_heads heads)",
        "32",
    ),
    optional("model.mid_block_scale_factor", "the middle blocks divide their output by it (absent: 1)", "1.414"),
    optional("model.center_input_sample", "the network maps its input x to 2x - 1 first (absent: false)", "true"),
    optional(
        "model.downsample_padding",
        "1: pad every side; 0: one row and column after the image, TF-style (absent: 1)",
        "0",
    ),
    optional(
        "model.null_class",
        "the label table has a \"no class\" row, for guidance (absent: true)",
        "false",
    ),
    key("model.mlp.width", "hidden width of the MLP"),
    key("model.mlp.blocks", "residual blocks of the MLP"),
    key("model.mlp.time_dim", "width of the MLP's timestep embedding (even, >= 4)"),
    key("diffusion.timesteps", "T, the number of diffusion steps"),
    key(
        "diffusion.beta_schedule",
        "\"linear\", \"scaled_linear\", \"cosine\", \"sigmoid\" or \"custom\" (diffusion.betas)",
    ),
    key("diffusion.beta_start", "the linear schedules' first beta at T = 1000 (scaled by 1000/T)"),
    key("diffusion.beta_end", "the linear schedules' last beta at T = 1000"),
    optional(
        "diffusion.betas",
        "the betas of beta_schedule = \"custom\", one per timestep (absent: none)",
        "[0.0001, 0.02]",
    ),
    key("diffusion.zero_terminal_snr", "rescale so abar_T = 0 (needs v or x0 prediction)"),
    key("diffusion.prediction", "what the network predicts: \"eps\", \"x0\" or \"v\""),
    key("diffusion.variance", "\"fixed_small\" (beta~), \"fixed_large\" (beta) or \"learned\""),
    key("diffusion.loss", "\"simple\", \"hybrid\" (L_simple + vlb_weight L_vlb) or \"kl\""),
    optional(
        "diffusion.min_snr_gamma",
        "min-SNR-gamma weighting of the simple loss (absent: off)",
        "5.0",
    ),
    key("diffusion.vlb_weight", "lambda of the hybrid loss"),
    key("data.dataset", "\"digits\" (embedded), \"folder\", \"moons\", \"swiss_roll\", \"8gaussians\" or \"points\""),
    optional(
        "data.path",
        "the image folder (recursive; one subfolder per class) or the .csv/.npy of \"points\"",
        "\"data/images\"",
    ),
    key("data.image_size", "training size: 32 or [height, width] (resized, centre-cropped)"),
    key("data.channels", "1 (luma) or 3 (RGB)"),
    key("data.random_flip", "random horizontal flips"),
    key("data.class_labels", "train with labels: subfolder names, or the digits' 0-9"),
    key("data.workers", "threads that decode and augment batches"),
    key("data.prefetch", "batches prepared ahead of the training step"),
    key("data.num_points", "points a generator draws as the training set"),
    optional(
        "data.noise",
        "a generator's noise standard deviation (absent: its own default)",
        "0.05",
    ),
    key("data.seed", "seed of a generator's training set (apart from train.seed)"),
    optional(
        "data.dim",
        "dimension of vector data (absent: from the data; training records it)",
        "2",
    ),
    key("optim.lr", "AdamW's peak learning rate"),
    key("optim.beta1", "AdamW's first-moment decay"),
    key("optim.beta2", "AdamW's second-moment decay"),
    key("optim.eps", "AdamW's epsilon"),
    key("optim.weight_decay", "decoupled weight decay"),
    key("optim.warmup_steps", "linear learning-rate warm-up from 0, in steps"),
    key("optim.schedule", "after warm-up: \"constant\", \"cosine\" or \"linear\" decay to min_lr"),
    key("optim.min_lr", "the learning rate a decaying schedule reaches at train.steps"),
    key("optim.grad_clip", "clip the global gradient norm to this (false: no clipping)"),
    key("ema.decay", "the EMA's largest decay, reached after its warm-up"),
    key("ema.warmup_power", "EMA warm-up: decay = 1 - (1 + step)^(-warmup_power)"),
    key("ema.update_every", "average every this many steps"),
    key("ema.start_step", "before this step the EMA copies the weights"),
    key("train.steps", "optimizer steps; also the length of a decaying lr schedule"),
    key("train.batch_size", "examples per optimizer step"),
    key("train.grad_accum", "micro-batches per step (batch_size must divide by it)"),
    key("train.precision", "\"f32\", or \"bf16\" (CUDA) with f32 master weights"),
    key("train.seed", "the seed of every random stream"),
    key("train.log_every", "steps between metrics.csv rows, log lines and loss.png"),
    key("train.sample_every", "steps between EMA sample grids in samples/ (0: never)"),
    key("train.sample_count", "images in each sample grid"),
    key("train.checkpoint_every", "steps between checkpoints (one is always written at the end)"),
    key("train.keep_checkpoints", "checkpoints kept besides latest.safetensors"),
    key("train.label_dropout", "probability a label is dropped, for classifier-free guidance"),
    key("sample.sampler", "\"ddpm\", \"ddim\", \"pc\", \"dpm++2m\" or \"heun\""),
    optional(
        "sample.steps",
        "sampling steps (absent: T for ddpm and pc, 50 for ddim, 20 for dpm++2m and heun)",
        "50",
    ),
    key("sample.eta", "DDIM's eta: 0 deterministic, 1 ancestral-like"),
    key("sample.spacing", "timesteps for fewer steps: \"linspace\", \"leading\" or \"trailing\""),
    key("sample.clip_x0", "clip the predicted x0 to [-1, 1] (false for vector data)"),
    optional(
        "sample.steps_offset",
        "added to every leading-spacing timestep, diffusers' steps_offset (absent: 0)",
        "1",
    ),
    optional(
        "sample.set_alpha_to_one",
        "DDIM's last step ends at abar = 1; false: at abar_0 (absent: true)",
        "false",
    ),
    optional(
        "sample.use_clipped_model_output",
        "with clip_x0, DDIM's eps from the clipped x0; false: the model's (absent: true)",
        "false",
    ),
    key("sample.batch_size", "images per model batch"),
    key("sample.use_ema", "sample with the EMA weights"),
    key("sample.corrector_steps", "Langevin corrector steps per step (sampler \"pc\")"),
    key("sample.snr", "the corrector's target signal-to-noise ratio (sampler \"pc\")"),
    key("sample.guidance", "classifier-free guidance scale w (1: plain conditional)"),
];

/// The line of `key` (`section.key`).
pub fn doc(key: &str) -> Option<&'static KeyDoc> {
    KEYS.iter().find(|k| k.key == key)
}

/// Whether an absent optional `key` would mean anything for `cfg` (an MLP has no attention
/// or classes; a digits run no point noise).
fn relevant(cfg: &Config, key: &str) -> bool {
    match key.split_once('.') {
        Some(("model", _)) => cfg.model.arch == Arch::Unet,
        Some(("data", k)) => cfg.data.dataset.uses(k),
        _ => true,
    }
}

/// `cfg` as TOML (`Config::to_toml`: the keys its network and data use), each key under a
/// comment saying what it does, and the unset optional keys that apply shown commented out.
pub fn commented(cfg: &Config) -> Result<String> {
    let text = cfg.to_toml()?;
    let mut out = String::new();
    let mut section = String::new();
    let mut written = BTreeSet::new();
    let flush = |section: &str, written: &BTreeSet<String>, out: &mut String| {
        for k in KEYS.iter().filter(|k| k.example.is_some()) {
            let in_section = k.key.rsplit_once('.').map(|(s, _)| s) == Some(section);
            if in_section && !written.contains(k.key) && relevant(cfg, k.key) {
                let name = &k.key[section.len() + 1..];
                let example = k.example.unwrap_or_default();
                out.push_str(&format!("# {}\n# {name} = {example}\n", k.doc));
            }
        }
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            flush(&section, &written, &mut out);
            if !out.is_empty() {
                out.push('\n');
            }
            section = name.to_string();
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let name = line.split('=').next().unwrap_or_default().trim();
        let full = format!("{section}.{name}");
        let d = doc(&full)
            .ok_or_else(|| Error::Config(format!("no description of the config key `{full}`")))?;
        out.push_str(&format!("# {}\n{line}\n", d.doc));
        written.insert(full);
    }
    flush(&section, &written, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with every optional key set, so the serialised keys are all the keys.
    fn everything() -> Config {
        let mut c = Config::default();
        c.model.attention_resolutions = Some(vec![16]);
        c.model.num_classes = Some(10);
        c.model.norm_eps = 1e-6;
        c.model.freq_shift = 0;
        c.model.flip_sin_to_cos = true;
        c.model.scale_shift = true;
        c.model.attention_head_dim = Some(32);
        c.model.mid_block_scale_factor = 2.0;
        c.model.center_input_sample = true;
        c.model.downsample_padding = 0;
        c.model.null_class = false;
        c.diffusion.betas = Some(vec![0.01, 0.02]);
        c.diffusion.min_snr_gamma = Some(5.0);
        c.data.path = Some("x".into());
        c.data.noise = Some(0.1);
        c.data.dim = Some(2);
        c.sample.steps = Some(50);
        c.sample.steps_offset = 1;
        c.sample.set_alpha_to_one = false;
        c.sample.use_clipped_model_output = false;
        c
    }

    #[test]
    fn every_key_has_a_line_and_every_line_a_key() {
        let all: Vec<String> = everything()
            .flat()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let documented: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
        assert_eq!(
            all, documented,
            "KEYS must list the serialised keys in order"
        );
        let defaults: BTreeSet<String> = Config::default()
            .flat()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for k in KEYS {
            assert_eq!(
                k.example.is_some(),
                !defaults.contains(k.key),
                "{}: an example exactly for the keys absent by default",
                k.key
            );
            assert!(!k.doc.contains('\n') && k.doc.len() <= 100, "{}", k.key);
        }
    }

    /// The README's configuration table has one row per key, no more, no fewer.
    #[test]
    fn the_readme_table_lists_every_key() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = readme
            .split("\n## Configuration")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a Configuration section");
        let rows: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let keys: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
        assert_eq!(
            rows, keys,
            "README's config table, one row per key in order"
        );
    }

    #[test]
    fn commented_configs_read_back_the_same() {
        let mut defaults = Config::default();
        defaults.resolve();
        for cfg in [defaults, everything()] {
            let text = commented(&cfg).unwrap();
            assert!(text.lines().all(|l| l.len() <= 110), "{text}");
            let back = Config::from_toml(&text, "commented").unwrap();
            assert_eq!(back.to_toml().unwrap(), cfg.to_toml().unwrap(), "{text}");
        }
        let text = commented(&Config::default()).unwrap();
        assert!(
            text.contains("# a class-conditional model with this many classes (absent: unconditional)\n# num_classes = 10\n"),
            "{text}"
        );
        assert!(
            !text.contains("noise ="),
            "a digits config has no point noise: {text}"
        );
    }
}

//! The run configuration: one TOML file with the sections `[model]` (the network), `[diffusion]`
//! (schedule, parameterisation, loss), `[data]`, `[optim]`, `[ema]`, `[train]` and `[sample]`.
//! Every key has a default (the DDPM paper's), unknown keys are errors, and `validate()` checks
//! the values together, naming the key at fault. Each section's struct lives with the code it
//! configures (the config is the constructor); this module composes them, loads files, applies
//! `--set section.key=value` overrides and owns the sections that have no home below it
//! (`[diffusion]`, `[sample]`, and `[train]` in `train`, since the training loop sits above the config).

pub mod docs;
mod presets;
mod train;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::DataConfig;
use crate::diffusion::{Parameterization, Prediction, VarianceType};
use crate::ema::EmaConfig;
use crate::error::{Error, Result};
use crate::limits;
use crate::loss::{LossKind, LossOptions};
use crate::nn::{Arch, UNetConfig};
use crate::optim::OptimConfig;
use crate::sampler::SamplerKind;
use crate::schedule::{rescale_zero_terminal_snr, BetaSchedule, Schedule, Spacing};

pub use presets::Preset;
pub use train::TrainConfig;

/// The whole configuration of a run; also stored in every checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub model: UNetConfig,
    pub diffusion: DiffusionConfig,
    pub data: DataConfig,
    pub optim: OptimConfig,
    pub ema: EmaConfig,
    pub train: TrainConfig,
    pub sample: SampleConfig,
}

/// The most diffusion steps T a config may have (100x the DDPM paper's; improved DDPM uses
/// 4000).
pub const MAX_TIMESTEPS: usize = 100_000;

/// `[diffusion]`: the noise schedule, what the network predicts, and the training objective.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
    /// T, the number of diffusion steps.
    pub timesteps: usize,
    pub beta_schedule: BetaSchedule,
    /// Linear schedule's first beta at T = 1000 (scaled by 1000/T for other T).
    pub beta_start: f64,
    /// Linear schedule's last beta at T = 1000.
    pub beta_end: f64,
    /// The betas of beta_schedule = "custom", one per timestep.
    pub betas: Option<Vec<f64>>,
    /// Rescale the schedule so abar_T = 0 (Lin et al. 2023); needs v or x0 prediction.
    pub zero_terminal_snr: bool,
    pub prediction: Prediction,
    pub variance: VarianceType,
    pub loss: LossKind,
    /// Min-SNR-gamma loss weighting (Hang et al. 2023); off when absent.
    pub min_snr_gamma: Option<f64>,
    /// lambda of the hybrid loss L_simple + lambda L_vlb.
    pub vlb_weight: f64,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        let loss = LossOptions::default();
        DiffusionConfig {
            timesteps: 1000,
            beta_schedule: BetaSchedule::Linear,
            beta_start: 1e-4,
            beta_end: 0.02,
            betas: None,
            zero_terminal_snr: false,
            prediction: Prediction::Eps,
            variance: VarianceType::FixedSmall,
            loss: loss.kind,
            min_snr_gamma: loss.min_snr_gamma,
            vlb_weight: loss.vlb_weight,
        }
    }
}

impl DiffusionConfig {
    /// The training schedule.
    pub fn schedule(&self) -> Result<Schedule> {
        match (self.beta_schedule, &self.betas) {
            (BetaSchedule::Custom, Some(betas)) => {
                if betas.len() != self.timesteps {
                    return Err(Error::Config(format!(
                        "diffusion.betas has {} values but diffusion.timesteps = {}; give one beta per timestep",
                        betas.len(),
                        self.timesteps
                    )));
                }
                let betas = match self.zero_terminal_snr {
                    true => rescale_zero_terminal_snr(betas),
                    false => betas.clone(),
                };
                Schedule::from_betas(betas)
                    .map_err(|e| Error::Config(format!("diffusion.betas: {e}")))
            }
            (BetaSchedule::Custom, None) => Err(Error::Config(
                "diffusion.beta_schedule = \"custom\" needs diffusion.betas, one per timestep"
                    .into(),
            )),
            (_, Some(_)) => Err(Error::Config(
                "diffusion.betas is only read with diffusion.beta_schedule = \"custom\"; remove it or set the schedule"
                    .into(),
            )),
            (kind, None) => Schedule::new(
                kind,
                self.timesteps,
                self.beta_start,
                self.beta_end,
                self.zero_terminal_snr,
            ),
        }
    }

    /// How the network output is read.
    pub fn parameterization(&self) -> Parameterization {
        Parameterization {
            prediction: self.prediction,
            variance: self.variance,
        }
    }

    /// The loss options of this section.
    pub fn loss_options(&self) -> LossOptions {
        LossOptions {
            kind: self.loss,
            min_snr_gamma: self.min_snr_gamma,
            vlb_weight: self.vlb_weight,
        }
    }

    fn validate(&self) -> Result<()> {
        // Checked before the schedule is built: it holds a dozen f64 arrays of T values.
        if self.timesteps > MAX_TIMESTEPS {
            return Err(Error::Config(format!(
                "diffusion.timesteps = {} is more than {MAX_TIMESTEPS} (the DDPM paper uses 1000)",
                self.timesteps
            )));
        }
        self.schedule()?;
        if self.zero_terminal_snr && self.prediction == Prediction::Eps {
            return Err(Error::Config(
                "diffusion.zero_terminal_snr = true needs diffusion.prediction = \"v\" or \"x0\": \
                 with abar_T = 0 an eps-prediction cannot recover x0"
                    .into(),
            ));
        }
        self.loss_options().validate(self.parameterization())
    }
}

/// `[sample]`: the defaults of `ddpm sample` (flags override them).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    pub sampler: SamplerKind,
    /// Sampling steps of `sampler`; absent = all T for ddpm and pc, 50 for ddim, 20 for
    /// dpm++2m and heun. Another sampler (`--sampler`) takes its own default.
    pub steps: Option<usize>,
    /// DDIM's eta (0 = deterministic).
    pub eta: f64,
    pub spacing: Spacing,
    /// Clip the predicted x0 to [-1, 1] at every step.
    pub clip_x0: bool,
    /// Added to every timestep of the leading spacing (diffusers' steps_offset).
    #[serde(skip_serializing_if = "is_zero")]
    pub steps_offset: usize,
    /// DDIM's last step goes to abar = 1; false: to abar_0 (diffusers' set_alpha_to_one).
    #[serde(skip_serializing_if = "is_true")]
    pub set_alpha_to_one: bool,
    /// With clip_x0, DDIM's eps comes from the clipped x0; false keeps the model's eps
    /// (diffusers' DDIMPipeline default).
    #[serde(skip_serializing_if = "is_true")]
    pub use_clipped_model_output: bool,
    /// Images per model batch.
    pub batch_size: usize,
    /// Sample with the EMA weights (false: the raw weights).
    pub use_ema: bool,
    /// Langevin corrector steps after each predictor step (sampler "pc").
    pub corrector_steps: usize,
    /// Target signal-to-noise ratio that sets the corrector's step size (sampler "pc").
    pub snr: f64,
    /// Classifier-free guidance scale w for class-conditional models: eps_u + w (eps_c - eps_u);
    /// 1 samples the model's own p(x | class) at one forward per step; > 1 trades diversity
    /// for fidelity to the class, at two.
    pub guidance: f64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            sampler: SamplerKind::Ddpm,
            steps: None,
            eta: 0.0,
            spacing: Spacing::Trailing,
            clip_x0: true,
            steps_offset: 0,
            set_alpha_to_one: true,
            use_clipped_model_output: true,
            batch_size: 64,
            use_ema: true,
            corrector_steps: 1,
            snr: 0.16,
            guidance: 1.0,
        }
    }
}

impl SampleConfig {
    /// The number of steps for `sampler` over a T-step schedule: `steps` when this section's
    /// sampler is `sampler` (the steps were chosen for it: 50 DDIM steps are no count for the
    /// ancestral sampler), else the sampler's own default, all T for ddpm and pc, 50 for ddim,
    /// 20 for dpm++2m and heun.
    pub fn steps_for(&self, sampler: SamplerKind, timesteps: usize) -> usize {
        match self.steps {
            Some(k) if sampler == self.sampler => k,
            _ => match sampler {
                SamplerKind::Ddpm | SamplerKind::Pc => timesteps,
                SamplerKind::Ddim => 50.min(timesteps),
                SamplerKind::DpmSolver2M | SamplerKind::Heun => 20.min(timesteps),
            },
        }
    }

    fn validate(&self, timesteps: usize) -> Result<()> {
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(Error::Config(format!(
                "sample.eta = {} must be within [0, 1]",
                self.eta
            )));
        }
        if let Some(s) = self.steps {
            if s == 0 || s > timesteps {
                return Err(Error::Config(format!(
                    "sample.steps = {s} must be between 1 and diffusion.timesteps = {timesteps}"
                )));
            }
        }
        if self.batch_size == 0 {
            return Err(Error::Config("sample.batch_size must be at least 1".into()));
        }
        if self.steps_offset > 0 && self.spacing != Spacing::Leading {
            return Err(Error::Config(format!(
                "sample.steps_offset = {} shifts the leading spacing only (as in diffusers); set sample.spacing = \"leading\" or remove it",
                self.steps_offset
            )));
        }
        if !(self.snr.is_finite() && self.snr > 0.0) {
            return Err(Error::Config(format!(
                "sample.snr = {} must be a positive number",
                self.snr
            )));
        }
        crate::guidance::check_scale(self.guidance)
            .map_err(|e| Error::Config(format!("sample.{e}")))
    }
}

impl Config {
    /// Parse TOML text; `origin` (a path or "checkpoint") prefixes every error.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let mut cfg: Config = toml::from_str(text)
            .map_err(|e| Error::Config(format!("{origin}: {}", one_line(&e))))?;
        cfg.resolve();
        Ok(cfg)
    }

    /// Fill in the values whose defaults depend on other keys (the UNet's attention
    /// resolutions, from the image height), so a written config states them. Reading a config
    /// does this; a config built in code may call it.
    pub fn resolve(&mut self) {
        if !self.data.dataset.is_points() {
            self.model.resolve(self.data.image_size.height);
        }
    }

    /// Read a config file, apply `section.key=value` overrides, and validate. An error in the
    /// file names it with toml's line and column (one line, as every error); an error an
    /// override brings names that `--set` argument.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let bytes = limits::read(path, limits::MAX_CONFIG_BYTES).map_err(|e| Error::io(path, e))?;
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::Config(format!("{origin}: not UTF-8 text (a TOML config expected)"))
        })?;
        Self::parse(&text, &origin, overrides)
    }

    /// `load` for TOML text (a checkpoint's stored config, say); `origin` prefixes errors.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        // The file on its own, from its text: only there does toml know lines and columns.
        toml::from_str::<Config>(text)
            .map_err(|e| Error::Config(format!("{origin}: {}", one_line(&e))))?;
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::Config(format!("{origin}: {}", one_line(&e))))?;
        let mut cfg = Config::from_table(&table, origin)?;
        for o in overrides {
            apply_override(&mut table, o)?;
            // Each override is checked as it lands, so its error names it, not the file.
            cfg = Config::from_table(&table, &format!("--set {o}"))?;
        }
        cfg.resolve();
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_table(table: &toml::Table, origin: &str) -> Result<Self> {
        toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(format!("{origin}: {}", one_line(&e))))
    }

    /// This config with `section.key=value` overrides of its `[sample]` section, validated: a
    /// checkpoint's sampling settings are defaults, not locks. Keys of other sections describe
    /// the trained model and are refused; every error names the `--set` argument.
    pub fn with_sample_overrides(&self, overrides: &[String]) -> Result<Config> {
        let mut cfg = self.clone();
        for o in overrides {
            let named = |e: &dyn std::fmt::Display| Error::Config(format!("--set {o}: {e}"));
            let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
            if !key.starts_with("sample.") {
                return Err(named(
                    &"only sample.* keys change at sampling time; the other sections are the trained model's",
                ));
            }
            let mut table = toml::Table::new();
            let section = toml::Value::try_from(&cfg.sample).map_err(|e| named(&e))?;
            table.insert("sample".into(), section);
            apply_override(&mut table, o)?;
            cfg.sample = table
                .remove("sample")
                .map(toml::Value::try_into)
                .transpose()
                .map_err(|e: toml::de::Error| named(&one_line(&e)))?
                .unwrap_or_default();
            cfg.validate().map_err(|e| named(&e))?;
        }
        Ok(cfg)
    }

    /// Check every section and the constraints between them.
    pub fn validate(&self) -> Result<()> {
        self.data.validate_path()?;
        self.validate_stored()
    }

    /// Every check of `validate` but that file datasets name their path: the checks of a
    /// checkpoint's config. Generating never reads the data, and an imported model's config has
    /// no path (what it was trained on is not in a diffusers folder).
    pub fn validate_stored(&self) -> Result<()> {
        self.diffusion.validate()?;
        self.data.validate_values()?;
        self.optim.validate()?;
        self.ema.validate()?;
        self.train.validate()?;
        if !self.model.null_class && self.train.label_dropout > 0.0 {
            return Err(Error::Config(format!(
                "train.label_dropout = {}: model.null_class = false leaves no \"no class\" label to drop to; set it to 0",
                self.train.label_dropout
            )));
        }
        self.validate_model()
    }

    /// The checks of what a generator needs — the diffusion process, the network against the
    /// data's shape, the sampling defaults, the classes — but not where the data is or how to
    /// train (an imported model's config knows neither).
    fn validate_model(&self) -> Result<()> {
        self.diffusion.validate()?;
        self.validate_arch()?;
        self.sample.validate(self.diffusion.timesteps)?;
        match (self.data.class_labels, self.model.num_classes) {
            (true, None) => Err(Error::Config(
                "data.class_labels = true needs model.num_classes (the number of classes)".into(),
            )),
            (false, Some(n)) => Err(Error::Config(format!(
                "model.num_classes = {n} but data.class_labels = false: the model would never \
                 see a label; set data.class_labels = true or remove model.num_classes"
            ))),
            _ => Ok(()),
        }
    }

    /// The network must suit the data: the UNet images, the MLP vectors (unconditional, and
    /// sampled without clipping x0 to the image range [-1, 1]).
    fn validate_arch(&self) -> Result<()> {
        let dataset = self.data.dataset.name();
        match (self.model.arch, self.data.dataset.is_points()) {
            (Arch::Unet, false) => {
                if let Some(key) = self.model.unused_key()? {
                    return Err(Error::Config(format!(
                        "[model.{key}] configures model.arch = \"mlp\", but model.arch = \"unet\"; remove it"
                    )));
                }
                let size = self.data.image_size;
                self.model.validate((size.height, size.width))
            }
            (Arch::Unet, true) => Err(Error::Config(format!(
                "data.dataset = \"{dataset}\" is vector data; set model.arch = \"mlp\""
            ))),
            (Arch::Mlp, false) => Err(Error::Config(format!(
                "model.arch = \"mlp\" is for vector data, but data.dataset = \"{dataset}\" is images; \
                 use model.arch = \"unet\" or a dataset such as \"moons\" or \"points\""
            ))),
            (Arch::Mlp, true) => {
                if let Some(key) = self.model.unused_key()? {
                    return Err(Error::Config(format!(
                        "model.{key} configures the UNet, but model.arch = \"mlp\" (its sizes are \
                         in [model.mlp]); remove it"
                    )));
                }
                self.model.mlp.validate()?;
                if self.model.num_classes.is_some() {
                    return Err(Error::Config(
                        "model.num_classes: the MLP is unconditional; remove it".into(),
                    ));
                }
                if self.sample.clip_x0 {
                    return Err(Error::Config(
                        "sample.clip_x0 = true clips x0 to the image range [-1, 1], but vector \
                         data is standardised and unbounded; set sample.clip_x0 = false"
                            .into(),
                    ));
                }
                Ok(())
            }
        }
    }

    /// The config as TOML text (what the run directory and checkpoints store), `[model]` with
    /// the built network's keys only (`UNetConfig::written`), `[data]` with its kind's
    /// (`DataConfig::written`).
    pub fn to_toml(&self) -> Result<String> {
        let fail =
            |e: &dyn std::fmt::Display| Error::Config(format!("cannot serialise the config: {e}"));
        let mut table = match toml::Value::try_from(self).map_err(|e| fail(&e))? {
            toml::Value::Table(t) => t,
            other => return Err(fail(&format!("not a table: {other:?}"))),
        };
        table.insert("model".into(), toml::Value::Table(self.model.written()?));
        table.insert("data".into(), toml::Value::Table(self.data.written()?));
        toml::to_string(&table).map_err(|e| fail(&e))
    }

    /// Every key of every section as (`section.key`, value), in declaration order, including
    /// those `to_toml` leaves out as unused: `[model.mlp]`'s width is `model.mlp.width`.
    /// Absent optional keys (an unset sample.steps) are not listed.
    pub fn flat(&self) -> Result<Vec<(String, toml::Value)>> {
        let table = match toml::Value::try_from(self) {
            Ok(toml::Value::Table(t)) => t,
            other => {
                return Err(Error::Config(format!(
                    "cannot serialise the config: {other:?}"
                )))
            }
        };
        let mut out = Vec::new();
        flatten("", &table, &mut out);
        Ok(out)
    }

    /// Network output channels: C (or D for vectors), or twice that with a learned variance.
    pub fn out_channels(&self) -> usize {
        self.diffusion
            .parameterization()
            .out_channels(self.data.example_shape()[0])
    }
}

/// For keys that are written only when they differ from their default (so that configs and
/// checkpoints from before they existed read and write the same).
fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn is_true(v: &bool) -> bool {
    *v
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (key, value) in table {
        let key = format!("{prefix}{key}");
        match value {
            toml::Value::Table(t) => flatten(&format!("{key}."), t, out),
            v => out.push((key, v.clone())),
        }
    }
}

/// toml's errors span several lines: where, a source excerpt (`1 | text`, its `|` frame and a
/// `^` marker), then what. Keep where and what, on one line: `TOML parse error at line 1,
/// column 6: key with no value, expected `=``.
fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let excerpt = |l: &str| {
        let numbered = l
            .split_once('|')
            .is_some_and(|(n, _)| n.trim().bytes().all(|b| b.is_ascii_digit()));
        numbered || l.chars().all(|c| c == '^' || c == ' ')
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !excerpt(l))
        .collect();
    match lines.split_first() {
        Some((first, rest)) if first.starts_with("TOML parse error") && !rest.is_empty() => {
            format!("{first}: {}", rest.join(" "))
        }
        _ => lines.join(" ").replace(" ,", ","),
    }
}

/// Apply one `section.key=value` override; the value is read as TOML (a number, a boolean, an
/// array, a quoted string) or, failing that, as a bare string.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| {
        Error::Config(format!(
            "--set {assignment}: expected section.key=value, e.g. train.steps=1000"
        ))
    })?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(Error::Config(format!(
            "--set {assignment}: empty key segment"
        )));
    }
    let value = parse_value(raw.trim());
    let (last, parents) = path.split_last().expect("split on a non-empty key");
    let mut node = table;
    for p in parents {
        let entry = node
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| Error::Config(format!("--set {assignment}: `{p}` is not a section")))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests;

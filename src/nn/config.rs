//! The `[model]` section: which network (`arch`: the UNet for images, the MLP of `nn::mlp` for
//! vectors, configured in `[model.mlp]`), the UNet's architecture as data, its defaults (the DDPM
//! paper's CIFAR-10 model) and its validation against an image size. The options that diffusers'
//! UNet2DModel has and the DDPM paper's model does not (`norm_eps` to `null_class`) default to
//! the paper's behaviour and are written out only when set, so configs and checkpoints that do
//! not use them read and write as before. The layer plan is `plan`'s.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::mlp::MlpConfig;
use crate::nn::plan::{Block, Plan, Shape};

/// The network family.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// The DDPM UNet, for images (B, C, H, W).
    #[default]
    Unet,
    /// A residual MLP, for vectors (B, D).
    Mlp,
}

/// The UNet architecture (Ho et al. 2020, appendix B); the `[model]` section of the config.
/// It is written out (run directories, checkpoints, `ddpm info`) with the keys of the network
/// `arch` builds only (`written`); validation makes sure the others are at their defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// `unet` (default; the keys below) or `mlp` (the keys of `[model.mlp]`).
    pub arch: Arch,
    /// Channels of the first level (`ch`); the time embedding has 4 * base_channels.
    pub base_channels: usize,
    /// Level i has base_channels * channel_mult[i] channels; one level fewer downsamplings.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (the way up has one more).
    pub num_res_blocks: usize,
    /// Feature-map *heights* at which a self-attention block follows each residual block
    /// (compared with the height so that non-square images work; the middle always attends).
    /// Absent: `default_attention` for the image height (16, as in the DDPM paper, where a
    /// level is 16 high); loading a config fills it in, so run directories and checkpoints
    /// state it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_resolutions: Option<Vec<usize>>,
    /// Attention heads; must divide the channels of every attention block.
    pub num_heads: usize,
    /// Dropout probability inside the residual blocks, in [0, 1).
    pub dropout: f64,
    /// GroupNorm groups; a norm over c channels uses min(norm_groups, c) groups.
    pub norm_groups: usize,
    /// Number of classes for class conditioning; None = unconditional.
    pub num_classes: Option<usize>,
    /// GroupNorm epsilon of every norm (PyTorch's 1e-5; the DDPM checkpoints use 1e-6).
    #[serde(skip_serializing_if = "defaults::is_norm_eps")]
    pub norm_eps: f64,
    /// The sinusoidal timestep embedding's frequencies are exp(-ln(1e4) i / (half - freq_shift)),
    /// i = 0..half: 1 is the DDPM paper's (the last frequency is 1e-4), 0 diffusers' default.
    #[serde(skip_serializing_if = "defaults::is_freq_shift")]
    pub freq_shift: usize,
    /// The embedding is [cos, sin] instead of [sin, cos].
    #[serde(skip_serializing_if = "defaults::is_false")]
    pub flip_sin_to_cos: bool,
    /// Residual blocks apply the time embedding as GN(h) (1 + scale) + shift (the adaptive
    /// GroupNorm of Dhariwal & Nichol 2021) instead of adding it to h before GN; as in
    /// diffusers, the middle attention then has no GroupNorm of its own.
    #[serde(skip_serializing_if = "defaults::is_false")]
    pub scale_shift: bool,
    /// Channels per attention head: each attention block has c / attention_head_dim heads
    /// (diffusers' convention); absent: model.num_heads heads everywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_head_dim: Option<usize>,
    /// The middle residual blocks and attention divide their output (input + branch) by this.
    #[serde(skip_serializing_if = "defaults::is_one")]
    pub mid_block_scale_factor: f64,
    /// The network first maps its input x to 2x - 1 (for a model of data in [0, 1]).
    #[serde(skip_serializing_if = "defaults::is_false")]
    pub center_input_sample: bool,
    /// Padding of the stride-2 downsampling convolutions: 1 on every side, or 0: one row and
    /// column of zeros after the image only (TensorFlow's SAME padding, which the original
    /// DDPM checkpoints were trained with).
    #[serde(skip_serializing_if = "defaults::is_downsample_padding")]
    pub downsample_padding: usize,
    /// With num_classes: the label table has a row for "no class" (label num_classes), which
    /// unconditional sampling, guidance and label dropout use; false for a model that never
    /// learned one (imported from diffusers), which must always be given a class.
    #[serde(skip_serializing_if = "defaults::is_true")]
    pub null_class: bool,
    /// The MLP's sizes, when arch = "mlp".
    pub mlp: MlpConfig,
}

/// The defaults of the UNet2DModel options, which are not written out when they hold.
mod defaults {
    pub const NORM_EPS: f64 = 1e-5;
    pub const FREQ_SHIFT: usize = 1;
    pub const DOWNSAMPLE_PADDING: usize = 1;

    pub fn is_norm_eps(v: &f64) -> bool {
        *v == NORM_EPS
    }
    pub fn is_freq_shift(v: &usize) -> bool {
        *v == FREQ_SHIFT
    }
    pub fn is_downsample_padding(v: &usize) -> bool {
        *v == DOWNSAMPLE_PADDING
    }
    pub fn is_one(v: &f64) -> bool {
        *v == 1.0
    }
    pub fn is_false(v: &bool) -> bool {
        !*v
    }
    pub fn is_true(v: &bool) -> bool {
        *v
    }
}

impl Default for UNetConfig {
    /// The DDPM CIFAR-10 model (35.7M parameters).
    fn default() -> Self {
        UNetConfig {
            base_channels: 128,
            channel_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attention_resolutions: None,
            num_heads: 1,
            dropout: 0.1,
            norm_groups: 32,
            num_classes: None,
            norm_eps: defaults::NORM_EPS,
            freq_shift: defaults::FREQ_SHIFT,
            flip_sin_to_cos: false,
            scale_shift: false,
            attention_head_dim: None,
            mid_block_scale_factor: 1.0,
            center_input_sample: false,
            downsample_padding: defaults::DOWNSAMPLE_PADDING,
            null_class: true,
            arch: Arch::Unet,
            mlp: MlpConfig::default(),
        }
    }
}

impl Arch {
    /// Whether `key` of `[model]` configures this network: the MLP reads `[model.mlp]` (and
    /// `num_classes`, which it refuses with its own error), the UNet every key but `mlp`.
    pub fn uses(self, key: &str) -> bool {
        match self {
            Arch::Unet => key != "mlp",
            Arch::Mlp => matches!(key, "arch" | "mlp" | "num_classes"),
        }
    }
}

/// The most resolution levels (`model.channel_mult` entries): 16 levels halve a side 15 times.
const MAX_LEVELS: usize = 16;
/// The most residual blocks per level.
const MAX_RES_BLOCKS: usize = 100;
/// The most channels at any level (the DDPM paper's widest level has 256).
pub const MAX_CHANNELS: usize = 1 << 16;
/// The most classes of a class-conditional model.
const MAX_CLASSES: usize = 1 << 20;

impl UNetConfig {
    /// The time-embedding width: 4 * base_channels.
    pub fn temb_dim(&self) -> usize {
        4 * self.base_channels
    }

    /// Number of downsamplings: levels - 1.
    pub fn downsamplings(&self) -> usize {
        self.channel_mult.len().saturating_sub(1)
    }

    /// The feature-map heights at each level for images `height` high.
    fn heights(&self, height: usize) -> Vec<usize> {
        (0..self.channel_mult.len()).map(|l| height >> l).collect()
    }

    /// The attention resolutions when none are given, for images `height` high: [16] where a
    /// level is 16 high (the DDPM paper's CIFAR-10 and LSUN models), else the second level's
    /// height (4 for 8x8 digits), else none (one level: the middle block still attends).
    pub fn default_attention(&self, height: usize) -> Vec<usize> {
        let heights = self.heights(height);
        if heights.contains(&16) {
            vec![16]
        } else {
            heights.get(1).map(|&h| vec![h]).unwrap_or_default()
        }
    }

    /// The attention resolutions for images `height` high: the given ones or the default.
    pub fn attention(&self, height: usize) -> Vec<usize> {
        self.attention_resolutions
            .clone()
            .unwrap_or_else(|| self.default_attention(height))
    }

    /// Fill in absent attention resolutions for images `height` high (the UNet only).
    pub fn resolve(&mut self, height: usize) {
        if self.arch == Arch::Unet && self.attention_resolutions.is_none() {
            self.attention_resolutions = Some(self.default_attention(height));
        }
    }

    /// The section as a TOML table: every key, in declaration order.
    fn table(&self) -> Result<toml::Table> {
        match toml::Value::try_from(self) {
            Ok(toml::Value::Table(t)) => Ok(t),
            other => Err(Error::Config(format!(
                "cannot serialise [model]: {other:?}"
            ))),
        }
    }

    /// The section as written: the keys of the network `arch` builds only.
    pub fn written(&self) -> Result<toml::Table> {
        let mut t = self.table()?;
        t.retain(|key, _| self.arch.uses(key));
        Ok(t)
    }

    /// A key that the network `arch` does not use but is set to other than its default: one
    /// of the UNet's under `arch = "mlp"`, or `mlp` (the `[model.mlp]` table) under the UNet.
    /// Derived from the serialised keys, so a key added later is covered too.
    pub fn unused_key(&self) -> Result<Option<String>> {
        let (set, default) = (self.table()?, UNetConfig::default().table()?);
        Ok(set
            .into_iter()
            .find(|(key, value)| !self.arch.uses(key) && default.get(key) != Some(value))
            .map(|(key, _)| key))
    }

    /// GroupNorm groups over `c` channels: min(norm_groups, c).
    pub fn groups(&self, c: usize) -> usize {
        self.norm_groups.min(c)
    }

    /// Check every key and that the model can be built for `image_size` = (height, width).
    /// Attention resolutions are compared with the feature-map height at each level.
    pub fn validate(&self, image_size: (usize, usize)) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        for (key, v) in [
            ("base_channels", self.base_channels),
            ("num_res_blocks", self.num_res_blocks),
            ("num_heads", self.num_heads),
            ("norm_groups", self.norm_groups),
        ] {
            if v == 0 {
                return bad(format!("model.{key} = 0: must be at least 1"));
            }
        }
        if self.base_channels % 2 != 0 || self.base_channels < 4 {
            return bad(format!(
                "model.base_channels = {}: the sinusoidal time embedding needs an even width of at least 4",
                self.base_channels
            ));
        }
        if self.channel_mult.is_empty() {
            return bad(
                "model.channel_mult is empty: give at least one level, e.g. [1, 2, 2]".into(),
            );
        }
        if let Some(i) = self.channel_mult.iter().position(|&m| m == 0) {
            return bad(format!(
                "model.channel_mult[{i}] = 0: multipliers must be at least 1"
            ));
        }
        // Counts bounded before anything is sized by them (the plan, the 2^levels factor).
        if self.channel_mult.len() > MAX_LEVELS {
            return bad(format!(
                "model.channel_mult has {} levels; at most {MAX_LEVELS} (each halves the image)",
                self.channel_mult.len()
            ));
        }
        if self.num_res_blocks > MAX_RES_BLOCKS {
            return bad(format!(
                "model.num_res_blocks = {} is more than {MAX_RES_BLOCKS} (the DDPM paper uses 2)",
                self.num_res_blocks
            ));
        }
        if self.base_channels > MAX_CHANNELS {
            return bad(format!(
                "model.base_channels = {} is more than {MAX_CHANNELS}",
                self.base_channels
            ));
        }
        for (i, &m) in self.channel_mult.iter().enumerate() {
            let c = self.base_channels.saturating_mul(m);
            if c > MAX_CHANNELS {
                return bad(format!(
                    "model.channel_mult[{i}] = {m} makes {c} channels (model.base_channels x {m}), more than {MAX_CHANNELS}"
                ));
            }
        }
        if let Some(n) = self.num_classes.filter(|&n| n > MAX_CLASSES) {
            return bad(format!(
                "model.num_classes = {n} is more than {MAX_CLASSES}"
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!(
                "model.dropout = {}: must lie in [0, 1)",
                self.dropout
            ));
        }
        if self.num_classes == Some(0) {
            return bad("model.num_classes = 0: omit it for an unconditional model".into());
        }
        self.validate_options()?;
        let (h, w) = image_size;
        let levels = self.channel_mult.len();
        let factor = 1usize << self.downsamplings();
        if h == 0 || w == 0 || h % factor != 0 || w % factor != 0 {
            let up = |n: usize| n.max(1).div_ceil(factor) * factor;
            return bad(format!(
                "model.channel_mult has {levels} levels, so the image size {h}x{w} must be divisible by {factor}; use {}x{}",
                up(h),
                up(w)
            ));
        }
        let heights = self.heights(h);
        if let Some(r) = self.attention(h).iter().find(|r| !heights.contains(r)) {
            return bad(format!(
                "model.attention_resolutions contains {r}, but the feature-map heights for {h}x{w} images are {heights:?}; remove it or pick from these"
            ));
        }
        let plan = self.plan(h);
        for block in plan.down.iter().chain(&plan.mid).chain(&plan.up) {
            match *block {
                Block::Res { cin, cout, .. } => {
                    self.check_groups(cin)?;
                    self.check_groups(cout)?;
                }
                Block::Attn { c, height, .. } => {
                    self.check_groups(c)?;
                    self.heads(c).map_err(|e| {
                        Error::Config(format!("{e} of the attention at height {height}"))
                    })?;
                }
                Block::Down { .. } | Block::Up { .. } => {}
            }
        }
        self.check_groups(plan.out_channels)
    }

    /// The checks of the UNet2DModel options, each on its own.
    fn validate_options(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return bad(format!(
                "model.norm_eps = {}: must be a positive number (1e-5 is usual)",
                self.norm_eps
            ));
        }
        let half = self.base_channels / 2;
        if self.freq_shift >= half {
            return bad(format!(
                "model.freq_shift = {}: must be below half the time embedding's width, {half}",
                self.freq_shift
            ));
        }
        if let Some(d) = self.attention_head_dim {
            if d == 0 {
                return bad("model.attention_head_dim = 0: must be at least 1".into());
            }
            if self.num_heads != 1 {
                return bad(format!(
                    "model.attention_head_dim = {d} and model.num_heads = {} both set the heads; keep one",
                    self.num_heads
                ));
            }
        }
        if !(self.mid_block_scale_factor > 0.0 && self.mid_block_scale_factor.is_finite()) {
            return bad(format!(
                "model.mid_block_scale_factor = {}: must be a positive number",
                self.mid_block_scale_factor
            ));
        }
        if self.downsample_padding > 1 {
            return bad(format!(
                "model.downsample_padding = {}: must be 1 (every side) or 0 (after the image only)",
                self.downsample_padding
            ));
        }
        if !self.null_class && self.num_classes.is_none() {
            return bad(
                "model.null_class = false applies to class-conditional models; set model.num_classes or remove it"
                    .into(),
            );
        }
        Ok(())
    }

    /// The heads of an attention block over `c` channels: c / attention_head_dim when that is
    /// set, else num_heads; it must divide c.
    pub fn heads(&self, c: usize) -> Result<usize> {
        let (heads, key, value) = match self.attention_head_dim {
            Some(d) => (c / d.max(1), "attention_head_dim", d),
            None => (self.num_heads, "num_heads", self.num_heads),
        };
        if heads == 0 || c % heads != 0 || self.attention_head_dim.is_some_and(|d| c % d != 0) {
            return Err(Error::Config(format!(
                "model.{key} = {value} does not divide the {c} channels"
            )));
        }
        Ok(heads)
    }

    /// The layer plan for images of height `height` (`plan`).
    pub(crate) fn plan(&self, height: usize) -> Plan {
        let attention = self.attention(height);
        Shape {
            base_channels: self.base_channels,
            channel_mult: &self.channel_mult,
            num_res_blocks: self.num_res_blocks,
            attention_resolutions: &attention,
        }
        .plan(height)
    }

    /// Rows of the label embedding: num_classes, plus one for "no class" when null_class.
    pub fn label_rows(&self) -> Option<usize> {
        self.num_classes.map(|n| n + usize::from(self.null_class))
    }

    fn check_groups(&self, c: usize) -> Result<()> {
        let g = self.groups(c);
        if c % g != 0 {
            return Err(Error::Config(format!(
                "model.norm_groups = {}: a GroupNorm over {c} channels needs its {g} groups to divide them; make model.base_channels a multiple of model.norm_groups",
                self.norm_groups
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

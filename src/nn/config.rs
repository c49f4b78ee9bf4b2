//! The `[model]` section: which network (`arch`: the UNet for images, the MLP of `nn::mlp` for
//! vectors, configured in `[model.mlp]`), the UNet's architecture as data, its defaults (the DDPM paper's
//! CIFAR-10 model), its validation against an image size, and the layer plan both validation and
//! the constructor walk, so the two can never disagree about what gets built.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::mlp::MlpConfig;

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
    /// The MLP's sizes, when arch = "mlp".
    pub mlp: MlpConfig,
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

/// One layer of the plan, in forward order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Block {
    /// A residual block `cin -> cout` at `level` (the number of downsamplings before it).
    Res {
        cin: usize,
        cout: usize,
        level: usize,
    },
    /// Self-attention over `c` channels at feature-map height `height`.
    Attn { c: usize, height: usize },
    /// Conv3x3 with stride 2 over `c` channels.
    Down { c: usize },
    /// Nearest x2 upsampling, then Conv3x3 over `c` channels.
    Up { c: usize },
}

/// The layers the UNet is made of, in the order of ref_unet.py (flat lists, so checkpoint keys
/// `down.{i}` / `up.{i}` match its state_dict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub down: Vec<Block>,
    /// [Res, Attn, Res] at the lowest resolution.
    pub mid: [Block; 3],
    pub up: Vec<Block>,
    /// Channels entering the output GroupNorm.
    pub out_channels: usize,
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
                Block::Attn { c, height } => {
                    self.check_groups(c)?;
                    if c % self.num_heads != 0 {
                        return bad(format!(
                            "model.num_heads = {} does not divide the {c} channels of the attention at height {height}",
                            self.num_heads
                        ));
                    }
                }
                Block::Down { .. } | Block::Up { .. } => {}
            }
        }
        self.check_groups(plan.out_channels)
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

    /// The layer plan for images of height `height` (WORKLOADS.md / ref_unet.py): per level,
    /// num_res_blocks residual blocks (each followed by attention at attention resolutions),
    /// then a downsampling except at the last level; the middle; the mirror image upwards with
    /// num_res_blocks + 1 blocks per level, each eating one skip.
    pub(crate) fn plan(&self, height: usize) -> Plan {
        let ch = self.base_channels;
        let last = self.channel_mult.len().saturating_sub(1);
        let attention = self.attention(height);
        let attends = |level: usize| attention.contains(&(height >> level));
        let (mut down, mut up) = (Vec::new(), Vec::new());
        let mut skips = vec![ch];
        let mut cur = ch;
        for (level, &m) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                down.push(Block::Res {
                    cin: cur,
                    cout: ch * m,
                    level,
                });
                cur = ch * m;
                if attends(level) {
                    down.push(Block::Attn {
                        c: cur,
                        height: height >> level,
                    });
                }
                skips.push(cur);
            }
            if level != last {
                down.push(Block::Down { c: cur });
                skips.push(cur);
            }
        }
        let mid = [
            Block::Res {
                cin: cur,
                cout: cur,
                level: last,
            },
            Block::Attn {
                c: cur,
                height: height >> last,
            },
            Block::Res {
                cin: cur,
                cout: cur,
                level: last,
            },
        ];
        for (level, &m) in self.channel_mult.iter().enumerate().rev() {
            for _ in 0..=self.num_res_blocks {
                let skip = skips.pop().unwrap_or(0);
                up.push(Block::Res {
                    cin: cur + skip,
                    cout: ch * m,
                    level,
                });
                cur = ch * m;
                if attends(level) {
                    up.push(Block::Attn {
                        c: cur,
                        height: height >> level,
                    });
                }
            }
            if level != 0 {
                up.push(Block::Up { c: cur });
            }
        }
        Plan {
            down,
            mid,
            up,
            out_channels: cur,
        }
    }
}

#[cfg(test)]
mod tests;

//! UNet2DModel's config.json and the `[model]` section, both ways. diffusers describes the
//! network by its blocks (`block_out_channels`, a block type per level, `layers_per_block`);
//! ddpm by a base width, multipliers and the feature-map heights that attend. What maps is
//! what the published DDPM models and diffusers' unconditional and class-conditional training
//! produce; any other value is refused, naming the field.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::interop::json::Fields;
use crate::nn::plan::Block;
use crate::nn::{Arch, UNetConfig};

/// Marks an export whose last class embedding is ddpm's "no class" label, so that importing
/// it again gives back the same `[model]` (diffusers skips fields starting with `_`).
pub const NULL_CLASS_FIELD: &str = "_ddpm_null_class";

/// The version of diffusers the exports were checked against (benches/interop).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// A UNet2DModel config read as ddpm's: the `[model]` section, the image size and channels.
#[derive(Clone, Debug, PartialEq)]
pub struct UNetSpec {
    pub model: UNetConfig,
    /// (height, width) of `sample_size`.
    pub image_size: (usize, usize),
    pub in_channels: usize,
    pub out_channels: usize,
}

const DOWN: &str = "DownBlock2D";
const ATTN_DOWN: &str = "AttnDownBlock2D";
const UP: &str = "UpBlock2D";
const ATTN_UP: &str = "AttnUpBlock2D";

/// Read a UNet2DModel config (absent fields take UNet2DModel's defaults).
pub(crate) fn from_diffusers(f: &mut Fields) -> Result<UNetSpec> {
    if let Some(class) = f.get::<String>("_class_name")? {
        if class != "UNet2DModel" {
            return Err(f.bad("_class_name", "ddpm imports UNet2DModel"));
        }
    }
    let image_size = match f.get::<Value>("sample_size")? {
        None => return Err(f.bad("sample_size", "the image size is needed")),
        Some(v) => match serde_json::from_value::<SampleSize>(v) {
            Ok(SampleSize::Square(s)) => (s, s),
            Ok(SampleSize::Pair([h, w])) => (h, w),
            Err(_) => {
                return Err(f.bad(
                    "sample_size",
                    "expected a size such as 32 or [height, width]",
                ))
            }
        },
    };
    let in_channels: usize = f.or("in_channels", 3)?;
    let out_channels: usize = f.or("out_channels", 3)?;
    let center_input_sample: bool = f.or("center_input_sample", false)?;
    let embedding: String = f.or("time_embedding_type", "positional".to_string())?;
    if embedding != "positional" {
        return Err(f.bad(
            "time_embedding_type",
            "ddpm's UNet has the positional (sinusoidal) embedding only",
        ));
    }
    let freq_shift: usize = f.or("freq_shift", 0)?;
    let flip_sin_to_cos: bool = f.or("flip_sin_to_cos", true)?;
    let down: Vec<String> = f.or(
        "down_block_types",
        [DOWN, ATTN_DOWN, ATTN_DOWN, ATTN_DOWN]
            .map(String::from)
            .to_vec(),
    )?;
    let up: Vec<String> = f.or(
        "up_block_types",
        [ATTN_UP, ATTN_UP, ATTN_UP, UP].map(String::from).to_vec(),
    )?;
    if f.is_null("mid_block_type") {
        return Err(f.bad("mid_block_type", "ddpm's UNet always has a middle block"));
    }
    if f.or("mid_block_type", "UNetMidBlock2D".to_string())? != "UNetMidBlock2D" {
        return Err(f.bad("mid_block_type", "ddpm's middle is UNetMidBlock2D"));
    }
    let channels: Vec<usize> = f.or("block_out_channels", vec![224, 448, 672, 896])?;
    let layers_per_block: usize = f.or("layers_per_block", 2)?;
    let mid_block_scale_factor: f64 = f.or("mid_block_scale_factor", 1.0)?;
    let downsample_padding: usize = f.or("downsample_padding", 1)?;
    if downsample_padding > 1 {
        return Err(f.bad(
            "downsample_padding",
            "ddpm downsamples with padding 1 or TF-style 0",
        ));
    }
    for key in ["downsample_type", "upsample_type"] {
        if f.or(key, "conv".to_string())? != "conv" {
            return Err(f.bad(key, "ddpm resamples with convolutions (\"conv\")"));
        }
    }
    let dropout: f64 = f.or("dropout", 0.0)?;
    let act: String = f.or("act_fn", "silu".to_string())?;
    if act != "silu" && act != "swish" {
        return Err(f.bad("act_fn", "ddpm's UNet uses SiLU (\"silu\" or \"swish\")"));
    }
    // Absent means UNet2DModel's default, 8; null means one head per block.
    let attention_head_dim: Option<usize> = match f.get::<usize>("attention_head_dim")? {
        None if !f.is_null("attention_head_dim") => Some(8),
        d => d,
    };
    if f.is_null("norm_num_groups") {
        return Err(f.bad("norm_num_groups", "ddpm needs a number of groups"));
    }
    let norm_groups: usize = f.or("norm_num_groups", 32)?;
    let norm_eps: f64 = f.or("norm_eps", 1e-5)?;
    let shift: String = f.or("resnet_time_scale_shift", "default".to_string())?;
    let scale_shift = match shift.as_str() {
        "default" => false,
        "scale_shift" => true,
        _ => {
            return Err(f.bad(
                "resnet_time_scale_shift",
                "ddpm takes \"default\" or \"scale_shift\"",
            ))
        }
    };
    if let Some(g) = f.get::<usize>("attn_norm_num_groups")? {
        // Equal to norm_num_groups under the default conditioning, it changes nothing.
        if g != norm_groups || scale_shift {
            return Err(f.bad(
                "attn_norm_num_groups",
                "ddpm's middle attention has norm_num_groups groups (none under scale_shift)",
            ));
        }
    }
    if !f.or("add_attention", true)? {
        return Err(f.bad("add_attention", "ddpm's middle block always attends"));
    }
    if f.get::<Value>("class_embed_type")?.is_some() {
        return Err(f.bad(
            "class_embed_type",
            "ddpm's classes are a learned table (class_embed_type null with num_class_embeds)",
        ));
    }
    let num_class_embeds: Option<usize> = f.get("num_class_embeds")?;
    // Read for the learned embedding only, which ddpm refuses above.
    f.get::<Value>("num_train_timesteps")?;
    let null_class: bool = f.or(NULL_CLASS_FIELD, false)?;

    let levels = channels.len();
    if levels == 0 {
        return Err(f.bad("block_out_channels", "give at least one level"));
    }
    for (key, list) in [("down_block_types", &down), ("up_block_types", &up)] {
        if list.len() != levels {
            return Err(f.bad(
                key,
                format!("{levels} levels in block_out_channels need {levels} block types"),
            ));
        }
    }
    if let Some(d) = f.get::<usize>("time_embedding_dim")? {
        if d != 4 * channels[0] {
            return Err(f.bad(
                "time_embedding_dim",
                format!(
                    "ddpm's time embedding is 4 x block_out_channels[0] = {}",
                    4 * channels[0]
                ),
            ));
        }
    }
    let base = channels[0];
    let mut channel_mult = Vec::with_capacity(levels);
    for &c in &channels {
        if base == 0 || c % base != 0 {
            return Err(f.bad(
                "block_out_channels",
                format!("ddpm's levels are multiples of the first ({base}); {c} is not"),
            ));
        }
        channel_mult.push(c / base);
    }
    let mut attention_resolutions = Vec::new();
    for (level, kind) in down.iter().enumerate() {
        let attends = match kind.as_str() {
            DOWN => false,
            ATTN_DOWN => true,
            _ => {
                return Err(f.bad(
                    "down_block_types",
                    format!("{kind:?}: ddpm builds {DOWN} and {ATTN_DOWN}"),
                ))
            }
        };
        let mirror = &up[levels - 1 - level];
        let up_attends = match mirror.as_str() {
            UP => false,
            ATTN_UP => true,
            _ => {
                return Err(f.bad(
                    "up_block_types",
                    format!("{mirror:?}: ddpm builds {UP} and {ATTN_UP}"),
                ))
            }
        };
        if attends != up_attends {
            return Err(f.bad(
                "up_block_types",
                format!(
                    "{mirror:?} mirrors down_block_types[{level}] = {kind:?}: ddpm attends at the same levels on the way down and up"
                ),
            ));
        }
        if attends {
            attention_resolutions.push(image_size.0 >> level);
        }
    }
    if let Some(d) = attention_head_dim {
        let attending = channels
            .iter()
            .enumerate()
            .filter(|(level, _)| down[*level] == ATTN_DOWN)
            .map(|(_, &c)| c)
            .chain([channels[levels - 1]]);
        for c in attending {
            if d == 0 || c % d != 0 {
                return Err(f.bad(
                    "attention_head_dim",
                    format!("does not divide the {c} channels of an attention block"),
                ));
            }
        }
    }
    if null_class && num_class_embeds.is_none_or(|n| n < 2) {
        return Err(f.bad(
            NULL_CLASS_FIELD,
            "a \"no class\" row needs num_class_embeds of at least 2",
        ));
    }
    let model = UNetConfig {
        arch: Arch::Unet,
        base_channels: base,
        channel_mult,
        num_res_blocks: layers_per_block,
        attention_resolutions: Some(attention_resolutions),
        num_heads: 1,
        dropout,
        norm_groups,
        num_classes: num_class_embeds.map(|n| n - usize::from(null_class)),
        norm_eps,
        freq_shift,
        flip_sin_to_cos,
        scale_shift,
        attention_head_dim,
        mid_block_scale_factor,
        center_input_sample,
        downsample_padding,
        // Unconditional models keep the default; a diffusers class table has no "no class"
        // row unless ddpm's own export says so.
        null_class: num_class_embeds.is_none() || null_class,
        mlp: Default::default(),
    };
    Ok(UNetSpec {
        model,
        image_size,
        in_channels,
        out_channels,
    })
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum SampleSize {
    Square(usize),
    Pair([usize; 2]),
}

/// The UNet2DModel config of a ddpm UNet over `image_size` images with `in_channels` input and
/// `out_channels` output channels; refuses, naming the key, what UNet2DModel cannot express.
pub fn to_diffusers(
    model: &UNetConfig,
    image_size: (usize, usize),
    in_channels: usize,
    out_channels: usize,
) -> Result<Value> {
    let refuse = |msg: String| Err(Error::Config(format!("cannot export to diffusers: {msg}")));
    if model.arch != Arch::Unet {
        return refuse("model.arch = \"mlp\": diffusers' UNet2DModel is a UNet for images".into());
    }
    let (h, _) = image_size;
    let plan = model.plan(h);
    let levels = model.channel_mult.len();
    let mut attention_channels = Vec::new();
    let mut norm_channels = vec![plan.out_channels];
    for block in plan.down.iter().chain(&plan.mid).chain(&plan.up) {
        match *block {
            Block::Res { cin, cout, .. } => norm_channels.extend([cin, cout]),
            Block::Attn { c, .. } => {
                attention_channels.push(c);
                norm_channels.push(c);
            }
            Block::Down { .. } | Block::Up { .. } => {}
        }
    }
    if let Some(c) = norm_channels.iter().find(|&&c| c < model.norm_groups) {
        return refuse(format!(
            "model.norm_groups = {} is more than the {c} channels of a GroupNorm, where ddpm uses {c} groups; UNet2DModel uses norm_num_groups everywhere",
            model.norm_groups
        ));
    }
    let head_dim = match (model.attention_head_dim, model.num_heads) {
        (Some(d), _) => Value::from(d),
        (None, 1) => Value::Null,
        (None, heads) => {
            let dims: Vec<usize> = attention_channels.iter().map(|c| c / heads).collect();
            if dims.windows(2).any(|w| w[0] != w[1]) {
                return refuse(format!(
                    "model.num_heads = {heads} gives heads of {dims:?} channels; UNet2DModel's heads all have attention_head_dim channels (set model.attention_head_dim instead)"
                ));
            }
            Value::from(dims[0])
        }
    };
    let attention = model.attention(h);
    let attends = |level: usize| attention.contains(&(h >> level));
    let down: Vec<&str> = (0..levels)
        .map(|l| if attends(l) { ATTN_DOWN } else { DOWN })
        .collect();
    let up: Vec<&str> = (0..levels)
        .rev()
        .map(|l| if attends(l) { ATTN_UP } else { UP })
        .collect();
    let channels: Vec<usize> = model
        .channel_mult
        .iter()
        .map(|m| m * model.base_channels)
        .collect();
    let sample_size = match image_size {
        (h, w) if h == w => json!(h),
        (h, w) => json!([h, w]),
    };
    let mut c: BTreeMap<&str, Value> = BTreeMap::new();
    c.insert("_class_name", json!("UNet2DModel"));
    c.insert("_diffusers_version", json!(DIFFUSERS_VERSION));
    c.insert("act_fn", json!("silu"));
    c.insert("add_attention", json!(true));
    c.insert("attention_head_dim", head_dim);
    c.insert("attn_norm_num_groups", Value::Null);
    c.insert("block_out_channels", json!(channels));
    c.insert("center_input_sample", json!(model.center_input_sample));
    c.insert("class_embed_type", Value::Null);
    c.insert("down_block_types", json!(down));
    c.insert("downsample_padding", json!(model.downsample_padding));
    c.insert("downsample_type", json!("conv"));
    c.insert("dropout", json!(model.dropout));
    c.insert("flip_sin_to_cos", json!(model.flip_sin_to_cos));
    c.insert("freq_shift", json!(model.freq_shift));
    c.insert("in_channels", json!(in_channels));
    c.insert("layers_per_block", json!(model.num_res_blocks));
    c.insert(
        "mid_block_scale_factor",
        json!(model.mid_block_scale_factor),
    );
    c.insert("mid_block_type", json!("UNetMidBlock2D"));
    c.insert("norm_eps", json!(model.norm_eps));
    c.insert("norm_num_groups", json!(model.norm_groups));
    c.insert("num_class_embeds", json!(model.label_rows()));
    c.insert("num_train_timesteps", Value::Null);
    c.insert("out_channels", json!(out_channels));
    c.insert(
        "resnet_time_scale_shift",
        json!(if model.scale_shift {
            "scale_shift"
        } else {
            "default"
        }),
    );
    c.insert("sample_size", sample_size);
    c.insert("time_embedding_dim", Value::Null);
    c.insert("time_embedding_type", json!("positional"));
    c.insert("up_block_types", json!(up));
    c.insert("upsample_type", json!("conv"));
    if model.num_classes.is_some() && model.null_class {
        c.insert(NULL_CLASS_FIELD, json!(true));
    }
    Ok(json!(c))
}

//! The names of a UNet's parameters in a ddpm checkpoint and in a diffusers UNet2DModel state
//! dict. ddpm's lists are flat (`down.{i}`, `up.{i}` as in ref_unet.py's ModuleLists);
//! diffusers nests them by level (`down_blocks.{level}.resnets.{j}`, `.attentions.{j}`,
//! `.downsamplers.0`; `up_blocks` count from the lowest resolution). Both orders come from
//! the same layer plan. Attention projections are 1x1 convolutions (c, c, 1, 1) in ddpm and
//! linear layers (c, c) in diffusers; everything else has one shape in both.

use crate::error::{Error, Result};
use crate::nn::plan::Block;
use crate::nn::shapes::unet_parameters;
use crate::nn::UNetConfig;

/// One parameter in both naming schemes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    /// ddpm's name (without the checkpoint's `model.` / `ema.` prefix).
    pub ours: String,
    /// diffusers' name.
    pub theirs: String,
    /// ddpm's shape.
    pub shape: Vec<usize>,
    /// diffusers' shape: `shape`, or (c, c) for an attention projection.
    pub their_shape: Vec<usize>,
}

/// What kind of block a ddpm prefix names, for renaming the layers inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A layer named the same below the prefix in both (`weight`, `bias`).
    Leaf,
    Res,
    Attn,
    /// A down- or upsampling convolution: ddpm's `conv`, diffusers' `{prefix}.conv`.
    Resample,
}

/// (ddpm prefix, diffusers prefix, kind) for every block of `cfg` at image height `height`.
fn prefixes(cfg: &UNetConfig, height: usize) -> Vec<(String, String, Kind)> {
    let plan = cfg.plan(height);
    let levels = cfg.channel_mult.len();
    let mut out: Vec<(String, String, Kind)> = [
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("label_embed", "class_embedding"),
        ("conv_in", "conv_in"),
        ("norm_out", "conv_norm_out"),
        ("conv_out", "conv_out"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string(), Kind::Leaf))
    .collect();
    // The j-th residual block of a diffusers block is followed by its j-th attention.
    let mut walk = |ours: &str, blocks: &[Block], theirs_of: &dyn Fn(usize) -> String| {
        let mut res_in_level = vec![0usize; levels];
        for (i, b) in blocks.iter().enumerate() {
            let (level, kind, tail) = match *b {
                Block::Res { level, .. } => {
                    res_in_level[level] += 1;
                    (
                        level,
                        Kind::Res,
                        format!("resnets.{}", res_in_level[level] - 1),
                    )
                }
                Block::Attn { level, .. } => (
                    level,
                    Kind::Attn,
                    format!("attentions.{}", res_in_level[level].saturating_sub(1)),
                ),
                Block::Down { level, .. } => (level, Kind::Resample, "downsamplers.0".into()),
                Block::Up { level, .. } => (level, Kind::Resample, "upsamplers.0".into()),
            };
            out.push((
                format!("{ours}.{i}"),
                format!("{}.{tail}", theirs_of(level)),
                kind,
            ));
        }
    };
    walk("down", &plan.down, &|level| format!("down_blocks.{level}"));
    walk("up", &plan.up, &|level| {
        format!("up_blocks.{}", levels - 1 - level)
    });
    for (i, (ours, theirs)) in [
        ("mid.0", "mid_block.resnets.0"),
        ("mid.1", "mid_block.attentions.0"),
        ("mid.2", "mid_block.resnets.1"),
    ]
    .iter()
    .enumerate()
    {
        let kind = if i == 1 { Kind::Attn } else { Kind::Res };
        out.push((ours.to_string(), theirs.to_string(), kind));
    }
    out
}

/// diffusers' name for the layer `layer` inside a block of `kind`, and whether its weight is
/// a matrix there where ddpm has a 1x1 convolution.
fn rename(kind: Kind, layer: &str) -> Option<(&'static str, bool)> {
    Some(match (kind, layer) {
        (Kind::Res, "norm1") => ("norm1", false),
        (Kind::Res, "conv1") => ("conv1", false),
        (Kind::Res, "temb_proj") => ("time_emb_proj", false),
        (Kind::Res, "norm2") => ("norm2", false),
        (Kind::Res, "conv2") => ("conv2", false),
        (Kind::Res, "skip") => ("conv_shortcut", false),
        (Kind::Attn, "norm") => ("group_norm", false),
        (Kind::Attn, "q") => ("to_q", true),
        (Kind::Attn, "k") => ("to_k", true),
        (Kind::Attn, "v") => ("to_v", true),
        (Kind::Attn, "proj") => ("to_out.0", true),
        (Kind::Resample, "conv") => ("conv", false),
        _ => return None,
    })
}

/// Every parameter of the UNet of `cfg` (over `image_size` images, `in_channels` in and
/// `out_channels` out) under both names, sorted by ddpm's.
pub fn key_pairs(
    cfg: &UNetConfig,
    in_channels: usize,
    out_channels: usize,
    image_size: (usize, usize),
) -> Result<Vec<KeyPair>> {
    let table = prefixes(cfg, image_size.0);
    let params = unet_parameters(cfg, in_channels, out_channels, image_size)?;
    params
        .into_iter()
        .map(|(ours, shape)| {
            let unmapped = || Error::Invalid(format!("no diffusers name for parameter `{ours}`"));
            let (prefix, theirs, kind) = table
                .iter()
                .filter(|(p, _, _)| {
                    ours.strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('.'))
                })
                .max_by_key(|(p, _, _)| p.len())
                .ok_or_else(unmapped)?;
            let rest = &ours[prefix.len() + 1..];
            let (name, matrix) = match kind {
                Kind::Leaf => (format!("{theirs}.{rest}"), false),
                _ => {
                    let (layer, param) = rest.split_once('.').ok_or_else(unmapped)?;
                    let (layer, matrix) = rename(*kind, layer).ok_or_else(unmapped)?;
                    (
                        format!("{theirs}.{layer}.{param}"),
                        matrix && param == "weight",
                    )
                }
            };
            let their_shape = match matrix {
                true => shape[..2].to_vec(),
                false => shape.clone(),
            };
            Ok(KeyPair {
                ours,
                theirs: name,
                shape,
                their_shape,
            })
        })
        .collect()
}

/// A state-dict name in today's diffusers form: attention layers saved before diffusers 0.14
/// are `query`, `key`, `value` and `proj_attn` (diffusers renames them on load too).
pub fn modern_name(name: &str) -> String {
    if !name.contains(".attentions.") {
        return name.to_string();
    }
    let Some((head, param)) = name.rsplit_once('.') else {
        return name.to_string();
    };
    let Some((block, layer)) = head.rsplit_once('.') else {
        return name.to_string();
    };
    let layer = match layer {
        "query" => "to_q",
        "key" => "to_k",
        "value" => "to_v",
        "proj_attn" => "to_out.0",
        other => other,
    };
    format!("{block}.{layer}.{param}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_diffusers_nesting() {
        // Levels 8 and 4 (attention at 4), one residual block per level.
        let cfg = UNetConfig {
            base_channels: 16,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: Some(vec![4]),
            norm_groups: 8,
            num_classes: Some(2),
            ..UNetConfig::default()
        };
        let pairs = key_pairs(&cfg, 1, 1, (8, 8)).unwrap();
        let theirs = |ours: &str| {
            pairs
                .iter()
                .find(|p| p.ours == ours)
                .unwrap_or_else(|| panic!("no {ours}"))
        };
        // down: 0 Res (level 0), 1 Down, 2 Res (level 1, 16 -> 32), 3 Attn.
        for (ours, want) in [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("label_embed.weight", "class_embedding.weight"),
            (
                "down.0.temb_proj.bias",
                "down_blocks.0.resnets.0.time_emb_proj.bias",
            ),
            (
                "down.1.conv.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "down.2.skip.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "down.3.norm.bias",
                "down_blocks.1.attentions.0.group_norm.bias",
            ),
            (
                "down.3.proj.bias",
                "down_blocks.1.attentions.0.to_out.0.bias",
            ),
            ("mid.1.q.weight", "mid_block.attentions.0.to_q.weight"),
            ("mid.2.conv2.weight", "mid_block.resnets.1.conv2.weight"),
            // up: 0 Res, 1 Attn, 2 Res, 3 Attn (level 1), 4 Up, 5 Res, 6 Res (level 0).
            ("up.3.k.weight", "up_blocks.0.attentions.1.to_k.weight"),
            ("up.4.conv.bias", "up_blocks.0.upsamplers.0.conv.bias"),
            ("up.6.norm1.weight", "up_blocks.1.resnets.1.norm1.weight"),
            ("norm_out.weight", "conv_norm_out.weight"),
        ] {
            assert_eq!(theirs(ours).theirs, want, "{ours}");
        }
        assert_eq!(theirs("down.3.q.weight").their_shape, vec![32, 32]);
        assert_eq!(theirs("down.3.q.weight").shape, vec![32, 32, 1, 1]);
        assert_eq!(theirs("down.3.q.bias").their_shape, vec![32]);
        let mut names: Vec<&str> = pairs.iter().map(|p| p.theirs.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            pairs.len(),
            "two parameters share a diffusers name"
        );
    }

    #[test]
    fn legacy_attention_names_are_renamed() {
        assert_eq!(
            modern_name("mid_block.attentions.0.query.weight"),
            "mid_block.attentions.0.to_q.weight"
        );
        assert_eq!(
            modern_name("up_blocks.1.attentions.2.proj_attn.bias"),
            "up_blocks.1.attentions.2.to_out.0.bias"
        );
        assert_eq!(
            modern_name("down_blocks.0.resnets.0.norm1.weight"),
            "down_blocks.0.resnets.0.norm1.weight"
        );
    }
}

//! The memory a command will need, estimated from its config before anything is allocated, and
//! the check of that estimate against what the process may take (`limits::available`): a run
//! too big for the machine is refused at once with the estimate, its largest parts and the key
//! to change, instead of dying of a failed allocation (an abort) or waking the OOM killer
//! hours in. The counts are exact (parameters, activations per layer); how many copies of them
//! the code keeps alive was measured (`benches/memory.sh`), and the estimates lie between 1
//! and 1.6 times the measured peak (tests below). On a GPU only the host's part is checked:
//! running out of GPU memory is a clean error from CUDA, not an abort.

use std::fmt::Write as _;

use candle_core::Device;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::limits::{Bytes, Memory};
use crate::nn::plan::Block;
use crate::nn::Arch;

/// What the program takes before any model: code, thread stacks, buffers (measured: 23 MB for
/// the tiny config's whole training run).
const PROGRAM_BYTES: f64 = 32.0 * 1024.0 * 1024.0;

/// One part of an estimate: what it is, its bytes, and what to do when it is too much (`lower
/// train.batch_size`: the key or flag that sizes it).
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub what: String,
    pub bytes: f64,
    pub fix: String,
    /// Bytes per unit (one example, one image) and what to do instead when a single unit is
    /// already too much (the size of an example, not the batch, is then at fault).
    pub per_unit: Option<(f64, String)>,
    /// Held on the compute device (weights, activations) rather than in host memory.
    pub on_device: bool,
}

impl Part {
    /// A part in host memory.
    pub fn host(what: impl Into<String>, bytes: f64, fix: impl Into<String>) -> Self {
        Part {
            what: what.into(),
            bytes,
            fix: fix.into(),
            per_unit: None,
            on_device: false,
        }
    }

    /// A part on the compute device.
    pub fn device(what: impl Into<String>, bytes: f64, fix: impl Into<String>) -> Self {
        Part {
            on_device: true,
            ..Part::host(what, bytes, fix)
        }
    }

    /// The same part, advising `fix` instead when one of its `units` alone does not fit.
    pub fn per_unit(mut self, units: usize, fix: impl Into<String>) -> Self {
        self.per_unit = Some((self.bytes / units.max(1) as f64, fix.into()));
        self
    }
}

/// An estimate: the parts a command holds in memory at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Need {
    pub parts: Vec<Part>,
}

impl Need {
    /// This estimate and one more part.
    pub fn with(mut self, part: Part) -> Self {
        self.parts.push(part);
        self
    }

    /// The parts that count on `device`: the program and all parts on the CPU, the program and
    /// the host's parts on a GPU.
    fn counted<'a>(&'a self, device: &Device) -> impl Iterator<Item = Part> + 'a {
        let cpu = device.is_cpu();
        let program = Part::host(
            "the program itself",
            PROGRAM_BYTES,
            "give the program more memory",
        );
        std::iter::once(program).chain(
            self.parts
                .iter()
                .filter(move |p| cpu || !p.on_device)
                .cloned(),
        )
    }

    /// The bytes counted on `device`.
    pub fn bytes(&self, device: &Device) -> u64 {
        self.counted(device).map(|p| p.bytes).sum::<f64>() as u64
    }

    /// Ok when the estimate fits `memory` (None: unknown, nothing is refused); else an error
    /// saying what `command` needs, its largest parts, what is available, and what to change:
    /// the largest part's fix (or its per-unit one, when one unit alone does not fit).
    pub fn check(&self, command: &str, device: &Device, memory: Option<&Memory>) -> Result<()> {
        let Some(memory) = memory else {
            return Ok(());
        };
        let total = self.bytes(device);
        if total <= memory.bytes {
            return Ok(());
        }
        let mut parts: Vec<Part> = self.counted(device).collect();
        parts.sort_by(|a, b| b.bytes.total_cmp(&a.bytes));
        let mut list = String::new();
        for p in parts
            .iter()
            .filter(|p| p.bytes >= 0.01 * total as f64)
            .take(4)
        {
            let sep = if list.is_empty() { "" } else { ", " };
            let _ = write!(list, "{sep}{}: {}", p.what, Bytes(p.bytes as u64));
        }
        let fix = match parts.first() {
            Some(Part {
                per_unit: Some((unit, fix)),
                ..
            }) if *unit > memory.bytes as f64 => fix.as_str(),
            Some(p) => p.fix.as_str(),
            None => "",
        };
        Err(Error::Invalid(format!(
            "{command} needs about {} of memory ({list}), but {memory} is available; {fix}",
            Bytes(total)
        )))
    }
}

/// The number of parameters of the network `cfg` builds (exact; f64 is exact to 2^53).
pub fn parameters(cfg: &Config) -> u64 {
    parameter_count(cfg) as u64
}

fn parameter_count(cfg: &Config) -> f64 {
    let out = cfg.out_channels() as f64;
    match cfg.model.arch {
        Arch::Mlp => {
            let m = &cfg.model.mlp;
            let (w, d) = (m.width as f64, cfg.data.example_shape()[0] as f64);
            let linear = |i: f64, o: f64| i * o + o;
            linear(m.time_dim as f64, w)
                + linear(w, w)
                + linear(d, w)
                + m.blocks as f64 * 3.0 * linear(w, w)
                + linear(w, out)
        }
        Arch::Unet => {
            let u = &cfg.model;
            let ch = u.base_channels as f64;
            let temb = 4.0 * ch;
            let linear = |i: f64, o: f64| i * o + o;
            let conv = |i: f64, o: f64, k: f64| i * o * k * k + o;
            let norm = |c: f64| 2.0 * c;
            let plan = u.plan(cfg.data.image_size.height);
            let block = |b: &Block| match *b {
                Block::Res { cin, cout, .. } => {
                    let (i, o) = (cin as f64, cout as f64);
                    let skip = if cin != cout { conv(i, o, 1.0) } else { 0.0 };
                    norm(i) + conv(i, o, 3.0) + linear(temb, o) + norm(o) + conv(o, o, 3.0) + skip
                }
                Block::Attn { c, .. } => norm(c as f64) + 4.0 * conv(c as f64, c as f64, 1.0),
                Block::Down { c, .. } | Block::Up { c, .. } => conv(c as f64, c as f64, 3.0),
            };
            let labels = u.num_classes.map_or(0.0, |n| (n as f64 + 1.0) * temb);
            let c_out = plan.out_channels as f64;
            linear(ch, temb)
                + linear(temb, temb)
                + labels
                + conv(cfg.data.channels as f64, ch, 3.0)
                + plan
                    .down
                    .iter()
                    .chain(&plan.mid)
                    .chain(&plan.up)
                    .map(block)
                    .sum::<f64>()
                + norm(c_out)
                + conv(c_out, out, 3.0)
        }
    }
}

/// Values per example that the UNet computes, from its layer plan: `a`, every layer's output
/// (a residual block counted by its input and output, attention by its input, the resampling
/// convolutions by their output); `s`, the skip connections the way down keeps for the way up;
/// `t`, the largest residual block's input plus output; `q`, the attention maps (heads x n^2
/// for n = h w pixels) summed over the attention layers, and `q_max`, the largest one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counts {
    a: f64,
    s: f64,
    t: f64,
    q: f64,
    q_max: f64,
}

fn unet_counts(cfg: &Config) -> Counts {
    let u = &cfg.model;
    let (h, w) = (cfg.data.image_size.height, cfg.data.image_size.width);
    let plan = u.plan(h);
    let pixels = |level: usize| ((h >> level) * (w >> level)) as f64;
    let (ch, img) = (u.base_channels as f64, (h * w) as f64);
    let mut c = Counts {
        a: ch * img + (plan.out_channels + cfg.data.channels) as f64 * img,
        s: ch * img,
        ..Counts::default()
    };
    let mut level = 0;
    for (i, b) in plan
        .down
        .iter()
        .chain(&plan.mid)
        .chain(&plan.up)
        .enumerate()
    {
        let down = i < plan.down.len();
        match *b {
            Block::Res {
                cin,
                cout,
                level: l,
            } => {
                level = l;
                let v = (cin + cout) as f64 * pixels(l);
                c.a += v;
                c.t = c.t.max(v);
                if down {
                    c.s += cout as f64 * pixels(l);
                }
            }
            Block::Attn { c: k, .. } => {
                let n = pixels(level);
                c.a += k as f64 * n;
                // Heads of attention_head_dim channels each when it is set.
                let q = u.heads(k).unwrap_or(u.num_heads) as f64 * n * n;
                c.q += q;
                c.q_max = c.q_max.max(q);
            }
            Block::Down { c: k, .. } => {
                let v = k as f64 * pixels(level + 1);
                c.a += v;
                c.s += v;
            }
            Block::Up { c: k, .. } => c.a += k as f64 * pixels(level - level.min(1)),
        }
    }
    c
}

/// Bytes per example of a training step's activations, which autograd keeps for the backward
/// pass: UNet 16 a + 28 q (four f32 copies of every layer's output, seven of every attention
/// map); MLP 64 width (1 + blocks) (sixteen f32 values per layer and example).
pub fn training_bytes_per_example(cfg: &Config) -> f64 {
    match cfg.model.arch {
        Arch::Unet => {
            let c = unet_counts(cfg);
            16.0 * c.a + 28.0 * c.q
        }
        Arch::Mlp => {
            let m = &cfg.model.mlp;
            64.0 * m.width as f64 * (1 + m.blocks) as f64
        }
    }
}

/// Bytes per example of a forward pass without autograd (sampling): UNet 4 s + max(12 t,
/// 16 q_max): the skips, which live through the whole pass, and the larger of two transients
/// that never coexist (every other output is freed as soon as the next layer has read it):
/// three f32 copies of the largest residual block's input and output, or four of the largest
/// attention map. MLP: 32 width.
pub fn inference_bytes_per_example(cfg: &Config) -> f64 {
    match cfg.model.arch {
        Arch::Unet => {
            let c = unet_counts(cfg);
            4.0 * c.s + (12.0 * c.t).max(16.0 * c.q_max)
        }
        Arch::Mlp => 32.0 * cfg.model.mlp.width as f64,
    }
}

/// Bytes of one example as f32 values (C H W, or D).
pub fn example_bytes(cfg: &Config) -> f64 {
    4.0 * cfg.data.example_shape().iter().product::<usize>() as f64
}

/// The model key whose size matters most: of the keys that size the network, the one whose
/// default would shrink the parameter count the most.
fn model_key(cfg: &Config) -> &'static str {
    let now = parameter_count(cfg);
    let d = crate::nn::UNetConfig::default();
    let mut candidates: Vec<(&'static str, Config)> = Vec::new();
    let mut with = |key, edit: &dyn Fn(&mut Config)| {
        let mut c = cfg.clone();
        edit(&mut c);
        candidates.push((key, c));
    };
    match cfg.model.arch {
        Arch::Unet => {
            with("model.base_channels", &|c| {
                c.model.base_channels = d.base_channels
            });
            with("model.channel_mult", &|c| {
                c.model.channel_mult = vec![1; c.model.channel_mult.len()]
            });
            with("model.num_res_blocks", &|c| c.model.num_res_blocks = 1);
            with("model.num_classes", &|c| {
                c.model.num_classes = c.model.num_classes.map(|_| 1)
            });
        }
        Arch::Mlp => {
            with("model.mlp.width", &|c| c.model.mlp.width = d.mlp.width);
            with("model.mlp.blocks", &|c| c.model.mlp.blocks = d.mlp.blocks);
        }
    }
    candidates
        .iter()
        .map(|(key, c)| (*key, now - parameter_count(c)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or("model.base_channels", |(key, _)| key)
}

/// What `ddpm train` holds at once with `cfg` on `device`: the weights, gradients, EMA and two
/// Adam moments (20 bytes per parameter), the checkpoint being written (the file, 16 bytes per
/// parameter, and on a GPU the host copy of the tensors, 16 more), a micro-batch's activations,
/// the loader's queued batches ((prefetch + workers) micro-batches), the points a generator
/// draws (24 bytes per value: f64, then standardised f32 rows and the loader's copy), and the
/// sample grids' sampling.
pub fn training(cfg: &Config, device: &Device) -> Need {
    let p = parameter_count(cfg);
    let lower_model = format!("lower {}", model_key(cfg));
    let micro = cfg.train.micro_batch();
    let lower_batch = "lower train.batch_size or raise train.grad_accum";
    let lower_example = match cfg.model.arch {
        Arch::Unet => {
            let c = unet_counts(cfg);
            if 28.0 * c.q > 16.0 * c.a {
                "lower data.image_size or thin out model.attention_resolutions"
            } else {
                "lower data.image_size or the model's size"
            }
        }
        Arch::Mlp => "lower model.mlp.width",
    };
    let checkpoint = if device.is_cpu() { 16.0 } else { 32.0 };
    let mut need = Need::default()
        .with(Part::device(
            "weights, gradients, EMA and optimizer moments",
            20.0 * p,
            &lower_model,
        ))
        .with(Part::host(
            "the checkpoint being written",
            checkpoint * p,
            &lower_model,
        ))
        .with(
            Part::device(
                format!("activations of a micro-batch of {micro}"),
                micro as f64 * training_bytes_per_example(cfg),
                lower_batch,
            )
            .per_unit(micro, lower_example),
        )
        .with(Part::host(
            "batches queued by the data loader",
            (cfg.data.prefetch + cfg.data.workers) as f64 * micro as f64 * example_bytes(cfg),
            "lower data.prefetch",
        ));
    if cfg.data.dataset.toy().is_some() {
        need = need.with(Part::host(
            "the generated points",
            24.0 * cfg.data.num_points as f64 * 2.0,
            "lower data.num_points",
        ));
    }
    if cfg.train.sample_every > 0 {
        let n = cfg.train.sample_count;
        let b = cfg.sample.batch_size.min(n);
        need = need
            .with(Part::device(
                format!("sampling the grids in batches of {b}"),
                b as f64 * inference_bytes_per_example(cfg),
                "lower sample.batch_size",
            ))
            .with(Part::host(
                "the sample grids",
                2.0 * n as f64 * example_bytes(cfg),
                "lower train.sample_count",
            ));
    }
    need
}

/// What generating from `cfg`'s network holds at once: its weights (4 bytes per parameter, in
/// f32) and the activations of a batch of `batch` (twice that under guidance, whose
/// conditional and unconditional passes run as one batch). The caller adds its outputs.
pub fn sampling(cfg: &Config, batch: usize, guided: bool) -> Need {
    let rows = if guided { 2 * batch } else { batch };
    Need::default()
        .with(Part::device(
            "the weights",
            4.0 * parameter_count(cfg),
            "the model alone does not fit this machine",
        ))
        .with(
            Part::device(
                format!("activations of a batch of {batch}"),
                rows as f64 * inference_bytes_per_example(cfg),
                "lower --batch-size",
            )
            .per_unit(batch, "even one image does not fit this machine"),
        )
}

/// What evaluating the likelihood holds: the weights (f32) and a batch's activations — kept
/// for backward passes through the network when `backward` (the ODE's divergence estimate,
/// as in training but without an optimizer), freed layer by layer otherwise (the bound).
pub fn evaluation(cfg: &Config, batch: usize, backward: bool) -> Need {
    let per_example = if backward {
        training_bytes_per_example(cfg)
    } else {
        inference_bytes_per_example(cfg)
    };
    Need::default()
        .with(Part::device(
            "the weights",
            4.0 * parameter_count(cfg),
            "the model alone does not fit this machine",
        ))
        .with(
            Part::device(
                format!("activations of a batch of {batch}"),
                batch as f64 * per_example,
                "lower --batch-size",
            )
            .per_unit(batch, "even one example does not fit this machine"),
        )
}

#[cfg(test)]
mod tests;

//! Class conditioning and classifier-free guidance (Ho & Salimans 2022). One network learns both
//! eps(x_t, t, c) and eps(x_t, t): in training each label is replaced by the null label with
//! probability `train.label_dropout` (`drop_labels`); in sampling the two predictions are mixed,
//! eps = eps_u + w (eps_c - eps_u), by `Guided`, a `Denoiser` every sampler accepts unchanged.
//! w = 0 is the unconditional model, w = 1 the conditional one, w > 1 trades diversity for
//! fidelity to the class: the guided score is that of p(x|c) p(c|x)^(w-1).
//!
//! This module owns the label-taking model trait, the guided denoiser and the label bookkeeping
//! (dropout, cycling classes over a batch). The label embedding itself is the UNet's (`nn`).

use candle_core::{DType, Tensor};

use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::rng::Stream;

/// A model that takes one class label per example; label `num_classes()` is the null label
/// ("no class"), which the model was trained on through label dropout.
pub trait Conditional {
    /// The raw model output (B, C', ...) for x_t (B, C, ...) at timesteps `t` with `labels`
    /// (each in 0..=num_classes, the last meaning none).
    fn forward_labels(&self, x_t: &Tensor, t: &[usize], labels: &[u32]) -> Result<Tensor>;

    /// The number of classes n; labels 0..n name them, n is the null label.
    fn num_classes(&self) -> usize;
}

/// Classifier-free guidance as a `Denoiser`: the batch's labels and the guidance scale w.
pub struct Guided<'a> {
    model: &'a dyn Conditional,
    labels: Vec<u32>,
    scale: f64,
}

impl<'a> Guided<'a> {
    /// Guide `model` toward `labels` (one per example, each a class or the null label) with
    /// scale w = `scale` >= 0.
    pub fn new(model: &'a dyn Conditional, labels: Vec<u32>, scale: f64) -> Result<Self> {
        let n = model.num_classes();
        if let Some(bad) = labels.iter().find(|&&y| y as usize > n) {
            return Err(Error::Invalid(format!(
                "class {bad} is outside 0..={n} (the model has {n} classes; {n} is the null label)"
            )));
        }
        check_scale(scale)?;
        Ok(Guided {
            model,
            labels,
            scale,
        })
    }

    /// The null label of the model.
    fn null(&self) -> u32 {
        self.model.num_classes() as u32
    }
}

/// A guidance scale is a finite w. Negative w is legal: it steers away from the class
/// (eps_u - |w| (eps_c - eps_u)), as negative prompts do.
pub fn check_scale(scale: f64) -> Result<()> {
    if !scale.is_finite() {
        return Err(Error::Invalid(format!(
            "guidance = {scale} must be a finite number (0 unconditional, 1 conditional, > 1 \
             guided, < 0 away from the class)"
        )));
    }
    Ok(())
}

impl Denoiser for Guided<'_> {
    /// out = out_u + w (out_c - out_u) on the first C channels (the prediction), where
    /// out_c = model(x_t, t, labels), out_u = model(x_t, t, null), both from one forward over
    /// the batch stacked with itself. Mixing the prediction mixes eps for eps-, x0- and
    /// v-prediction alike (eps is affine in it with coefficients that sum to one). Channels past
    /// C (a learned variance) come from out_c. One forward of B rows when w = 1 (out_c), w = 0
    /// or every label is null (out_u).
    fn forward(&self, x_t: &Tensor, t: &[usize]) -> Result<Tensor> {
        let b = x_t.dim(0)?;
        if self.labels.len() != b || t.len() != b {
            return Err(Error::Invalid(format!(
                "guidance over a batch of {b} with {} labels and {} timesteps",
                self.labels.len(),
                t.len()
            )));
        }
        let null = self.null();
        let nulls = vec![null; b];
        if self.scale == 0.0 || self.labels.iter().all(|&y| y == null) {
            return self.model.forward_labels(x_t, t, &nulls);
        }
        if self.scale == 1.0 {
            return self.model.forward_labels(x_t, t, &self.labels);
        }
        let both = Tensor::cat(&[x_t, x_t], 0)?;
        let t2: Vec<usize> = t.iter().chain(t).copied().collect();
        let labels: Vec<u32> = self.labels.iter().chain(&nulls).copied().collect();
        let out = self
            .model
            .forward_labels(&both, &t2, &labels)?
            .to_dtype(DType::F32)?;
        let (out_c, out_u) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
        let c = x_t.dim(1)?;
        let pred = |o: &Tensor| o.narrow(1, 0, c);
        let (pred_c, pred_u) = (pred(&out_c)?, pred(&out_u)?);
        let guided = (&pred_u + ((&pred_c - &pred_u)? * self.scale)?)?;
        let extra = out_c.dim(1)? - c;
        if extra == 0 {
            return Ok(guided);
        }
        Ok(Tensor::cat(&[&guided, &out_c.narrow(1, c, extra)?], 1)?)
    }
}

/// Label dropout: each label becomes `null` with probability `p`, one uniform draw per label
/// from `stream` (drawn whatever p, so the stream advances the same for any p).
pub fn drop_labels(labels: &mut [u32], null: u32, p: f64, stream: &mut Stream) {
    for y in labels {
        if stream.uniform() < p {
            *y = null;
        }
    }
}

/// The label a user's class `value` means: the position of the class named `value` in
/// `names` (a checkpoint's class names, label order), else `value` as a class number. A name
/// wins over a number, so folders named "10" and "2" (sorted: "10" is label 0) are found by
/// name.
pub fn class_label(value: &str, names: Option<&[String]>) -> Result<u32> {
    if let Some(i) = names.and_then(|n| n.iter().position(|name| name == value)) {
        return Ok(i as u32);
    }
    value.trim().parse::<u32>().map_err(|_| {
        Error::Invalid(match names {
            Some(names) => format!(
                "no class is named {value:?}; the classes are {} (or their numbers, 0..={})",
                names.join(", "),
                names.len().saturating_sub(1)
            ),
            None => format!("{value:?} is not a class number (the checkpoint has no class names)"),
        })
    })
}

/// The labels of images `first .. first + n` when the classes `classes` are cycled over the
/// images: image i gets classes[i % len], so `-n 10 --class 0,...,9` draws one of each and image
/// i keeps its class whatever the batching. Empty `classes`: every image gets `null`.
pub fn cycle(classes: &[u32], first: u64, n: usize, null: u32) -> Vec<u32> {
    if classes.is_empty() {
        return vec![null; n];
    }
    let len = classes.len() as u64;
    (0..n as u64)
        .map(|i| classes[((first + i) % len) as usize])
        .collect()
}

#[cfg(test)]
mod tests;

//! What the network knows about t and the class label: the sinusoidal timestep embedding, its
//! two-layer MLP, and the optional label embedding added to it. Residual blocks project the
//! result themselves (`resblock`).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::error::{Error, Result};
use crate::nn::layers::detached_linear;

/// The frequencies of the sinusoidal embedding of width `dim` (even, >= 4):
/// f_i = exp(-ln(1e4) i / (half - shift)), i = 0..half, half = dim / 2   (ref_unet.py with
/// shift = 1; diffusers' `get_timestep_embedding` with downscale_freq_shift = shift).
pub fn frequencies(dim: usize, shift: usize) -> Vec<f32> {
    let half = dim / 2;
    let denom = half.saturating_sub(shift).max(1) as f64;
    (0..half)
        .map(|i| (-(10_000f64.ln()) * i as f64 / denom).exp() as f32)
        .collect()
}

/// [sin(t f), cos(t f)], or [cos(t f), sin(t f)] with `flip`: (B, dim) f32 for t: (B,) f32 and
/// `freqs`: (1, dim/2) f32 on t's device.
pub fn sinusoidal(t: &Tensor, freqs: &Tensor, flip: bool) -> Result<Tensor> {
    let args = t.unsqueeze(1)?.broadcast_mul(freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    Ok(match flip {
        false => Tensor::cat(&[sin, cos], 1)?,
        true => Tensor::cat(&[cos, sin], 1)?,
    })
}

/// The sinusoid's options (`model.freq_shift`, `model.flip_sin_to_cos`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sinusoid {
    pub freq_shift: usize,
    pub flip_sin_to_cos: bool,
}

/// The label table: `rows` embeddings for `classes` classes; row `classes`, when there is one
/// more row, is "no label".
#[derive(Clone, Debug)]
struct Labels {
    table: Embedding,
    classes: usize,
    rows: usize,
}

/// temb = Linear(4ch, 4ch)(SiLU(Linear(ch, 4ch)(sinusoidal(t, ch)))) [+ label_embed(y)].
/// Keys: `time_embed.0`, `time_embed.2` (the SiLU is `time_embed.1`, as in nn.Sequential) and
/// `label_embed` (n + 1 rows, row n = "no label", for classifier-free guidance; n rows for a
/// model without one).
#[derive(Clone, Debug)]
pub struct TimeEmbedding {
    freqs: Tensor,
    flip: bool,
    lin1: Linear,
    lin2: Linear,
    labels: Option<Labels>,
}

impl TimeEmbedding {
    /// `dim` = base channels; the output has 4 * dim channels. `labels` = (classes, rows of
    /// the table: classes + 1 with a "no label" row).
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        sinusoid: Sinusoid,
        labels: Option<(usize, usize)>,
    ) -> Result<Self> {
        let freqs = frequencies(dim, sinusoid.freq_shift);
        let freqs = Tensor::from_vec(freqs, (1, dim / 2), vb.device())?;
        let tvb = vb.pp("time_embed");
        let lin1 = candle_nn::linear(dim, 4 * dim, tvb.pp(0))?;
        let lin2 = candle_nn::linear(4 * dim, 4 * dim, tvb.pp(2))?;
        let labels = match labels {
            Some((classes, rows)) => Some(Labels {
                table: candle_nn::embedding(rows, 4 * dim, vb.pp("label_embed"))?,
                classes,
                rows,
            }),
            None => None,
        };
        Ok(TimeEmbedding {
            freqs,
            flip: sinusoid.flip_sin_to_cos,
            lin1,
            lin2,
            labels,
        })
    }

    /// The same embedding over the same storage, recording no autograd graph.
    pub fn detached(&self) -> Self {
        TimeEmbedding {
            freqs: self.freqs.clone(),
            flip: self.flip,
            lin1: detached_linear(&self.lin1),
            lin2: detached_linear(&self.lin2),
            labels: self.labels.as_ref().map(|l| Labels {
                table: Embedding::new(l.table.embeddings().detach(), l.table.hidden_size()),
                ..*l
            }),
        }
    }

    /// The embedding (B, 4 * dim) in `dtype` for timesteps `t` and optional `labels` (each in
    /// 0..=num_classes, num_classes meaning "no label"; None = all "no label"; a table without
    /// a "no label" row takes classes only).
    pub fn forward(
        &self,
        t: &[usize],
        labels: Option<&[u32]>,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        // One timestep for the whole batch (sampling) is filled in on the device: no copy from
        // the host, which would wait for the GPU's queue at every step.
        let t_dev = match t.split_first() {
            Some((&first, rest)) if rest.iter().all(|&v| v == first) => {
                Tensor::full(first as f32, t.len(), device)?
            }
            _ => {
                let t_host: Vec<f32> = t.iter().map(|&v| v as f32).collect();
                Tensor::from_vec(t_host, t.len(), device)?
            }
        };
        let emb = sinusoidal(&t_dev, &self.freqs, self.flip)?.to_dtype(dtype)?;
        let emb = self.lin2.forward(&self.lin1.forward(&emb)?.silu()?)?;
        match (&self.labels, labels) {
            (None, None) => Ok(emb),
            (None, Some(_)) => Err(Error::Invalid(
                "class labels given to an unconditional model (model.num_classes is not set)"
                    .into(),
            )),
            (Some(l), labels) => {
                let n = l.classes;
                let ids = match labels {
                    Some(y) => y.to_vec(),
                    None => vec![n as u32; t.len()],
                };
                if ids.len() != t.len() {
                    return Err(Error::Invalid(format!(
                        "{} labels for a batch of {}",
                        ids.len(),
                        t.len()
                    )));
                }
                if let Some(bad) = ids.iter().find(|&&v| v as usize >= l.rows) {
                    return Err(Error::Invalid(if l.rows > n {
                        format!(
                            "class label {bad} is outside 0..={n} (model.num_classes = {n}; {n} = no label)"
                        )
                    } else {
                        format!(
                            "class label {bad} is outside 0..{n}: this model has {n} classes and no \"no class\" label (model.null_class = false), so it needs a class for every image"
                        )
                    }));
                }
                let ids = Tensor::from_vec(ids, t.len(), device)?;
                Ok((emb + l.table.forward(&ids)?)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One timestep for the whole batch (sampling) is filled in on the device rather than
    /// uploaded: the embedding is bit for bit that of a batch given the timesteps one by one.
    #[test]
    fn a_shared_timestep_embeds_to_the_same_bits() {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let ddpm = Sinusoid {
            freq_shift: 1,
            flip_sin_to_cos: false,
        };
        let emb = TimeEmbedding::new(vb, 8, ddpm, None).unwrap();
        crate::nn::init_weights(&varmap, 3).unwrap();
        let rows = |t: &[usize]| -> Vec<Vec<f32>> {
            emb.forward(t, None, &Device::Cpu, DType::F32)
                .unwrap()
                .to_vec2()
                .unwrap()
        };
        let shared = rows(&[417, 417, 417]);
        let mixed = rows(&[417, 3, 417]);
        assert_eq!(shared[0], mixed[0]);
        assert_eq!(shared[2], mixed[2]);
        assert_eq!(shared[1], mixed[0]);
        assert_ne!(mixed[1], mixed[0]);
    }

    #[test]
    fn sinusoidal_matches_closed_form() {
        // dim 8: half 4, f_i = 10^(-4 i / 3); row = [sin(t f_0..3), cos(t f_0..3)].
        let dim = 8;
        let ts = [0usize, 1, 17, 999];
        let freqs = Tensor::from_vec(frequencies(dim, 1), (1, dim / 2), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(
            ts.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            4,
            &Device::Cpu,
        )
        .unwrap();
        let got: Vec<Vec<f32>> = sinusoidal(&t, &freqs, false).unwrap().to_vec2().unwrap();
        for (row, &tv) in got.iter().zip(&ts) {
            for i in 0..4 {
                let f = 10f64.powf(-4.0 * i as f64 / 3.0);
                let a = tv as f64 * f;
                // f32 arguments up to 999 carry ~6e-5 absolute rounding error.
                assert!((row[i] as f64 - a.sin()).abs() < 2e-4, "t {tv} sin {i}");
                assert!((row[4 + i] as f64 - a.cos()).abs() < 2e-4, "t {tv} cos {i}");
            }
        }
        assert_eq!(got[0], vec![0., 0., 0., 0., 1., 1., 1., 1.]);
    }
}

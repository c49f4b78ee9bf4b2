//! What happens to gradients between `backward()` and the optimizer: averaging over micro-batches
//! and clipping the global norm. Both see only the parameters they are given; `backward()` also
//! returns gradients of every intermediate tensor, which are ignored (and never kept alive).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Scale the gradients of `params` so their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`): with ||g|| = sqrt(sum over params of sum g^2), every
/// gradient is multiplied by max_norm / (||g|| + 1e-6) when ||g|| > max_norm.
/// Returns ||g|| before clipping. A non-finite norm leaves the gradients as they are, so the
/// caller can report it rather than train on NaNs.
pub fn clip_grad_norm<'a>(
    params: impl IntoIterator<Item = &'a Tensor>,
    grads: &mut GradStore,
    max_norm: f64,
) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::Invalid(format!(
            "gradient clipping norm {max_norm} must be positive and finite"
        )));
    }
    let params: Vec<&Tensor> = params.into_iter().collect();
    let mut sums = Vec::with_capacity(params.len());
    for p in &params {
        if let Some(g) = grads.get(p) {
            sums.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
        }
    }
    if sums.is_empty() {
        return Ok(0.0);
    }
    // One device-to-host transfer for the whole norm, not one per parameter.
    let norm = (Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f32>()? as f64).sqrt();
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for p in params {
            if let Some(g) = grads.get(p) {
                let clipped = (g * scale)?;
                grads.insert(p, clipped);
            }
        }
    }
    Ok(norm)
}

/// Averages the gradients of k micro-batches: sum over the micro-batches, then divide by k.
/// With equal micro-batches and a mean loss, this is the gradient of the whole batch. A
/// micro-batch computed in shards adds each shard's gradients with its weight n_k / n
/// (`add_weighted`), which together count as one micro-batch.
pub struct GradAccumulator {
    params: Vec<Tensor>,
    sums: Vec<Option<Tensor>>,
    weight: f64,
}

impl GradAccumulator {
    /// An empty accumulator for the gradients of `params`.
    pub fn new<'a>(params: impl IntoIterator<Item = &'a Tensor>) -> Self {
        let params: Vec<Tensor> = params.into_iter().cloned().collect();
        let sums = vec![None; params.len()];
        GradAccumulator {
            params,
            sums,
            weight: 0.0,
        }
    }

    /// The parameters whose gradients this accumulator adds, in its order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Micro-batches added since the last `finish` (the sum of the weights added).
    pub fn count(&self) -> f64 {
        self.weight
    }

    /// Add one micro-batch's gradients (f32, detached; other tensors' gradients are dropped).
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        self.add_weighted(grads, 1.0)
    }

    /// Add `weight` times `grads` (weight 1 is added exactly, without a multiplication).
    pub fn add_weighted(&mut self, grads: &GradStore, weight: f64) -> Result<()> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(Error::Invalid(format!(
                "gradient weight {weight} must be positive and finite"
            )));
        }
        for (p, sum) in self.params.iter().zip(&mut self.sums) {
            if let Some(g) = grads.get(p) {
                let mut g = g.to_dtype(DType::F32)?.detach();
                if weight != 1.0 {
                    g = (g * weight)?;
                }
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        self.weight += weight;
        Ok(())
    }

    /// The weighted sums added so far, one per parameter in `params` order (None where no
    /// gradient was added), leaving the accumulator empty: what a rank of a data-parallel run
    /// sends to the others.
    pub fn take_sums(&mut self) -> Vec<Option<Tensor>> {
        self.weight = 0.0;
        self.sums.iter_mut().map(Option::take).collect()
    }

    /// Replace the contents by `sums` (one per parameter, in `params` order) of total weight
    /// `weight`: the sums over all ranks, for `finish` to average.
    pub fn set_sums(&mut self, sums: Vec<Tensor>, weight: f64) -> Result<()> {
        if sums.len() != self.params.len() {
            return Err(Error::Invalid(format!(
                "{} gradient sums for {} parameters",
                sums.len(),
                self.params.len()
            )));
        }
        self.sums = sums.into_iter().map(Some).collect();
        self.weight = weight;
        Ok(())
    }

    /// The mean gradient over the micro-batches added so far (the weighted sum divided by the
    /// sum of the weights), as a store the optimizer takes; the accumulator is empty again
    /// afterwards.
    pub fn finish(&mut self) -> Result<GradStore> {
        if self.weight == 0.0 {
            return Err(Error::Invalid("no micro-batch gradients to average".into()));
        }
        let k = self.weight;
        let mut out = GradStore::default();
        for (p, sum) in self.params.iter().zip(&mut self.sums) {
            if let Some(s) = sum.take() {
                out.insert(p, if k == 1.0 { s } else { (s / k)? });
            }
        }
        self.weight = 0.0;
        Ok(out)
    }
}

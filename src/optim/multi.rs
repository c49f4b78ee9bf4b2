//! AdamW, gradient clipping and the EMA over all parameters in a few kernel launches on CUDA
//! (`nn::kernels::cuda::multi`), where the tensor-by-tensor code of `AdamW::step` and
//! `Ema::update` launches several elementwise kernels per parameter (hundreds of tensors). The
//! kernels do exactly the f32 operations of the CPU code, in the same order and unfused, with
//! the coefficients rounded to f32 as candle's scalar ops round them (`adam_coefs`), so the two
//! paths agree to the last bit on the same inputs; `adamw_element` is that arithmetic on the
//! host, tested against `AdamW::step` below.

#[cfg(any(test, feature = "cuda"))]
use super::OptimConfig;

/// The multi-tensor AdamW kernel's coefficients for the update after step count `k` (counted
/// from 1) at learning rate `lr`, with gradients scaled by `grad_scale` (clipping; 1: none):
/// [1 - lr wd, b1, 1 - b1, b2, 1 - b2, 1 / sqrt(1 - b2^k), eps, lr / (1 - b1^k), grad_scale],
/// each computed in f64 and rounded to f32.
#[cfg(any(test, feature = "cuda"))]
pub fn adam_coefs(cfg: &OptimConfig, lr: f64, k: u64, grad_scale: f64) -> [f32; 9] {
    let kf = k as f64;
    [
        (1.0 - lr * cfg.weight_decay) as f32,
        cfg.beta1 as f32,
        (1.0 - cfg.beta1) as f32,
        cfg.beta2 as f32,
        (1.0 - cfg.beta2) as f32,
        (1.0 / (1.0 - cfg.beta2.powf(kf)).sqrt()) as f32,
        cfg.eps as f32,
        (lr / (1.0 - cfg.beta1.powf(kf))) as f32,
        grad_scale as f32,
    ]
}

/// One element of the kernel's update (kernels.cu `adamw_multi`): with g = grad gscale,
/// p' = p decay; m' = m b1 + g c1; v' = v b2 + (g g) c2; p'' = p' - (m' / (sqrt(v') ibc2 + eps)) ss.
/// Returns (p'', m', v').
#[cfg(test)]
pub fn adamw_element(p: f32, grad: f32, m: f32, v: f32, c: &[f32; 9]) -> (f32, f32, f32) {
    let [decay, b1, c1, b2, c2, ibc2, eps, ss, gscale] = *c;
    let g = grad * gscale;
    let p = p * decay;
    let m = m * b1 + g * c1;
    let v = v * b2 + (g * g) * c2;
    let denom = v.sqrt() * ibc2 + eps;
    (p - (m / denom) * ss, m, v)
}

/// One element of the EMA kernel (kernels.cu `ema_multi`): e - (e - p) c, c = (1 - decay) as f32.
#[cfg(test)]
pub fn ema_element(e: f32, p: f32, c: f32) -> f32 {
    e - (e - p) * c
}

#[cfg(feature = "cuda")]
pub(super) use cuda::{clip, step};

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backprop::GradStore;
    use candle_core::{DType, Tensor};

    use super::super::Slot;
    use super::adam_coefs;
    use crate::error::Result;
    use crate::nn::kernels::cuda::multi;
    use crate::optim::OptimConfig;

    /// Whether the multi-tensor kernels take these tensors: all f32 on a CUDA device.
    pub fn applies<'a>(mut ts: impl Iterator<Item = &'a Tensor>) -> bool {
        ts.all(|t| t.device().is_cuda() && t.dtype() == DType::F32)
    }

    /// The gradients of `slots` that exist, as contiguous f32, with their slot indices.
    fn gradients(slots: &[Slot], grads: &GradStore) -> Result<Vec<(usize, Tensor)>> {
        let mut out = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                out.push((i, g.to_dtype(DType::F32)?.contiguous()?.detach()));
            }
        }
        Ok(out)
    }

    /// `clip_grad_norm` on the GPU: the norm from one sum-of-squares pass (one host read), and
    /// the scaling, when it clips, as one more pass. None when the slots are not all on CUDA.
    pub fn clip(slots: &[Slot], grads: &mut GradStore, max_norm: f64) -> Result<Option<f64>> {
        if !applies(slots.iter().map(|s| s.var.as_tensor())) {
            return Ok(None);
        }
        let gs = gradients(slots, grads)?;
        if gs.is_empty() {
            return Ok(Some(0.0));
        }
        // Scaled in place below: the store must hold these very tensors.
        for (i, g) in &gs {
            grads.insert(slots[*i].var.as_tensor(), g.clone());
        }
        let refs: Vec<&Tensor> = gs.iter().map(|(_, g)| g).collect();
        let norm = (multi::sum_squares(refs.clone())?.to_scalar::<f32>()? as f64).sqrt();
        if norm.is_finite() && norm > max_norm {
            multi::scale(refs, (max_norm / (norm + 1e-6)) as f32)?;
        }
        Ok(Some(norm))
    }

    /// `AdamW::step` on the GPU for the slots with gradients, k the step count after it.
    /// Returns false (nothing done) when the slots are not all f32 on CUDA.
    pub fn step(
        slots: &[Slot],
        grads: &GradStore,
        cfg: &OptimConfig,
        lr: f64,
        k: u64,
    ) -> Result<bool> {
        if !applies(slots.iter().map(|s| s.var.as_tensor())) {
            return Ok(false);
        }
        let gs = gradients(slots, grads)?;
        if gs.is_empty() {
            return Ok(true);
        }
        let p: Vec<&Tensor> = gs.iter().map(|&(i, _)| slots[i].var.as_tensor()).collect();
        let m: Vec<&Tensor> = gs.iter().map(|&(i, _)| &slots[i].m).collect();
        let v: Vec<&Tensor> = gs.iter().map(|&(i, _)| &slots[i].v).collect();
        let g: Vec<&Tensor> = gs.iter().map(|(_, g)| g).collect();
        multi::adamw(p, g, m, v, adam_coefs(cfg, lr, k, 1.0))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamW, OptimConfig};
    use crate::rng::{Purpose, Stream};
    use candle_core::{Device, Tensor, Var};

    /// The host mirror of the kernel, fed the coefficients the GPU path computes, lands on the
    /// CPU optimizer's values bit for bit over several steps (weight decay and a learning rate
    /// that changes per step included): the coefficients and the operation order are right.
    #[test]
    fn the_kernel_arithmetic_is_the_cpu_optimizer_to_the_bit() {
        let cfg = OptimConfig {
            weight_decay: 0.01,
            warmup_steps: 0,
            grad_clip: None,
            ..OptimConfig::default()
        };
        let n = 257;
        let mut s = Stream::new(3, Purpose::Eval, 0);
        let p0: Vec<f32> = s.normal_vec(n);
        let var =
            Var::from_tensor(&Tensor::from_vec(p0.clone(), n, &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(&[("w".to_string(), var.clone())], cfg.clone()).unwrap();
        let (mut p, mut m, mut v) = (p0, vec![0f32; n], vec![0f32; n]);
        for k in 1..=5u64 {
            let g: Vec<f32> = s.normal_vec(n).iter().map(|x| x * 0.1).collect();
            let gt = Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap();
            let mut store = candle_core::backprop::GradStore::default();
            store.insert(var.as_tensor(), gt);
            let lr = 1e-3 * k as f64;
            opt.step(&store, lr).unwrap();
            let c = adam_coefs(&cfg, lr, k, 1.0);
            for i in 0..n {
                (p[i], m[i], v[i]) = adamw_element(p[i], g[i], m[i], v[i], &c);
            }
            let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
            for i in 0..n {
                assert_eq!(got[i].to_bits(), p[i].to_bits(), "step {k}, element {i}");
            }
        }
    }

    #[test]
    fn clipping_folds_into_the_gradient_scale() {
        // g * s in the kernel is what clip_grad_norm's `g * scale` leaves for the optimizer.
        let cfg = OptimConfig::default();
        let c = adam_coefs(&cfg, 2e-4, 1, 0.5);
        let unclipped = adam_coefs(&cfg, 2e-4, 1, 1.0);
        assert_eq!(
            adamw_element(0.3, 0.8, 0.0, 0.0, &c),
            adamw_element(0.3, 0.4, 0.0, 0.0, &unclipped)
        );
        assert_eq!(c[5], (1.0 / (1.0 - 0.999f64).sqrt()) as f32);
        assert_eq!(c[7], (2e-4 / (1.0 - 0.9f64)) as f32);
    }

    #[test]
    fn the_ema_element_is_the_cpu_update() {
        // Ema::update: ema - (ema - p) * (1 - decay), with the factor rounded to f32.
        let (e, p, decay) = (0.7f32, -1.3f32, 0.9f64);
        let ema = Tensor::new(&[e], &Device::Cpu).unwrap();
        let pt = Tensor::new(&[p], &Device::Cpu).unwrap();
        let want: Vec<f32> = (&ema - ((&ema - &pt).unwrap() * (1.0 - decay)).unwrap())
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            ema_element(e, p, (1.0 - decay) as f32).to_bits(),
            want[0].to_bits()
        );
    }
}

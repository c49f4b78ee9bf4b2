//! DDIM (Song et al. 2021): the non-Markovian reverse process that shares DDPM's marginals,
//! with stochasticity eta (0: a deterministic ODE-like map; 1: ancestral with fixed-small
//! variance), over a respaced schedule.

use candle_core::Tensor;

use super::{Context, Step, Stepper};
use crate::error::Result;
use crate::rng::BatchNoise;

/// The DDIM sampler with stochasticity `eta` in [0, 1].
#[derive(Clone, Copy, Debug)]
pub struct Ddim {
    pub eta: f64,
    /// Where x0 is clipped, eps is derived from the clipped x0 (improved-diffusion's DDIM;
    /// diffusers' `use_clipped_model_output=True`); false keeps the model's eps beside the
    /// clipped x0, as diffusers' DDIMPipeline does by default.
    pub use_clipped_model_output: bool,
}

impl Default for Ddim {
    fn default() -> Self {
        Ddim {
            eta: 0.0,
            use_clipped_model_output: true,
        }
    }
}

/// sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)   (eq. 16)
fn sigma(eta: f64, abar_t: f64, abar_prev: f64) -> f64 {
    eta * ((1.0 - abar_prev) / (1.0 - abar_t)).sqrt() * (1.0 - abar_t / abar_prev).sqrt()
}

impl Stepper for Ddim {
    /// x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z   (eq. 12),
    /// with abar_prev = alphas_cumprod_prev[i], which is 1 at i = 0: sigma = 0 and x_prev = x0
    /// there, so the last step needs no special case. (A schedule whose final_alpha_cumprod
    /// is not 1, diffusers' set_alpha_to_one = false, ends at that abar instead.)
    fn step(
        &mut self,
        ctx: &Context,
        i: usize,
        x_t: &Tensor,
        noise: &mut BatchNoise,
    ) -> Result<Step> {
        let output = ctx.output(x_t, i)?;
        let (x0, eps) = if ctx.clip_x0 && !self.use_clipped_model_output {
            let raw = Context {
                clip_x0: false,
                ..*ctx
            };
            let (x0, eps) = raw.x0_and_eps(x_t, i, &output)?;
            (x0.clamp(-1f32, 1f32)?, eps)
        } else {
            ctx.x0_and_eps(x_t, i, &output)?
        };
        let abar_t = ctx.schedule.alphas_cumprod[i];
        let abar_prev = match i {
            0 => ctx.schedule.final_alpha_cumprod,
            _ => ctx.schedule.alphas_cumprod_prev[i],
        };
        let sigma = sigma(self.eta, abar_t, abar_prev);
        // max(0, .) only guards rounding: 1 - abar_prev - sigma^2 >= 0 for eta <= 1.
        let dir = (1.0 - abar_prev - sigma * sigma).max(0.0).sqrt();
        let mut x = ((&x0 * abar_prev.sqrt())? + (&eps * dir)?)?;
        if sigma > 0.0 {
            let z = noise.randn(&x_t.dims()[1..], x_t.device())?;
            x = (x + (z * sigma)?)?;
        }
        Ok(Step { x, x0 })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::super::tests::{eps_fixed, flat, linear_schedule, opts};
    use super::super::*;
    use crate::diffusion::VarianceType;
    use crate::oracle::MixtureOracle;
    use crate::schedule::Spacing;

    /// diffusers' DDIM conventions: with steps_offset 1 the leading steps are 1, 21, ..., 981,
    /// and without set_alpha_to_one the last step, from t = 1, ends at abar_0 instead of 1:
    /// x = sqrt(abar_0) x0 + sqrt(1 - abar_0) eps, eps = (x_1 - sqrt(abar_1) x0) / sqrt(1 - abar_1).
    #[test]
    fn steps_offset_and_final_alpha_follow_diffusers() {
        let s = linear_schedule();
        let oracle = MixtureOracle::gaussian(0.4, 0.3, s.alphas_cumprod.clone()).unwrap();
        let o = SampleOptions {
            steps_offset: 1,
            set_alpha_to_one: false,
            ..opts(SamplerKind::Ddim, 50, Spacing::Leading, 0.0)
        };
        let ts = o.timesteps(1000).unwrap();
        assert_eq!((ts[0], ts[1], ts[49]), (1, 21, 981));
        let x_t = Tensor::from_vec(vec![-1.5f32, 0.2, 0.9, 2.0], (4, 1), &Device::Cpu).unwrap();
        let mut seen: Vec<(usize, Tensor, Tensor)> = Vec::new();
        let x = sample_from_latent(
            &oracle,
            &s,
            eps_fixed(VarianceType::FixedSmall),
            &o,
            &x_t,
            o.steps,
            &mut |info| {
                seen.push((info.t, info.x.clone(), info.x0.clone()));
                Ok(())
            },
        )
        .unwrap();
        let (t_last, _, x0) = &seen[49];
        assert_eq!(*t_last, 1);
        let x1 = &seen[48].1;
        let (a0, a1) = (s.alphas_cumprod[0], s.alphas_cumprod[1]);
        let eps = ((x1 - (x0 * a1.sqrt()).unwrap()).unwrap() / (1.0 - a1).sqrt()).unwrap();
        let want = ((x0 * a0.sqrt()).unwrap() + (eps * (1.0 - a0).sqrt()).unwrap()).unwrap();
        for (a, b) in flat(&x).iter().zip(flat(&want)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // With set_alpha_to_one the same run ends at its x0.
        let one = SampleOptions {
            set_alpha_to_one: true,
            ..o
        };
        let p = eps_fixed(VarianceType::FixedSmall);
        let x = sample_from_latent(&oracle, &s, p, &one, &x_t, one.steps, &mut |_| Ok(())).unwrap();
        assert_eq!(flat(&x), flat(x0));
    }

    /// diffusers' default DDIM under clipping: x0 clipped, the model's eps kept. One step from
    /// t = 999 to 499: x = sqrt(abar_499) clip(x0) + sqrt(1 - abar_499) eps, with x0 far outside
    /// [-1, 1] there (data around 5, whose x0 prediction is about 5); the default derives eps
    /// from the clipped x0 and lands elsewhere, by about
    /// sqrt(abar_999 / (1 - abar_999)) (5 - 1) sqrt(1 - abar_499) = 0.024.
    #[test]
    fn the_model_eps_can_be_kept_beside_the_clipped_x0() {
        use crate::denoiser::Denoiser;
        let s = linear_schedule();
        let oracle = MixtureOracle::gaussian(5.0, 0.3, s.alphas_cumprod.clone()).unwrap();
        let keep = SampleOptions {
            clip_x0: true,
            use_clipped_model_output: false,
            ..opts(SamplerKind::Ddim, 2, Spacing::Trailing, 0.0)
        };
        assert_eq!(keep.timesteps(1000).unwrap(), vec![499, 999]);
        let x_t = Tensor::from_vec(vec![-3.0f32, -0.5, 0.7, 3.0], (4, 1), &Device::Cpu).unwrap();
        let mut first = None;
        let p = eps_fixed(VarianceType::FixedSmall);
        let mut on_step = |info: &StepInfo| {
            first.get_or_insert(info.x.clone());
            Ok(())
        };
        sample_from_latent(&oracle, &s, p, &keep, &x_t, keep.steps, &mut on_step).unwrap();
        let eps = oracle.forward(&x_t, &[999; 4]).unwrap();
        let (a, a_prev) = (s.alphas_cumprod[999], s.alphas_cumprod[499]);
        let x0 = ((&x_t - (&eps * (1.0 - a).sqrt()).unwrap()).unwrap() / a.sqrt()).unwrap();
        assert!(flat(&x0).iter().any(|v| v.abs() > 1.0));
        let want = ((x0.clamp(-1f32, 1f32).unwrap() * a_prev.sqrt()).unwrap()
            + (&eps * (1.0 - a_prev).sqrt()).unwrap())
        .unwrap();
        let got = first.unwrap();
        for (g, w) in flat(&got).iter().zip(flat(&want)) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        let mut first = None;
        let mut on_step = |info: &StepInfo| {
            first.get_or_insert(info.x.clone());
            Ok(())
        };
        let derive = SampleOptions {
            use_clipped_model_output: true,
            ..keep
        };
        sample_from_latent(&oracle, &s, p, &derive, &x_t, derive.steps, &mut on_step).unwrap();
        let apart = flat(&first.unwrap())
            .iter()
            .zip(flat(&want))
            .fold(0f64, |m, (g, w)| m.max((g - w).abs()));
        assert!(apart > 1e-2, "the two conventions agree: {apart}");
    }
}

//! The learning rate of each step: a linear warm-up from 0 to `optim.lr`, then constant (the
//! DDPM paper's choice and the default) or decaying to `optim.min_lr` at the last of
//! train.steps along a cosine or a line (diffusers' training scripts default to the cosine). A
//! pure function of the step, so a resumed run takes the rates an uninterrupted one does.

use serde::{Deserialize, Serialize};

use super::OptimConfig;

/// `optim.schedule`: the shape of the learning rate after warm-up.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// lr throughout (Ho et al. 2020).
    #[default]
    Constant,
    /// Half a cosine from lr down to min_lr (Loshchilov & Hutter 2017, without restarts).
    Cosine,
    /// A straight line from lr down to min_lr.
    Linear,
}

/// Learning rate for the update after `step` completed optimizer steps of `total`
/// (train.steps), with w = warmup_steps and p = min(1, (step - w) / max(1, total - w)):
///   step < w:  lr step / w   (the first update uses lr 0, as in DDPM)
///   constant:  lr
///   linear:    min_lr + (lr - min_lr) (1 - p)
///   cosine:    min_lr + (lr - min_lr) (1 + cos(pi p)) / 2
/// p is diffusers' `get_cosine_schedule_with_warmup` progress, so the last update (step
/// total - 1) is one step short of min_lr, as there.
pub fn lr_at(cfg: &OptimConfig, step: u64, total: u64) -> f64 {
    let w = cfg.warmup_steps;
    if step < w {
        return cfg.lr * step as f64 / w as f64;
    }
    let p = ((step - w) as f64 / total.saturating_sub(w).max(1) as f64).min(1.0);
    let span = cfg.lr - cfg.min_lr;
    match cfg.schedule {
        LrSchedule::Constant => cfg.lr,
        LrSchedule::Linear => cfg.min_lr + span * (1.0 - p),
        LrSchedule::Cosine => cfg.min_lr + span * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(schedule: LrSchedule, warmup_steps: u64, lr: f64, min_lr: f64) -> OptimConfig {
        OptimConfig {
            lr,
            min_lr,
            warmup_steps,
            schedule,
            ..OptimConfig::default()
        }
    }

    #[test]
    fn constant_warms_up_linearly_then_stays() {
        let c = OptimConfig::default();
        assert_eq!(c.schedule, LrSchedule::Constant);
        assert_eq!(lr_at(&c, 0, 800_000), 0.0);
        assert!((lr_at(&c, 2500, 800_000) - 1e-4).abs() < 1e-18);
        assert!((lr_at(&c, 4999, 800_000) - 2e-4 * 4999.0 / 5000.0).abs() < 1e-18);
        assert_eq!(lr_at(&c, 5000, 800_000), 2e-4);
        assert_eq!(lr_at(&c, 1_000_000, 800_000), 2e-4);
        let none = OptimConfig {
            warmup_steps: 0,
            ..c
        };
        assert_eq!(lr_at(&none, 0, 10), 2e-4);
    }

    /// Warm-up 10 of 110 steps, lr 1, min_lr 0.1: decay over 100 steps, p = (step - 10) / 100.
    #[test]
    fn cosine_and_linear_decay_to_min_lr_at_the_closed_values() {
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        let cos = with(LrSchedule::Cosine, 10, 1.0, 0.1);
        let lin = with(LrSchedule::Linear, 10, 1.0, 0.1);
        for c in [&cos, &lin] {
            close(lr_at(c, 0, 110), 0.0);
            close(lr_at(c, 5, 110), 0.5);
            close(lr_at(c, 10, 110), 1.0);
            close(lr_at(c, 110, 110), 0.1);
            close(lr_at(c, 500, 110), 0.1);
        }
        // p = 1/2: cos(pi/2) = 0, halfway for both.
        close(lr_at(&cos, 60, 110), 0.55);
        close(lr_at(&lin, 60, 110), 0.55);
        // p = 1/4: cosine 0.1 + 0.9 (1 + 1/sqrt 2) / 2, linear 0.1 + 0.9 * 3/4.
        close(
            lr_at(&cos, 35, 110),
            0.1 + 0.45 * (1.0 + std::f64::consts::FRAC_1_SQRT_2),
        );
        close(lr_at(&lin, 35, 110), 0.775);
        // The last update (step 109) is one step short of min_lr, as in diffusers.
        close(
            lr_at(&cos, 109, 110),
            0.1 + 0.45 * (1.0 + (std::f64::consts::PI * 0.99).cos()),
        );
        // Without warm-up the decay starts at lr. A horizon inside the warm-up decays in one
        // step after it (diffusers' max(1, total - w)).
        close(lr_at(&with(LrSchedule::Linear, 0, 1.0, 0.0), 0, 4), 1.0);
        close(lr_at(&with(LrSchedule::Linear, 0, 1.0, 0.0), 1, 4), 0.75);
        close(lr_at(&with(LrSchedule::Cosine, 10, 1.0, 0.2), 10, 5), 1.0);
        close(lr_at(&with(LrSchedule::Cosine, 10, 1.0, 0.2), 11, 5), 0.2);
    }

    #[test]
    fn schedule_parses_by_name_and_min_lr_is_checked() {
        let c: OptimConfig = toml::from_str("schedule = \"cosine\"\nmin_lr = 1e-5").unwrap();
        assert_eq!((c.schedule, c.min_lr), (LrSchedule::Cosine, 1e-5));
        c.validate().unwrap();
        assert!(toml::from_str::<OptimConfig>("schedule = \"step\"").is_err());
        for bad in [-1.0, 1.0, f64::NAN] {
            let e = with(LrSchedule::Cosine, 0, 1e-4, bad)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("optim.min_lr = "), "{e}");
        }
    }
}

//! The class flags `sample` and `interpolate` share: --class (one class, or a list cycled over
//! the images) and --guidance (classifier-free guidance scale), checked against the checkpoint
//! with errors that name the flag.

use anyhow::Context;
use clap::Args;

use ddpm::generate::Generator;
use ddpm::guidance;

/// Class conditioning of a class-conditional checkpoint.
#[derive(Args, Debug, Clone)]
pub struct ClassArgs {
    /// Class to draw (class-conditional checkpoints), by name (an image folder's subfolder; see
    /// `ddpm info`) or number: one, or a comma-separated list cycled over the images, so
    /// -n 10 --class 0,1,2,3,4,5,6,7,8,9 draws one of each. Without it a conditional checkpoint
    /// samples unconditionally (the null label).
    #[arg(long = "class", value_delimiter = ',', value_name = "K[,K...]")]
    pub classes: Vec<String>,
    /// Classifier-free guidance scale w, eps = eps_u + w (eps_c - eps_u): 1 = the conditional
    /// model as trained, 0 = unconditional, > 1 = truer to the class, less varied, < 0 = away
    /// from it (two forwards per step) [default: sample.guidance].
    #[arg(long, requires = "classes", allow_negative_numbers = true)]
    pub guidance: Option<f64>,
}

impl ClassArgs {
    /// The classes and guidance scale to sample `gen` with.
    pub fn resolve(&self, gen: &Generator) -> anyhow::Result<(Vec<u32>, f64)> {
        let labels = self
            .classes
            .iter()
            .map(|c| gen.class_label(c))
            .collect::<ddpm::Result<Vec<u32>>>()
            .with_context(|| format!("--class {}", self.classes.join(",")))?;
        let w = self.guidance.unwrap_or(gen.config.sample.guidance);
        guidance::check_scale(w).context("--guidance")?;
        Ok((labels, w))
    }
}

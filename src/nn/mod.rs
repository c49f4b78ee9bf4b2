//! The noise-prediction network: the DDPM UNet (Ho et al. 2020) with its `[model]` config,
//! layers, seeded initialisation and parameter count. It knows nothing of schedules, losses or
//! samplers; those see it only through `crate::denoiser::Denoiser`.

pub mod attention;
pub mod config;
pub mod embedding;
pub mod init;
pub mod kernels;
pub mod layers;
pub mod resblock;
pub mod unet;

#[cfg(test)]
mod tests;

pub use config::UNetConfig;
pub use init::{init_weights, num_parameters};
pub use unet::UNet;

//! The diffusers (Hugging Face) side of the ecosystem, both ways: `import` reads a diffusers
//! pipeline or UNet2DModel folder into one of our checkpoints, `export` writes a checkpoint as
//! a folder diffusers' DDPMPipeline, DDIMPipeline and UNet2DModel load. `unet_config` maps
//! UNet2DModel's config.json to `[model]` and back, `scheduler` the DDPM and DDIM scheduler
//! configs to `[diffusion]` and `[sample]`, `keys` the state-dict names; `json` reads config
//! files so that each refusal names the file, the field and its value. Checkpoints are written
//! through `checkpoint::save` only; what the network computes stays `nn`'s.

pub mod export;
pub mod import;
mod json;
pub mod keys;
pub mod scheduler;
pub mod unet_config;

pub use export::{export, Exported};
pub use import::{import, read, Imported};

#[cfg(test)]
mod mapping_tests;
#[cfg(test)]
mod tests;

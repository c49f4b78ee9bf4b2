//! A ddpm checkpoint as a diffusers pipeline folder: `model_index.json`, `unet/config.json`
//! with `unet/diffusion_pytorch_model.safetensors` (the EMA or the raw weights, f32), and
//! `scheduler/scheduler_config.json`, which diffusers' DDPMPipeline, DDIMPipeline and
//! UNet2DModel load. A config diffusers cannot express is refused before anything is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use crate::atomic;
use crate::checkpoint::{self, EMA_PREFIX, MODEL_PREFIX};
use crate::error::{Error, Result};
use crate::interop::keys::key_pairs;
use crate::interop::unet_config::DIFFUSERS_VERSION;
use crate::interop::{scheduler, unet_config};
use crate::model::image_hw;
use crate::sampler::SamplerKind;

/// What `export` wrote.
pub struct Exported {
    /// The files, in the order written.
    pub files: Vec<PathBuf>,
    /// Parameters of the exported UNet.
    pub parameters: usize,
}

/// Write the checkpoint `ckpt` (its EMA weights, or the raw ones without `use_ema`) as a
/// diffusers pipeline folder `out`, which must not exist or be empty.
pub fn export(ckpt: &Path, out: &Path, use_ema: bool) -> Result<Exported> {
    let loaded = checkpoint::load(ckpt)?;
    let cfg = loaded.stored_config()?;
    if cfg.data.dataset.is_points() {
        return Err(Error::Config(format!(
            "cannot export {} to diffusers: it models vector data (data.dataset = \"{}\"); UNet2DModel is for images",
            ckpt.display(),
            cfg.data.dataset.name()
        )));
    }
    let (in_c, out_c, size) = (cfg.data.channels, cfg.out_channels(), image_hw(&cfg));
    let unet = unet_config::to_diffusers(&cfg.model, size, in_c, out_c)?;
    let sched = scheduler::to_diffusers(&cfg)?;
    let prefix = if use_ema { EMA_PREFIX } else { MODEL_PREFIX };
    let weights = loaded.weights_with_prefix(prefix);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for p in key_pairs(&cfg.model, in_c, out_c, size)? {
        let t = weights
            .get(&p.ours)
            .ok_or_else(|| Error::checkpoint(ckpt, format!("has no `{prefix}{}`", p.ours)))?;
        if t.dims() != p.shape.as_slice() {
            return Err(Error::checkpoint(
                ckpt,
                format!(
                    "`{prefix}{}` has shape {:?}, but its config builds {:?}",
                    p.ours,
                    t.dims(),
                    p.shape
                ),
            ));
        }
        let t = t
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .reshape(p.their_shape.as_slice())?
            .contiguous()?;
        tensors.push((p.theirs, t));
    }
    let parameters = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    check_empty(out)?;
    let pipeline = match cfg.sample.sampler {
        SamplerKind::Ddim => "DDIMPipeline",
        _ => "DDPMPipeline",
    };
    let index = json!({
        "_class_name": pipeline,
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", sched["_class_name"]],
        "unet": ["diffusers", "UNet2DModel"],
    });
    let files = [
        (out.join("model_index.json"), json_bytes(&index)?),
        (out.join("unet").join("config.json"), json_bytes(&unet)?),
        (
            out.join("unet").join("diffusion_pytorch_model.safetensors"),
            safetensors_bytes(&tensors, out)?,
        ),
        (
            out.join("scheduler").join("scheduler_config.json"),
            json_bytes(&sched)?,
        ),
    ];
    let mut written = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        atomic::write(&path, &bytes)?;
        written.push(path);
    }
    Ok(Exported {
        files: written,
        parameters,
    })
}

/// An export goes into a new or empty folder, so it never mixes with other files.
fn check_empty(out: &Path) -> Result<()> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(Error::Config(format!(
                "{}: the folder exists and is not empty; export into a new folder",
                out.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(out, e)),
    }
}

/// Pretty JSON (keys as given; the maps built here are sorted), with a final newline.
fn json_bytes(v: &Value) -> Result<Vec<u8>> {
    let mut text = serde_json::to_string_pretty(v)
        .map_err(|e| Error::Invalid(format!("cannot write JSON: {e}")))?;
    text.push('\n');
    Ok(text.into_bytes())
}

/// A safetensors file of `tensors` with the metadata PyTorch writers put there.
fn safetensors_bytes(tensors: &[(String, Tensor)], out: &Path) -> Result<Vec<u8>> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta)).map_err(|e| {
        Error::Config(format!(
            "{}: cannot serialise the weights: {e}",
            out.display()
        ))
    })
}

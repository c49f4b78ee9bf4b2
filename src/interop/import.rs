//! A diffusers folder as a ddpm checkpoint: a pipeline (`model_index.json`, `unet/`,
//! `scheduler/`) or a bare UNet2DModel folder (`config.json` and its weights, optionally a
//! scheduler config) becomes one self-describing checkpoint whose model and EMA weights are
//! both the imported ones, with the config derived from theirs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::{self, EMA_PREFIX, META_CONFIG, META_SEED, META_STEP, MODEL_PREFIX};
use crate::config::Config;
use crate::data::{DataConfig, DatasetKind, ImageSize};
use crate::diffusion::VarianceType;
use crate::error::{Error, Result};
use crate::interop::json::Fields;
use crate::interop::keys::{key_pairs, modern_name};
use crate::interop::{scheduler, unet_config};
use crate::model;

/// Metadata key of the folder a checkpoint was imported from.
pub const META_IMPORTED_FROM: &str = "imported_from";

/// What `read` found and made of it.
pub struct Imported {
    /// The config derived from the UNet's and the scheduler's.
    pub config: Config,
    /// The weights under ddpm's names, f32 on the CPU.
    pub weights: Vec<(String, Tensor)>,
    /// The files read.
    pub unet_config: PathBuf,
    pub unet_weights: PathBuf,
    /// None: no scheduler config, so diffusers' DDPMScheduler defaults.
    pub scheduler_config: Option<PathBuf>,
}

impl Imported {
    /// Parameters of the model.
    pub fn parameters(&self) -> usize {
        self.weights.iter().map(|(_, t)| t.elem_count()).sum()
    }
}

/// The files of a diffusers folder.
struct Layout {
    unet_dir: PathBuf,
    scheduler: Option<PathBuf>,
}

/// Where the UNet and the scheduler config of `dir` are; `scheduler` overrides the latter.
fn layout(dir: &Path, scheduler: Option<&Path>) -> Result<Layout> {
    let given = scheduler.map(Path::to_path_buf);
    if dir.join("model_index.json").is_file() {
        let mut index = Fields::read(&dir.join("model_index.json"))?;
        let unet: Option<(String, String)> = index.get("unet")?;
        if unet
            .as_ref()
            .is_some_and(|(_, class)| class != "UNet2DModel")
        {
            return Err(index.bad("unet", "ddpm imports a UNet2DModel"));
        }
        let found = dir.join("scheduler").join("scheduler_config.json");
        return Ok(Layout {
            unet_dir: dir.join("unet"),
            scheduler: given.or_else(|| found.is_file().then_some(found)),
        });
    }
    if dir.join("config.json").is_file() {
        let found = dir.join("scheduler_config.json");
        return Ok(Layout {
            unet_dir: dir.to_path_buf(),
            scheduler: given.or_else(|| found.is_file().then_some(found)),
        });
    }
    Err(Error::Config(format!(
        "{}: neither model_index.json (a diffusers pipeline) nor config.json (a UNet2DModel) is there",
        dir.display()
    )))
}

/// The UNet's state dict from `unet_dir`: safetensors, else the PyTorch pickle (.bin); f32,
/// names in today's diffusers form.
fn read_weights(unet_dir: &Path) -> Result<(PathBuf, HashMap<String, Tensor>)> {
    let st = unet_dir.join("diffusion_pytorch_model.safetensors");
    let bin = unet_dir.join("diffusion_pytorch_model.bin");
    let (path, tensors) = if st.is_file() {
        let t = candle_core::safetensors::load(&st, &Device::Cpu)
            .map_err(|e| Error::Config(format!("{}: {e}", st.display())))?;
        (st, t.into_iter().collect::<Vec<_>>())
    } else if bin.is_file() {
        let t = candle_core::pickle::read_all(&bin)
            .map_err(|e| Error::Config(format!("{}: {e}", bin.display())))?;
        (bin, t)
    } else {
        return Err(Error::Config(format!(
            "{}: no diffusion_pytorch_model.safetensors or .bin (sharded weights are not read)",
            unet_dir.display()
        )));
    };
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t
            .to_dtype(DType::F32)
            .map_err(|e| Error::Config(format!("{}: `{name}`: {e}", path.display())))?;
        out.insert(modern_name(&name), t);
    }
    Ok((path, out))
}

/// Read the diffusers folder `dir` (with the scheduler config `scheduler` instead of its own,
/// when given) as a ddpm config and weights.
pub fn read(dir: &Path, scheduler: Option<&Path>) -> Result<Imported> {
    let layout = layout(dir, scheduler)?;
    let unet_config = layout.unet_dir.join("config.json");
    let mut fields = Fields::read(&unet_config)?;
    let spec = unet_config::from_diffusers(&mut fields)?;
    fields.finish("UNet2DModel")?;

    let mut cfg = Config {
        model: spec.model.clone(),
        ..Config::default()
    };
    if let Some(path) = &layout.scheduler {
        let mut f = Fields::read(path)?;
        scheduler::from_diffusers(&mut f, &mut cfg.diffusion, &mut cfg.sample)?;
        f.finish("scheduler")?;
    } else {
        // diffusers' DDPMScheduler defaults: ddpm's defaults but for the spacing.
        cfg.sample.spacing = crate::schedule::Spacing::Leading;
    }
    let (h, w) = spec.image_size;
    cfg.data = DataConfig {
        // Where the training images were is not in a diffusers folder.
        dataset: DatasetKind::Folder,
        path: None,
        image_size: ImageSize {
            height: h,
            width: w,
        },
        channels: spec.in_channels,
        class_labels: spec.model.num_classes.is_some(),
        ..DataConfig::default()
    };
    if !spec.model.null_class {
        // No "no class" row to drop labels to.
        cfg.train.label_dropout = 0.0;
    }
    let learned = cfg.diffusion.variance == VarianceType::Learned;
    let want_out = spec.in_channels * if learned { 2 } else { 1 };
    if spec.out_channels != want_out {
        return Err(Error::Config(format!(
            "{}: out_channels = {} with in_channels = {}: ddpm's UNet outputs {want_out} channels {}",
            unet_config.display(),
            spec.out_channels,
            spec.in_channels,
            if learned {
                "(the prediction and the learned variance, variance_type = \"learned_range\")"
            } else {
                "(the prediction; twice that with variance_type = \"learned_range\")"
            }
        )));
    }
    cfg.validate_stored().map_err(|e| {
        Error::Config(format!(
            "{}: the model it describes is not one ddpm builds: {e}",
            dir.display()
        ))
    })?;

    let (unet_weights, mut theirs) = read_weights(&layout.unet_dir)?;
    let pairs = key_pairs(
        &cfg.model,
        spec.in_channels,
        spec.out_channels,
        spec.image_size,
    )?;
    let mut weights = Vec::with_capacity(pairs.len());
    for p in &pairs {
        let t = theirs.remove(&p.theirs).ok_or_else(|| {
            Error::Config(format!(
                "{}: no tensor `{}`, which the model of {} has",
                unet_weights.display(),
                p.theirs,
                unet_config.display()
            ))
        })?;
        if t.dims() != p.their_shape.as_slice() {
            return Err(Error::Config(format!(
                "{}: `{}` has shape {:?}, but the model of {} has {:?}",
                unet_weights.display(),
                p.theirs,
                t.dims(),
                unet_config.display(),
                p.their_shape
            )));
        }
        weights.push((p.ours.clone(), t.reshape(p.shape.as_slice())?.contiguous()?));
    }
    let mut left: Vec<&String> = theirs.keys().collect();
    left.sort();
    if let Some(name) = left.first() {
        return Err(Error::Config(format!(
            "{}: `{name}` matches no layer of the model {} describes",
            unet_weights.display(),
            unet_config.display()
        )));
    }
    // The network builds from these weights, or the mapping is wrong.
    let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
    model::from_tensors(&cfg, map, DType::F32, &Device::Cpu)?;
    Ok(Imported {
        config: cfg,
        weights,
        unet_config,
        unet_weights,
        scheduler_config: layout.scheduler,
    })
}

/// `read` the folder `dir` and write it as the checkpoint `out` (model and EMA weights both
/// the imported ones, step 0, seed 0).
pub fn import(dir: &Path, scheduler: Option<&Path>, out: &Path) -> Result<Imported> {
    let imported = read(dir, scheduler)?;
    let mut tensors = Vec::with_capacity(2 * imported.weights.len());
    for prefix in [MODEL_PREFIX, EMA_PREFIX] {
        for (name, t) in &imported.weights {
            tensors.push((format!("{prefix}{name}"), t.clone()));
        }
    }
    let metadata = BTreeMap::from([
        (META_CONFIG.to_string(), imported.config.to_toml()?),
        (META_STEP.to_string(), "0".to_string()),
        (META_SEED.to_string(), "0".to_string()),
        ("parameters".to_string(), imported.parameters().to_string()),
        (
            META_IMPORTED_FROM.to_string(),
            format!("diffusers: {}", dir.display()),
        ),
    ]);
    checkpoint::save(out, &tensors, &metadata)?;
    Ok(imported)
}

//! Generating many images (or vectors) from a trained network: in batches (image i is the same image whatever
//! the batch size), with classes cycled over the images under classifier-free guidance, from
//! any start the samplers offer — noise, an image to edit (SDEdit), an image to inpaint, a given
//! x_T — with progress per denoising step. Latent paths for interpolation are in `interpolate`.
//! The samplers themselves are `sampler`'s, the guidance arithmetic `guidance`'s.

pub mod interpolate;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::checkpoint;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::guidance::{self, Conditional, Guided};
use crate::model::{self, Network};
use crate::nn::shard;
use crate::points::{Points, Standardization};
use crate::sampler::{self, SampleOptions, SamplerKind, StepInfo};
use crate::schedule::Schedule;

/// A trained network ready to sample, with the config it was trained with.
pub struct Generator {
    pub config: Config,
    pub schedule: Schedule,
    pub net: Network,
    /// The dtype the network computes in (samplers see f32).
    pub dtype: DType,
    /// The training step of the checkpoint.
    pub step: u64,
    pub device: Device,
    /// For vector data: the standardisation the network was trained in, undone on the way out.
    pub standardization: Option<Standardization>,
    /// The class names of a class-conditional model, in label order, when its checkpoint
    /// stores them.
    pub class_names: Option<Vec<String>>,
    /// Examples passed through the network so far (a guided batch counts its conditional and
    /// unconditional halves): divided by the images made, the network evaluations per image,
    /// which `ddpm sample --json` reports.
    pub evaluations: AtomicU64,
    /// A one-line notice about the checkpoint for the user (it has no checksum to verify).
    pub notice: Option<String>,
}

/// Where a generation starts. Image tensors are (1 or n, C, H, W) in [-1, 1], on any device; a
/// single row serves every image.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// x_T ~ N(0, I) from each image's noise stream.
    Noise,
    /// SDEdit: `init` noised to t = strength T, then denoised (`sampler::sample_from`).
    Edit { init: &'a Tensor, strength: f64 },
    /// Inpainting: `init` regenerated where `mask` ((1 or n, 1 or C, H, W) of 0/1) is 1, kept
    /// bit for bit where it is 0; each step repeated `resample` times (`sampler::inpaint`).
    Inpaint {
        init: &'a Tensor,
        mask: &'a Tensor,
        resample: usize,
    },
    /// A given latent, one row per image, at respaced index `from - 1` of opts.steps (x_T when
    /// `from` is None or opts.steps; an inverted image's own `from`),
    /// `sampler::sample_from_latent`.
    Latent { x: &'a Tensor, from: Option<usize> },
    /// A given x_T (n, C, H, W) and every later noise draw of the sampler, `draws`
    /// (S, n, C, H, W), handed out in order (`sampler::sample_replaying`).
    Replay { x_t: &'a Tensor, draws: &'a Tensor },
}

/// What to generate besides the sampler settings.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Number of images.
    pub n: usize,
    /// Images per model batch.
    pub batch_size: usize,
    /// Classes cycled over the images (`guidance::cycle`); empty = the null label.
    pub classes: &'a [u32],
    /// Guidance scale w (1 = plain conditional).
    pub guidance: f64,
    pub start: Start<'a>,
}

impl<'a> Request<'a> {
    /// `n` images from noise, unconditional, `batch_size` at a time.
    pub fn new(n: usize, batch_size: usize) -> Self {
        Request {
            n,
            batch_size,
            classes: &[],
            guidance: 1.0,
            start: Start::Noise,
        }
    }
}

/// Progress of a generation: images done, images in all, step within the batch, its steps.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, usize, usize) -> Result<()>;

/// The network computing in some dtype, seen by samplers as an f32 model taking labels; an
/// unconditional network has zero classes, so its only label is the null label 0.
struct Labelled<'a> {
    net: &'a Network,
    dtype: DType,
    num_classes: Option<usize>,
    evaluations: &'a AtomicU64,
}

impl Conditional for Labelled<'_> {
    fn forward_labels(&self, x_t: &Tensor, t: &[usize], labels: &[u32]) -> Result<Tensor> {
        let labels = self.num_classes.map(|_| labels);
        let b = x_t.dim(0)?;
        self.evaluations.fetch_add(b as u64, Ordering::Relaxed);
        // On the CPU the batch runs in shards, one per thread.
        let shards = shard::count(b, x_t.device());
        let x = x_t.to_dtype(self.dtype)?;
        let out = shard::map_batch(&x, t, labels, shards, |x, t, labels| {
            self.net.forward(x, t, labels, None)
        })?;
        Ok(out.to_dtype(DType::F32)?)
    }

    fn num_classes(&self) -> usize {
        self.num_classes.unwrap_or(0)
    }
}

impl Generator {
    /// Load `path`: its config, and its EMA weights (`use_ema`) or raw weights, in `dtype`.
    pub fn load(path: &Path, use_ema: bool, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(path, dtype, device, &mut |cfg| {
            cfg.sample.use_ema = use_ema;
            Ok(())
        })
    }

    /// Load `path` in `dtype`, its stored config first passed through `settle` (sampling-time
    /// settings, e.g. `--set sample.key=value`); the weights are the EMA's when the settled
    /// `sample.use_ema` says so, else the raw ones.
    pub fn load_with(
        path: &Path,
        dtype: DType,
        device: &Device,
        settle: &mut dyn FnMut(&mut Config) -> Result<()>,
    ) -> Result<Self> {
        let ckpt = checkpoint::load(path)?;
        let mut config = ckpt.stored_config()?;
        settle(&mut config)?;
        let step = ckpt.step()?;
        let prefix = if config.sample.use_ema {
            checkpoint::EMA_PREFIX
        } else {
            checkpoint::MODEL_PREFIX
        };
        let weights = ckpt.weights_with_prefix(prefix);
        if weights.is_empty() {
            return Err(Error::checkpoint(
                path,
                format!("holds no `{prefix}*` weights"),
            ));
        }
        let net = model::from_tensors(&config, weights, dtype, device)
            .map_err(|e| Error::checkpoint(path, format!("its `{prefix}` weights: {e}")))?;
        let schedule = config.diffusion.schedule()?;
        let standardization = match ckpt.metadata.get(checkpoint::META_STANDARDIZATION) {
            Some(text) => Some(
                Standardization::from_meta(text)
                    .map_err(|e| Error::checkpoint(path, e.to_string()))?,
            ),
            None if config.data.dataset.is_points() => {
                return Err(Error::checkpoint(
                    path,
                    "vector data without its standardisation metadata",
                ))
            }
            None => None,
        };
        let class_names = ckpt.class_names()?;
        Ok(Generator {
            config,
            schedule,
            net,
            dtype,
            step,
            class_names,
            device: device.clone(),
            standardization,
            evaluations: AtomicU64::new(0),
            notice: ckpt.notice(),
        })
    }

    /// Per-sample shape: (C, H, W) for images, (D,) for vectors.
    pub fn sample_shape(&self) -> Vec<usize> {
        self.config.data.example_shape()
    }

    /// True when the model generates vectors (B, D) rather than images.
    pub fn is_points(&self) -> bool {
        self.config.data.dataset.is_points()
    }

    /// Generated vectors (N, D) in the units of the training data: the standardisation undone.
    pub fn to_points(&self, x: &Tensor) -> Result<Points> {
        let z = Points::from_tensor(x)?;
        Ok(match &self.standardization {
            Some(s) => s.undo(&z),
            None => z,
        })
    }

    /// The number of classes of a class-conditional model; None when unconditional.
    pub fn num_classes(&self) -> Option<usize> {
        self.config.model.num_classes
    }

    /// The label of class `value`: the class of that name when the checkpoint stores names,
    /// else (or when no name matches) `value` read as a class number. Checked against the
    /// model's classes.
    pub fn class_label(&self, value: &str) -> Result<u32> {
        self.conditional()?;
        let label = guidance::class_label(value, self.class_names.as_deref())?;
        self.check_classes(&[label])?;
        Ok(label)
    }

    /// Check that the model can be asked for `classes`: it is conditional and each is below
    /// its model.num_classes.
    pub fn check_classes(&self, classes: &[u32]) -> Result<()> {
        if classes.is_empty() {
            return Ok(());
        }
        let n = self.conditional()?;
        match classes.iter().find(|&&c| c as usize >= n) {
            Some(c) => Err(Error::Invalid(format!(
                "class {c} does not exist: the model has {n} classes, 0..={}",
                n - 1
            ))),
            None => Ok(()),
        }
    }

    /// The number of classes, or the error that the model is unconditional.
    fn conditional(&self) -> Result<usize> {
        self.num_classes().ok_or_else(|| {
            Error::Invalid(
                "the model is unconditional (its config has no model.num_classes); \
                 train with data.class_labels = true and model.num_classes to sample classes"
                    .into(),
            )
        })
    }

    /// A model without a "no class" label (model.null_class = false) needs a class for every
    /// image and cannot be guided, which mixes in the unconditional prediction.
    pub fn check_unconditional_use(&self, classes: &[u32], guidance: f64) -> Result<()> {
        let m = &self.config.model;
        if m.num_classes.is_none() || m.null_class {
            return Ok(());
        }
        if classes.is_empty() {
            return Err(Error::Invalid(
                "this model has no \"no class\" label (model.null_class = false, as imported from diffusers): give a class for every image (--class)"
                    .into(),
            ));
        }
        if guidance != 1.0 {
            return Err(Error::Invalid(format!(
                "guidance {guidance} mixes in the unconditional prediction, which this model never learned (model.null_class = false); use guidance 1"
            )));
        }
        Ok(())
    }

    fn network(&self) -> Labelled<'_> {
        Labelled {
            net: &self.net,
            dtype: self.dtype,
            num_classes: self.num_classes(),
            evaluations: &self.evaluations,
        }
    }

    /// The denoising steps each batch of `start` runs (fewer than opts.steps for SDEdit and
    /// from an inverted latent).
    pub fn steps_per_batch(&self, opts: &SampleOptions, start: &Start) -> Result<usize> {
        Ok(match start {
            Start::Edit { strength, .. } => {
                let respaced = opts.respace(&self.schedule)?;
                sampler::steps_below(&respaced.timesteps, *strength, self.schedule.len())
            }
            Start::Latent {
                from: Some(from), ..
            } => *from,
            _ => opts.steps,
        })
    }

    /// `req.n` images (N, C, H, W) in [-1, 1] on the CPU, `req.batch_size` at a time; image i
    /// draws its noise from stream (opts.seed, opts.first_index + i) and has class
    /// classes[(first_index + i) % len].
    pub fn generate(
        &self,
        opts: &SampleOptions,
        req: &Request,
        progress: Progress,
    ) -> Result<Tensor> {
        let mut parts = Vec::new();
        self.generate_batches(opts, req, progress, &mut |_, x| {
            parts.push(x);
            Ok::<_, Error>(())
        })?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// `generate`, handing each batch to `on_batch` (on the CPU, with the position of its first
    /// image among the `req.n`) as soon as it is done, so that a caller writing them keeps every
    /// finished batch when a long run is stopped.
    pub fn generate_batches<E: From<Error>>(
        &self,
        opts: &SampleOptions,
        req: &Request,
        progress: Progress,
        on_batch: &mut dyn FnMut(usize, Tensor) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let (n, batch_size) = (req.n, req.batch_size);
        if n == 0 || batch_size == 0 {
            return Err(Error::Invalid(
                "the number of images and the batch size must be at least 1".into(),
            )
            .into());
        }
        self.check_classes(req.classes)?;
        self.check_unconditional_use(req.classes, req.guidance)?;
        let net = self.network();
        let null = net.num_classes() as u32;
        let param = self.config.diffusion.parameterization();
        let shape = self.sample_shape();
        let mut done = 0;
        while done < n {
            let b = batch_size.min(n - done);
            let first = opts.first_index + done as u64;
            let batch_opts = SampleOptions {
                first_index: first,
                ..*opts
            };
            let labels = guidance::cycle(req.classes, first, b, null);
            let model = Guided::new(&net, labels, req.guidance)?;
            let on_step = &mut |info: &StepInfo| progress(done, n, info.index + 1, info.total);
            let rows = |x: &Tensor, what: &str| self.rows(x, what, done, b, n);
            let x = match req.start {
                Start::Noise => {
                    let dims: Vec<usize> =
                        std::iter::once(b).chain(shape.iter().copied()).collect();
                    sampler::sample(
                        &model,
                        &self.schedule,
                        param,
                        &batch_opts,
                        &dims,
                        &self.device,
                        on_step,
                    )
                }
                Start::Edit { init, strength } => sampler::sample_from(
                    &model,
                    &self.schedule,
                    param,
                    &batch_opts,
                    &rows(init, "image")?,
                    strength,
                    on_step,
                ),
                Start::Inpaint {
                    init,
                    mask,
                    resample,
                } => {
                    let (known, mask) = (rows(init, "image")?, self.mask_rows(mask, done, b, n)?);
                    let spec = sampler::Inpainting {
                        known: &known,
                        mask: &mask,
                        resample,
                    };
                    sampler::inpaint(&model, &self.schedule, param, &batch_opts, &spec, on_step)
                }
                Start::Latent { x, from } => sampler::sample_from_latent(
                    &model,
                    &self.schedule,
                    param,
                    &batch_opts,
                    &rows(x, "latent")?,
                    from.unwrap_or(batch_opts.steps),
                    on_step,
                ),
                Start::Replay { x_t, draws } => sampler::sample_replaying(
                    &model,
                    &self.schedule,
                    param,
                    &batch_opts,
                    &rows(x_t, "noise")?,
                    &self.draw_rows(draws, done, b, n)?,
                    on_step,
                ),
            }?;
            on_batch(done, x.to_device(&Device::Cpu).map_err(Error::from)?)?;
            done += b;
        }
        Ok(())
    }

    /// Rows done..done + b of `x` ((1 or n, ...sample shape), the one row repeated), as f32
    /// on the device; `what` names x in errors.
    fn rows(&self, x: &Tensor, what: &str, done: usize, b: usize, n: usize) -> Result<Tensor> {
        let shape = self.sample_shape();
        let dims = x.dims();
        if dims.len() != shape.len() + 1 || dims[1..] != shape[..] || (dims[0] != 1 && dims[0] != n)
        {
            return Err(Error::Invalid(format!(
                "{what} of shape {dims:?}: expected (1 or {n}, {}) for this model",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let x = x.to_dtype(DType::F32)?.to_device(&self.device)?;
        Ok(if dims[0] == 1 {
            let mut reps = vec![1usize; dims.len()];
            reps[0] = b;
            x.repeat(reps)?
        } else {
            x.narrow(0, done, b)?
        })
    }

    /// Images done..done + b of given noise draws (S, n, ...sample shape), on the device.
    fn draw_rows(&self, draws: &Tensor, done: usize, b: usize, n: usize) -> Result<Tensor> {
        let shape = self.sample_shape();
        let dims = draws.dims();
        if dims.len() != shape.len() + 2 || dims[1] != n || dims[2..] != shape[..] {
            return Err(Error::Invalid(format!(
                "noise draws of shape {dims:?}: expected (steps, {n}, {}) for {n} images of this model",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let d = draws.narrow(1, done, b)?.contiguous()?;
        Ok(d.to_dtype(DType::F32)?.to_device(&self.device)?)
    }

    /// Rows of an inpainting mask ((1 or n, 1 or C, H, W)); the channels broadcast later.
    fn mask_rows(&self, mask: &Tensor, done: usize, b: usize, n: usize) -> Result<Tensor> {
        let (c, (h, w)) = (self.config.data.channels, model::image_hw(&self.config));
        let dims = mask.dims();
        let ok = dims.len() == 4
            && (dims[0] == 1 || dims[0] == n)
            && (dims[1] == 1 || dims[1] == c)
            && dims[2..] == [h, w];
        if !ok {
            return Err(Error::Invalid(format!(
                "mask of shape {dims:?}: expected (1 or {n}, 1 or {c}, {h}, {w}) for this model"
            )));
        }
        let m = mask.to_dtype(DType::F32)?.to_device(&self.device)?;
        Ok(if dims[0] == 1 {
            m.repeat((b, 1, 1, 1))?
        } else {
            m.narrow(0, done, b)?
        })
    }
}

/// The sampling options of a config's `[sample]` section under `seed`.
pub fn sample_options(cfg: &Config, sampler: SamplerKind, seed: u64) -> SampleOptions {
    let s = &cfg.sample;
    SampleOptions {
        sampler,
        steps: s.steps_for(sampler, cfg.diffusion.timesteps),
        spacing: s.spacing,
        eta: s.eta,
        clip_x0: s.clip_x0,
        steps_offset: s.steps_offset,
        set_alpha_to_one: s.set_alpha_to_one,
        use_clipped_model_output: s.use_clipped_model_output,
        seed,
        first_index: 0,
        corrector_steps: s.corrector_steps,
        snr: s.snr,
    }
}

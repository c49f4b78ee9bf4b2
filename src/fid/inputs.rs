//! What `ddpm fid` measures, turned into Inception features or statistics: a folder of images
//! (recursive, every format the `image` crate reads here), a .npy array (images, or features
//! already computed), a pytorch-fid statistics .npz, or images in memory (samples, which are
//! quantised to bytes first, exactly as their PNG files would hold them). Feature extraction
//! runs in batches and reports progress through a callback.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use super::inception::Inception;
use super::preprocess;
use super::stats::Features;
use crate::data::{folder, images, transform};
use crate::error::{Error, Result};

/// Progress of an extraction: images done, images in all.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> Result<()>;

/// One side of a comparison, by what its path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A folder of images, read recursively in sorted order.
    Folder(PathBuf),
    /// A .npy array: images (N, C, H, W) or (N, H, W, C), or features (N, D).
    Array(PathBuf),
    /// A pytorch-fid statistics file (.npz with mu and sigma).
    Stats(PathBuf),
    /// A ddpm checkpoint (.safetensors), sampled on the fly.
    Checkpoint(PathBuf),
}

impl Input {
    /// Classify `path`: a folder, or by extension .npy, .npz, .safetensors.
    pub fn classify(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Ok(Input::Folder(path.to_path_buf()));
        }
        if !path.exists() {
            return Err(Error::Invalid(format!("{} does not exist", path.display())));
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        Ok(match ext.as_deref() {
            Some("npy") => Input::Array(path.to_path_buf()),
            Some("npz") => Input::Stats(path.to_path_buf()),
            Some("safetensors") => Input::Checkpoint(path.to_path_buf()),
            _ => {
                return Err(Error::Invalid(format!(
                    "{}: expected a folder of images, a .npy array, a pytorch-fid statistics \
                     .npz or a checkpoint .safetensors",
                    path.display()
                )))
            }
        })
    }
}

/// pool3 features (b, 2048) of a batch of images, as f64 rows.
pub fn image_features(net: &Inception, batch: &[RgbImage]) -> Result<Vec<f64>> {
    let x = preprocess::batch(batch, net.device())?;
    let f = net
        .forward(&x)?
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?;
    Ok(f.flatten_all()?.to_vec1::<f64>()?)
}

/// Samples (N, C, H, W) in [-1, 1] as the 8-bit RGB images their PNG files would hold
/// (`images::quantize`; grey repeated to three channels as PIL's convert('RGB') does).
pub fn tensor_images(x: &Tensor) -> Result<Vec<RgbImage>> {
    Ok(images::to_images(x)?
        .into_iter()
        .map(|i| i.to_rgb8())
        .collect())
}

/// The features of every image under `root`, `batch_size` at a time, decoded in parallel.
pub fn folder_features(
    net: &Inception,
    root: &Path,
    batch_size: usize,
    progress: Progress,
) -> Result<Features> {
    let files = folder::discover(root)?;
    if files.is_empty() {
        return Err(Error::Data(format!(
            "{}: no images found (looked for {} files, recursively)",
            root.display(),
            folder::EXTENSIONS.join(", ")
        )));
    }
    let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
    batched(net, paths.len(), batch_size, progress, |range| {
        paths[range]
            .par_iter()
            .map(|p| Ok(transform::decode(p)?.to_rgb8()))
            .collect()
    })
}

/// A .npy array as `ddpm fid` takes it.
pub enum Array {
    /// A 2-D array: features (N, D), as they are.
    Features(Features),
    /// A 4-D array: images, as bytes (N, C, H, W) with C 1 or 3.
    Images(Tensor),
}

/// Read a .npy array: 2-D is features (N, D); 4-D is images, uint8 (N, H, W, C) or
/// (N, C, H, W) with C 1 or 3, or float (N, C, H, W) in [-1, 1] as `ddpm sample --format npy`
/// writes (quantised to bytes as their PNG files would be).
pub fn read_array(path: &Path) -> Result<Array> {
    let bad = |msg: String| Error::Invalid(format!("{}: {msg}", path.display()));
    let x = Tensor::read_npy(path).map_err(|e| bad(format!("cannot read the .npy array: {e}")))?;
    if x.rank() == 2 {
        let (_, d) = x.dims2()?;
        return Ok(Array::Features(Features::new(
            x.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?,
            d,
        )?));
    }
    let shape = x.dims().to_vec();
    let Ok((_, a, _, c)) = x.dims4() else {
        return Err(bad(format!(
            "array of shape {shape:?}: expected features (N, D) or images (N, C, H, W) / (N, H, W, C)"
        )));
    };
    let images = match x.dtype() {
        DType::U8 if c == 1 || c == 3 => x.permute((0, 3, 1, 2))?,
        DType::U8 if a == 1 || a == 3 => x,
        _ if x.dtype().is_float() && (a == 1 || a == 3) => ((x.to_dtype(DType::F32)? + 1.0)?
            * 127.5)?
            .round()?
            .clamp(0f32, 255f32)?
            .to_dtype(DType::U8)?,
        dtype => {
            return Err(bad(format!(
                "{dtype:?} images of shape {shape:?}: expected uint8 (N, H, W, 1 or 3) or \
                 (N, 1 or 3, H, W), or floats in [-1, 1] (N, 1 or 3, H, W)"
            )))
        }
    };
    Ok(Array::Images(images.contiguous()?))
}

/// The features of images (N, C, H, W) as bytes, C 1 or 3, `batch_size` at a time.
pub fn array_features(
    net: &Inception,
    images: &Tensor,
    batch_size: usize,
    progress: Progress,
) -> Result<Features> {
    let (n, ch, h, w) = images.dims4()?;
    batched(net, n, batch_size, progress, |range| {
        let part = images.narrow(0, range.start, range.len())?;
        let bytes = part.flatten_all()?.to_vec1::<u8>()?;
        Ok(bytes
            .chunks_exact(ch * h * w)
            .map(|img| {
                RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    let at = |c: usize| img[(c.min(ch - 1) * h + y as usize) * w + x as usize];
                    image::Rgb([at(0), at(1), at(2)])
                })
            })
            .collect())
    })
}

/// Run `load` over index ranges of `batch_size` and the network over each, reporting progress.
fn batched(
    net: &Inception,
    n: usize,
    batch_size: usize,
    progress: Progress,
    load: impl Fn(std::ops::Range<usize>) -> Result<Vec<RgbImage>>,
) -> Result<Features> {
    let batch_size = batch_size.max(1);
    let mut data = Vec::with_capacity(n * super::inception::FEATURES);
    progress(0, n)?;
    for start in (0..n).step_by(batch_size) {
        let range = start..(start + batch_size).min(n);
        let end = range.end;
        data.extend(image_features(net, &load(range)?)?);
        progress(end, n)?;
    }
    Features::new(data, super::inception::FEATURES)
}

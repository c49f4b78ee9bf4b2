//! Everything between files and [-1, 1] tensors: the `[data]` config, the datasets (an image
//! folder, the embedded UCI digits, and vector data from `points`) behind one `Dataset` trait, the `Loader` that batches them
//! in a seeded, resumable order on worker threads, and the way back (`images`: tensors to PNG,
//! grids and .npy). What is done with the batches (losses, training) lives elsewhere.

pub mod config;
pub mod digits;
pub mod folder;
pub mod images;
pub mod loader;
pub mod order;
pub mod point_set;
pub mod transform;

use std::sync::Arc;

pub use config::{DataConfig, DatasetKind, ImageSize};
pub use digits::Digits;
pub use folder::ImageFolder;
pub use loader::{Batch, Loader, LoaderOptions, Part};
pub use point_set::PointDataset;

use crate::error::{Error, Result};
use crate::points::{io as point_io, Standardization};
use crate::rng::{Purpose, Stream};

/// A fixed, indexable set of images of one size and channel count.
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;

    /// True when there are no examples (`open` never returns such a dataset).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels C of every example (1 or 3).
    fn channels(&self) -> usize;

    /// Height H and width W of every example.
    fn image_size(&self) -> ImageSize;

    /// Values per example, C * H * W.
    fn example_len(&self) -> usize {
        self.channels() * self.image_size().area()
    }

    /// The shape of one example: (C, H, W) for images, (D,) for vectors.
    fn example_shape(&self) -> Vec<usize> {
        let size = self.image_size();
        vec![self.channels(), size.height, size.width]
    }

    /// Write example `i` (mirrored left-right when `flip`) into `out` as C*H*W values in
    /// [-1, 1], CHW order; return its class label when the dataset has labels.
    fn example(&self, i: usize, flip: bool, out: &mut [f32]) -> Result<Option<u32>>;

    /// Ok when `i` names an example and `out` holds exactly one; else an error naming the
    /// dataset (`what`): every `example` starts with this check.
    fn check_example(&self, what: &str, i: usize, out: &[f32]) -> Result<()> {
        if i < self.len() && out.len() == self.example_len() {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{what} example {i} into {} values: the dataset has {} examples of {} values",
            out.len(),
            self.len(),
            self.example_len()
        )))
    }

    /// Number of classes when examples carry labels, else None.
    fn num_classes(&self) -> Option<usize>;

    /// Class names in label order when examples carry labels, else None.
    fn class_names(&self) -> Option<&[String]>;

    /// For vector data, the standardisation its examples went through (to be undone on
    /// sampling); images have none.
    fn standardization(&self) -> Option<&Standardization> {
        None
    }
}

/// Open the dataset the config describes, after validating it.
pub fn open(cfg: &DataConfig) -> Result<Arc<dyn Dataset>> {
    cfg.validate()?;
    Ok(match cfg.dataset {
        DatasetKind::Digits => {
            Arc::new(Digits::new(cfg.image_size, cfg.channels, cfg.class_labels)?)
        }
        DatasetKind::Folder => Arc::new(ImageFolder::open(cfg)?),
        DatasetKind::Points => {
            let path = cfg.path.as_deref().unwrap_or(std::path::Path::new(""));
            let points = point_io::read(path)?;
            if let Some(d) = cfg.dim.filter(|&d| d != points.dim) {
                return Err(Error::Config(format!(
                    "data.dim = {d} but {} has {} columns; set data.dim = {} or remove it",
                    path.display(),
                    points.dim,
                    points.dim
                )));
            }
            Arc::new(PointDataset::new(&points, &path.display().to_string())?)
        }
        kind => {
            let toy = kind
                .toy()
                .ok_or_else(|| Error::Config(format!("data.dataset = {kind:?} has no reader")))?;
            let mut stream = Stream::new(cfg.seed, Purpose::Data, 0);
            let points = toy.sample(cfg.num_points, cfg.toy_noise(toy), &mut stream);
            Arc::new(PointDataset::new(&points, kind.name())?)
        }
    })
}

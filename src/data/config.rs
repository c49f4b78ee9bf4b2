//! The `[data]` config section: which dataset, where it lives, the image geometry (or, for
//! vector data, the point count, noise and dimension) and the loader's threads. Parsing and
//! validation only; opening the data is `data::open`'s job.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::points::Toy;

/// Which dataset to train on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// The UCI handwritten digits (1797 images, 8x8, embedded in the binary).
    #[default]
    Digits,
    /// A folder of images (png, jpeg, bmp, gif, webp), searched recursively.
    Folder,
    /// 2-D two moons, drawn from `points::Toy::Moons`.
    Moons,
    /// 2-D swiss roll, drawn from `points::Toy::SwissRoll`.
    SwissRoll,
    /// 2-D mixture of 8 Gaussians on a circle, drawn from `points::Toy::EightGaussians`.
    #[serde(rename = "8gaussians")]
    EightGaussians,
    /// Vectors (N, D) from a .csv or .npy file at `path`.
    Points,
}

impl DatasetKind {
    /// The built-in generator of this kind, if it is one.
    pub fn toy(self) -> Option<Toy> {
        match self {
            DatasetKind::Moons => Some(Toy::Moons),
            DatasetKind::SwissRoll => Some(Toy::SwissRoll),
            DatasetKind::EightGaussians => Some(Toy::EightGaussians),
            _ => None,
        }
    }

    /// True for vector data (generators and point files), whose examples have shape (D,).
    pub fn is_points(self) -> bool {
        self == DatasetKind::Points || self.toy().is_some()
    }

    /// Whether the `[data]` key `key` means anything for this kind of data. Written configs
    /// (run directories, checkpoints, `ddpm info`) hold only these, and setting another is an
    /// error, so leaving the others out loses nothing.
    pub fn uses(self, key: &str) -> bool {
        match key {
            "path" => matches!(self, DatasetKind::Folder | DatasetKind::Points),
            "image_size" | "channels" | "random_flip" | "class_labels" => !self.is_points(),
            "num_points" | "noise" | "seed" => self.toy().is_some(),
            "dim" => self.is_points(),
            _ => true,
        }
    }
}

/// Image height and width in pixels. In TOML: `32` (square) or `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageSize {
    pub height: usize,
    pub width: usize,
}

impl ImageSize {
    /// A square size.
    pub fn square(side: usize) -> Self {
        ImageSize {
            height: side,
            width: side,
        }
    }

    /// Pixels per channel, height * width.
    pub fn area(&self) -> usize {
        self.height * self.width
    }
}

impl fmt::Display for ImageSize {
    /// `WxH`, the order image tools print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl Serialize for ImageSize {
    /// Square sizes write back as one integer, others as `[height, width]`.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.height == self.width {
            s.serialize_u64(self.height as u64)
        } else {
            [self.height as u64, self.width as u64].serialize(s)
        }
    }
}

struct ImageSizeVisitor;

impl ImageSizeVisitor {
    fn side<E: de::Error>(v: i128) -> std::result::Result<usize, E> {
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| E::custom(format!("image size {v} must be a positive integer")))
    }
}

impl<'de> Visitor<'de> for ImageSizeVisitor {
    type Value = ImageSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an image size: an integer such as 32, or [height, width]")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<ImageSize, E> {
        Self::side(v.into()).map(ImageSize::square)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<ImageSize, E> {
        Self::side(v.into()).map(ImageSize::square)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<ImageSize, A::Error> {
        let wrong_len = || de::Error::custom("image size array must be [height, width]");
        let height: i64 = seq.next_element()?.ok_or_else(wrong_len)?;
        let width: i64 = seq.next_element()?.ok_or_else(wrong_len)?;
        if seq.next_element::<i64>()?.is_some() {
            return Err(wrong_len());
        }
        Ok(ImageSize {
            height: Self::side(height.into())?,
            width: Self::side(width.into())?,
        })
    }
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(ImageSizeVisitor)
    }
}

/// The `[data]` section.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `digits` (default), `folder`, or vector data: `moons`, `swiss_roll`, `8gaussians`,
    /// `points` (a file).
    pub dataset: DatasetKind,
    /// Root of the image folder, or the .csv/.npy file of `points`; required for those two,
    /// not allowed otherwise.
    pub path: Option<PathBuf>,
    /// Training image size; images are resized on the shorter side, then centre-cropped.
    pub image_size: ImageSize,
    /// 1 (luma) or 3 (RGB); alpha is dropped.
    pub channels: usize,
    /// Random horizontal flips, drawn per position in the example sequence.
    pub random_flip: bool,
    /// Class labels: first-level subfolder names for `folder`, 0..9 for `digits`.
    pub class_labels: bool,
    /// Threads that decode and augment batches.
    pub workers: usize,
    /// Batches queued ahead of the training step.
    pub prefetch: usize,
    /// Points drawn by a generator (moons, swiss_roll, 8gaussians) as the training set.
    pub num_points: usize,
    /// Standard deviation of a generator's Gaussian noise; absent = its default
    /// (`points::Toy::default_noise`).
    pub noise: Option<f64>,
    /// Seed of a generator's training set (independent of train.seed, so runs with different
    /// seeds see the same data).
    pub seed: u64,
    /// Dimension D of vector data; absent = from the data (2 for the generators). Training
    /// records it in the checkpoint's config.
    pub dim: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: DatasetKind::Digits,
            path: None,
            image_size: ImageSize::square(8),
            channels: 1,
            random_flip: false,
            class_labels: false,
            workers: 2,
            prefetch: 4,
            num_points: 10_000,
            noise: None,
            seed: 0,
            dim: None,
        }
    }
}

/// Largest accepted side; beyond it a single batch no longer fits any reasonable memory.
const MAX_SIDE: usize = 4096;
/// The most loader threads (each decodes whole batches).
const MAX_WORKERS: usize = 256;
/// The most batches queued ahead of the training step.
const MAX_PREFETCH: usize = 1024;
/// The most points a generator draws (16 bytes each, and their standardised copy).
const MAX_POINTS: usize = 100_000_000;
/// The largest dimension of vector data.
const MAX_DIM: usize = 1 << 16;

impl DataConfig {
    /// Check every value; the error names the key and, where there is one, the fix.
    pub fn validate(&self) -> Result<()> {
        self.validate_path()?;
        self.validate_values()
    }

    /// A path for the datasets read from files, none for the others.
    pub fn validate_path(&self) -> Result<()> {
        let needs_path = matches!(self.dataset, DatasetKind::Folder | DatasetKind::Points);
        match (needs_path, &self.path) {
            (true, None) => Err(Error::Config(format!(
                "data.path is required when data.dataset = \"{}\"",
                self.dataset.name()
            ))),
            (false, Some(p)) => Err(Error::Config(format!(
                "data.path = {:?} is only used with data.dataset = \"folder\" or \"points\"; remove it or set the dataset",
                p.display().to_string()
            ))),
            _ => Ok(()),
        }
    }

    /// Every check but `validate_path`'s.
    pub fn validate_values(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        self.validate_loader()?;
        if self.dataset.is_points() {
            self.validate_points()?;
            return self.check_unused();
        }
        let ImageSize { height, width } = self.image_size;
        if height == 0 || width == 0 || height > MAX_SIDE || width > MAX_SIDE {
            return bad(format!(
                "data.image_size [{height}, {width}] must have sides between 1 and {MAX_SIDE}"
            ));
        }
        if self.channels != 1 && self.channels != 3 {
            return bad(format!(
                "data.channels = {} must be 1 (luma) or 3 (RGB)",
                self.channels
            ));
        }
        self.check_unused()
    }

    /// The loader's threads and queue: at least one each, and a bounded number.
    fn validate_loader(&self) -> Result<()> {
        for (key, v, max) in [
            ("workers", self.workers, MAX_WORKERS),
            ("prefetch", self.prefetch, MAX_PREFETCH),
        ] {
            if v == 0 || v > max {
                return Err(Error::Config(format!(
                    "data.{key} = {v} must be between 1 and {max}"
                )));
            }
        }
        Ok(())
    }

    /// The section as a TOML table: every key, in declaration order.
    fn table(&self) -> Result<toml::Table> {
        match toml::Value::try_from(self) {
            Ok(toml::Value::Table(t)) => Ok(t),
            other => Err(Error::Config(format!("cannot serialise [data]: {other:?}"))),
        }
    }

    /// The section as written: the keys this kind of data uses (`DatasetKind::uses`).
    pub fn written(&self) -> Result<toml::Table> {
        let mut t = self.table()?;
        t.retain(|key, _| self.dataset.uses(key));
        Ok(t)
    }

    /// A key this kind of data does not use, set to other than its default, is an error
    /// naming it (it would be silently ignored, and dropped from the written config).
    fn check_unused(&self) -> Result<()> {
        let (set, default) = (self.table()?, DataConfig::default().table()?);
        match set
            .into_iter()
            .find(|(key, value)| !self.dataset.uses(key) && default.get(key) != Some(value))
        {
            Some((key, _)) => Err(Error::Config(format!(
                "data.{key} is not used with data.dataset = \"{}\"; remove it",
                self.dataset.name()
            ))),
            None => Ok(()),
        }
    }

    /// The checks of vector data: no image-only options, sensible generator settings.
    fn validate_points(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let name = self.dataset.name();
        if self.random_flip || self.class_labels {
            return bad(format!(
                "data.random_flip and data.class_labels are for images; data.dataset = \"{name}\" is vector data"
            ));
        }
        if let Some(d) = self.dim.filter(|&d| d == 0 || d > MAX_DIM) {
            return bad(format!("data.dim = {d} must be between 1 and {MAX_DIM}"));
        }
        if self.dataset.toy().is_some() {
            if !(2..=MAX_POINTS).contains(&self.num_points) {
                return bad(format!(
                    "data.num_points = {} must be between 2 and {MAX_POINTS}",
                    self.num_points
                ));
            }
            if let Some(d) = self.dim.filter(|&d| d != 2) {
                return bad(format!(
                    "data.dim = {d}: \"{name}\" is 2-D; remove data.dim"
                ));
            }
        }
        match self.noise {
            Some(v) if self.dataset.toy().is_none() => bad(format!(
                "data.noise = {v} is only used by the generators (moons, swiss_roll, 8gaussians)"
            )),
            Some(v) if !(v.is_finite() && v >= 0.0) => {
                bad(format!("data.noise = {v} must be a finite number >= 0"))
            }
            _ => Ok(()),
        }
    }

    /// The shape of one example: (C, H, W) for images, (D,) for vectors (D = data.dim, else 2).
    pub fn example_shape(&self) -> Vec<usize> {
        if self.dataset.is_points() {
            vec![self.dim.unwrap_or(2)]
        } else {
            vec![self.channels, self.image_size.height, self.image_size.width]
        }
    }

    /// The generator noise: data.noise, else the generator's default.
    pub fn toy_noise(&self, toy: Toy) -> f64 {
        self.noise.unwrap_or(toy.default_noise())
    }
}

impl DatasetKind {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Digits => "digits",
            DatasetKind::Folder => "folder",
            DatasetKind::Moons => "moons",
            DatasetKind::SwissRoll => "swiss_roll",
            DatasetKind::EightGaussians => "8gaussians",
            DatasetKind::Points => "points",
        }
    }
}

#[cfg(test)]
mod tests;

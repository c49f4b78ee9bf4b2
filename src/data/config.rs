//! The `[data]` config section: which dataset, where it lives, the image geometry (or, for
//! vector data, the point count, noise and dimension) and the loader's threads. Parsing and validation only; opening the data is `data::open`'s job.

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
            return self.validate_points();
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
        Ok(())
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
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<DataConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn image_size_reads_an_integer_or_a_pair_and_writes_back() {
        let square = parse("image_size = 32").unwrap();
        assert_eq!(square.image_size, ImageSize::square(32));
        let rect = parse("image_size = [24, 40]").unwrap();
        assert_eq!(
            rect.image_size,
            ImageSize {
                height: 24,
                width: 40
            }
        );
        for cfg in [square, rect] {
            let text = toml::to_string(&cfg).unwrap();
            assert_eq!(parse(&text).unwrap(), cfg, "{text}");
        }
        assert!(toml::to_string(&parse("image_size = 32").unwrap())
            .unwrap()
            .contains("image_size = 32"));
    }

    #[test]
    fn bad_image_sizes_are_rejected() {
        for text in [
            "image_size = 0",
            "image_size = -3",
            "image_size = [8]",
            "image_size = [8, 8, 8]",
            "image_size = \"32\"",
        ] {
            assert!(parse(text).is_err(), "{text} parsed");
        }
    }

    #[test]
    fn defaults_are_digits_8x8_luma_and_unknown_keys_fail() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg, DataConfig::default());
        assert_eq!(cfg.dataset, DatasetKind::Digits);
        assert_eq!(cfg.image_size, ImageSize::square(8));
        assert_eq!(cfg.channels, 1);
        assert!(!cfg.random_flip);
        cfg.validate().unwrap();
        assert!(
            parse("dataset = \"folder\"\npath = \"x\"").unwrap().dataset == DatasetKind::Folder
        );
        assert!(parse("flip = true").is_err());
        assert!(parse("dataset = \"cifar\"").is_err());
    }

    #[test]
    fn validate_names_the_key() {
        let cases = [
            ("dataset = \"folder\"", "data.path"),
            ("path = \"imgs\"", "data.path"),
            ("channels = 2", "data.channels"),
            ("image_size = 5000", "data.image_size"),
            ("workers = 0", "data.workers"),
            ("prefetch = 0", "data.prefetch"),
            ("workers = 1000000", "data.workers = 1000000"),
            ("prefetch = 1000000000", "data.prefetch = 1000000000"),
            (
                "dataset = \"moons\"\nnum_points = 1000000000000",
                "data.num_points",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}

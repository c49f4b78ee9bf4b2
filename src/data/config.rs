//! The `[data]` config section: which dataset, where it lives, the image geometry and the
//! loader's threads. Parsing and validation only; opening the data is `data::open`'s job.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Which dataset to train on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// The UCI handwritten digits (1797 images, 8x8, embedded in the binary).
    #[default]
    Digits,
    /// A folder of images (png, jpeg, bmp, gif, webp), searched recursively.
    Folder,
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
    /// `digits` (default) or `folder`.
    pub dataset: DatasetKind,
    /// Root of the image folder; required for `folder`, not allowed for `digits`.
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
        }
    }
}

/// Largest accepted side; beyond it a single batch no longer fits any reasonable memory.
const MAX_SIDE: usize = 4096;

impl DataConfig {
    /// Check every value; the error names the key and, where there is one, the fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        match (self.dataset, &self.path) {
            (DatasetKind::Folder, None) => {
                return bad("data.path is required when data.dataset = \"folder\"".into())
            }
            (DatasetKind::Digits, Some(p)) => {
                return bad(format!(
                    "data.path = {:?} is only used with data.dataset = \"folder\"; remove it or set dataset = \"folder\"",
                    p.display().to_string()
                ))
            }
            _ => {}
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
        if self.workers == 0 {
            return bad("data.workers must be at least 1".into());
        }
        if self.prefetch == 0 {
            return bad("data.prefetch must be at least 1".into());
        }
        Ok(())
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
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}

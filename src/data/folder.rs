//! A folder of images as a dataset: recursive discovery in sorted order, header checks at open
//! time (so a bad file fails before training, not hours into it), class labels from first-level
//! subfolder names, and a decoded-pixel cache when the whole set fits in memory. The pixel
//! pipeline itself (resize, crop, scale) is `transform`'s.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::config::{DataConfig, ImageSize};
use super::transform::{self, FILTER};
use super::Dataset;
use crate::error::{Error, Result};

/// File extensions read as images (compared case-insensitively).
pub const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "gif", "webp"];

/// Decoded, resized pixels are kept when all of them (as u8) fit in this many bytes.
pub const CACHE_LIMIT_BYTES: usize = 1 << 30;

/// The images under a root folder.
pub struct ImageFolder {
    root: PathBuf,
    /// Paths relative to `root`, sorted.
    files: Vec<PathBuf>,
    labels: Option<Vec<u32>>,
    names: Option<Vec<String>>,
    size: ImageSize,
    channels: usize,
    /// One slot per file: its C*H*W bytes once decoded, when the whole set fits the limit.
    cache: Option<Vec<OnceLock<Box<[u8]>>>>,
}

impl ImageFolder {
    /// Open `cfg.path` with the config's size, channels and labels; headers are checked on
    /// `cfg.workers` threads.
    pub fn open(cfg: &DataConfig) -> Result<Self> {
        let root = cfg.path.as_deref().ok_or_else(|| {
            Error::Config("data.path is required when data.dataset = \"folder\"".into())
        })?;
        Self::new(
            root,
            cfg.image_size,
            cfg.channels,
            cfg.class_labels,
            cfg.workers,
        )
    }

    /// Find every image under `root`, check each header (readable, at least `size`) and, with
    /// `class_labels`, label each by its first-level subfolder.
    pub fn new(
        root: &Path,
        size: ImageSize,
        channels: usize,
        class_labels: bool,
        threads: usize,
    ) -> Result<Self> {
        let files = discover(root)?;
        if files.is_empty() {
            return Err(Error::Data(format!(
                "data.path {}: no images found (looked for {} files, recursively)",
                root.display(),
                EXTENSIONS.join(", ")
            )));
        }
        check_headers(root, &files, size, threads.max(1))?;
        let (labels, names) = if class_labels {
            let (labels, names) = label(root, &files)?;
            (Some(labels), Some(names))
        } else {
            (None, None)
        };
        let bytes = files.len().saturating_mul(channels * size.area());
        let cache =
            (bytes <= CACHE_LIMIT_BYTES).then(|| files.iter().map(|_| OnceLock::new()).collect());
        Ok(ImageFolder {
            root: root.to_path_buf(),
            files,
            labels,
            names,
            size,
            channels,
            cache,
        })
    }

    /// The image files, relative to the root, in dataset order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Whether decoded pixels are kept after first use.
    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// Decode, check and fit image `i` to C*H*W bytes.
    fn load(&self, i: usize) -> Result<Box<[u8]>> {
        let path = self.root.join(&self.files[i]);
        let img = transform::decode(&path)?;
        transform::check_size(&path, (img.width(), img.height()), self.size)?;
        Ok(transform::fit(&img, self.channels, self.size, FILTER).into_boxed_slice())
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn image_size(&self) -> ImageSize {
        self.size
    }

    fn example(&self, i: usize, flip: bool, out: &mut [f32]) -> Result<Option<u32>> {
        self.check_example("folder", i, out)?;
        let owned;
        let bytes: &[u8] = match self.cache.as_ref().map(|c| &c[i]) {
            Some(slot) => match slot.get() {
                Some(b) => b,
                None => {
                    let b = self.load(i)?;
                    slot.get_or_init(|| b)
                }
            },
            None => {
                owned = self.load(i)?;
                &owned
            }
        };
        transform::to_signed(bytes, self.size, flip, out);
        Ok(self.labels.as_ref().map(|l| l[i]))
    }

    fn num_classes(&self) -> Option<usize> {
        self.names.as_ref().map(Vec::len)
    }

    fn class_names(&self) -> Option<&[String]> {
        self.names.as_deref()
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Image files under `root`, relative to it, sorted. Hidden entries (names starting with '.')
/// are skipped; symlinked folders are not followed (no cycles), symlinked files are.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(root).map_err(|e| {
        Error::Data(format!(
            "data.path {}: cannot open folder: {e}",
            root.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::Data(format!(
            "data.path {} is not a folder",
            root.display()
        )));
    }
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
            let rel = rel.join(&name);
            if kind.is_dir() {
                pending.push(rel);
            } else if is_image(&rel) && (kind.is_file() || entry.path().is_file()) {
                files.push(rel);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Read every header on `threads` threads; the first failure in dataset order is reported.
fn check_headers(root: &Path, files: &[PathBuf], size: ImageSize, threads: usize) -> Result<()> {
    let check = |rel: &PathBuf| {
        let path = root.join(rel);
        let dims = transform::dimensions(&path)?;
        transform::check_size(&path, dims, size)
    };
    let chunk = files.len().div_ceil(threads);
    let firsts: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().try_for_each(check)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Data(format!(
                        "data.path {}: a header check panicked",
                        root.display()
                    )))
                })
            })
            .collect()
    });
    firsts.into_iter().collect()
}

/// Label = index of the first-level subfolder in sorted order; names are those folders.
fn label(root: &Path, files: &[PathBuf]) -> Result<(Vec<u32>, Vec<String>)> {
    let mut class_of = Vec::with_capacity(files.len());
    for rel in files {
        let mut parts = rel.components();
        match (parts.next(), parts.next()) {
            (Some(first), Some(_)) => {
                class_of.push(first.as_os_str().to_string_lossy().into_owned())
            }
            _ => {
                return Err(Error::Data(format!(
                    "{} is not in a class subfolder of {}; with data.class_labels = true \
                     every image must sit in a first-level subfolder named after its class",
                    root.join(rel).display(),
                    root.display()
                )))
            }
        }
    }
    let mut names = class_of.clone();
    names.sort();
    names.dedup();
    let labels = class_of
        .iter()
        .map(|c| names.binary_search(c).unwrap_or(0) as u32)
        .collect();
    Ok((labels, names))
}

#[cfg(test)]
#[path = "folder_tests.rs"]
mod tests;

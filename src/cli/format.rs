//! The file formats samples are written in, and which one an output path asks for: `--format`,
//! else the extension of `--out` (a `.jpg` gets JPEG bytes, not PNG bytes under that name), and
//! an extension that names no format we write is refused before any sampling.

use std::path::Path;

use clap::ValueEnum;
use image::ImageFormat;

/// Output file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// PNG images (several images in one file become a grid).
    Png,
    /// JPEG images (lossy).
    #[value(alias = "jpg")]
    Jpeg,
    /// WebP images (lossless).
    Webp,
    /// BMP images.
    Bmp,
    /// One NumPy array (N, C, H, W) of float32 in [-1, 1], or (N, D) for vector data.
    Npy,
    /// Comma-separated rows with a header, one per sample (vector-data checkpoints only).
    Csv,
}

/// Extensions and the format each names; the first per format is the one written.
const EXTENSIONS: [(&str, Format); 7] = [
    ("png", Format::Png),
    ("jpg", Format::Jpeg),
    ("jpeg", Format::Jpeg),
    ("webp", Format::Webp),
    ("bmp", Format::Bmp),
    ("npy", Format::Npy),
    ("csv", Format::Csv),
];

impl Format {
    /// The extension files of this format get.
    pub fn extension(self) -> &'static str {
        EXTENSIONS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("png", |(ext, _)| ext)
    }

    /// The `image` crate's encoder for a picture format; None for npy and csv.
    pub fn image(self) -> Option<ImageFormat> {
        match self {
            Format::Png => Some(ImageFormat::Png),
            Format::Jpeg => Some(ImageFormat::Jpeg),
            Format::Webp => Some(ImageFormat::WebP),
            Format::Bmp => Some(ImageFormat::Bmp),
            Format::Npy | Format::Csv => None,
        }
    }
}

/// The format of output `out` (given as `flag`): `format` when given, else the one its
/// extension names, else `default` (no extension, or `-` for stdout). An extension that names
/// no format, or another one than `format`, is an error naming the flag.
pub fn for_path(
    flag: &str,
    out: Option<&Path>,
    format: Option<Format>,
    default: Format,
) -> anyhow::Result<Format> {
    let ext = out
        .filter(|p| p.as_os_str() != "-")
        .and_then(|p| p.extension())
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let named = match &ext {
        Some(e) => Some(
            EXTENSIONS
                .iter()
                .find(|(x, _)| x == e)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{flag} {}: .{e} is not a format ddpm writes; use .png, .jpg, .webp, .bmp, \
                         .npy or .csv",
                        out.map_or(String::new(), |p| p.display().to_string())
                    )
                })?,
        ),
        None => None,
    };
    match (format, named) {
        (Some(f), Some(n)) if f != n => anyhow::bail!(
            "--format {} but {flag} {} names {}; make them agree",
            f.extension(),
            out.map_or(String::new(), |p| p.display().to_string()),
            n.extension()
        ),
        (Some(f), _) => Ok(f),
        (None, Some(n)) => Ok(n),
        (None, None) => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_names_the_format_and_unknown_ones_are_refused() {
        let f = |out: &str, format| for_path("--out", Some(Path::new(out)), format, Format::Png);
        assert_eq!(f("a.jpg", None).unwrap(), Format::Jpeg);
        assert_eq!(f("a.JPEG", None).unwrap(), Format::Jpeg);
        assert_eq!(f("dir.v2/a.webp", None).unwrap(), Format::Webp);
        assert_eq!(f("a.bmp", None).unwrap(), Format::Bmp);
        assert_eq!(f("a.npy", None).unwrap(), Format::Npy);
        assert_eq!(f("a", None).unwrap(), Format::Png);
        assert_eq!(f("-", Some(Format::Npy)).unwrap(), Format::Npy);
        assert_eq!(f("a.jpg", Some(Format::Jpeg)).unwrap(), Format::Jpeg);
        let e = f("a.tiff", None).unwrap_err().to_string();
        assert!(e.contains("--out a.tiff") && e.contains(".tiff"), "{e}");
        let e = f("a.png", Some(Format::Npy)).unwrap_err().to_string();
        assert!(e.contains("--format npy") && e.contains("a.png"), "{e}");
        assert_eq!(Format::Jpeg.extension(), "jpg");
    }
}

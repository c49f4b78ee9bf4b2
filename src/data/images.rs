//! The way back from tensors to files: (B, C, H, W) values in [-1, 1] to 8-bit images, grids,
//! PNG (atomically written, or as bytes for stdout) and NumPy .npy; plus single images and masks
//! read in with the training preprocessing, for conditioning a sampler. Datasets are elsewhere.

use std::io::Cursor;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, GenericImage, GrayImage, ImageFormat, RgbImage};

use super::config::ImageSize;
use super::transform::{self, FILTER};
use crate::error::{Error, Result};

/// Pixels between grid cells and around the border.
pub const GRID_PADDING: u32 = 2;

/// v = round((x + 1) * 127.5), clamped to 0..=255 (NaN becomes 0).
pub fn quantize(x: f32) -> u8 {
    ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// A (B, C, H, W) tensor with C = 1 or 3 and values in [-1, 1] to B images (luma or RGB).
pub fn to_images(x: &Tensor) -> Result<Vec<DynamicImage>> {
    let (b, c, h, w) = x.dims4()?;
    if c != 1 && c != 3 {
        return Err(Error::Invalid(format!(
            "cannot turn {c} channels into an image; expected 1 (luma) or 3 (RGB)"
        )));
    }
    let values: Vec<f32> = x
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let area = h * w;
    let mut out = Vec::with_capacity(b);
    for chw in values.chunks_exact(c * area) {
        let mut hwc = vec![0u8; c * area];
        for (ch, plane) in chw.chunks_exact(area).enumerate() {
            for (p, &v) in plane.iter().enumerate() {
                hwc[p * c + ch] = quantize(v);
            }
        }
        let (w, h) = (w as u32, h as u32);
        let bad = || Error::Invalid(format!("image buffer of {} bytes for {w}x{h}", c * area));
        out.push(if c == 1 {
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, hwc).ok_or_else(bad)?)
        } else {
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, hwc).ok_or_else(bad)?)
        });
    }
    Ok(out)
}

/// Tile same-sized images `nrow` to a row (default ceil(sqrt(B))), row-major, with
/// `GRID_PADDING` black pixels between and around them (torchvision's `make_grid` layout).
pub fn grid(images: &[DynamicImage], nrow: Option<usize>) -> Result<DynamicImage> {
    let first = images
        .first()
        .ok_or_else(|| Error::Invalid("cannot make a grid of no images".into()))?;
    let (w, h) = (first.width(), first.height());
    if let Some(other) = images
        .iter()
        .find(|i| (i.width(), i.height(), i.color()) != (w, h, first.color()))
    {
        return Err(Error::Invalid(format!(
            "grid images differ: {}x{} {:?} and {}x{} {:?}",
            w,
            h,
            first.color(),
            other.width(),
            other.height(),
            other.color()
        )));
    }
    let n = images.len();
    let default = (n as f64).sqrt().ceil() as usize;
    let cols = nrow.unwrap_or(default).clamp(1, n);
    let rows = n.div_ceil(cols);
    let p = GRID_PADDING;
    let gw = cols as u32 * (w + p) + p;
    let gh = rows as u32 * (h + p) + p;
    let mut out = match first {
        DynamicImage::ImageLuma8(_) => DynamicImage::new_luma8(gw, gh),
        _ => DynamicImage::new_rgb8(gw, gh),
    };
    for (k, img) in images.iter().enumerate() {
        let x = p + (k % cols) as u32 * (w + p);
        let y = p + (k / cols) as u32 * (h + p);
        let img = match first {
            DynamicImage::ImageLuma8(_) => img.clone(),
            _ => DynamicImage::ImageRgb8(img.to_rgb8()),
        };
        out.copy_from(&img, x, y)
            .map_err(|e| Error::Invalid(format!("grid: {e}")))?;
    }
    Ok(out)
}

/// Each pixel repeated `factor` times in both directions (nearest neighbour), so 8x8 digits
/// are visible; factor 1 returns a copy.
pub fn upscale(img: &DynamicImage, factor: u32) -> DynamicImage {
    let f = factor.max(1);
    img.resize_exact(img.width() * f, img.height() * f, FilterType::Nearest)
}

/// The image as PNG bytes (for stdout or a file).
pub fn encode_png(img: &DynamicImage) -> Result<Vec<u8>> {
    encode(img, ImageFormat::Png)
}

/// `img` encoded as `format` (PNG, JPEG, WebP, BMP, ...: the formats this build of `image`
/// writes).
pub fn encode(img: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, format)
        .map_err(|e| Error::Invalid(format!("cannot encode {format:?}: {e}")))?;
    Ok(bytes.into_inner())
}

/// Save `img` as PNG at `path`, atomically.
pub fn save_png(img: &DynamicImage, path: &Path) -> Result<()> {
    save(img, path, ImageFormat::Png)
}

/// Save `img` as `format` at `path`, atomically.
pub fn save(img: &DynamicImage, path: &Path, format: ImageFormat) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    crate::atomic::write(path, &encode(img, format)?)
}

/// NumPy .npy v1.0 bytes: magic, header dict `{'descr': '<f4', 'fortran_order': False,
/// 'shape': (...), }` padded with spaces to a 64-byte boundary and ended by '\n', then the
/// values as little-endian f32 in C order, unchanged.
pub fn encode_npy(x: &Tensor) -> Result<Vec<u8>> {
    let values: Vec<f32> = x
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let mut out = npy_header("<f4", x.dims(), 4 * values.len())?;
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// The .npy v1.0 header for an array of `dims` in C order with numpy type `descr` (e.g.
/// `<f8`), in a buffer with room for `payload` more bytes.
pub fn npy_header(descr: &str, dims: &[usize], payload: usize) -> Result<Vec<u8>> {
    let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(64) - unpadded,
    ));
    header.push('\n');
    let len = u16::try_from(header.len())
        .map_err(|_| Error::Invalid(format!("npy header for shape {shape} is too long")))?;
    let mut out = Vec::with_capacity(10 + header.len() + payload);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    Ok(out)
}

/// One image file as a (1, C, H, W) CPU tensor in [-1, 1], preprocessed exactly like a folder
/// dataset's examples (luma or RGB, shorter-side resize, centre crop, x = v / 127.5 - 1).
pub fn load_image(path: &Path, channels: usize, size: ImageSize) -> Result<Tensor> {
    let img = transform::decode(path)?;
    transform::check_size(path, (img.width(), img.height()), size)?;
    let bytes = transform::fit(&img, channels, size, FILTER);
    let mut x = vec![0f32; bytes.len()];
    transform::to_signed(&bytes, size, false, &mut x);
    Ok(Tensor::from_vec(
        x,
        (1, channels, size.height, size.width),
        &Device::Cpu,
    )?)
}

/// A mask file as a (1, 1, H, W) CPU tensor of 0s and 1s: white (luma >= 128) = 1. Any size is
/// accepted; it is fitted like an image (shorter side, centre crop) with nearest-neighbour
/// sampling, so edges stay hard.
pub fn load_mask(path: &Path, size: ImageSize) -> Result<Tensor> {
    let img = transform::decode(path)?;
    let bytes = transform::fit(&img, 1, size, FilterType::Nearest);
    let m: Vec<f32> = bytes
        .iter()
        .map(|&v| f32::from(u8::from(v >= 128)))
        .collect();
    Ok(Tensor::from_vec(
        m,
        (1, 1, size.height, size.width),
        &Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GenericImageView, Luma};

    #[test]
    fn quantize_rounds_and_clamps() {
        assert_eq!(quantize(-1.0), 0);
        assert_eq!(quantize(1.0), 255);
        // (0 + 1) * 127.5 = 127.5 rounds half away from zero.
        assert_eq!(quantize(0.0), 128);
        assert_eq!(quantize(-3.0), 0);
        assert_eq!(quantize(7.0), 255);
        assert_eq!(quantize(f32::NAN), 0);
        for v in 0..=255u8 {
            assert_eq!(quantize(v as f32 / 127.5 - 1.0), v);
        }
    }

    #[test]
    fn png_round_trips_the_quantised_values() {
        // (2, 3, 2, 4): value k of 48 is k * 5 / 127.5 - 1, i.e. byte 5k.
        let x: Vec<f32> = (0..48).map(|k| (5 * k) as f32 / 127.5 - 1.0).collect();
        let t = Tensor::from_vec(x, (2, 3, 2, 4), &Device::Cpu).unwrap();
        let imgs = to_images(&t).unwrap();
        assert_eq!(imgs.len(), 2);
        let png = encode_png(&imgs[1]).unwrap();
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (4, 2));
        for c in 0..3 {
            for y in 0..2 {
                for xx in 0..4 {
                    let k = 24 + c * 8 + y * 4 + xx;
                    assert_eq!(back.get_pixel(xx as u32, y as u32)[c], (5 * k) as u8);
                }
            }
        }
        let two = Tensor::zeros((1, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(to_images(&two).is_err());
    }

    #[test]
    fn save_png_writes_atomically_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/deep/img.png");
        let img =
            DynamicImage::ImageLuma8(GrayImage::from_fn(3, 2, |x, y| Luma([(x + 10 * y) as u8])));
        save_png(&img, &path).unwrap();
        save_png(&img, &path).unwrap();
        let back = image::open(&path).unwrap().to_luma8();
        assert_eq!(back.into_raw(), vec![0, 1, 2, 10, 11, 12]);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn grid_has_the_torchvision_layout() {
        let imgs: Vec<DynamicImage> = (0..5u8)
            .map(|k| DynamicImage::ImageLuma8(GrayImage::from_pixel(8, 6, Luma([50 * k + 10]))))
            .collect();
        // 5 images: ceil(sqrt 5) = 3 per row, 2 rows; width 3 * (8 + 2) + 2, height 2 * (6 + 2) + 2.
        let g = grid(&imgs, None).unwrap();
        assert_eq!(g.dimensions(), (32, 18));
        assert_eq!(g.get_pixel(0, 0)[0], 0);
        assert_eq!(g.get_pixel(2, 2)[0], 10);
        assert_eq!(g.get_pixel(2 + 10 + 7, 2 + 5)[0], 60);
        assert_eq!(g.get_pixel(2, 2 + 8)[0], 160);
        assert_eq!(g.get_pixel(2 + 10, 2 + 8)[0], 210);
        assert_eq!(g.get_pixel(2 + 20, 2 + 8)[0], 0, "the sixth cell is empty");
        assert_eq!(grid(&imgs, Some(5)).unwrap().dimensions(), (52, 10));
        assert_eq!(grid(&imgs, Some(1)).unwrap().dimensions(), (12, 42));
        let big = upscale(&g, 4);
        assert_eq!(big.dimensions(), (128, 72));
        assert_eq!(big.get_pixel(4 * 12 + 3, 4 * 10)[0], 210);
        assert_eq!(big.get_pixel(4 * 12 - 1, 4 * 10)[0], 0);
        assert!(grid(&[], None).is_err());
        let odd = DynamicImage::ImageLuma8(GrayImage::new(7, 6));
        assert!(grid(&[imgs[0].clone(), odd], None).is_err());
    }

    #[test]
    fn npy_header_parses_and_data_round_trips() {
        let x: Vec<f32> = (0..120).map(|k| k as f32 * 0.25 - 7.0).collect();
        let t = Tensor::from_vec(x.clone(), (2, 3, 4, 5), &Device::Cpu).unwrap();
        let bytes = encode_npy(&t).unwrap();
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        assert_eq!(&bytes[6..8], &[1, 0]);
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.ends_with('\n'));
        assert_eq!(
            header.trim_end(),
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4, 5), }"
        );
        let data: Vec<f32> = bytes[10 + len..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(data, x);
        let one = Tensor::from_vec(vec![1f32, 2.0], 2, &Device::Cpu).unwrap();
        let bytes = encode_npy(&one).unwrap();
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len, bytes.len()), (128, 128 + 8));
        assert!(String::from_utf8_lossy(&bytes[10..10 + len]).contains("'shape': (2,), }"));
    }

    #[test]
    fn load_image_and_mask_follow_the_training_preprocessing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("half.png");
        // 12x8: left half white, right half black; fitted to 4x4 via 6x4 and a 1-pixel crop.
        let img = GrayImage::from_fn(12, 8, |x, _| Luma([if x < 6 { 255 } else { 0 }]));
        img.save(&path).unwrap();
        let mask: Vec<f32> = load_mask(&path, ImageSize::square(4))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&mask[..4], &[1.0, 1.0, 0.0, 0.0]);
        assert_eq!(mask.iter().sum::<f32>(), 8.0);
        let x = load_image(&path, 3, ImageSize::square(4)).unwrap();
        assert_eq!(x.dims(), &[1, 3, 4, 4]);
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(x[0] > 0.9 && x[3] < -0.9, "{} {}", x[0], x[3]);
        assert_eq!(&x[..16], &x[16..32], "grey replicated to RGB");
        let err = load_image(&path, 1, ImageSize::square(16))
            .unwrap_err()
            .to_string();
        assert!(err.contains("half.png") && err.contains("12x8"), "{err}");
    }
}

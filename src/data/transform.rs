//! One image file to training values, shared by the folder dataset and `images::load_image`:
//! decode, convert to luma or RGB (alpha dropped), resize on the shorter side, centre-crop, then
//! scale u8 to [-1, 1] with an optional horizontal flip. Which files, in what order, is
//! `folder`'s business; batching is `loader`'s.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageBuffer, ImageReader, Pixel};

use super::config::ImageSize;
use crate::error::{Error, Result};
use crate::limits;

/// Downscaling filter for training images: bicubic (Catmull-Rom, PIL's BICUBIC), whose support
/// the `image` crate widens with the scale factor, so downscaling is antialiased.
pub const FILTER: FilterType = FilterType::CatmullRom;

/// The image file at `path`, its format guessed from the content, not the extension; a pipe or
/// device is refused (a FIFO would block the open).
fn reader(path: &Path) -> std::io::Result<ImageReader<BufReader<File>>> {
    ImageReader::new(BufReader::new(limits::open_file(path)?)).with_guessed_format()
}

/// The header's (width, height), read without decoding the pixels.
pub fn dimensions(path: &Path) -> Result<(u32, u32)> {
    reader(path)
        .map_err(|e| Error::Data(format!("{}: cannot open image: {e}", path.display())))?
        .into_dimensions()
        .map_err(|e| Error::Data(format!("{}: cannot read image header: {e}", path.display())))
}

/// Decode the whole image; the format is guessed from the content, not the extension.
pub fn decode(path: &Path) -> Result<DynamicImage> {
    reader(path)
        .map_err(|e| Error::Data(format!("{}: cannot open image: {e}", path.display())))?
        .decode()
        .map_err(|e| Error::Data(format!("{}: cannot decode image: {e}", path.display())))
}

/// Fail when a (width, height) image would have to be upscaled to cover `size`.
pub fn check_size(path: &Path, (width, height): (u32, u32), size: ImageSize) -> Result<()> {
    if (width as usize) < size.width || (height as usize) < size.height {
        return Err(Error::Data(format!(
            "{} is {width}x{height} pixels, smaller than data.image_size {size}; \
             use a smaller image_size or remove the file",
            path.display()
        )));
    }
    Ok(())
}

/// The size an image of (width, height) is resized to before the centre crop: scaled by
/// s = max(H / height, W / width), so the shorter side (relative to the target) matches it and
/// the other side covers it; returned as (width, height).
pub fn cover((width, height): (u32, u32), size: ImageSize) -> (u32, u32) {
    let s = (size.height as f64 / height as f64).max(size.width as f64 / width as f64);
    let rw = ((width as f64 * s).round() as u32).max(size.width as u32);
    let rh = ((height as f64 * s).round() as u32).max(size.height as u32);
    (rw, rh)
}

/// Convert to `channels` (1 = luma, Rec. 709 weights; 3 = RGB; alpha dropped), resize with
/// `filter` to `cover(..)`, centre-crop to `size`; returns C*H*W bytes in CHW order.
pub fn fit(img: &DynamicImage, channels: usize, size: ImageSize, filter: FilterType) -> Vec<u8> {
    if channels == 1 {
        fit_buffer(&img.to_luma8(), size, filter)
    } else {
        fit_buffer(&img.to_rgb8(), size, filter)
    }
}

fn fit_buffer<P>(img: &ImageBuffer<P, Vec<u8>>, size: ImageSize, filter: FilterType) -> Vec<u8>
where
    P: Pixel<Subpixel = u8> + 'static,
{
    let (rw, rh) = cover(img.dimensions(), size);
    let resized = imageops::resize(img, rw, rh, filter);
    let (w, h) = (size.width as u32, size.height as u32);
    let x0 = (rw - w) / 2;
    let y0 = (rh - h) / 2;
    let c = P::CHANNEL_COUNT as usize;
    let mut out = vec![0u8; c * size.area()];
    for y in 0..h {
        for x in 0..w {
            let px = resized.get_pixel(x0 + x, y0 + y).channels();
            let at = y as usize * size.width + x as usize;
            for (ch, &v) in px.iter().enumerate() {
                out[ch * size.area() + at] = v;
            }
        }
    }
    out
}

/// x = v / 127.5 - 1 for each byte v of a CHW image, mirrored left-right when `flip`.
/// `src` and `out` both hold C*H*W values.
pub fn to_signed(src: &[u8], size: ImageSize, flip: bool, out: &mut [f32]) {
    let w = size.width;
    for (row_in, row_out) in src.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
        for (x, o) in row_out.iter_mut().enumerate() {
            let v = if flip { row_in[w - 1 - x] } else { row_in[x] };
            *o = v as f32 / 127.5 - 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    #[test]
    fn cover_matches_the_shorter_side_and_covers_the_other() {
        // 40x30 -> 16x16: s = 16/30, 40 * 16/30 = 21.33 -> 21.
        assert_eq!(cover((40, 30), ImageSize::square(16)), (21, 16));
        assert_eq!(cover((30, 40), ImageSize::square(16)), (16, 21));
        assert_eq!(cover((16, 16), ImageSize::square(16)), (16, 16));
        let tall = ImageSize {
            height: 20,
            width: 10,
        };
        // s = max(20/40, 10/40) = 0.5.
        assert_eq!(cover((40, 40), tall), (20, 20));
    }

    #[test]
    fn fit_crops_the_centre() {
        // 60x20 -> 10x10 scales by 1/2 to 30x10 and keeps source columns 20..40 (white); the
        // black thirds on either side are cropped away, up to the filter's reach at the edges.
        let img = RgbImage::from_fn(60, 20, |x, _| {
            if (20..40).contains(&x) {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            }
        });
        let out = fit(
            &DynamicImage::ImageRgb8(img),
            1,
            ImageSize::square(10),
            FILTER,
        );
        assert_eq!(out.len(), 100);
        for y in 0..10 {
            for x in 2..8 {
                assert_eq!(out[y * 10 + x], 255, "({x}, {y})");
            }
        }
        let mean = out.iter().map(|&v| v as f64).sum::<f64>() / 100.0;
        assert!(
            mean > 200.0,
            "mean {mean}: the black thirds were not cropped"
        );
    }

    #[test]
    fn channels_convert_and_alpha_is_dropped() {
        let img = RgbaImage::from_pixel(4, 4, Rgba([255, 0, 0, 0]));
        let img = DynamicImage::ImageRgba8(img);
        let rgb = fit(&img, 3, ImageSize::square(4), FILTER);
        assert_eq!(&rgb[..16], &[255; 16]);
        assert_eq!(&rgb[16..], &[0; 32]);
        // Rec. 709 luma of pure red: floor(0.2126 * 255) = 54.
        let luma = fit(&img, 1, ImageSize::square(4), FILTER);
        assert_eq!(luma, vec![54; 16]);
    }

    #[test]
    fn to_signed_maps_exactly_and_flips() {
        let src = [0u8, 51, 255, 128];
        let size = ImageSize {
            height: 2,
            width: 2,
        };
        let mut out = [0f32; 4];
        to_signed(&src, size, false, &mut out);
        assert_eq!(out, [-1.0, 51.0 / 127.5 - 1.0, 1.0, 128.0 / 127.5 - 1.0]);
        assert!((out[1] + 0.6).abs() < 1e-7);
        to_signed(&src, size, true, &mut out);
        assert_eq!(out, [51.0 / 127.5 - 1.0, -1.0, 128.0 / 127.5 - 1.0, 1.0]);
    }
}

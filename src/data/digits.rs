//! The UCI handwritten digits, embedded in the binary: 1797 images of 8x8 pixels with values
//! 0..16 and labels 0..9 (E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten
//! Digits", UCI Machine Learning Repository, 1998; CC BY 4.0). A dataset small enough to train
//! on a CPU in minutes, with no files to fetch.

use image::imageops;
use image::{ImageBuffer, Luma};
use std::io::Read;

use super::config::ImageSize;
use super::transform::{cover, FILTER};
use super::Dataset;
use crate::error::{Error, Result};

/// gzip of 1797 CSV lines: 64 integers 0..16 (8x8, row-major), then the label 0..9.
const CSV_GZ: &[u8] = include_bytes!("digits.csv.gz");

/// Native side of a digit image.
pub const SIDE: usize = 8;
/// Largest pixel value in the source data.
const MAX_VALUE: u8 = 16;

/// The digits at a chosen size and channel count.
pub struct Digits {
    pixels: Vec<[u8; SIDE * SIDE]>,
    labels: Vec<u8>,
    size: ImageSize,
    channels: usize,
    names: Option<Vec<String>>,
}

impl Digits {
    /// Decode the embedded data. `channels` 3 replicates the luma; `class_labels` makes
    /// `example` return the digit.
    pub fn new(size: ImageSize, channels: usize, class_labels: bool) -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(CSV_GZ)
            .read_to_string(&mut text)
            .map_err(|e| Error::Data(format!("embedded digits: cannot decompress: {e}")))?;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let bad = || Error::Data(format!("embedded digits: line {} is malformed", n + 1));
            let values: Vec<u8> = line
                .split(',')
                .map(|v| v.trim().parse::<u8>().map_err(|_| bad()))
                .collect::<Result<_>>()?;
            if values.len() != SIDE * SIDE + 1
                || values[..SIDE * SIDE].iter().any(|&v| v > MAX_VALUE)
                || values[SIDE * SIDE] > 9
            {
                return Err(bad());
            }
            let mut img = [0u8; SIDE * SIDE];
            img.copy_from_slice(&values[..SIDE * SIDE]);
            pixels.push(img);
            labels.push(values[SIDE * SIDE]);
        }
        let names = class_labels.then(|| (0..10).map(|d| d.to_string()).collect());
        Ok(Digits {
            pixels,
            labels,
            size,
            channels,
            names,
        })
    }

    /// The digit shown by example `i`, whether or not labels are enabled.
    pub fn digit(&self, i: usize) -> Option<u8> {
        self.labels.get(i).copied()
    }
}

/// One channel from 8x8 values v in 0..16: x = v/8 - 1 at 8x8; otherwise y = v/16 resized
/// (bicubic, clamped to [0, 1]) to cover `size`, centre-cropped, then x = 2 y - 1.
fn render(src: &[u8; SIDE * SIDE], size: ImageSize, flip: bool, out: &mut [f32]) {
    let img = ImageBuffer::<Luma<f32>, _>::from_fn(SIDE as u32, SIDE as u32, |x, y| {
        Luma([src[y as usize * SIDE + x as usize] as f32 / MAX_VALUE as f32])
    });
    let (rw, rh) = cover((SIDE as u32, SIDE as u32), size);
    let resized = imageops::resize(&img, rw, rh, FILTER);
    let (w, h) = (size.width, size.height);
    let x0 = (rw as usize - w) / 2;
    let y0 = (rh as usize - h) / 2;
    for (y, row) in out.chunks_exact_mut(w).take(h).enumerate() {
        for (x, o) in row.iter_mut().enumerate() {
            let sx = if flip { w - 1 - x } else { x };
            let v = resized.get_pixel((x0 + sx) as u32, (y0 + y) as u32).0[0];
            *o = 2.0 * v - 1.0;
        }
    }
}

impl Dataset for Digits {
    fn len(&self) -> usize {
        self.pixels.len()
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn image_size(&self) -> ImageSize {
        self.size
    }

    fn example(&self, i: usize, flip: bool, out: &mut [f32]) -> Result<Option<u32>> {
        if i >= self.len() || out.len() != self.example_len() {
            return Err(Error::Invalid(format!(
                "digits example {i} into {} values: the dataset has {} examples of {} values",
                out.len(),
                self.len(),
                self.example_len()
            )));
        }
        let (first, rest) = out.split_at_mut(self.size.area());
        render(&self.pixels[i], self.size, flip, first);
        for ch in rest.chunks_exact_mut(self.size.area()) {
            ch.copy_from_slice(first);
        }
        Ok(self.names.as_ref().map(|_| self.labels[i] as u32))
    }

    fn num_classes(&self) -> Option<usize> {
        self.names.as_ref().map(Vec::len)
    }

    fn class_names(&self) -> Option<&[String]> {
        self.names.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first line of digits.csv.gz (`zcat src/data/digits.csv.gz | head -1`).
    const FIRST: [u8; 65] = [
        0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0,
        0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0,
        0, 6, 13, 10, 0, 0, 0, 0,
    ];

    #[test]
    fn all_examples_with_the_published_label_counts() {
        let d = Digits::new(ImageSize::square(8), 1, true).unwrap();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.num_classes(), Some(10));
        // zcat digits.csv.gz | awk -F, '{c[$65]++} END{for(k in c) print k, c[k]}' | sort -n
        let expected = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180];
        let mut counts = [0usize; 10];
        for i in 0..d.len() {
            counts[d.digit(i).unwrap() as usize] += 1;
        }
        assert_eq!(counts, expected);
    }

    #[test]
    fn first_example_is_the_first_csv_line_scaled() {
        let d = Digits::new(ImageSize::square(8), 1, true).unwrap();
        let mut out = vec![0f32; 64];
        let label = d.example(0, false, &mut out).unwrap();
        assert_eq!(label, Some(FIRST[64] as u32));
        let want: Vec<f32> = FIRST[..64].iter().map(|&v| v as f32 / 8.0 - 1.0).collect();
        assert_eq!(out, want);
        d.example(0, true, &mut out).unwrap();
        assert_eq!(out[2], want[5], "flip mirrors row 0");
        assert_eq!(out[8 + 2], want[8 + 5], "flip mirrors row 1");
    }

    #[test]
    fn rgb_replicates_luma_and_labels_are_optional() {
        let d = Digits::new(ImageSize::square(8), 3, false).unwrap();
        let mut out = vec![0f32; 3 * 64];
        assert_eq!(d.example(5, false, &mut out).unwrap(), None);
        assert_eq!(d.num_classes(), None);
        assert_eq!(&out[..64], &out[64..128]);
        assert_eq!(&out[..64], &out[128..]);
    }

    #[test]
    fn resizing_keeps_a_constant_image_constant() {
        let src = [12u8; 64];
        for side in [4, 13, 32] {
            let mut out = vec![0f32; side * side];
            render(&src, ImageSize::square(side), false, &mut out);
            for v in out {
                assert!((v - (12.0 / 8.0 - 1.0)).abs() < 1e-5, "{side}: {v}");
            }
        }
    }

    #[test]
    fn resized_digits_stay_in_range_and_keep_their_mass() {
        let native = Digits::new(ImageSize::square(8), 1, false).unwrap();
        let big = Digits::new(ImageSize::square(32), 1, false).unwrap();
        let mut a = vec![0f32; 64];
        let mut b = vec![0f32; 32 * 32];
        for i in [0, 1, 100, 1796] {
            native.example(i, false, &mut a).unwrap();
            big.example(i, false, &mut b).unwrap();
            assert!(b.iter().all(|v| (-1.0..=1.0).contains(v)));
            let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
            // Interpolation preserves the mean up to edge effects and clamping.
            assert!(
                (mean(&a) - mean(&b)).abs() < 0.05,
                "{} vs {}",
                mean(&a),
                mean(&b)
            );
            // Source pixel (x 2, y 1) becomes the 4x4 block x 8..12, y 4..8 at 32x32.
            let src = a[8 + 2];
            let up = b[(4 + 2) * 32 + 8 + 2];
            assert!((src - up).abs() < 0.5, "{src} vs {up}");
        }
        let mut small = vec![0f32; 16];
        let tiny = Digits::new(ImageSize::square(4), 1, false).unwrap();
        tiny.example(0, false, &mut small).unwrap();
        assert!(small.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

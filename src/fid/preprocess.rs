//! Images to Inception inputs exactly as pytorch-fid prepares them: PIL's `convert('RGB')`
//! (grey repeated to three channels, alpha dropped), `ToTensor` (v / 255), `F.interpolate` to
//! 299x299 (bilinear, align_corners=False, no antialiasing) and 2x - 1.

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use crate::error::Result;

/// The input side of the network.
pub const SIZE: usize = 299;

/// For each output index along an axis of `n_in` pixels resized to `n_out`: the two source
/// indices and their weights, as PyTorch's upsample_bilinear2d (align_corners=False):
/// src = max(s (o + 0.5) - 0.5, 0) with s = n_in / n_out in f32; i0 = floor(src),
/// i1 = min(i0 + 1, n_in - 1), l1 = src - i0, l0 = 1 - l1. Equal sizes copy.
fn axis(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            if n_in == n_out {
                return (o, o, 1.0, 0.0);
            }
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 + 1 < n_in { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// The (3, 299, 299) input of one RGB image:
/// x = 2 (h0 (w0 v00 + w1 v01) + h1 (w0 v10 + w1 v11)) - 1, v = byte / 255.
pub fn input(img: &RgbImage) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (xs, ys) = (axis(w, SIZE), axis(h, SIZE));
    let raw = img.as_raw();
    let mut out = vec![0f32; 3 * SIZE * SIZE];
    for c in 0..3 {
        let plane: Vec<f32> = raw
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&b| b as f32 / 255.0)
            .collect();
        let dst = &mut out[c * SIZE * SIZE..(c + 1) * SIZE * SIZE];
        for (oy, &(y0, y1, h0, h1)) in ys.iter().enumerate() {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for (ox, &(x0, x1, w0, w1)) in xs.iter().enumerate() {
                let v = h0 * (w0 * r0[x0] + w1 * r0[x1]) + h1 * (w0 * r1[x0] + w1 * r1[x1]);
                dst[oy * SIZE + ox] = 2.0 * v - 1.0;
            }
        }
    }
    out
}

/// A batch (B, 3, 299, 299) of `images` on `device`, prepared in parallel.
pub fn batch(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = images.par_iter().flat_map_iter(input).collect();
    Ok(Tensor::from_vec(
        values,
        (images.len(), 3, SIZE, SIZE),
        device,
    )?)
}

//! What `sample`, `interpolate` and `eval` hold besides the network, as `budget` parts — the
//! generated tensors, their 8-bit images upscaled by --scale, the encoded file — and the check
//! of the whole estimate before any work starts, so that `-n`, `--frames`, `--batch-size` or
//! `--scale` too large for the machine is an error naming the flag, not an aborted allocation.

use candle_core::Device;

use ddpm::budget::{Need, Part};
use ddpm::data::images::GRID_PADDING;
use ddpm::limits;

/// The largest PNG side the image crate and the format take (2^31 - 1 pixels).
const MAX_PNG_SIDE: u64 = (1 << 31) - 1;

/// Images of one size: `channels` x `height` x `width` values each.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    /// (C, H, W) from an example shape; vectors (D,) count as D x 1 x 1.
    pub fn of(example: &[usize]) -> Self {
        match *example {
            [c, h, w] => Shape {
                channels: c,
                height: h,
                width: w,
            },
            _ => Shape {
                channels: example.iter().product(),
                height: 1,
                width: 1,
            },
        }
    }

    fn values(&self) -> f64 {
        (self.channels * self.height * self.width) as f64
    }
}

/// `n` generated examples as f32 tensors (`copies` of them alive at once: the result, its
/// pieces, an encoded array).
pub fn tensors(what: &str, n: usize, shape: Shape, copies: f64, fix: &str) -> Part {
    Part::host(what, copies * 4.0 * n as f64 * shape.values(), fix)
}

/// `n` images laid out `cols` to a row (one image: cols = 1) and upscaled `scale` times: their
/// 8-bit pixels, the upscaled picture and its PNG encoding. An error when a side of the
/// picture passes what PNG can hold. `count` is the flag that sets `n` (`-n`, `--frames`).
pub fn picture(
    n: usize,
    cols: usize,
    shape: Shape,
    scale: u32,
    count: &str,
) -> anyhow::Result<Part> {
    let (cols, n) = (cols.clamp(1, n.max(1)) as u64, n.max(1) as u64);
    let rows = n.div_ceil(cols);
    let p = if n > 1 { u64::from(GRID_PADDING) } else { 0 };
    let s = u64::from(scale.max(1));
    let side = |count: u64, len: usize| {
        count
            .saturating_mul(len as u64 + p)
            .saturating_add(p)
            .saturating_mul(s)
    };
    let (w, h) = (side(cols, shape.width), side(rows, shape.height));
    let fix = match (scale > 1, n > 1) {
        (true, true) => format!("lower --scale or {count}"),
        (true, false) => "lower --scale".to_string(),
        (false, _) => format!("lower {count}"),
    };
    if w > MAX_PNG_SIDE || h > MAX_PNG_SIDE {
        anyhow::bail!(
            "the picture would be {w}x{h} pixels, more than PNG's {MAX_PNG_SIDE} a side; {fix}"
        );
    }
    let channels = shape.channels as f64;
    // The upscaled picture and its encoding dominate; the 8-bit images and the grid before
    // upscaling are counted as one more picture.
    let bytes = 3.0 * w as f64 * h as f64 * channels;
    Ok(Part::host(format!("the {w}x{h} picture"), bytes, fix))
}

/// Refuse `need` for `command` on `device` when it does not fit the memory available.
pub fn check(need: &Need, command: &str, device: &Device) -> anyhow::Result<()> {
    need.check(command, device, limits::available().as_ref())?;
    Ok(())
}

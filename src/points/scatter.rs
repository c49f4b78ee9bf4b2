//! Scatter plots of 2-D point sets as images: square panels side by side on one shared, equal-
//! aspect scale (so a true set and samples can be compared by eye), each point a small
//! translucent dot, each panel titled above (`plot::text`). Axes and ticks are left out on
//! purpose: the picture is for shape.

use image::{DynamicImage, Rgb, RgbImage};

use super::Points;
use crate::error::{Error, Result};
use crate::plot::text;

/// Dot colour (a blue) and how much one dot covers the pixels under it.
const DOT: [f64; 3] = [31.0, 90.0, 180.0];
const ALPHA: f64 = 0.35;
/// Margin around the points' bounding box, as a fraction of its larger side.
const MARGIN: f64 = 0.05;
/// Gap between panels, in pixels.
const GAP: u32 = 4;
/// The title band above the panels, in pixels.
const BAND: u32 = 14;

/// One `side` x `side` panel per (title, set), left to right, white on a light grey frame
/// under its title, all on the scale of the union of the sets' bounding boxes. The sets must
/// be 2-D and not all empty.
pub fn scatter(panels: &[(&str, &Points)], side: u32) -> Result<DynamicImage> {
    if panels.iter().any(|(_, p)| p.dim != 2) {
        return Err(Error::Invalid(
            "a scatter plot needs 2-D points; write CSV for other dimensions".into(),
        ));
    }
    let all = panels.iter().flat_map(|(_, p)| p.values.chunks_exact(2));
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for q in all {
        for k in 0..2 {
            lo[k] = lo[k].min(q[k]);
            hi[k] = hi[k].max(q[k]);
        }
    }
    if side < 8 || panels.is_empty() || !(lo[0].is_finite() && hi[0].is_finite()) {
        return Err(Error::Invalid(
            "a scatter plot needs at least one finite point and a side of 8 pixels".into(),
        ));
    }
    let span = (hi[0] - lo[0]).max(hi[1] - lo[1]).max(1e-9) * (1.0 + 2.0 * MARGIN);
    let centre = [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0];
    let n = panels.len() as u32;
    let width = n * side + (n - 1) * GAP;
    let mut img = RgbImage::from_pixel(width, BAND + side, Rgb([255, 255, 255]));
    let s = side as f64;
    for (k, (title, points)) in panels.iter().enumerate() {
        let x0 = k as u32 * (side + GAP);
        let centred = x0 as i64 + (side as i64 - text::width(title) as i64) / 2;
        text::draw(&mut img, centred.max(x0 as i64), 3, title, [40, 40, 40]);
        for y in 0..side {
            for x in 0..side {
                let edge = x == 0 || y == 0 || x == side - 1 || y == side - 1;
                let grey = if edge { 220 } else { 255 };
                img.put_pixel(x0 + x, BAND + y, Rgb([grey; 3]));
            }
        }
        for q in points.values.chunks_exact(2) {
            let px = ((q[0] - centre[0]) / span + 0.5) * s;
            // Image rows grow downwards; y grows upwards.
            let py = (0.5 - (q[1] - centre[1]) / span) * s;
            for (dx, dy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)] {
                let (x, y) = ((px + dx - 0.5).floor(), (py + dy - 0.5).floor());
                if x >= 1.0 && y >= 1.0 && x < s - 1.0 && y < s - 1.0 {
                    let p = img.get_pixel_mut(x0 + x as u32, BAND + y as u32);
                    for (v, dot) in p.0.iter_mut().zip(DOT) {
                        *v = (*v as f64 * (1.0 - ALPHA) + dot * ALPHA).round() as u8;
                    }
                }
            }
        }
    }
    Ok(DynamicImage::ImageRgb8(img))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_share_one_scale_and_dots_land_where_the_points_are() {
        let a = Points::new(2, vec![-1.0, -1.0]).unwrap();
        let b = Points::new(2, vec![1.0, 1.0]).unwrap();
        let img = scatter(&[("data", &a), ("samples", &b)], 64)
            .unwrap()
            .to_rgb8();
        assert_eq!(img.dimensions(), (2 * 64 + GAP, BAND + 64));
        // Span 2 * 1.1 = 2.2 over 64 px: (-1, -1) sits at px = (-1 / 2.2 + 0.5) * 64 = 2.9,
        // py = 64 - 2.9 = 61.1 in panel 0; (1, 1) at (61.1, 2.9) in panel 1; both below the
        // title band.
        let blue = |x: u32, y: u32| {
            let p = img.get_pixel(x, BAND + y).0;
            p[2] < 255 && p[0] < 200 && p[2] > p[0]
        };
        assert!(blue(2, 61) || blue(3, 61) || blue(2, 60) || blue(3, 60));
        assert!(blue(64 + GAP + 61, 3) || blue(64 + GAP + 60, 2));
        // Nothing drawn in the opposite corners.
        assert_eq!(img.get_pixel(60, BAND + 3).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(64 + GAP + 3, BAND + 60).0, [255, 255, 255]);
        // Each title is in the band above its panel: "data" (32 px) centred in panel 0 from
        // x = 16, "samples" (56 px) in panel 1 from x = 68 + 4.
        let ink = |x0: u32, x1: u32| {
            (x0..x1).any(|x| (0..BAND).any(|y| img.get_pixel(x, y).0 == [40, 40, 40]))
        };
        assert!(ink(16, 48) && !ink(0, 14) && !ink(50, 64));
        assert!(ink(72, 128) && !ink(64, 70));
        let three = Points::new(3, vec![0.0; 3]).unwrap();
        assert!(scatter(&[("x", &three)], 64).is_err());
    }
}

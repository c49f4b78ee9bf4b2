//! Labels on images in the public-domain 8x8 bitmap font of `font8x8` (basic Latin), drawn
//! pixel by pixel: plotters' own text needs a system font library (`ttf`) or a font file
//! (`ab_glyph`), and panics without one, so it is never asked to draw text here.

use font8x8::legacy::BASIC_LEGACY;
use image::{Rgb, RgbImage};

/// Width and height of one character, in pixels.
pub const CHAR: u32 = 8;

/// The width of `text` in pixels.
pub fn width(text: &str) -> u32 {
    CHAR * text.chars().count() as u32
}

/// Draw `text` with its top-left corner at (x, y) in `color`; pixels outside the image are
/// skipped. Characters outside basic Latin are drawn as '?'.
pub fn draw(img: &mut RgbImage, x: i64, y: i64, text: &str, color: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for (i, ch) in text.chars().enumerate() {
        let glyph = BASIC_LEGACY[if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        }];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                let (px, py) = (x + (i as i64) * 8 + col, y + row as i64);
                if bits >> col & 1 == 1 && (0..w).contains(&px) && (0..h).contains(&py) {
                    img.put_pixel(px as u32, py as u32, Rgb(color));
                }
            }
        }
    }
}

/// A number in at most 7 characters: 3 significant digits, scientific outside [0.01, 1e5).
pub fn number(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !v.is_finite() {
        format!("{v}")
    } else if (0.01..1e5).contains(&a) {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        match s.contains('.') {
            true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
            false => s,
        }
    } else {
        let e = a.log10().floor() as i32;
        let m = v / 10f64.powi(e);
        let m = format!("{m:.1}");
        format!("{}e{e}", m.trim_end_matches(".0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        let cases = [
            (0.0, "0"),
            (2e-4, "2e-4"),
            (1.5e-3, "1.5e-3"),
            (0.0231, "0.0231"),
            (0.5, "0.5"),
            (12.5, "12.5"),
            (1500.0, "1500"),
            (800000.0, "8e5"),
            (-0.25, "-0.25"),
        ];
        for (v, s) in cases {
            assert_eq!(number(v), s, "{v}");
        }
    }

    /// 'A' in font8x8 is rows 0x0C 0x1E 0x33 0x33 0x3F 0x33 0x33 0x00, bit 0 leftmost.
    #[test]
    fn glyphs_land_bit_by_bit_and_clip_at_the_edges() {
        let mut img = RgbImage::from_pixel(20, 10, Rgb([255, 255, 255]));
        draw(&mut img, 1, 1, "A", [0, 0, 0]);
        let on = |x: u32, y: u32| img.get_pixel(x, y).0 == [0, 0, 0];
        // Row 0 = 0x0C: columns 2 and 3.
        assert!(!on(1 + 1, 1) && on(1 + 2, 1) && on(1 + 3, 1) && !on(1 + 4, 1));
        // Row 4 = 0x3F: columns 0..5.
        assert!((0..6).all(|c| on(1 + c, 5)) && !on(1 + 6, 5));
        assert_eq!(width("AB"), 16);
        draw(&mut img, 15, 5, "AAAA", [0, 0, 0]);
        draw(&mut img, -100, -100, "?", [0, 0, 0]);
    }
}

//! Tests for `folder`, on images generated in a temp dir.

use std::path::Path;

use image::{DynamicImage, Rgb, RgbImage, Rgba, RgbaImage};

use super::*;

fn save(root: &Path, rel: &str, img: DynamicImage) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(&path).unwrap();
}

fn rgb(w: u32, h: u32, px: [u8; 3]) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, Rgb(px)))
}

fn open(root: &Path, side: usize, channels: usize, labels: bool) -> Result<ImageFolder> {
    ImageFolder::new(root, ImageSize::square(side), channels, labels, 2)
}

fn signed(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

#[test]
fn finds_every_format_recursively_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save(root, "w.webp", rgb(16, 16, [1, 2, 3]));
    save(root, "b/z.png", rgb(16, 16, [1, 2, 3]));
    save(root, "a/y.JPG", rgb(16, 16, [1, 2, 3]));
    save(root, "a/sub/x.bmp", rgb(16, 16, [1, 2, 3]));
    save(root, "c.gif", rgb(16, 16, [1, 2, 3]));
    save(root, ".hidden.png", rgb(16, 16, [1, 2, 3]));
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    let ds = open(root, 16, 3, false).unwrap();
    let files: Vec<String> = ds
        .files()
        .iter()
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .collect();
    assert_eq!(
        files,
        ["a/sub/x.bmp", "a/y.JPG", "b/z.png", "c.gif", "w.webp"]
    );
    assert_eq!(ds.len(), 5);
    assert!(ds.is_cached());
    assert_eq!(ds.num_classes(), None);
    let mut out = vec![0f32; 3 * 256];
    for i in 0..5 {
        assert_eq!(ds.example(i, false, &mut out).unwrap(), None);
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

#[test]
fn known_pixels_map_exactly_in_chw_order() {
    let dir = tempfile::tempdir().unwrap();
    let img = RgbImage::from_fn(4, 3, |x, y| Rgb([(10 * x + y) as u8, 200, (255 - x) as u8]));
    save(dir.path(), "a.png", DynamicImage::ImageRgb8(img));
    let size = ImageSize {
        height: 3,
        width: 4,
    };
    let ds = ImageFolder::new(dir.path(), size, 3, false, 1).unwrap();
    let mut out = vec![0f32; 3 * 12];
    ds.example(0, false, &mut out).unwrap();
    for y in 0..3 {
        for x in 0..4 {
            let at = y * 4 + x;
            assert_eq!(out[at], signed((10 * x + y) as u8));
            assert_eq!(out[12 + at], signed(200));
            assert_eq!(out[24 + at], signed((255 - x) as u8));
        }
    }
    let mut flipped = vec![0f32; 3 * 12];
    ds.example(0, true, &mut flipped).unwrap();
    assert_eq!(flipped[0], out[3]);
    assert_eq!(flipped[24 + 4 + 1], out[24 + 4 + 2]);
    // The cached second read gives the same values.
    let mut again = vec![0f32; 3 * 12];
    ds.example(0, false, &mut again).unwrap();
    assert_eq!(again, out);
}

#[test]
fn resizes_and_crops_to_the_image_size() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), "wide.png", rgb(40, 30, [200, 100, 50]));
    let ds = open(dir.path(), 16, 3, false).unwrap();
    let mut out = vec![0f32; 3 * 256];
    ds.example(0, false, &mut out).unwrap();
    // A constant image stays constant through any normalised filter.
    assert!(out[..256].iter().all(|&v| v == signed(200)));
    assert!(out[256..512].iter().all(|&v| v == signed(100)));
    assert!(out[512..].iter().all(|&v| v == signed(50)));
}

#[test]
fn luma_and_rgb_with_alpha_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let img = RgbaImage::from_pixel(8, 8, Rgba([255, 0, 0, 0]));
    save(dir.path(), "red.png", DynamicImage::ImageRgba8(img));
    let mut out = vec![0f32; 3 * 64];
    open(dir.path(), 8, 3, false)
        .unwrap()
        .example(0, false, &mut out)
        .unwrap();
    assert!(
        out[..64].iter().all(|&v| v == 1.0),
        "alpha 0 must not darken red"
    );
    assert!(out[64..].iter().all(|&v| v == -1.0));
    let mut luma = vec![0f32; 64];
    open(dir.path(), 8, 1, false)
        .unwrap()
        .example(0, false, &mut luma)
        .unwrap();
    // Rec. 709: floor(0.2126 * 255) = 54.
    assert!(luma.iter().all(|&v| v == signed(54)), "{}", luma[0]);
}

#[test]
fn labels_come_from_sorted_first_level_subfolders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save(root, "dog/1.png", rgb(8, 8, [0, 0, 0]));
    save(root, "cat/deep/2.png", rgb(8, 8, [0, 0, 0]));
    save(root, "cat/3.png", rgb(8, 8, [0, 0, 0]));
    save(root, "emu/4.png", rgb(8, 8, [0, 0, 0]));
    let ds = open(root, 8, 1, true).unwrap();
    assert_eq!(ds.class_names().unwrap(), ["cat", "dog", "emu"]);
    assert_eq!(ds.num_classes(), Some(3));
    let mut out = vec![0f32; 64];
    let labels: Vec<u32> = (0..ds.len())
        .map(|i| ds.example(i, false, &mut out).unwrap().unwrap())
        .collect();
    // Sorted files: cat/3.png, cat/deep/2.png, dog/1.png, emu/4.png.
    assert_eq!(labels, [0, 0, 1, 2]);

    save(root, "stray.png", rgb(8, 8, [0, 0, 0]));
    let err = open(root, 8, 1, true).err().unwrap().to_string();
    assert!(err.contains("stray.png"), "{err}");
    assert!(open(root, 8, 1, false).is_ok());
}

#[test]
fn missing_and_empty_folders_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let err = open(&missing, 8, 1, false).err().unwrap().to_string();
    assert!(err.contains("nowhere"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    std::fs::write(empty.join("readme.txt"), "x").unwrap();
    let err = open(&empty, 8, 1, false).err().unwrap().to_string();
    assert!(err.contains("empty") && err.contains("no images"), "{err}");
}

#[test]
fn corrupt_and_small_images_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save(root, "good.png", rgb(16, 16, [9, 9, 9]));
    std::fs::write(root.join("garbage.png"), b"definitely not a png").unwrap();
    let err = open(root, 16, 3, false).err().unwrap().to_string();
    assert!(err.contains("garbage.png"), "{err}");
    std::fs::remove_file(root.join("garbage.png")).unwrap();

    save(root, "tiny.png", rgb(12, 20, [9, 9, 9]));
    let err = open(root, 16, 3, false).err().unwrap().to_string();
    assert!(
        err.contains("tiny.png") && err.contains("12x20") && err.contains("16x16"),
        "{err}"
    );
    std::fs::remove_file(root.join("tiny.png")).unwrap();

    // A valid header with truncated pixel data passes open and fails at decode.
    let mut bytes = std::fs::read(root.join("good.png")).unwrap();
    bytes.truncate(bytes.len() / 2 + 20);
    std::fs::write(root.join("cut.png"), bytes).unwrap();
    let ds = open(root, 16, 3, false).unwrap();
    let cut = ds
        .files()
        .iter()
        .position(|p| p.ends_with("cut.png"))
        .unwrap();
    let mut out = vec![0f32; 3 * 256];
    let err = ds.example(cut, false, &mut out).unwrap_err().to_string();
    assert!(err.contains("cut.png"), "{err}");
}

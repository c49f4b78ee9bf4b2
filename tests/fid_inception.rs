//! The Inception network against pytorch-fid's: seeded weights, written to a safetensors file
//! and read back as a user's weights file would be, give the pool3 features that pytorch-fid's
//! own `InceptionV3` computes for the same 8 images with the same weights
//! (tests/fixtures/fid/seeded_features.npy, written by benches/fid/reference.py, which loads
//! these weights through `cargo bench --bench fid_seeded_weights`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use ddpm::data::transform;
use ddpm::fid::inception::Inception;
use ddpm::fid::inputs::image_features;
use ddpm::fid::seeded::{self, TEST_SEED};
use ddpm::fid::weights::{self, FileSource};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid")
}

#[test]
fn seeded_features_match_pytorch_fid_within_1e4() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seeded.safetensors");
    let (_, drawn) = seeded::network(TEST_SEED, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&drawn, &file).unwrap();
    let net = Inception::new(&mut FileSource::open(&file).unwrap(), &Device::Cpu).unwrap();

    let want = Tensor::read_npy(fixtures().join("seeded_features.npy")).unwrap();
    let want: Vec<Vec<f32>> = want.to_vec2().unwrap();
    let images: Vec<_> = (0..want.len())
        .map(|i| {
            let p = fixtures().join(format!("images/{i}.png"));
            transform::decode(&p).unwrap().to_rgb8()
        })
        .collect();
    // One batch of all eight (sizes differ; each is resized to 299 first).
    let got = image_features(&net, &images).unwrap();
    for (i, want) in want.iter().enumerate() {
        let got = &got[i * 2048..(i + 1) * 2048];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let err = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((g - *w as f64).abs()));
        assert!(
            err <= 1e-4 * scale,
            "image {i}: max |diff| {err} for max |feature| {scale}"
        );
    }
    // The seeded weights keep the features alive and different between images: not all zero,
    // finite, and varying across the 8 images by more than rounding.
    let mean = got.iter().sum::<f64>() / got.len() as f64;
    assert!(
        mean > 0.1 && mean < 100.0 && got.iter().all(|v| v.is_finite()),
        "mean {mean}"
    );
    let spread: f64 = (0..2048)
        .map(|j| {
            let col: Vec<f64> = (0..8).map(|i| got[i * 2048 + j]).collect();
            let m = col.iter().sum::<f64>() / 8.0;
            (col.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 8.0).sqrt()
        })
        .sum::<f64>()
        / 2048.0;
    assert!(
        spread > 0.01 * mean,
        "features hardly vary between images: {spread} vs mean {mean}"
    );
}

#[test]
fn both_pytorch_formats_read_the_same_tensors_as_safetensors() {
    // torch.save of the first layer's five tensors, in the zip format and in the legacy format
    // of pytorch-fid's weights file (written by benches/fid/reference.py from these seeds).
    let (_, drawn) = seeded::network(TEST_SEED, &Device::Cpu).unwrap();
    for name in ["torch_zip.pth", "torch_legacy.pth"] {
        let read = weights::read(&fixtures().join(name)).unwrap();
        let keys: Vec<_> = read
            .keys()
            .filter(|k| !k.ends_with("num_batches_tracked"))
            .collect();
        assert_eq!(keys.len(), 5, "{name}: {keys:?}");
        for key in keys {
            let (a, b) = (&read[key], &drawn[key]);
            assert_eq!(a.dims(), b.dims(), "{name} {key}");
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{name} {key}");
        }
    }
}

//! What makes a loaded checkpoint trustworthy, through `save` and `load`: the checksum, the
//! refusal of non-finite weights, and the validation of the stored config.

use std::collections::HashMap;
use std::fs;

use candle_core::{DType, Tensor};

use std::collections::BTreeMap;

use super::tests::{assert_load_fails, bits, cpu, meta, sample_tensors};
use super::*;

/// The header's JSON text and the offset of its first byte in `bytes`.
fn header_of(bytes: &[u8]) -> (String, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (String::from_utf8(bytes[8..8 + n].to_vec()).unwrap(), 8)
}

/// `bytes` with its header text replaced by `header` (of the same length).
fn with_header(bytes: &[u8], header: &str) -> Vec<u8> {
    let (old, at) = header_of(bytes);
    assert_eq!(old.len(), header.len());
    let mut out = bytes.to_vec();
    out[at..at + header.len()].copy_from_slice(header.as_bytes());
    out
}

#[test]
fn a_damaged_or_edited_checkpoint_fails_its_checksum_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let mut tensors = sample_tensors();
    // Two tensors of one shape and dtype: swapping their offsets gives a file safetensors reads.
    tensors.push((
        "model.a".into(),
        Tensor::new(&[1f32, 2., 3.], &cpu()).unwrap(),
    ));
    tensors.push((
        "model.b".into(),
        Tensor::new(&[4f32, 5., 6.], &cpu()).unwrap(),
    ));
    save(&good, &tensors, &meta("[optim]\nlr = 1e-4\n")).unwrap();
    let bytes = fs::read(&good).unwrap();
    let ck = load(&good).unwrap();
    assert!(ck.verified && ck.notice().is_none());
    assert!(!ck.metadata.contains_key(META_CHECKSUM));

    let bad = dir.path().join("bad.safetensors");
    let mismatch = |b: &[u8]| {
        fs::write(&bad, b).unwrap();
        assert_load_fails(&bad, "checksum mismatch");
    };
    // One bit of the last tensor byte.
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    mismatch(&flipped);
    // The config edited in place.
    let (header, _) = header_of(&bytes);
    mismatch(&with_header(&bytes, &header.replace("1e-4", "1e-3")));
    // model.a's and model.b's data swapped through their offsets.
    let offsets = |name: &str| {
        let at = header.find(&format!("\"{name}\":")).unwrap();
        let from = at + header[at..].find("\"data_offsets\":[").unwrap() + 16;
        let to = from + header[from..].find(']').unwrap();
        header[from..to].to_string()
    };
    let (a, b) = (offsets("model.a"), offsets("model.b"));
    let swapped = header
        .replace(&format!("[{a}]"), "[A]")
        .replace(&format!("[{b}]"), &format!("[{a}]"))
        .replace("[A]", &format!("[{b}]"));
    assert_ne!(swapped, header);
    mismatch(&with_header(&bytes, &swapped));
    // A checksum that is not one.
    let sum_at = header.find("\"crc32:").unwrap() + 1;
    let mut forged = header.clone();
    forged.replace_range(sum_at..sum_at + 5, "sha01");
    fs::write(&bad, with_header(&bytes, &forged)).unwrap();
    assert_load_fails(&bad, "not of the form crc32:");
}

#[test]
fn a_checkpoint_without_a_checksum_loads_unverified_with_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.safetensors");
    let mut m: HashMap<String, String> = meta("x").into_iter().collect();
    m.insert(META_FORMAT.into(), FORMAT.into());
    write_atomic(&old, &encode_raw(&old, &sample_tensors(), m).unwrap()).unwrap();
    let ck = load(&old).unwrap();
    assert!(!ck.verified);
    let notice = ck.notice().unwrap();
    assert!(
        notice.contains("old.safetensors") && notice.contains("no checksum"),
        "{notice}"
    );
    for (name, t) in &sample_tensors() {
        assert_eq!(bits(&ck.tensors[name]), bits(t), "{name}");
    }
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.safetensors");
    for (dtype, bad) in [
        (DType::F32, f32::NAN),
        (DType::F32, f32::NEG_INFINITY),
        (DType::BF16, f32::INFINITY),
        (DType::F16, f32::NAN),
        (DType::F64, f32::NAN),
    ] {
        let t = Tensor::new(&[0.5f32, -2.0, bad, 1.0], &cpu())
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let mut tensors = sample_tensors();
        tensors.push(("ema.conv_in.weight".into(), t));
        save(&path, &tensors, &meta("x")).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("nan.safetensors")
                && e.contains("`ema.conv_in.weight`")
                && e.contains("element 2"),
            "{dtype:?}: {e}"
        );
    }
    // The largest finite values are fine.
    let t = Tensor::new(&[f32::MAX, f32::MIN, f32::MIN_POSITIVE], &cpu()).unwrap();
    save(&path, &[("model.w".into(), t)], &meta("x")).unwrap();
    load(&path).unwrap();
}

/// A stored config is validated like a config file, and its errors name the checkpoint:
/// a forged T of 1e9 once allocated the schedule's arrays when sampling (an abort).
#[test]
fn a_stored_config_past_the_limits_is_refused_naming_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forged.safetensors");
    let tiny =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/tiny.toml")).unwrap();
    for (text, want) in [
        (
            tiny.replace("timesteps = 100", "timesteps = 1000000000"),
            "diffusion.timesteps = 1000000000",
        ),
        (
            tiny.replace(
                "[model]",
                "[model]
width = 3",
            ),
            "width",
        ),
    ] {
        let meta = BTreeMap::from([(META_CONFIG.to_string(), text)]);
        let t = Tensor::zeros(2, DType::F32, &cpu()).unwrap();
        save(&path, &[("model.x".into(), t)], &meta).unwrap();
        let ckpt = load(&path).unwrap();
        let e = ckpt.stored_config().unwrap_err().to_string();
        assert!(e.contains("forged.safetensors") && e.contains(want), "{e}");
    }
}

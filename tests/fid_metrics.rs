//! FID and KID against the reference implementations on fixed feature sets, and pytorch-fid's
//! statistics files in both directions. Expected values: tests/fixtures/fid/expected.json,
//! written by benches/fid/reference.py with pytorch-fid 0.3.0 and torch-fidelity 0.3.0.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use ddpm::fid::kid::{kid, mmd2_unbiased};
use ddpm::fid::npz;
use ddpm::fid::stats::{frechet_distance, Features, Statistics};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid")
}

fn expected(key: &str) -> f64 {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in expected.json"))
}

/// The two fixed feature sets (200, 24), float64.
fn sets() -> (Features, Features) {
    let arrays = Tensor::read_npz(fixtures().join("sets.npz")).unwrap();
    let get = |name: &str| {
        let t = &arrays.iter().find(|(n, _)| n == name).unwrap().1;
        Features::new(
            t.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            t.dim(1).unwrap(),
        )
        .unwrap()
    };
    (get("a"), get("b"))
}

fn assert_rel(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs(),
        "{what}: {got} vs {want}"
    );
}

#[test]
fn fid_of_fixed_sets_matches_pytorch_fid() {
    let (a, b) = sets();
    let (sa, sb) = (
        Statistics::from_features(&a).unwrap(),
        Statistics::from_features(&b).unwrap(),
    );
    assert_rel(
        frechet_distance(&sa, &sb).unwrap(),
        expected("fid_sets"),
        1e-6,
        "FID",
    );
    // And FID(a, a) = 0: tr sqrt(S S) = tr S.
    assert!(frechet_distance(&sa, &sa).unwrap().abs() < 1e-9 * sa.trace());
}

#[test]
fn kid_of_fixed_sets_matches_torch_fidelity() {
    let (a, b) = sets();
    // Subsets of the whole set: every subset is a permutation of it, so the value does not
    // depend on which rows are drawn, and the spread over subsets is zero.
    let k = kid(&a, &b, 3, 200, 0).unwrap();
    assert_rel(k.mean, expected("kid_sets_mean"), 1e-6, "KID");
    assert!(k.std <= 1e-9 * k.mean, "std {}", k.std);
    assert_eq!((k.subsets, k.subset_size), (3, 200));
    let first = |f: &Features| f.data[..100 * f.dim].to_vec();
    let m = mmd2_unbiased(&first(&a), &first(&b), 100, a.dim);
    assert_rel(
        m,
        expected("mmd2_first100"),
        1e-6,
        "MMD^2 of the first 100 rows",
    );
    // A subset size above the sample count is capped at it (clean-fid); random subsets of 50
    // scatter around the full-set value with a positive spread.
    assert_eq!(kid(&a, &b, 2, 5000, 0).unwrap().subset_size, 200);
    let small = kid(&a, &b, 20, 50, 0).unwrap();
    assert!(
        small.std > 0.0 && (small.mean - k.mean).abs() < 4.0 * small.std,
        "{small:?} vs {k:?}"
    );
}

#[test]
fn a_statistics_file_written_by_pytorch_fid_loads() {
    // pytorch_fid_64.npz: save_fid_stats (np.savez_compressed) of 80 images, 64-d features.
    let s = npz::read_stats(&fixtures().join("pytorch_fid_64.npz")).unwrap();
    assert_eq!(s.dim, 64);
    let shifted = npz::read_stats(&fixtures().join("shifted.npz")).unwrap();
    assert_rel(
        frechet_distance(&s, &shifted).unwrap(),
        expected("fid_stats_64"),
        1e-6,
        "FID of the 64-d files",
    );
}

#[test]
fn written_statistics_read_back_exactly_in_numpy_layout() {
    let (a, _) = sets();
    let s = Statistics::from_features(&a).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.npz");
    npz::write_stats(&path, &s).unwrap();
    assert_eq!(npz::read_stats(&path).unwrap(), s);
    // The members numpy's np.load(path)["mu"] reads: mu.npy and sigma.npy, float64 arrays of
    // shapes (24,) and (24, 24) (checked in numpy by benches/fid/reference.py).
    let arrays = Tensor::read_npz(&path).unwrap();
    let shapes: Vec<(String, Vec<usize>, candle_core::DType)> = arrays
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec(), t.dtype()))
        .collect();
    assert_eq!(
        shapes,
        vec![
            ("mu".into(), vec![24], candle_core::DType::F64),
            ("sigma".into(), vec![24, 24], candle_core::DType::F64)
        ]
    );
}

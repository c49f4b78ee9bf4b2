use super::run_dir::save_step;
use super::*;
use crate::atomic::temp_path;
use crate::rng::{Purpose, Stream};
use candle_nn::Init;
use std::fs;

pub(super) fn cpu() -> Device {
    Device::Cpu
}

pub(super) fn meta(config: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (META_CONFIG.to_string(), config.to_string()),
        (META_SEED.to_string(), "17".to_string()),
    ])
}

pub(super) fn sample_tensors() -> Vec<(String, Tensor)> {
    let mut s = Stream::new(11, Purpose::Eval, 0);
    let w = s.randn((3, 4), &cpu()).unwrap();
    vec![
        ("model.down.0.weight".into(), w.clone()),
        ("ema.down.0.weight".into(), w.to_dtype(DType::BF16).unwrap()),
        ("optim.step".into(), Tensor::new(42i64, &cpu()).unwrap()),
        (
            "model.bytes".into(),
            Tensor::new(&[1u8, 2, 255], &cpu()).unwrap(),
        ),
        // A transposed (non-contiguous) view must be stored as its logical values.
        ("model.t".into(), w.t().unwrap()),
    ]
}

/// The raw bits of a tensor, whatever its dtype (bf16 -> f32 is exact).
pub(super) fn bits(t: &Tensor) -> (DType, Vec<usize>, Vec<u64>) {
    let flat = t.flatten_all().unwrap();
    let v: Vec<u64> = match t.dtype() {
        DType::F32 | DType::BF16 => flat
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::I64 => flat
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&x| x as u64)
            .collect(),
        DType::U8 => flat
            .to_vec1::<u8>()
            .unwrap()
            .iter()
            .map(|&x| x as u64)
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    };
    (t.dtype(), t.dims().to_vec(), v)
}

pub(super) fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_is_bit_identical_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let tensors = sample_tensors();
    save(&path, &tensors, &meta("[train]\nlr = 1e-4\n")).unwrap();
    assert_eq!(names_in(dir.path()), vec!["c.safetensors"]);

    let ck = load(&path).unwrap();
    assert_eq!(ck.tensors.len(), tensors.len());
    for (name, t) in &tensors {
        assert_eq!(bits(&ck.tensors[name]), bits(t), "{name}");
    }
    let mut want = meta("[train]\nlr = 1e-4\n");
    want.insert(META_FORMAT.into(), FORMAT.into());
    assert_eq!(ck.metadata, want);
    assert_eq!(ck.config().unwrap(), "[train]\nlr = 1e-4\n");
    let e = ck.step().unwrap_err().to_string();
    assert!(e.contains("c.safetensors") && e.contains("`step`"), "{e}");
}

#[test]
fn equal_checkpoints_are_equal_bytes() {
    // Six metadata keys: safetensors' HashMap order (a fresh random hasher per encode) would
    // put them in one of 720 orders each time.
    let mut metadata = meta("[train]\nlr = 1e-4\n");
    for (k, v) in [
        ("step", "7"),
        ("parameters", "60"),
        ("zeta", "z"),
        ("alpha", "a"),
    ] {
        metadata.insert(k.into(), v.into());
    }
    let path = Path::new("c.safetensors");
    let first = encode(path, &sample_tensors(), &metadata).unwrap();
    for _ in 0..8 {
        assert!(encode(path, &sample_tensors(), &metadata).unwrap() == first);
    }
    // Sorted, and still a file safetensors reads, with every value.
    let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&first[8..8 + n]).unwrap();
    let at = |k: &str| header.find(&format!("\"{k}\":")).unwrap();
    assert!(at("alpha") < at("config") && at("config") < at("format") && at("step") < at("zeta"));
    let dir = tempfile::tempdir().unwrap();
    write_atomic(&dir.path().join("c.safetensors"), &first).unwrap();
    let ck = load(&dir.path().join("c.safetensors")).unwrap();
    metadata.insert(META_FORMAT.into(), FORMAT.into());
    assert_eq!(ck.metadata, metadata);
    for (name, t) in &sample_tensors() {
        assert_eq!(bits(&ck.tensors[name]), bits(t), "{name}");
    }
}

/// `load(path)` fails, naming the path and saying `what`.
pub(super) fn assert_load_fails(path: &Path, what: &str) {
    let e = load(path).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains(what), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn unusable_files_give_one_line_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let mut tensors = sample_tensors();
    tensors.push((
        "model.big".into(),
        Tensor::zeros(4096, DType::F32, &cpu()).unwrap(),
    ));
    save(&good, &tensors, &meta("x")).unwrap();
    let bytes = fs::read(&good).unwrap();

    // Cut in the tensor data (half of 16 KiB) and inside the JSON header.
    let cut = dir.path().join("cut.safetensors");
    for len in [bytes.len() / 2, 20] {
        fs::write(&cut, &bytes[..len]).unwrap();
        assert_load_fails(&cut, "truncated");
    }

    let garbage = dir.path().join("garbage.safetensors");
    let mut s = Stream::new(3, Purpose::Eval, 0);
    let junk: Vec<u8> = (0..4096).map(|_| s.next_u64() as u8).collect();
    fs::write(&garbage, &junk).unwrap();
    assert_load_fails(&garbage, "not a safetensors file");

    let text = dir.path().join("notes.safetensors");
    fs::write(&text, "this is a text file, not tensors\n").unwrap();
    assert_load_fails(&text, "not a safetensors file");

    let empty = dir.path().join("empty.safetensors");
    fs::write(&empty, b"").unwrap();
    assert_load_fails(&empty, "empty");

    assert_load_fails(&dir.path().join("missing.safetensors"), "not found");

    let old = dir.path().join("old.safetensors");
    let mut m: HashMap<String, String> = meta("x").into_iter().collect();
    m.insert(META_FORMAT.into(), "ddpm-0".into());
    write_atomic(
        &old,
        &encode_raw(&old, &sample_tensors(), m.clone()).unwrap(),
    )
    .unwrap();
    assert_load_fails(&old, "`ddpm-0`");

    m.remove(META_FORMAT);
    write_atomic(&old, &encode_raw(&old, &sample_tensors(), m).unwrap()).unwrap();
    assert_load_fails(&old, "no `format`");

    let mut m: HashMap<String, String> = HashMap::new();
    m.insert(META_FORMAT.into(), FORMAT.into());
    write_atomic(&old, &encode_raw(&old, &sample_tensors(), m).unwrap()).unwrap();
    assert_load_fails(&old, "`config`");
}

#[test]
fn a_failed_save_leaves_the_old_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let v1 = vec![(
        "model.w".to_string(),
        Tensor::new(&[1f32, 2.], &cpu()).unwrap(),
    )];
    let v2 = vec![(
        "model.w".to_string(),
        Tensor::new(&[3f32, 4.], &cpu()).unwrap(),
    )];
    save(&path, &v1, &meta("one")).unwrap();
    let check_v1 = || {
        let ck = load(&path).unwrap();
        assert_eq!(ck.config().unwrap(), "one");
        assert_eq!(
            ck.tensors["model.w"].to_vec1::<f32>().unwrap(),
            vec![1., 2.]
        );
    };

    // An I/O failure while writing (the temp name is taken by a directory; permission bits
    // would not stop root, who runs these tests in CI containers).
    let blocker = temp_path(&path);
    fs::create_dir(&blocker).unwrap();
    let e = save(&path, &v2, &meta("two")).unwrap_err().to_string();
    assert!(
        e.contains("c.safetensors") && e.contains("cannot save"),
        "{e}"
    );
    check_v1();
    fs::remove_dir(&blocker).unwrap();

    // Refused before touching the disk: no config, a duplicate name.
    assert!(save(&path, &v2, &BTreeMap::new())
        .unwrap_err()
        .to_string()
        .contains("`config`"));
    let twice = [v2.clone(), v2.clone()].concat();
    assert!(save(&path, &twice, &meta("two"))
        .unwrap_err()
        .to_string()
        .contains("`model.w`"));
    check_v1();
    assert_eq!(names_in(dir.path()), vec!["c.safetensors"]);

    let nowhere = dir.path().join("no/such/dir/c.safetensors");
    let e = save(&nowhere, &v2, &meta("two")).unwrap_err().to_string();
    assert!(e.contains("no/such/dir/c.safetensors"), "{e}");
}

#[test]
fn load_into_sets_vars_by_name_or_names_the_bad_key() {
    let vm = VarMap::new();
    vm.get((2, 3), "down.0.weight", Init::Const(0.), DType::F32, &cpu())
        .unwrap();
    vm.get(3, "down.0.bias", Init::Const(0.), DType::F32, &cpu())
        .unwrap();
    let w = Tensor::arange(0f32, 6., &cpu())
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    let b = Tensor::new(&[7f32, 8., 9.], &cpu()).unwrap();
    let good = BTreeMap::from([
        ("model.down.0.weight".to_string(), w.clone()),
        ("model.down.0.bias".to_string(), b.clone()),
        ("ema.down.0.bias".to_string(), b.zeros_like().unwrap()),
    ]);
    let get = |name: &str| {
        vm.data().lock().unwrap()[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };

    let mut missing = good.clone();
    missing.remove("model.down.0.bias");
    let e = load_into(&vm, &missing, "model.").unwrap_err().to_string();
    assert!(e.contains("`model.down.0.bias`"), "{e}");
    // Nothing was set, although the weight alone was valid.
    assert_eq!(get("down.0.weight"), vec![0.; 6]);

    let mut shaped = good.clone();
    shaped.insert("model.down.0.weight".into(), w.t().unwrap());
    let e = load_into(&vm, &shaped, "model.").unwrap_err().to_string();
    assert!(
        e.contains("`model.down.0.weight`") && e.contains("[3, 2]"),
        "{e}"
    );

    let mut extra = good.clone();
    extra.insert("model.up.0.bias".into(), b.clone());
    let e = load_into(&vm, &extra, "model.").unwrap_err().to_string();
    assert!(e.contains("`model.up.0.bias`"), "{e}");

    load_into(&vm, &good, "model.").unwrap();
    assert_eq!(get("down.0.weight"), vec![0., 1., 2., 3., 4., 5.]);
    assert_eq!(get("down.0.bias"), vec![7., 8., 9.]);
    load_into(&vm, &good, "ema.").unwrap_err();
}

/// A tiny "model": two variables in a VarMap with seeded values.
fn model(seed: u64) -> VarMap {
    let vm = VarMap::new();
    let mut s = Stream::new(seed, Purpose::Init, 0);
    for (name, n) in [("lin.weight", 6usize), ("lin.bias", 3)] {
        let t = s.randn(n, &cpu()).unwrap();
        vm.data()
            .lock()
            .unwrap()
            .insert(name.into(), candle_core::Var::from_tensor(&t).unwrap());
    }
    vm
}

/// One training step on loss = sum((w - 1)^2 * k) + sum(b^3), then an EMA update.
fn train_step(opt: &mut crate::optim::AdamW, ema: &mut crate::ema::Ema) {
    let vars: Vec<Tensor> = opt.vars().map(|(_, v)| v.as_tensor().clone()).collect();
    let (b, w) = (&vars[0], &vars[1]);
    let k = Tensor::arange(1f32, 7., &cpu()).unwrap();
    let loss = ((w - 1.).unwrap().sqr().unwrap() * k)
        .unwrap()
        .sum_all()
        .unwrap();
    let loss = (loss + b.powf(3.).unwrap().sum_all().unwrap()).unwrap();
    let mut grads = loss.backward().unwrap();
    opt.clip_grad_norm(&mut grads, 1.0).unwrap();
    let lr = crate::optim::lr_at(opt.config(), opt.step_count(), u64::MAX);
    opt.step(&grads, lr).unwrap();
    ema.update(opt.step_count()).unwrap();
}

#[test]
fn resuming_through_a_checkpoint_file_is_bit_identical() {
    use crate::ema::{Ema, EmaConfig};
    use crate::named::named_vars;
    use crate::optim::{AdamW, OptimConfig};
    let ocfg = OptimConfig {
        lr: 0.05,
        weight_decay: 0.01,
        warmup_steps: 3,
        ..OptimConfig::default()
    };
    let ecfg = EmaConfig::default();
    let snapshot = |vm: &VarMap, ema: &Ema| -> Vec<(DType, Vec<usize>, Vec<u64>)> {
        let mut out: Vec<_> = named_vars(vm)
            .unwrap()
            .iter()
            .map(|(_, v)| bits(v.as_tensor()))
            .collect();
        out.extend(ema.weights().iter().map(|(_, t)| bits(t)));
        out
    };
    let setup = |vm: &VarMap| {
        let vars = named_vars(vm).unwrap();
        (
            AdamW::new(&vars, ocfg.clone()).unwrap(),
            Ema::new(&vars, ecfg.clone()).unwrap(),
        )
    };

    let straight = model(1);
    let (mut opt, mut ema) = setup(&straight);
    for _ in 0..6 {
        train_step(&mut opt, &mut ema);
    }
    let want = snapshot(&straight, &ema);

    let dir = tempfile::tempdir().unwrap();
    let first = model(1);
    let (mut opt, mut ema) = setup(&first);
    for _ in 0..3 {
        train_step(&mut opt, &mut ema);
    }
    let mut tensors: Vec<(String, Tensor)> = named_vars(&first)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone()))
        .collect();
    tensors.extend(ema.state());
    tensors.extend(opt.state().unwrap());
    let path = save_step(dir.path(), opt.step_count(), &tensors, &meta("c"), 3).unwrap();

    // A fresh process: other initial weights, everything restored from the file.
    let ck = load(&path).unwrap();
    let resumed = model(2);
    load_into(&resumed, &ck.tensors, "model.").unwrap();
    let (mut opt, mut ema) = setup(&resumed);
    opt.load_state(&ck.tensors).unwrap();
    ema.load_state(&ck.tensors).unwrap();
    assert_eq!(opt.step_count(), ck.step().unwrap());
    for _ in 0..3 {
        train_step(&mut opt, &mut ema);
    }
    assert_eq!(snapshot(&resumed, &ema), want);
}

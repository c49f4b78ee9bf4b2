use super::*;
use crate::rng::{Purpose, Stream};

fn cpu() -> Device {
    Device::Cpu
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Parameters of a few shapes with seeded N(0,1) values, sorted by name as the optimizer keeps them.
fn params(seed: u64) -> Vec<(String, Var)> {
    let mut s = Stream::new(seed, Purpose::Eval, 0);
    [("a", vec![4, 3]), ("b", vec![5]), ("c.w", vec![2, 2, 2])]
        .into_iter()
        .map(|(n, dims)| {
            let t = s.randn(dims, &cpu()).unwrap();
            (n.to_string(), Var::from_tensor(&t).unwrap())
        })
        .collect()
}

fn cfg(lr: f64, wd: f64) -> OptimConfig {
    OptimConfig {
        lr,
        weight_decay: wd,
        ..OptimConfig::default()
    }
}

/// PyTorch's AdamW on one scalar in f64, written from the algorithm box of the PyTorch docs.
struct NaiveAdamW {
    p: f64,
    m: f64,
    v: f64,
}

impl NaiveAdamW {
    fn step(&mut self, g: f64, lr: f64, t: i32, c: &OptimConfig) {
        self.p -= lr * c.weight_decay * self.p;
        self.m = c.beta1 * self.m + (1.0 - c.beta1) * g;
        self.v = c.beta2 * self.v + (1.0 - c.beta2) * g * g;
        let m_hat = self.m / (1.0 - c.beta1.powi(t));
        let v_hat = self.v / (1.0 - c.beta2.powi(t));
        self.p -= lr * m_hat / (v_hat.sqrt() + c.eps);
    }
}

#[test]
fn adamw_matches_naive_pytorch_adamw() {
    let c = cfg(1e-2, 0.1);
    let vars = params(1);
    let mut naive: Vec<Vec<NaiveAdamW>> = vars
        .iter()
        .map(|(_, v)| {
            flat(v.as_tensor())
                .into_iter()
                .map(|p| NaiveAdamW {
                    p: p as f64,
                    m: 0.0,
                    v: 0.0,
                })
                .collect()
        })
        .collect();
    let mut opt = AdamW::new(&vars, c.clone()).unwrap();
    let mut gs = Stream::new(2, Purpose::Eval, 0);
    for t in 1..=6 {
        let lr = c.lr * t as f64 / 6.0;
        let mut grads = GradStore::default();
        for ((_, var), nv) in vars.iter().zip(&mut naive) {
            let g = gs.randn(var.dims(), &cpu()).unwrap();
            for (n, gi) in nv.iter_mut().zip(flat(&g)) {
                n.step(gi as f64, lr, t, &c);
            }
            grads.insert(var.as_tensor(), g);
        }
        opt.step(&grads, lr).unwrap();
    }
    assert_eq!(opt.step_count(), 6);
    for ((name, var), nv) in vars.iter().zip(&naive) {
        for (got, want) in flat(var.as_tensor()).into_iter().zip(nv) {
            let tol = 1e-6 * want.p.abs().max(0.1);
            assert!(
                (got as f64 - want.p).abs() <= tol,
                "{name}: {got} vs naive {}",
                want.p
            );
        }
    }
}

/// Gradients of a fixed quadratic, through the real `backward()`.
fn quad_grads(vars: &[(String, Var)], targets: &[Tensor]) -> GradStore {
    let mut loss = Tensor::new(0f32, &cpu()).unwrap();
    for ((_, v), t) in vars.iter().zip(targets) {
        let d = (v.as_tensor() - t).unwrap();
        loss = (loss + (&d * &d).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

fn run(opt: &mut AdamW, vars: &[(String, Var)], targets: &[Tensor], steps: usize) {
    for _ in 0..steps {
        let grads = quad_grads(vars, targets);
        let lr = lr_at(opt.config(), opt.step_count(), u64::MAX);
        opt.step(&grads, lr).unwrap();
    }
}

fn copy_vars(vars: &[(String, Var)]) -> Vec<(String, Var)> {
    vars.iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn state_round_trip_resumes_bit_identically() {
    let c = OptimConfig {
        lr: 1e-2,
        weight_decay: 0.05,
        warmup_steps: 2,
        ..OptimConfig::default()
    };
    let vars = params(3);
    let targets: Vec<Tensor> = params(4)
        .iter()
        .map(|(_, v)| v.as_tensor().clone())
        .collect();

    let straight = copy_vars(&vars);
    let mut opt = AdamW::new(&straight, c.clone()).unwrap();
    run(&mut opt, &straight, &targets, 6);

    let first = copy_vars(&vars);
    let mut opt = AdamW::new(&first, c.clone()).unwrap();
    run(&mut opt, &first, &targets, 3);
    let state: BTreeMap<String, Tensor> = opt.state().unwrap().into_iter().collect();

    let resumed = copy_vars(&first);
    let mut opt = AdamW::new(&resumed, c.clone()).unwrap();
    opt.load_state(&state).unwrap();
    assert_eq!(opt.step_count(), 3);
    run(&mut opt, &resumed, &targets, 3);

    // Without the state, the same weights drift elsewhere: the test can tell.
    let fresh = copy_vars(&first);
    let mut opt = AdamW::new(&fresh, c).unwrap();
    run(&mut opt, &fresh, &targets, 3);

    for i in 0..vars.len() {
        let bits = |v: &[(String, Var)]| -> Vec<u32> {
            flat(v[i].1.as_tensor())
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(bits(&straight), bits(&resumed), "{}", vars[i].0);
        assert_ne!(bits(&straight), bits(&fresh), "{}", vars[i].0);
    }
}

#[test]
fn load_state_names_the_bad_key() {
    let opt = AdamW::new(&params(5), cfg(1e-3, 0.0)).unwrap();
    let good: BTreeMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
    let err = |state: &BTreeMap<String, Tensor>| {
        let mut o = AdamW::new(&params(5), cfg(1e-3, 0.0)).unwrap();
        o.load_state(state).unwrap_err().to_string()
    };

    let mut missing = good.clone();
    missing.remove("optim.v.c.w");
    assert!(err(&missing).contains("`optim.v.c.w`"), "{}", err(&missing));

    let mut shaped = good.clone();
    shaped.insert(
        "optim.m.a".into(),
        Tensor::zeros((3, 4), DType::F32, &cpu()).unwrap(),
    );
    let msg = err(&shaped);
    assert!(
        msg.contains("`optim.m.a`") && msg.contains("[3, 4]"),
        "{msg}"
    );

    let mut extra = good.clone();
    extra.insert(
        "optim.m.gone".into(),
        Tensor::zeros(2, DType::F32, &cpu()).unwrap(),
    );
    assert!(err(&extra).contains("`optim.m.gone`"), "{}", err(&extra));

    let mut no_step = good.clone();
    no_step.remove(STEP_KEY);
    assert!(err(&no_step).contains(STEP_KEY), "{}", err(&no_step));

    // Unrelated keys (a whole checkpoint) are fine.
    let mut whole = good;
    whole.insert(
        "model.a".into(),
        Tensor::zeros(1, DType::F32, &cpu()).unwrap(),
    );
    let mut o = AdamW::new(&params(5), cfg(1e-3, 0.0)).unwrap();
    o.load_state(&whole).unwrap();
}

#[test]
fn new_rejects_non_f32_and_duplicate_parameters() {
    let half = Var::zeros(3, DType::BF16, &cpu()).unwrap();
    let e = AdamW::new(&[("h".into(), half)], OptimConfig::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("`h`"), "{e}");
    let a = Var::zeros(3, DType::F32, &cpu()).unwrap();
    let e = AdamW::new(
        &[("x".into(), a.clone()), ("x".into(), a)],
        OptimConfig::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("`x`"), "{e}");
}

#[test]
fn clip_grad_norm_matches_naive_norm_and_clips_to_max() {
    let vars = params(6);
    let mut gs = Stream::new(7, Purpose::Eval, 0);
    let mut grads = GradStore::default();
    // The last parameter has no gradient: it must not count.
    for (_, v) in &vars[..2] {
        grads.insert(
            v.as_tensor(),
            (gs.randn(v.dims(), &cpu()).unwrap() * 3.0).unwrap(),
        );
    }
    let norm_of = |g: &GradStore| -> f64 {
        vars[..2]
            .iter()
            .flat_map(|(_, v)| flat(g.get(v.as_tensor()).unwrap()))
            .map(|x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt()
    };
    let naive = norm_of(&grads);
    let before: Vec<Vec<f32>> = vars[..2]
        .iter()
        .map(|(_, v)| flat(grads.get(v.as_tensor()).unwrap()))
        .collect();

    let tensors = || vars.iter().map(|(_, v)| v.as_tensor());
    // A larger bound leaves the gradients exactly as they were.
    let norm = clip_grad_norm(tensors(), &mut grads, naive * 2.0).unwrap();
    assert!((norm - naive).abs() <= 1e-6 * naive, "{norm} vs {naive}");
    let same: Vec<Vec<f32>> = vars[..2]
        .iter()
        .map(|(_, v)| flat(grads.get(v.as_tensor()).unwrap()))
        .collect();
    assert_eq!(before, same);

    let max_norm = naive / 3.0;
    let norm = clip_grad_norm(tensors(), &mut grads, max_norm).unwrap();
    assert!((norm - naive).abs() <= 1e-6 * naive, "{norm} vs {naive}");
    let after = norm_of(&grads);
    assert!(
        (after - max_norm).abs() <= 1e-5 * max_norm,
        "{after} vs {max_norm}"
    );
    assert!(clip_grad_norm(tensors(), &mut grads, 0.0).is_err());
}

#[test]
fn accumulated_micro_batches_give_the_full_batch_gradient() {
    let w = Var::from_tensor(
        &Stream::new(8, Purpose::Eval, 0)
            .randn((3, 2), &cpu())
            .unwrap(),
    )
    .unwrap();
    let x = Stream::new(8, Purpose::Eval, 1)
        .randn((4, 3), &cpu())
        .unwrap();
    // Mean over the batch of sum((x W)^2) per row.
    let grad_of = |rows: &Tensor| {
        let y = rows.matmul(w.as_tensor()).unwrap();
        let loss = y.sqr().unwrap().sum(1).unwrap().mean_all().unwrap();
        loss.backward().unwrap()
    };
    let full = flat(grad_of(&x).get(w.as_tensor()).unwrap());

    let opt = AdamW::new(&[("w".into(), w.clone())], OptimConfig::default()).unwrap();
    let mut acc = opt.accumulator();
    assert!(acc.finish().is_err());
    acc.add(&grad_of(&x.narrow(0, 0, 2).unwrap())).unwrap();
    acc.add(&grad_of(&x.narrow(0, 2, 2).unwrap())).unwrap();
    assert_eq!(acc.count(), 2.0);
    let mean = acc.finish().unwrap();
    assert_eq!(acc.count(), 0.0);
    let got = flat(mean.get(w.as_tensor()).unwrap());
    for (g, f) in got.iter().zip(&full) {
        assert!((g - f).abs() <= 1e-6 * f.abs().max(1.0), "{g} vs {f}");
    }

    // Unequal shards of one micro-batch (rows 0..1 and 1..4) weighted by their share, 1/4
    // and 3/4, sum to it too; weighted equally they do not, so the check can fail.
    let mut shards = |weights: [f64; 2]| {
        acc.add_weighted(&grad_of(&x.narrow(0, 0, 1).unwrap()), weights[0])
            .unwrap();
        acc.add_weighted(&grad_of(&x.narrow(0, 1, 3).unwrap()), weights[1])
            .unwrap();
        assert!((acc.count() - 1.0).abs() < 1e-12);
        flat(acc.finish().unwrap().get(w.as_tensor()).unwrap())
    };
    let close = |got: &[f32]| {
        got.iter()
            .zip(&full)
            .all(|(g, f)| (g - f).abs() <= 1e-6 * f.abs().max(1.0))
    };
    assert!(close(&shards([0.25, 0.75])));
    assert!(!close(&shards([0.5, 0.5])));
    assert!(acc.add_weighted(&grad_of(&x), 0.0).is_err());
    assert!(acc.add_weighted(&grad_of(&x), f64::NAN).is_err());
}

#[test]
fn config_defaults_validation_and_toml_round_trip() {
    let c: OptimConfig = toml::from_str("").unwrap();
    assert_eq!(c, OptimConfig::default());
    assert_eq!(c.grad_clip, Some(1.0));
    c.validate().unwrap();

    let off: OptimConfig = toml::from_str("grad_clip = false\nlr = 1e-3").unwrap();
    assert_eq!(off.grad_clip, None);
    assert_eq!(off.lr, 1e-3);
    for c in [off, OptimConfig::default()] {
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<OptimConfig>(&text).unwrap(), c, "{text}");
    }
    assert!(toml::from_str::<OptimConfig>("grad_clip = true").is_err());
    assert!(toml::from_str::<OptimConfig>("learning_rate = 1.0").is_err());

    let bad = |c: OptimConfig, key: &str| {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with(&format!("optim.{key} = ")), "{e}");
    };
    let d = OptimConfig::default;
    bad(OptimConfig { lr: 0.0, ..d() }, "lr");
    bad(OptimConfig { beta1: 1.0, ..d() }, "beta1");
    bad(OptimConfig { beta2: -0.1, ..d() }, "beta2");
    bad(OptimConfig { eps: 0.0, ..d() }, "eps");
    bad(
        OptimConfig {
            weight_decay: f64::NAN,
            ..d()
        },
        "weight_decay",
    );
    bad(
        OptimConfig {
            grad_clip: Some(0.0),
            ..d()
        },
        "grad_clip",
    );
}

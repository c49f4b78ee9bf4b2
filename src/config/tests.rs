use super::*;

/// Load `text` after a `[data]` section the default (CIFAR-10) model fits: 32x32 RGB.
fn load_str(text: &str, overrides: &[&str]) -> Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[data]\nimage_size = 32\nchannels = 3\n{text}"),
    )
    .unwrap();
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::load(&path, &o)
}

#[test]
fn empty_file_gives_the_paper_defaults() {
    let cfg = load_str("", &[]).unwrap();
    assert_eq!(cfg.diffusion.timesteps, 1000);
    assert_eq!(cfg.diffusion.beta_end, 0.02);
    assert_eq!(cfg.optim.lr, 2e-4);
    assert_eq!(cfg.train.batch_size, 128);
}

#[test]
fn unknown_and_mistyped_keys_are_named() {
    let e = load_str("[train]\nstepz = 3\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("stepz") && e.contains("c.toml"), "{e}");
    let e = load_str("[train]\nsteps = \"many\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("steps") || e.contains("many"), "{e}");
    let e = load_str("[trian]\n", &[]).unwrap_err().to_string();
    assert!(e.contains("trian"), "{e}");
}

#[test]
fn overrides_apply_and_are_validated() {
    let cfg = load_str("", &["train.steps=7", "diffusion.beta_schedule=cosine"]).unwrap();
    assert_eq!(cfg.train.steps, 7);
    assert_eq!(cfg.diffusion.beta_schedule, BetaSchedule::Cosine);
    let e = load_str("", &["train.batch_size=10", "train.grad_accum=3"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.batch_size"), "{e}");
    assert!(load_str("", &["nonsense"]).is_err());
}

#[test]
fn round_trips_through_toml() {
    let cfg = load_str("[train]\nsteps = 5\n", &[]).unwrap();
    let text = cfg.to_toml().unwrap();
    assert!(text.starts_with("[model]\narch = \"unet\"\n"), "{text}");
    assert!(!text.contains("[model.mlp]"), "{text}");
    assert_eq!(cfg, Config::from_toml(&text, "checkpoint").unwrap());
    // The MLP's [model] holds its own sizes only; the rest comes back as the defaults it has.
    let mlp = Config {
        model: UNetConfig {
            arch: crate::nn::Arch::Mlp,
            ..UNetConfig::default()
        },
        ..cfg
    };
    let text = mlp.to_toml().unwrap();
    assert!(
        text.contains("[model]\narch = \"mlp\"\n\n[model.mlp]\n"),
        "{text}"
    );
    assert!(!text.contains("base_channels"), "{text}");
    assert_eq!(mlp, Config::from_toml(&text, "checkpoint").unwrap());
}

#[test]
fn zero_terminal_snr_with_eps_is_refused() {
    let e = load_str("[diffusion]\nzero_terminal_snr = true\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("diffusion.prediction"), "{e}");
    assert!(load_str(
        "[diffusion]\nzero_terminal_snr = true\nprediction = \"v\"\n",
        &[]
    )
    .is_ok());
}

#[test]
fn class_conditioning_keys_are_checked_together() {
    let e = load_str("", &["data.class_labels=true"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.num_classes"), "{e}");
    let e = load_str("", &["model.num_classes=10"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.class_labels"), "{e}");
    let cfg = load_str("", &["model.num_classes=10", "data.class_labels=true"]).unwrap();
    assert_eq!(cfg.train.label_dropout, 0.1);
    assert_eq!(cfg.sample.guidance, 1.0);
    let e = load_str("", &["train.label_dropout=1.5"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.label_dropout"), "{e}");
    let cfg = load_str("", &["sample.guidance=-1"]).unwrap();
    assert_eq!(cfg.sample.guidance, -1.0);
    let e = load_str("", &["sample.guidance=nan"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("sample.guidance"), "{e}");
}

/// `sample.steps` belongs to `sample.sampler`: the digits config's 50 DDIM steps are not the
/// ancestral sampler's or DPM++ 2M's count (both ran 50 before), which take their own defaults.
#[test]
fn steps_belong_to_the_configured_sampler() {
    let s = SampleConfig {
        sampler: SamplerKind::Ddim,
        steps: Some(50),
        ..SampleConfig::default()
    };
    let want = [
        (SamplerKind::Ddim, 50),
        (SamplerKind::Ddpm, 1000),
        (SamplerKind::Pc, 1000),
        (SamplerKind::DpmSolver2M, 20),
        (SamplerKind::Heun, 20),
    ];
    for (sampler, steps) in want {
        assert_eq!(s.steps_for(sampler, 1000), steps, "{sampler}");
    }
    let unset = SampleConfig::default();
    assert_eq!(unset.steps_for(SamplerKind::Ddim, 1000), 50);
    assert_eq!(unset.steps_for(SamplerKind::Ddim, 30), 30);
    assert_eq!(unset.steps_for(SamplerKind::Ddpm, 1000), 1000);
}

/// T is bounded before the schedule's arrays are allocated: i64::MAX steps was a capacity
/// overflow (a panic), 1e9 an allocation failure (an abort).
#[test]
fn timesteps_past_the_bound_are_refused_before_the_schedule_is_built() {
    for t in ["1000000000", "9223372036854775807"] {
        let e = load_str("", &[&format!("diffusion.timesteps={t}")])
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("diffusion.timesteps = {t}")), "{e}");
    }
    assert!(load_str("", &["diffusion.timesteps=100000"]).is_ok());
}

/// toml's multi-line errors become one line: where, then what, without the source excerpt.
#[test]
fn parse_errors_are_one_line_of_where_and_what() {
    let e = toml::from_str::<toml::Table>("this is not TOML {{{\n").unwrap_err();
    assert_eq!(
        one_line(&e),
        "TOML parse error at line 1, column 6: key with no value, expected `=`"
    );
    let e = toml::from_str::<toml::Table>("[train]\nsteps = 1\nsteps = 2\n").unwrap_err();
    assert_eq!(
        one_line(&e),
        "TOML parse error at line 3, column 1: duplicate key"
    );
}

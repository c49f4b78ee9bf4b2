use super::*;

fn w1_like() -> UNetConfig {
    UNetConfig {
        base_channels: 64,
        channel_mult: vec![1, 2, 2],
        attention_resolutions: Some(vec![8]),
        ..UNetConfig::default()
    }
}

#[test]
fn validation_names_the_key() {
    let err = |cfg: UNetConfig, size| cfg.validate(size).unwrap_err().to_string();
    let d = UNetConfig::default;
    assert!(d().validate((32, 32)).is_ok());
    assert!(w1_like().validate((32, 32)).is_ok());
    let e = err(
        UNetConfig {
            channel_mult: vec![1, 2, 2],
            ..d()
        },
        (30, 30),
    );
    assert!(
        e.contains("model.channel_mult has 3 levels") && e.contains("use 32x32"),
        "{e}"
    );
    assert!(err(d(), (32, 20)).contains("use 32x24"));
    let e = err(
        UNetConfig {
            base_channels: 48,
            ..d()
        },
        (32, 32),
    );
    assert!(
        e.contains("model.norm_groups") && e.contains("model.base_channels"),
        "{e}"
    );
    let e = err(
        UNetConfig {
            num_heads: 3,
            ..d()
        },
        (32, 32),
    );
    assert!(e.contains("model.num_heads = 3"), "{e}");
    for p in [1.0, -0.1, f64::NAN] {
        assert!(err(UNetConfig { dropout: p, ..d() }, (32, 32)).contains("model.dropout"));
    }
    assert!(err(
        UNetConfig {
            channel_mult: vec![],
            ..d()
        },
        (32, 32)
    )
    .contains("model.channel_mult"));
    assert!(err(
        UNetConfig {
            channel_mult: vec![1, 0],
            ..d()
        },
        (32, 32)
    )
    .contains("channel_mult[1]"));
    assert!(err(
        UNetConfig {
            num_res_blocks: 0,
            ..d()
        },
        (32, 32)
    )
    .contains("model.num_res_blocks"));
    assert!(err(
        UNetConfig {
            base_channels: 0,
            ..d()
        },
        (32, 32)
    )
    .contains("model.base_channels"));
    let odd = UNetConfig {
        base_channels: 5,
        norm_groups: 1,
        ..d()
    };
    assert!(err(odd, (32, 32)).contains("model.base_channels = 5"));
    assert!(err(
        UNetConfig {
            num_classes: Some(0),
            ..d()
        },
        (32, 32)
    )
    .contains("model.num_classes"));
    let sixteen = || UNetConfig {
        attention_resolutions: Some(vec![16]),
        ..d()
    };
    let e = err(sixteen(), (8, 8));
    assert!(
        e.contains("model.attention_resolutions contains 16") && e.contains("[8, 4, 2, 1]"),
        "{e}"
    );
}

/// Absent attention resolutions fit the image: 16 where a level is 16 high (DDPM), else the
/// second level's height, else none; the defaults validate at the default 8x8 (they did not:
/// the paper's [16] was fixed whatever the image size).
#[test]
fn default_attention_fits_the_image_height() {
    let d = UNetConfig::default();
    assert_eq!(d.attention_resolutions, None);
    assert_eq!(d.default_attention(32), [16]);
    assert_eq!(d.default_attention(8), [4]);
    assert_eq!(d.default_attention(16), [16]);
    let six = UNetConfig {
        channel_mult: vec![1, 1, 2, 2, 4, 4],
        ..UNetConfig::default()
    };
    assert_eq!(six.default_attention(256), [16]);
    let one = UNetConfig {
        channel_mult: vec![1],
        ..UNetConfig::default()
    };
    assert!(one.default_attention(8).is_empty());
    for (cfg, size) in [(&d, 8), (&d, 32), (&six, 256), (&one, 8)] {
        cfg.validate((size, size)).unwrap();
    }
    let mut resolved = d.clone();
    resolved.resolve(8);
    assert_eq!(resolved.attention_resolutions, Some(vec![4]));
    assert_eq!(resolved.plan(8), d.plan(8));
}

#[test]
fn config_round_trips_through_toml() {
    let cfg = UNetConfig {
        num_classes: Some(10),
        ..w1_like()
    };
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(toml::from_str::<UNetConfig>(&text).unwrap(), cfg);
    assert_eq!(
        toml::from_str::<UNetConfig>("").unwrap(),
        UNetConfig::default()
    );
    assert!(toml::from_str::<UNetConfig>("channels = 3").is_err());
}

#[test]
fn only_the_built_networks_keys_are_written() {
    let unet = toml::to_string(&w1_like().written().unwrap()).unwrap();
    assert!(
        unet.starts_with("arch = \"unet\"\nbase_channels = 64\n") && !unet.contains("width"),
        "{unet}"
    );
    let mlp = UNetConfig {
        arch: Arch::Mlp,
        mlp: MlpConfig {
            width: 64,
            ..MlpConfig::default()
        },
        ..UNetConfig::default()
    };
    let text = toml::to_string(&mlp.written().unwrap()).unwrap();
    assert_eq!(
        text,
        "arch = \"mlp\"\n\n[mlp]\nwidth = 64\nblocks = 3\ntime_dim = 32\n"
    );
    // Nothing is lost: the keys left out are at their defaults, as validation demands.
    assert_eq!(toml::from_str::<UNetConfig>(&text).unwrap(), mlp);
    assert_eq!(mlp.unused_key().unwrap(), None);
    assert_eq!(w1_like().unused_key().unwrap(), None);
    let set = |cfg: UNetConfig| cfg.unused_key().unwrap();
    assert_eq!(
        set(UNetConfig {
            dropout: 0.0,
            ..mlp.clone()
        }),
        Some("dropout".to_string())
    );
    assert_eq!(
        set(UNetConfig {
            channel_mult: vec![1],
            ..mlp.clone()
        }),
        Some("channel_mult".to_string())
    );
    let unet_with_mlp = UNetConfig {
        arch: Arch::Unet,
        ..mlp
    };
    assert_eq!(set(unet_with_mlp), Some("mlp".to_string()));
}

/// The UNet2DModel options are written only when set, so a config that does not use them
/// writes (and checkpoints store) exactly what it did before they existed.
#[test]
fn unused_options_are_not_written() {
    let keys =
        |cfg: &UNetConfig| -> Vec<String> { cfg.written().unwrap().keys().cloned().collect() };
    let before = [
        "arch",
        "base_channels",
        "channel_mult",
        "num_res_blocks",
        "num_heads",
        "dropout",
        "norm_groups",
    ];
    assert_eq!(keys(&UNetConfig::default()), before);
    let set = UNetConfig {
        norm_eps: 1e-6,
        freq_shift: 0,
        flip_sin_to_cos: true,
        scale_shift: true,
        attention_head_dim: Some(8),
        mid_block_scale_factor: 2.0,
        center_input_sample: true,
        downsample_padding: 0,
        num_classes: Some(2),
        null_class: false,
        num_heads: 1,
        ..UNetConfig::default()
    };
    let written = keys(&set);
    for key in [
        "norm_eps",
        "freq_shift",
        "flip_sin_to_cos",
        "scale_shift",
        "attention_head_dim",
        "mid_block_scale_factor",
        "center_input_sample",
        "downsample_padding",
        "null_class",
    ] {
        assert!(written.iter().any(|k| k == key), "{key} not written");
    }
    let text = toml::to_string(&set.written().unwrap()).unwrap();
    assert_eq!(toml::from_str::<UNetConfig>(&text).unwrap(), set);
}

#[test]
fn option_values_are_checked() {
    let err = |cfg: UNetConfig| cfg.validate((32, 32)).unwrap_err().to_string();
    let d = UNetConfig::default;
    assert!(err(UNetConfig {
        norm_eps: 0.0,
        ..d()
    })
    .contains("model.norm_eps"));
    assert!(err(UNetConfig {
        freq_shift: 64,
        ..d()
    })
    .contains("model.freq_shift = 64"));
    assert!(err(UNetConfig {
        downsample_padding: 2,
        ..d()
    })
    .contains("model.downsample_padding = 2"));
    assert!(err(UNetConfig {
        mid_block_scale_factor: -1.0,
        ..d()
    })
    .contains("model.mid_block_scale_factor"));
    assert!(err(UNetConfig {
        attention_head_dim: Some(48),
        ..d()
    })
    .contains("model.attention_head_dim = 48"));
    assert!(err(UNetConfig {
        attention_head_dim: Some(8),
        num_heads: 2,
        ..d()
    })
    .contains("keep one"));
    assert!(err(UNetConfig {
        null_class: false,
        ..d()
    })
    .contains("model.null_class"));
    assert!(UNetConfig {
        attention_head_dim: Some(32),
        ..d()
    }
    .validate((32, 32))
    .is_ok());
}

/// Counts are bounded before anything is sized by them: 70 levels once shifted 1 by 69 (an
/// overflow), a million blocks per level built a plan of millions of entries.
#[test]
fn counts_past_their_bounds_are_refused_naming_the_key() {
    let d = UNetConfig::default;
    let err = |cfg: UNetConfig| cfg.validate((32, 32)).unwrap_err().to_string();
    let cases = [
        (
            UNetConfig {
                channel_mult: vec![1; 70],
                ..d()
            },
            "model.channel_mult has 70 levels",
        ),
        (
            UNetConfig {
                num_res_blocks: 1_000_000,
                ..d()
            },
            "model.num_res_blocks = 1000000",
        ),
        (
            UNetConfig {
                base_channels: 100_000,
                ..d()
            },
            "model.base_channels = 100000",
        ),
        (
            UNetConfig {
                channel_mult: vec![1, 1_000_000],
                ..d()
            },
            "model.channel_mult[1] = 1000000",
        ),
        (
            UNetConfig {
                channel_mult: vec![1, usize::MAX],
                ..d()
            },
            "model.channel_mult[1]",
        ),
        (
            UNetConfig {
                num_classes: Some(usize::MAX),
                ..d()
            },
            "model.num_classes",
        ),
    ];
    for (cfg, want) in cases {
        let e = err(cfg);
        assert!(e.contains(want), "{want}: {e}");
    }
    let mlp = |width, blocks| MlpConfig {
        width,
        blocks,
        ..MlpConfig::default()
    };
    let e = mlp(1_000_000, 3).validate().unwrap_err().to_string();
    assert!(e.contains("model.mlp.width = 1000000"), "{e}");
    let e = mlp(128, 1_000_000).validate().unwrap_err().to_string();
    assert!(e.contains("model.mlp.blocks = 1000000"), "{e}");
}

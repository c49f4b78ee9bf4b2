use super::*;

fn parse(text: &str) -> std::result::Result<DataConfig, toml::de::Error> {
    toml::from_str(text)
}

#[test]
fn image_size_reads_an_integer_or_a_pair_and_writes_back() {
    let square = parse("image_size = 32").unwrap();
    assert_eq!(square.image_size, ImageSize::square(32));
    let rect = parse("image_size = [24, 40]").unwrap();
    assert_eq!(
        rect.image_size,
        ImageSize {
            height: 24,
            width: 40
        }
    );
    for cfg in [square, rect] {
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(parse(&text).unwrap(), cfg, "{text}");
    }
    assert!(toml::to_string(&parse("image_size = 32").unwrap())
        .unwrap()
        .contains("image_size = 32"));
}

#[test]
fn bad_image_sizes_are_rejected() {
    for text in [
        "image_size = 0",
        "image_size = -3",
        "image_size = [8]",
        "image_size = [8, 8, 8]",
        "image_size = \"32\"",
    ] {
        assert!(parse(text).is_err(), "{text} parsed");
    }
}

#[test]
fn defaults_are_digits_8x8_luma_and_unknown_keys_fail() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg, DataConfig::default());
    assert_eq!(cfg.dataset, DatasetKind::Digits);
    assert_eq!(cfg.image_size, ImageSize::square(8));
    assert_eq!(cfg.channels, 1);
    assert!(!cfg.random_flip);
    cfg.validate().unwrap();
    assert!(parse("dataset = \"folder\"\npath = \"x\"").unwrap().dataset == DatasetKind::Folder);
    assert!(parse("flip = true").is_err());
    assert!(parse("dataset = \"cifar\"").is_err());
}

/// Written configs hold the keys a kind of data uses; setting another is an error naming
/// it (before, `num_points` on digits was silently ignored, and `ddpm info` listed every
/// key whatever the data).
#[test]
fn keys_a_kind_does_not_use_are_refused_and_not_written() {
    let keys = |text: &str| -> Vec<String> {
        parse(text)
            .unwrap()
            .written()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        keys(""),
        [
            "dataset",
            "image_size",
            "channels",
            "random_flip",
            "class_labels",
            "workers",
            "prefetch"
        ]
    );
    assert_eq!(
        keys("dataset = \"moons\"\nnoise = 0.1"),
        [
            "dataset",
            "workers",
            "prefetch",
            "num_points",
            "noise",
            "seed"
        ]
    );
    assert_eq!(
        keys("dataset = \"points\"\npath = \"p.csv\"\ndim = 3"),
        ["dataset", "path", "workers", "prefetch", "dim"]
    );
    for (text, msg) in [
        (
            "num_points = 50",
            "data.num_points is not used with data.dataset = \"digits\"",
        ),
        (
            "seed = 3",
            "data.seed is not used with data.dataset = \"digits\"",
        ),
        (
            "dataset = \"moons\"\nimage_size = 16",
            "data.image_size is not used with data.dataset = \"moons\"",
        ),
        (
            "dataset = \"points\"\npath = \"p.csv\"\nseed = 1",
            "data.seed is not used with data.dataset = \"points\"",
        ),
    ] {
        let e = parse(text).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains(msg), "{text}: {e}");
    }
    // At their defaults, unused keys are fine (a config may spell them out).
    parse("dataset = \"moons\"\nchannels = 1\nimage_size = 8")
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn validate_names_the_key() {
    let cases = [
        ("dataset = \"folder\"", "data.path"),
        ("path = \"imgs\"", "data.path"),
        ("channels = 2", "data.channels"),
        ("image_size = 5000", "data.image_size"),
        ("workers = 0", "data.workers"),
        ("prefetch = 0", "data.prefetch"),
        ("workers = 1000000", "data.workers = 1000000"),
        ("prefetch = 1000000000", "data.prefetch = 1000000000"),
        (
            "dataset = \"moons\"\nnum_points = 1000000000000",
            "data.num_points",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

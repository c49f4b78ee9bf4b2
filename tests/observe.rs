//! Seeing a run and a checkpoint: loss.png redrawn at each log row, labelled scatter plots of
//! 2-D samples, `--json` from info, schedule and interpolate, and `--checkpoint` accepted by
//! info and schedule like the other commands.

mod common;

use common::{json_summary, run, train_tiny};

fn png(path: &std::path::Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

/// Pixels of the smoothed-loss blue (31, 90, 180) in rows `rows` of loss.png.
fn blue(img: &image::RgbImage, rows: std::ops::Range<u32>) -> usize {
    img.enumerate_pixels()
        .filter(|(_, y, p)| rows.contains(y) && p.0 == [31, 90, 180])
        .count()
}

#[test]
fn loss_png_is_redrawn_at_each_log_row() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run_dir = train_tiny(dir, "run", 5, &[]);
    let plot = run_dir.join("loss.png");
    let first = std::fs::read(&plot).unwrap();
    let img = png(&plot);
    assert_eq!(img.dimensions(), (800, 600));
    // One row: the smoothed loss is a single point (no line yet) in the top panel.
    train_tiny(dir, "run", 15, &["--resume"]);
    let img = png(&plot);
    assert_ne!(
        std::fs::read(&plot).unwrap(),
        first,
        "loss.png was not redrawn"
    );
    assert!(blue(&img, 0..200) > 50, "no smoothed loss in the top panel");
    assert_eq!(blue(&img, 200..600), 0);
}

#[test]
fn info_and_schedule_take_checkpoint_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ckpt = train_tiny(dir, "run", 2, &[]).join("latest.safetensors");
    let c = ckpt.to_str().unwrap();

    let (positional, _) = run(dir, &["info", c], 0);
    let (flag, _) = run(dir, &["info", "--checkpoint", c], 0);
    assert_eq!(positional, flag);
    let text = String::from_utf8(positional).unwrap();
    assert!(
        text.contains("# step: 2") && text.contains("[model]"),
        "{text}"
    );
    // Only the keys digits data uses.
    assert!(
        !text.contains("num_points") && !text.contains("noise"),
        "{text}"
    );
    let (json, _) = run(dir, &["info", "-c", c, "--json"], 0);
    let json = json_summary(&json);
    assert_eq!(json["step"], 2);
    assert_eq!(json["config"]["model"]["base_channels"], 16);
    assert_eq!(json["config"]["data"]["dataset"], "digits");
    assert!(json["parameters"].as_u64().unwrap() > 1000);
    run(dir, &["info"], 2);
    run(dir, &["info", c, "--checkpoint", c], 2);

    // The checkpoint's schedule is its config's, and the JSON has the CSV's numbers.
    let tiny = common::config("tiny.toml");
    let (from_config, _) = run(dir, &["schedule", "-c", tiny.to_str().unwrap()], 0);
    let (from_ckpt, _) = run(dir, &["schedule", "--checkpoint", c], 0);
    assert_eq!(from_config, from_ckpt);
    let (json, _) = run(
        dir,
        &["schedule", "--checkpoint", c, "--steps", "5", "--json"],
        0,
    );
    let json = json_summary(&json);
    let (csv, _) = run(dir, &["schedule", "--checkpoint", c, "--steps", "5"], 0);
    let csv = String::from_utf8(csv).unwrap();
    let last: Vec<f64> = csv
        .lines()
        .last()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(json["t"].as_array().unwrap().len(), 5);
    assert_eq!(json["t"][4].as_f64().unwrap(), last[1]);
    let abar = json["alpha_bar"][4].as_f64().unwrap();
    assert!(
        (abar - last[3]).abs() <= 1e-9 * abar,
        "{abar} vs {}",
        last[3]
    );
    assert_eq!(json["timesteps"], 100);
    run(dir, &["schedule"], 2);

    // interpolate --json: one summary line after the path.
    let args = [
        "interpolate",
        "-c",
        c,
        "--seeds",
        "1,2",
        "--frames",
        "3",
        "--steps",
        "2",
        "--out",
        "strip.png",
        "--json",
        "--quiet",
    ];
    let (out, _) = run(dir, &args, 0);
    let text = String::from_utf8(out.clone()).unwrap();
    assert_eq!(text.lines().next(), Some("strip.png"));
    let json = json_summary(&out);
    assert_eq!(
        (json["frames"].as_u64(), json["steps"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(json["ends"], "seeds");
}

/// `ddpm sample --format png` on 2-D data draws the true points and the samples side by
/// side, each titled ("data", "samples") in a band above its panel.
#[test]
fn scatter_plots_are_labelled() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let moons = common::config("moons.toml");
    let args = [
        "train",
        "--config",
        moons.to_str().unwrap(),
        "--out",
        "m",
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--quiet",
        "--set",
        "train.sample_every=0",
        "--set",
        "data.num_points=200",
    ];
    run(dir, &args, 0);
    let args = [
        "sample",
        "-c",
        "m/latest.safetensors",
        "-n",
        "50",
        "--steps",
        "5",
        "--sampler",
        "ddim",
        "--out",
        "s.png",
        "--quiet",
    ];
    run(dir, &args, 0);
    let img = png(&dir.join("s.png"));
    // Two 320-pixel panels 4 apart under a 14-pixel band; ink in the band over each panel.
    assert_eq!(img.dimensions(), (644, 334));
    let ink = |x0: u32, x1: u32| {
        (x0..x1)
            .flat_map(|x| (0..14).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == [40, 40, 40])
            .count()
    };
    assert!(ink(0, 320) > 20 && ink(324, 644) > 20);
    assert!(
        ink(324, 644) > ink(0, 320),
        "\"samples\" has more ink than \"data\""
    );
}

//! `ddpm train` and `ddpm sample` on vector data, through the real binary: a CSV file in, CSV
//! samples out; bad point files and image-only options fail with exit 1 and a named cause.

mod common;

use std::path::Path;

use common::run;

/// A tiny MLP config over the point file `data`.
fn write_config(dir: &Path, data: &str) -> String {
    let text = format!(
        r#"
[model]
arch = "mlp"
[model.mlp]
width = 16
blocks = 1
time_dim = 8
[diffusion]
timesteps = 50
[data]
dataset = "points"
path = "{data}"
workers = 1
[train]
steps = 10
batch_size = 16
log_every = 5
sample_every = 10
sample_count = 32
checkpoint_every = 10
[sample]
clip_x0 = false
batch_size = 64
"#
    );
    let path = dir.join("points.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Rows of CSV text after its header: each must have `dim` finite numbers.
fn parse_rows(text: &str, dim: usize) -> Vec<Vec<f64>> {
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(if dim == 3 { "x0,x1,x2" } else { "x,y" })
    );
    lines
        .map(|l| {
            let row: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
            assert_eq!(row.len(), dim, "{l}");
            assert!(row.iter().all(|v| v.is_finite()), "{l}");
            row
        })
        .collect()
}

#[test]
fn train_on_a_csv_file_then_sample_csv_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    // 3-D points in three columns under a header (ten steps train nothing useful: the units of
    // the samples are checked by tests/points_energy.rs, which compares them with the truth).
    let mut csv = String::from("a,b,c\n");
    for i in 0..200 {
        let u = (i as f64 * 0.37).sin();
        let v = (i as f64 * 0.91).cos();
        csv.push_str(&format!(
            "{},{},{}\n",
            10.0 + u,
            -5.0 + 2.0 * v,
            100.0 + 0.5 * u * v
        ));
    }
    std::fs::write(dir.path().join("pts.csv"), csv).unwrap();
    let config = write_config(dir.path(), "pts.csv");
    let run_dir = dir.path().join("run");
    let run_dir = run_dir.to_str().unwrap();
    let (out, _) = run(
        dir.path(),
        &[
            "train", "--config", &config, "--out", run_dir, "--device", "cpu", "--quiet",
        ],
        0,
    );
    assert!(String::from_utf8(out).unwrap().contains("ckpt-00000010"));
    // The scatter plot of the training samples is not drawn for 3-D data... it is refused.
    let ckpt = format!("{run_dir}/latest.safetensors");
    for sampler in ["ddpm", "ddim"] {
        let (out, _) = run(
            dir.path(),
            &[
                "sample",
                "--checkpoint",
                &ckpt,
                "-n",
                "40",
                "--sampler",
                sampler,
                "--out",
                "-",
                "--quiet",
            ],
            0,
        );
        let rows = parse_rows(&String::from_utf8(out).unwrap(), 3);
        assert_eq!(rows.len(), 40);
    }
    let (_, err) = run(
        dir.path(),
        &[
            "sample",
            "--checkpoint",
            &ckpt,
            "-n",
            "4",
            "--grid",
            "--out",
            "-",
        ],
        1,
    );
    assert!(err.contains("--grid") && err.contains("vector"), "{err}");
}

#[test]
fn two_d_samples_write_csv_and_a_scatter_png() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::new();
    for i in 0..100 {
        csv.push_str(&format!("{},{}\n", (i as f64).cos(), (i as f64).sin()));
    }
    std::fs::write(dir.path().join("ring.csv"), csv).unwrap();
    let config = write_config(dir.path(), "ring.csv");
    let (_, _) = run(
        dir.path(),
        &[
            "train", "--config", &config, "--out", "run", "--device", "cpu", "--quiet",
        ],
        0,
    );
    assert!(dir.path().join("run/samples/step-00000010.png").exists());
    let ckpt = "run/latest.safetensors";
    let (out, _) = run(
        dir.path(),
        &[
            "sample",
            "--checkpoint",
            ckpt,
            "-n",
            "8",
            "--out",
            "s.csv",
            "--quiet",
        ],
        0,
    );
    assert_eq!(String::from_utf8(out).unwrap().trim(), "s.csv");
    assert_eq!(
        parse_rows(
            &std::fs::read_to_string(dir.path().join("s.csv")).unwrap(),
            2
        )
        .len(),
        8
    );
    run(
        dir.path(),
        &[
            "sample",
            "--checkpoint",
            ckpt,
            "-n",
            "8",
            "--out",
            "s.png",
            "--quiet",
        ],
        0,
    );
    let img = image::open(dir.path().join("s.png")).unwrap();
    // One 320-pixel panel (data from a file has no true distribution to draw) under its title.
    assert_eq!((img.width(), img.height()), (320, 14 + 320));
}

#[test]
fn bad_point_files_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.csv"), "x,y\n1,2\n3,four\n").unwrap();
    let config = write_config(dir.path(), "bad.csv");
    let (_, err) = run(
        dir.path(),
        &[
            "train", "--config", &config, "--out", "run", "--device", "cpu", "--quiet",
        ],
        1,
    );
    assert!(
        err.contains("bad.csv") && err.contains("line 3") && err.contains("four"),
        "{err}"
    );
    let config = write_config(dir.path(), "missing.npy");
    let (_, err) = run(
        dir.path(),
        &[
            "train", "--config", &config, "--out", "run2", "--device", "cpu", "--quiet",
        ],
        1,
    );
    assert!(err.contains("missing.npy"), "{err}");
}

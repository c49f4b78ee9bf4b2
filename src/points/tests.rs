use super::io::{parse_csv, parse_npy, to_csv};
use super::*;
use crate::rng::{Purpose, Stream};

fn draw(toy: Toy, n: usize, noise: f64) -> Points {
    toy.sample(n, noise, &mut Stream::new(3, Purpose::Eval, 0))
}

fn mean(p: &Points, k: usize) -> f64 {
    (0..p.len()).map(|i| p.row(i)[k]).sum::<f64>() / p.len() as f64
}

#[test]
fn moons_lie_on_their_half_circles_with_mean_half_quarter() {
    let p = draw(Toy::Moons, 20_000, 0.0);
    assert_eq!((p.dim, p.len()), (2, 20_000));
    for i in 0..p.len() {
        let [x, y] = [p.row(i)[0], p.row(i)[1]];
        // Upper moon: unit circle, y >= 0; lower moon: unit circle about (1, 1/2), y <= 1/2.
        let upper = (x * x + y * y - 1.0).abs() < 1e-9 && y >= -1e-12;
        let lower = ((x - 1.0).powi(2) + (y - 0.5).powi(2) - 1.0).abs() < 1e-9 && y <= 0.5 + 1e-12;
        assert!(upper || lower, "({x}, {y}) is on neither moon");
    }
    // E x = (0 + 1) / 2, E y = (2/pi + 1/2 - 2/pi) / 2; sd of x and y < 1, so 4 standard errors
    // of the mean over 20000 points is < 0.03.
    assert!((mean(&p, 0) - 0.5).abs() < 0.03, "{}", mean(&p, 0));
    assert!((mean(&p, 1) - 0.25).abs() < 0.03, "{}", mean(&p, 1));
}

#[test]
fn swiss_roll_radius_is_its_angle_over_five() {
    let p = draw(Toy::SwissRoll, 5_000, 0.0);
    let (lo, hi) = (0.3 * PI, 0.9 * PI);
    for i in 0..p.len() {
        let [x, y] = [p.row(i)[0], p.row(i)[1]];
        let r = (x * x + y * y).sqrt();
        assert!(r >= lo - 1e-9 && r <= hi + 1e-9, "radius {r}");
        // t = 5 r, and (x, y) = r (cos t, sin t).
        let t = 5.0 * r;
        assert!((x - r * t.cos()).abs() < 1e-9 && (y - r * t.sin()).abs() < 1e-9);
    }
    // t uniform on [1.5 pi, 4.5 pi]: E r = 3 pi / 5.
    let mean_r = (0..p.len())
        .map(|i| p.row(i).iter().map(|v| v * v).sum::<f64>().sqrt())
        .sum::<f64>()
        / p.len() as f64;
    assert!((mean_r - 0.6 * PI).abs() < 0.03, "{mean_r}");
}

#[test]
fn eight_gaussians_have_their_means_on_the_circle_and_their_spread() {
    let sd = Toy::EightGaussians.default_noise();
    let p = draw(Toy::EightGaussians, 16_000, sd);
    let mut sums = [[0.0f64; 3]; 8];
    for i in 0..p.len() {
        let [x, y] = [p.row(i)[0], p.row(i)[1]];
        // Nearest centre by angle: the centres are 2.2 apart, 6 sd, so no point is misassigned
        // in practice.
        let k = ((y.atan2(x) / (PI / 4.0)).round() as i64).rem_euclid(8) as usize;
        sums[k][0] += x;
        sums[k][1] += y;
        sums[k][2] += 1.0;
    }
    for (k, [sx, sy, n]) in sums.iter().enumerate() {
        let a = k as f64 * PI / 4.0;
        // About 2000 per component: 4 standard errors of its count (sqrt(2000 * 7/8) = 42).
        assert!((n - 2000.0).abs() < 170.0, "component {k}: {n} points");
        // Mean within 4 sd / sqrt(n) = 0.032 of the centre.
        let (mx, my) = (sx / n, sy / n);
        assert!(
            (mx - EIGHT_GAUSSIANS_RADIUS * a.cos()).abs() < 0.032,
            "{k}: {mx}"
        );
        assert!(
            (my - EIGHT_GAUSSIANS_RADIUS * a.sin()).abs() < 0.032,
            "{k}: {my}"
        );
    }
    // E|x|^2 = R^2 + 2 sd^2 = 8.25.
    let m2 = p.values.iter().map(|v| v * v).sum::<f64>() / p.len() as f64;
    assert!((m2 - 8.25).abs() < 0.05, "{m2}");
}

#[test]
fn standardization_gives_zero_mean_unit_scale_and_round_trips() {
    let p = Points::new(2, vec![1.0, 5.0, 3.0, 5.0, 5.0, 5.0]).unwrap();
    let s = Standardization::fit(&p);
    assert_eq!(s.mean, vec![3.0, 5.0]);
    // Population sd of (1, 3, 5) = sqrt(8/3); a constant column gets scale 1.
    assert!((s.scale[0] - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
    assert_eq!(s.scale[1], 1.0);
    let z = s.apply(&p);
    assert!((mean(&z, 0)).abs() < 1e-12 && z.row(1) == [0.0, 0.0]);
    let back = s.undo(&z);
    for (a, b) in back.values.iter().zip(&p.values) {
        assert!((a - b).abs() < 1e-12);
    }
    let meta = Standardization::from_meta(&s.to_meta().unwrap()).unwrap();
    assert_eq!(meta, s);
    assert!(Standardization::from_meta("{\"mean\":[0],\"scale\":[0]}").is_err());
}

#[test]
fn csv_reads_with_or_without_a_header_and_round_trips() {
    let p = parse_csv("x,y\n1,2\n\n3.5, -4e-1\n", "a.csv").unwrap();
    assert_eq!(p, Points::new(2, vec![1.0, 2.0, 3.5, -0.4]).unwrap());
    let q = parse_csv("1,2,3\n4,5,6", "b.csv").unwrap();
    assert_eq!((q.dim, q.len()), (3, 2));
    let text = to_csv(&p);
    assert!(text.starts_with("x,y\n1,2\n3.5,-0.4\n"), "{text}");
    assert_eq!(parse_csv(&text, "c.csv").unwrap(), p);
    assert!(to_csv(&q).starts_with("x0,x1,x2\n"));
}

#[test]
fn bad_csv_is_named_by_file_line_and_column() {
    let err = |text: &str| parse_csv(text, "pts.csv").unwrap_err().to_string();
    let e = err("x,y\n1,2\n3,oops\n");
    assert!(
        e.contains("pts.csv")
            && e.contains("line 3")
            && e.contains("column 2")
            && e.contains("oops"),
        "{e}"
    );
    let e = err("1,2\n3,4,5\n");
    assert!(e.contains("line 2") && e.contains("3 columns"), "{e}");
    let e = err("1,nan\n");
    assert!(e.contains("line 1") && e.contains("column 2"), "{e}");
    assert!(err("").contains("no data rows"));
    assert!(err("x,y\n").contains("no data rows"));
    // A mixed first line is a bad data line, not a header.
    assert!(err("x,2\n1,2\n").contains("line 1"));
}

/// A .npy file as numpy.save writes it (format 1.0, header padded to a multiple of 64).
fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    let mut header = dict.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header);
    out.extend(data);
    out
}

#[test]
fn npy_reads_f32_f64_and_fortran_order() {
    let f32s: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let p = parse_npy(&npy("<f4", false, "(3, 2)", &f32s), "a.npy").unwrap();
    assert_eq!(p, Points::new(2, vec![1., 2., 3., 4., 5., 6.]).unwrap());
    // Column-major: columns (1, 2, 3) and (4, 5, 6).
    let f64s: Vec<u8> = [1f64, 2., 3., 4., 5., 6.]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let q = parse_npy(&npy("<f8", true, "(3, 2)", &f64s), "b.npy").unwrap();
    assert_eq!(q, Points::new(2, vec![1., 4., 2., 5., 3., 6.]).unwrap());
}

#[test]
fn bad_npy_names_the_file_and_the_problem() {
    let err = |b: Vec<u8>| parse_npy(&b, "v.npy").unwrap_err().to_string();
    let e = err(npy("<i8", false, "(1, 2)", &[0; 16]));
    assert!(
        e.contains("v.npy") && e.contains("<i8") && e.contains("float32"),
        "{e}"
    );
    let e = err(npy("<f4", false, "(2, 2, 2)", &[0; 32]));
    assert!(e.contains("rank 3"), "{e}");
    let e = err(npy("<f4", false, "(6,)", &[0; 24]));
    assert!(e.contains("rank 1"), "{e}");
    let e = err(npy("<f4", false, "(2, 2)", &[0; 12]));
    assert!(e.contains("12 data bytes"), "{e}");
    assert!(err(npy("<f4", false, "(0, 2)", &[])).contains("no points"));
    // Parentheses the wrong way round once sliced the header backwards (a panic).
    assert!(err(npy("<f4", false, ")2, 2(", &[0; 16])).contains("no readable 'shape'"));
    // (2^62 + 2) rows of 2 float64s are 2^66 + 32 bytes, which wrapped to the 32 given: two
    // points in C order, and a 2^63-element allocation in Fortran order.
    for fortran in [false, true] {
        let e = err(npy("<f8", fortran, "(4611686018427387906, 2)", &[0; 32]));
        assert!(
            e.contains("32 data bytes for shape (4611686018427387906, 2)"),
            "{e}"
        );
    }
    assert!(err(b"hello world".to_vec()).contains("not a .npy"));
}

fn validate(text: &str) -> std::result::Result<crate::config::Config, String> {
    let cfg = crate::config::Config::from_toml(text, "t.toml").map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

const MLP: &str = "[model]\narch = \"mlp\"\n[sample]\nclip_x0 = false\n";

#[test]
fn vector_configs_are_checked_together_and_name_the_key() {
    let ok = validate(&format!("{MLP}[data]\ndataset = \"moons\"\n")).unwrap();
    assert_eq!(ok.data.example_shape(), vec![2]);
    assert_eq!(ok.out_channels(), 2);
    let cases = [
        ("[model]\narch = \"unet\"\n[data]\ndataset = \"moons\"\n", "model.arch"),
        ("[model]\narch = \"mlp\"\n[sample]\nclip_x0 = false\n", "model.arch"),
        ("[model]\narch = \"mlp\"\n[data]\ndataset = \"moons\"\n", "sample.clip_x0"),
        (
            "[model]\narch = \"mlp\"\nnum_classes = 3\n[data]\ndataset = \"moons\"\n[sample]\nclip_x0 = false\n",
            "model.num_classes",
        ),
        (
            "[model]\narch = \"mlp\"\ndropout = 0.0\n[data]\ndataset = \"moons\"\n[sample]\nclip_x0 = false\n",
            "model.dropout",
        ),
        ("[model]\narch = \"unet\"\n[model.mlp]\nwidth = 64\n", "[model.mlp]"),
        ("[data]\ndataset = \"points\"\n", "data.path"),
        ("[data]\ndataset = \"moons\"\npath = \"a.csv\"\n", "data.path"),
        ("[data]\ndataset = \"moons\"\nnoise = -1.0\n", "data.noise"),
        ("[data]\ndataset = \"points\"\npath = \"a.csv\"\nnoise = 0.1\n", "data.noise"),
        ("[data]\ndataset = \"8gaussians\"\ndim = 3\n", "data.dim"),
        ("[data]\ndataset = \"swiss_roll\"\nnum_points = 1\n", "data.num_points"),
        ("[data]\ndataset = \"moons\"\nclass_labels = true\n", "data.class_labels"),
        ("[model.mlp]\ntime_dim = 5\n[data]\ndataset = \"moons\"\n", "model.mlp.time_dim"),
    ];
    for (text, key) in cases {
        let text = if text.starts_with("[model]") {
            text.to_string()
        } else {
            format!("{MLP}{text}")
        };
        let e = validate(&text).unwrap_err();
        assert!(e.contains(key), "{text}: {e}");
    }
    assert!(validate(&format!("{MLP}[model.mlp]\nwidht = 3\n"))
        .unwrap_err()
        .contains("widht"));
}

#[test]
fn shipped_point_configs_validate_and_open_their_data() {
    for name in ["moons", "swiss_roll", "8gaussians"] {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("configs/{name}.toml"));
        let cfg = crate::config::Config::load(&path, &[]).unwrap();
        let data = crate::data::open(&cfg.data).unwrap();
        assert_eq!(
            (data.len(), data.example_shape()),
            (10_000, vec![2]),
            "{name}"
        );
        let s = data.standardization().unwrap();
        assert_eq!(s.mean.len(), 2);
    }
}

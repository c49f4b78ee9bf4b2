//! The bad-input corpus: every case of tests/corpus/cases.txt (configs, image folders, point
//! files, checkpoints, command-line arguments) must end with its exit code (1 or 2) and exactly
//! one line on stderr that names the culprit, never a panic or an abort, within seconds and
//! under a 4 GiB address-space limit (RLIMIT_AS, set in the child before it starts). Small
//! inputs are committed in tests/corpus/files/; binary and large ones are generated here
//! (`generate`), most of the checkpoints from one trained on configs/tiny.toml. To add a case,
//! add a line to cases.txt (and, if it needs a new file, a few lines to `generate`).

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use ddpm::checkpoint;

/// The address space each case may use.
const MEMORY_LIMIT: u64 = 4 << 30;
/// The longest a case may take (a loaded 2-core machine runs several at once).
const TIME_LIMIT: Duration = Duration::from_secs(10);
/// When a case is killed as hung.
const KILL_AFTER: Duration = Duration::from_secs(30);

/// One line of cases.txt.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    code: i32,
    culprit: String,
    args: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// The cases, placeholders replaced from `vars`.
fn cases(vars: &BTreeMap<&str, String>) -> Vec<Case> {
    let text = std::fs::read_to_string(corpus_dir().join("cases.txt")).unwrap();
    let fill = |s: &str| {
        vars.iter()
            .fold(s.to_string(), |s, (k, v)| s.replace(&format!("{{{k}}}"), v))
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.splitn(4, " | ").collect();
            assert_eq!(cols.len(), 4, "not `name | code | culprit | args`: {l}");
            let mut args: Vec<String> = cols[3].split(' ').map(fill).collect();
            let computes = ["train", "sample", "interpolate", "eval"]
                .contains(&cols[3].split(' ').next().unwrap_or(""));
            if computes && !args.iter().any(|a| a == "--device") {
                args.extend(["--device".to_string(), "cpu".to_string()]);
            }
            if computes {
                args.push("--quiet".to_string());
            }
            Case {
                name: cols[0].to_string(),
                code: cols[1]
                    .parse()
                    .unwrap_or_else(|_| panic!("bad code in {l}")),
                culprit: fill(cols[2]),
                args,
            }
        })
        .collect()
}

/// A .npy file (format 1.0) with the header dict `dict` and `data` after it.
fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.as_bytes().to_vec();
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

fn f4(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A PNG whose header claims `side` x `side` grey pixels, with almost no data: a decoder that
/// trusts the header allocates side^2 bytes.
fn png_bomb(side: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], body: &[u8]| {
        let mut c = (body.len() as u32).to_be_bytes().to_vec();
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(body);
        c.extend(kind);
        c.extend(body);
        c.extend(crc.finalize().to_be_bytes());
        c
    };
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend(side.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 1 << 16]).unwrap();
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    out.extend(chunk(b"IDAT", &idat));
    out.extend(chunk(b"IEND", &[]));
    out
}

fn write_png(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 29 + y * 7) as u8]))
        .save(path)
        .unwrap();
}

/// The header of a checkpoint's bytes, as text.
fn header(bytes: &[u8]) -> String {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    String::from_utf8(bytes[8..8 + n].to_vec()).unwrap()
}

/// `bytes` with `from` replaced by `to` (of the same length) in the header.
fn edit_header(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let h = header(bytes);
    assert!(h.contains(from), "{from} not in the header");
    let mut out = bytes.to_vec();
    out[8..8 + h.len()].copy_from_slice(h.replacen(from, to, 1).as_bytes());
    out
}

/// The `[a,b]` data offsets of tensor `name` in a header.
fn offsets(h: &str, name: &str) -> String {
    let at = h.find(&format!("\"{name}\":")).unwrap();
    let from = at + h[at..].find("\"data_offsets\":").unwrap() + 15;
    let to = from + h[from..].find(']').unwrap() + 1;
    h[from..to].to_string()
}

/// Re-save checkpoint `src` as `dst` after `edit` (with a valid checksum of the result).
fn resave(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, Tensor>, &mut BTreeMap<String, String>),
) {
    let mut ck = checkpoint::load(src).unwrap();
    edit(&mut ck.tensors, &mut ck.metadata);
    let tensors: Vec<(String, Tensor)> = ck.tensors.into_iter().collect();
    checkpoint::save(dst, &tensors, &ck.metadata).unwrap();
}

/// The files the cases name under {t}, and the two trained checkpoints.
fn generate(t: &Path) -> (PathBuf, PathBuf) {
    let tiny = common::config("tiny.toml");
    let moons = common::config("moons.toml");
    common::run(
        t,
        &[
            "train",
            "--config",
            tiny.to_str().unwrap(),
            "--out",
            "run",
            "--max-steps",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ],
        0,
    );
    common::run(
        t,
        &[
            "train",
            "--config",
            moons.to_str().unwrap(),
            "--out",
            "pts",
            "--max-steps",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--set",
            "train.sample_every=0",
        ],
        0,
    );
    let (ckpt, pts) = (
        t.join("run/latest.safetensors"),
        t.join("pts/latest.safetensors"),
    );

    // Special files.
    std::fs::create_dir(t.join("folder")).unwrap();
    let fifo = std::ffi::CString::new(t.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let write = |name: &str, bytes: &[u8]| std::fs::write(t.join(name), bytes).unwrap();
    write(
        "big.toml",
        &[b"# ".as_slice(), &vec![b'x'; 2 << 20]].concat(),
    );
    write("bad\x1b[31m\nname.toml", b"x");

    // Images.
    write_png(&t.join("digit.png"), 8, 8);
    std::fs::create_dir(t.join("images-empty")).unwrap();
    write_png(&t.join("images-broken/a.png"), 8, 8);
    write("images-broken/broken.png", b"not a png at all");
    write_png(&t.join("images-small/a.png"), 8, 8);
    write_png(&t.join("images-small/tiny.png"), 4, 6);
    write_png(&t.join("images-bomb/a.png"), 8, 8);
    write("images-bomb/bomb.png", &png_bomb(100_000));

    // Points.
    write("good.csv", b"x,y\n1,2\n3,4\n5,6\n");
    let dict = |descr: &str, fortran: bool, shape: &str| {
        let order = if fortran { "True" } else { "False" };
        format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}")
    };
    let four = f4(&[1., 2., 3., 4.]);
    write("backwards.npy", &npy(&dict("<f4", false, ")2, 2("), &four));
    // (2^62 + 2) rows of two float64s: 2^66 + 32 bytes, which wrap to the 32 given.
    let rows62 = "(4611686018427387906, 2)";
    write("rows62-c.npy", &npy(&dict("<f8", false, rows62), &[0; 32]));
    write("rows62-f.npy", &npy(&dict("<f8", true, rows62), &[0; 32]));
    write("int64.npy", &npy(&dict("<i8", false, "(2, 2)"), &[0; 32]));
    write("rank3.npy", &npy(&dict("<f4", false, "(1, 2, 2)"), &four));
    write("short.npy", &npy(&dict("<f4", false, "(3, 2)"), &four));
    write("magic.npy", b"\x93NUMPZ\x01\x00\x10\x00{}");
    let mut v9 = npy(&dict("<f4", false, "(2, 2)"), &four);
    v9[6] = 9;
    write("version9.npy", &v9);
    write(
        "header-past-end.npy",
        b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{'descr'",
    );
    write(
        "nan.npy",
        &npy(&dict("<f4", false, "(2, 2)"), &f4(&[1., f32::NAN, 3., 4.])),
    );
    write("no-rows.npy", &npy(&dict("<f4", false, "(0, 2)"), &[]));

    // Checkpoints: cut, foreign and damaged bytes.
    let good = std::fs::read(&ckpt).unwrap();
    write("empty.safetensors", b"");
    write("half.safetensors", &good[..good.len() / 2]);
    write("cut-header.safetensors", &good[..20]);
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write("garbage.safetensors", &junk);
    write("text.safetensors", b"this is a text file, not tensors\n");
    let mut huge = good.clone();
    huge[..8].fill(0xff);
    write("huge-header.safetensors", &huge);
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 1;
    write("flipped.safetensors", &flipped);
    write(
        "edited.safetensors",
        &edit_header(&good, "decay = 0.99", "decay = 0.98"),
    );
    let h = header(&good);
    // Two tensors of one shape and different values (the norm's scale starts at 1, the bias
    // at 0), their data swapped through their offsets.
    let (a, b) = (
        offsets(&h, "model.norm_out.weight"),
        offsets(&h, "model.conv_in.bias"),
    );
    let swapped = h
        .replacen(&a, "@A@", 1)
        .replacen(&b, &a, 1)
        .replacen("@A@", &b, 1);
    write("swapped.safetensors", &edit_header(&good, &h, &swapped));
    write(
        "format0.safetensors",
        &edit_header(&good, "\"ddpm-1\"", "\"ddpm-0\""),
    );
    write(
        "no-format.safetensors",
        &edit_header(&good, "\"format\":", "\"formaX\":"),
    );
    write(
        "no-config.safetensors",
        &edit_header(&good, "\"config\":", "\"confiX\":"),
    );
    std::fs::create_dir(t.join("broken-run")).unwrap();
    write("broken-run/ckpt-00000001.safetensors", &flipped);

    // Checkpoints: well-formed files (valid checksums) whose contents are wrong.
    let cpu = Device::Cpu;
    let at = |name: &str| t.join(name);
    resave(&ckpt, &at("nan.safetensors"), |ts, _| {
        let w = ts["ema.conv_in.weight"].flatten_all().unwrap();
        let mut v: Vec<f32> = w.to_vec1().unwrap();
        v[0] = f32::NAN;
        let shape = ts["ema.conv_in.weight"].shape().clone();
        ts.insert(
            "ema.conv_in.weight".into(),
            Tensor::from_vec(v, shape, &cpu).unwrap(),
        );
    });
    resave(&ckpt, &at("inf-moments.safetensors"), |ts, _| {
        let key = ts
            .iter()
            .find(|(k, t)| k.starts_with("optim.") && t.dtype() == DType::F32 && t.rank() == 1)
            .map(|(k, _)| k.clone())
            .unwrap();
        let mut v: Vec<f32> = ts[&key].to_vec1().unwrap();
        v[0] = f32::INFINITY;
        ts.insert(key, Tensor::new(v, &cpu).unwrap());
    });
    let config = |edit: fn(&str) -> String| {
        move |_: &mut BTreeMap<String, Tensor>, m: &mut BTreeMap<String, String>| {
            let c = m["config"].clone();
            m.insert("config".into(), edit(&c));
        }
    };
    resave(
        &ckpt,
        &at("timesteps.safetensors"),
        config(|c| c.replace("timesteps = 100\n", "timesteps = 1000000000\n")),
    );
    resave(
        &ckpt,
        &at("unknown-key.safetensors"),
        config(|c| c.replace("[model]\n", "[model]\nwidht = 3\n")),
    );
    resave(
        &ckpt,
        &at("not-toml.safetensors"),
        config(|_| "{{{ not toml".into()),
    );
    resave(&ckpt, &at("missing-tensor.safetensors"), |ts, _| {
        ts.remove("ema.conv_in.weight");
    });
    resave(&ckpt, &at("wrong-shape.safetensors"), |ts, _| {
        ts.insert(
            "ema.conv_in.bias".into(),
            Tensor::zeros(3, DType::F32, &cpu).unwrap(),
        );
    });
    resave(&ckpt, &at("stray.safetensors"), |ts, _| {
        ts.insert(
            "model.extra".into(),
            Tensor::zeros(2, DType::F32, &cpu).unwrap(),
        );
    });
    resave(&ckpt, &at("step.safetensors"), |_, m| {
        m.insert("step".into(), "abc".into());
    });
    resave(&pts, &at("no-standardisation.safetensors"), |_, m| {
        m.remove("standardization");
    });
    (ckpt, pts)
}

/// How a case ended.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// Run `ddpm args` in `dir` under the memory limit, killing it after `KILL_AFTER`.
fn run_case(dir: &Path, args: &[String]) -> Outcome {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("ddpm"));
    cmd.current_dir(dir)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only calls setrlimit, which is
    // async-signal-safe, on limits of the child itself.
    unsafe {
        cmd.pre_exec(|| {
            let limit = |bytes| libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit(MEMORY_LIMIT)) != 0
                || libc::setrlimit(libc::RLIMIT_CORE, &limit(0)) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > KILL_AFTER {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        code: status.code(),
        stderr: reader.join().unwrap(),
        took: start.elapsed(),
    }
}

/// What is wrong with `out` for `case`, if anything.
fn judge(case: &Case, out: &Outcome) -> Option<String> {
    let lines: Vec<&str> = out.stderr.lines().collect();
    let problem = if out.stderr.contains("panicked") {
        "it panicked".to_string()
    } else if out.code != Some(case.code) {
        format!("exit code {:?}, expected {}", out.code, case.code)
    } else if lines.len() != 1 {
        format!("{} lines on stderr, expected one", lines.len())
    } else if !lines[0].starts_with("ddpm: ") {
        "the line does not start with `ddpm: `".to_string()
    } else if !lines[0].contains(&case.culprit) {
        format!("the line does not name `{}`", case.culprit)
    } else if out.took > TIME_LIMIT {
        format!("it took {:.1} s", out.took.as_secs_f64())
    } else {
        return None;
    };
    Some(format!(
        "{}: {problem}\n    args: {:?}\n    stderr: {}",
        case.name,
        case.args,
        out.stderr.trim_end()
    ))
}

#[test]
fn every_bad_input_gets_one_line_naming_the_culprit_and_no_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("t");
    std::fs::create_dir(&t).unwrap();
    let (ckpt, pts) = generate(&t);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let vars = BTreeMap::from([
        ("tiny", s(&common::config("tiny.toml"))),
        ("moons", s(&common::config("moons.toml"))),
        ("c", s(&corpus_dir().join("files"))),
        ("t", s(&t)),
        ("ckpt", s(&ckpt)),
        ("pts", s(&pts)),
        ("esc", "\x1b".to_string()),
        ("nl", "\n".to_string()),
    ]);
    let cases = cases(&vars);
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");

    // Each case is a small process: run several at once.
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let dir = tmp.path().join("cases").join(&case.name);
                std::fs::create_dir_all(&dir).unwrap();
                let out = run_case(&dir, &case.args);
                if let Some(f) = judge(case, &out) {
                    failures.lock().unwrap().push(f);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

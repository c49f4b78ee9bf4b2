#!/usr/bin/env python3
"""Sample-quality numbers and README pictures: the 8x8 digits in pixel space (numpy only), and
FID through the binary (`ddpm fid`) for CIFAR-like image data.

The real data are read from src/data/digits.csv.gz and scaled like training data
(x = v / 8 - 1, v in 0..16). Sample arrays are `ddpm sample --format npy` files:
(N, 1, 8, 8) float32 in [-1, 1].

  quality.py floor [N]                 FD noise floor of the real digits (N: N vs the rest)
  quality.py fd S.npy...               FD (and label entropy) of each sample file
  quality.py classify S.npy...         nearest-centroid rate of image i labelled i mod 10
  quality.py sweep DIR                 markdown table of DIR/SAMPLER-STEPS.npy (+ .json: seconds, NFE)
  quality.py guidance DIR              markdown table of DIR/w*.npy (+ .json: seconds, NFE)
  quality.py eval FILE.jsonl           markdown table of `ddpm eval --json` lines
  quality.py digit I OUT.png           real digit I as an 8x8 PNG (for --init)
  quality.py mask KIND OUT.png         an 8x8 mask, white = regenerate (KIND: bottom, right)
  quality.py sdedit OUT.png SCALE INIT.npy S1.npy...    one row per file: input, then samples
  quality.py inpaint OUT.png SCALE INIT.npy MASK.png-kind S.npy
  quality.py pngdiff A.png B.png       max and mean |A - B| in grey levels of two 8-bit grey PNGs
  quality.py fid DIR REAL [ARGS...]    markdown table: `ddpm fid` (and KID) of each DIR/*.npy of
                                       samples against REAL (a folder or a pytorch-fid .npz);
                                       ARGS go to ddpm (e.g. --inception F); $DDPM: the binary

The digits stay in the 64-dim pixel space: Inception features of 8x8 grey digits upscaled to
299x299 would mostly measure the upscaling (see the README). FID fits 32x32 and larger natural
images, and there the binary computes it exactly as pytorch-fid does.

FD is the Frechet distance between Gaussian fits in the 64-dim pixel space,
|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).
"""

import gzip
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def real_digits():
    """(1797, 64) pixels in [-1, 1] and (1797,) labels."""
    with gzip.open(ROOT / "src/data/digits.csv.gz", "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return rows[:, :64].astype(np.float64) / 8.0 - 1.0, rows[:, 64]


def load(path):
    x = np.load(path).astype(np.float64)
    return x.reshape(x.shape[0], -1)


def _sqrt_psd(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fd(a, b):
    """Frechet distance between Gaussian fits of the rows of a and b."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def centroids(x, y):
    return np.stack([x[y == k].mean(0) for k in range(10)])


def nearest(c, x):
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)


def label_entropy(labels):
    """Entropy (nats) of the label histogram; ln 10 = 2.303 when every digit is equally common."""
    p = np.bincount(labels, minlength=10) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def cmd_floor(n=None):
    """FD between real digits only: two random halves, the data and a bootstrap of itself, and
    (with n) n random digits against the other 1797 - n, the floor of an n-sample FD."""
    x, y = real_digits()
    n = n if n and n < len(x) - 64 else None
    rng, rng_n = np.random.default_rng(0), np.random.default_rng(1)
    halves = []
    boots = []
    subsets = []
    for _ in range(10):
        if n:
            perm = rng_n.permutation(len(x))
            subsets.append(fd(x[perm[:n]], x[perm[n:]]))
        perm = rng.permutation(len(x))
        h = len(x) // 2
        halves.append(fd(x[perm[:h]], x[perm[h:]]))
        boots.append(fd(x, x[rng.integers(0, len(x), len(x))]))
    c = centroids(x, y)
    own = float((nearest(c, x) == y).mean())
    out = {
        "fd_halves_mean": float(np.mean(halves)),
        "fd_halves_sd": float(np.std(halves)),
        "fd_bootstrap_mean": float(np.mean(boots)),
        "fd_bootstrap_sd": float(np.std(boots)),
        "classifier_accuracy_on_data": own,
        "label_entropy_real": label_entropy(nearest(c, x)),
        "n_real": len(x),
    }
    if n:
        out[f"fd_{n}_vs_rest_mean"] = float(np.mean(subsets))
        out[f"fd_{n}_vs_rest_sd"] = float(np.std(subsets))
    print(json.dumps(out))


def cmd_fd(paths):
    x, y = real_digits()
    c = centroids(x, y)
    for p in paths:
        s = load(p)
        print(json.dumps({
            "file": Path(p).name,
            "n": len(s),
            "fd": fd(s, x),
            "label_entropy": label_entropy(nearest(c, s)),
        }))


def cmd_classify(paths):
    x, y = real_digits()
    c = centroids(x, y)
    for p in paths:
        s = load(p)
        want = np.arange(len(s)) % 10
        print(json.dumps({
            "file": Path(p).name,
            "n": len(s),
            "rate": float((nearest(c, s) == want).mean()),
        }))


def run_info(npy):
    """Seconds and network evaluations per image, from the `ddpm sample --json` line saved
    beside the samples (NaN where absent)."""
    j = Path(npy).with_suffix(".json")
    lines = [l for l in j.read_text().splitlines() if l.startswith("{")] if j.exists() else []
    if not lines:
        return float("nan"), float("nan")
    info = json.loads(lines[-1])
    return float(info["seconds"]), float(info.get("network_evaluations_per_image", "nan"))


def cmd_sweep(d):
    x, y = real_digits()
    c = centroids(x, y)
    rows = []
    for p in sorted(Path(d).glob("*.npy")):
        sampler, steps = p.stem.rsplit("-", 1)
        s = load(p)
        seconds, nfe = run_info(p)
        rows.append((sampler, int(steps), nfe, fd(s, x), label_entropy(nearest(c, s)), seconds,
                     len(s)))
    order = ["ddim", "dpm++2m", "heun", "pc", "ddpm"]
    rows.sort(key=lambda r: (order.index(r[0]) if r[0] in order else 99, r[1]))
    print("| sampler | steps | NFE | FD | label entropy | seconds | n |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:g} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.1f} | {r[6]} |")


def cmd_guidance(d):
    x, y = real_digits()
    c = centroids(x, y)
    print("| w | samples classified as requested | n | seconds |")
    print("| --- | --- | --- | --- |")
    for p in sorted(Path(d).glob("w*.npy"), key=lambda p: float(p.stem[1:])):
        s = load(p)
        rate = float((nearest(c, s) == np.arange(len(s)) % 10).mean())
        print(f"| {p.stem[1:]} | {100 * rate:.1f}% | {len(s)} | {run_info(p)[0]:.1f} |")


def cmd_eval(path):
    print("| model | n | bound (bpd) | prior | diffusion | decoder | bound s | "
          "ODE (bpd) | Hutchinson SE | ODE NFE | ODE s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for line in Path(path).read_text().splitlines():
        if not line.startswith("{"):
            continue
        j = json.loads(line)
        b, o = j["bound"], j["ode"]

        def est(e):
            return f"{e['mean']:.3f} ± {e['se']:.3f}"

        h = o["hutchinson_se"]
        hse = "-" if h is None else f"{h:.3f}"
        print(f"| step {j['step']} | {j['examples']} | {est(b['total'])} | {est(b['prior'])} | "
              f"{est(b['diffusion'])} | {est(b['decoder'])} | {b['seconds']:.0f} | "
              f"{est(o['bpd'])} | {hse} | {o['evaluations']} | "
              f"{o['seconds']:.0f} |")


def write_png(path, img):
    """8-bit greyscale PNG of a 2-D uint8 array."""
    h, w = img.shape
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))

    def chunk(tag, data):
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def read_png(path):
    """2-D uint8 array of an 8-bit greyscale, non-interlaced PNG (what ddpm writes for 1 channel)."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if tag == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, color, interlace) != (8, 0, 0):
                raise SystemExit(f"{path}: not an 8-bit grey non-interlaced PNG")
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    out = np.zeros((h, w), np.int64)
    prev = np.zeros(w, np.int64)
    for y in range(h):
        f = raw[y * (w + 1)]
        row = np.frombuffer(raw, np.uint8, w, y * (w + 1) + 1).astype(np.int64)
        cur = np.zeros(w, np.int64)
        for x in range(w):  # the five filters of the PNG spec, bpp = 1
            a = cur[x - 1] if x else 0
            b, c = prev[x], (prev[x - 1] if x else 0)
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (row[x] + pred) % 256
        out[y], prev = cur, cur
    return out.astype(np.uint8)


def cmd_pngdiff(a, b):
    d = np.abs(read_png(a).astype(np.int64) - read_png(b).astype(np.int64))
    print(f"max {d.max()} mean {d.mean():.2f}")


def to_u8(x):
    """[-1, 1] -> 0..255, as ddpm writes PNGs."""
    return np.clip(np.round((np.asarray(x) + 1) * 127.5), 0, 255).astype(np.uint8)


def mosaic(rows, scale, gap=1, gap_value=128):
    """rows: lists of 8x8 uint8 tiles; a `None` tile leaves an empty (grey) slot."""
    cols = max(len(r) for r in rows)
    t = 8 * scale
    out = np.full((len(rows) * (t + gap) + gap, cols * (t + gap) + gap), gap_value, np.uint8)
    for i, r in enumerate(rows):
        for j, tile in enumerate(r):
            if tile is None:
                continue
            big = np.kron(tile, np.ones((scale, scale), np.uint8))
            y0, x0 = gap + i * (t + gap), gap + j * (t + gap)
            out[y0:y0 + t, x0:x0 + t] = big
    return out


def tiles(path):
    return [to_u8(v.reshape(8, 8)) for v in load(path)]


def mask_array(kind):
    m = np.zeros((8, 8), np.uint8)
    if kind == "bottom":
        m[4:, :] = 255
    elif kind == "right":
        m[:, 4:] = 255
    else:
        raise SystemExit(f"unknown mask {kind}")
    return m


def cmd_digit(i, out):
    x, _ = real_digits()
    write_png(out, to_u8(x[int(i)].reshape(8, 8)))


def cmd_sdedit(out, scale, init, rows):
    first = tiles(init)[0]
    write_png(out, mosaic([[first, None] + tiles(p) for p in rows], int(scale)))


def cmd_inpaint(out, scale, init, kind, samples):
    first = tiles(init)[0]
    m = mask_array(kind)
    holed = np.where(m > 0, 128, first).astype(np.uint8)
    write_png(out, mosaic([[first, m, holed, None] + tiles(samples)], int(scale)))


def cmd_fid(d, real, extra):
    """`ddpm fid S.npy REAL --kid --json` for each sample file of DIR, as one markdown table."""
    import os
    import subprocess
    ddpm = os.environ.get("DDPM", str(ROOT / "target/release/ddpm"))
    print("| samples | n | FID | KID (x 1e3) | seconds |")
    print("| --- | --- | --- | --- | --- |")
    kid = ["--kid"] if Path(real).is_dir() else []  # a statistics file has no features for KID
    for p in sorted(Path(d).glob("*.npy")):
        out = subprocess.run([ddpm, "fid", str(p), real, *kid, "--json", "--quiet", *extra],
                             check=True, capture_output=True, text=True).stdout
        j = json.loads(out.splitlines()[-1])
        n = j["sides"][0]["images"]
        kid = f"{1e3 * j['kid']:.2f} ± {1e3 * j['kid_std']:.2f}" if j["kid"] is not None else ""
        print(f"| {p.stem} | {n} | {j['fid']:.2f} | {kid} | {j['seconds']:.0f} |")


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "floor":
        cmd_floor(int(args[0]) if args else None)
    elif cmd == "fd":
        cmd_fd(args)
    elif cmd == "classify":
        cmd_classify(args)
    elif cmd == "sweep":
        cmd_sweep(args[0])
    elif cmd == "guidance":
        cmd_guidance(args[0])
    elif cmd == "eval":
        cmd_eval(args[0])
    elif cmd == "digit":
        cmd_digit(*args)
    elif cmd == "mask":
        write_png(args[1], mask_array(args[0]))
    elif cmd == "sdedit":
        cmd_sdedit(args[0], args[1], args[2], args[3:])
    elif cmd == "inpaint":
        cmd_inpaint(*args)
    elif cmd == "pngdiff":
        cmd_pngdiff(*args)
    elif cmd == "fid":
        cmd_fid(args[0], args[1], args[2:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

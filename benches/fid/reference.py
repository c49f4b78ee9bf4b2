"""Reference values for ddpm's FID and KID, computed with pytorch-fid's own code (and
torch-fidelity's KID), written as the fixtures under tests/fixtures/fid/. Not run by CI.

    python benches/fid/reference.py [OUT_DIR]      # default tests/fixtures/fid

Needs torch, torchvision, pytorch-fid, torch-fidelity, numpy, scipy, pillow, safetensors and a
Rust toolchain (it runs `cargo bench --bench fid_seeded_weights`). It writes:

- images/*.png: 8 fixed images of different sizes and modes (RGB, grey, RGBA, smaller and
  larger than 299x299).
- seeded_features.npy: pool3 features (8, 2048) float32 of those images through pytorch-fid's
  InceptionV3 (FIDInceptionV3 blocks, resize and scaling included), loaded with the seeded
  weights that ddpm draws (seed TEST_SEED of src/fid/seeded.rs).
- sets.npz and expected.json: two fixed feature sets (200 x 24, float64) and their FID by
  pytorch_fid.fid_score.calculate_frechet_distance, their KID by torch-fidelity (every subset
  the whole set, so the value does not depend on numpy's draws) and one unbiased MMD^2 of the
  first 100 rows by torch-fidelity's kernel_mmd.
- pytorch_fid_64.npz: a statistics file written by pytorch_fid.fid_score.save_fid_stats
  (dims=64: the first max-pool block, so the file stays small) over 80 generated images, and
  shifted.npz, a second one; expected.json holds pytorch-fid's FID between the two
  (calculate_fid_given_paths).
- torch_zip.pth and torch_legacy.pth: the first layer's five tensors saved by torch.save in
  the zip format and in the legacy (pre-1.6) format that pytorch-fid's weights file uses.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision.transforms as TF
from PIL import Image
from safetensors.torch import load_file

import pytorch_fid.inception as inception
from pytorch_fid import fid_score
from torch_fidelity import metric_kid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fixture_images(out):
    """8 images: sinusoidal gradients with seeded noise, in several sizes and modes."""
    rs = np.random.RandomState(0)
    specs = [
        (32, 32, "RGB"), (32, 32, "RGB"), (28, 28, "L"), (64, 48, "RGB"),
        (17, 23, "RGBA"), (299, 299, "RGB"), (320, 310, "RGB"), (8, 8, "L"),
    ]
    os.makedirs(out, exist_ok=True)
    paths = []
    for i, (w, h, mode) in enumerate(specs):
        yy, xx = np.mgrid[0:h, 0:w]
        chans = []
        for c in range(4):
            f = rs.uniform(0.5, 3.0, size=2)
            phase = rs.uniform(0, 6.28)
            v = 127.5 + 100 * np.sin(f[0] * xx / w * 6.28 + f[1] * yy / h * 6.28 + phase)
            # Little noise on the large ones keeps their PNG files small.
            noise = rs.normal(0, 12 if w < 100 else 1, size=v.shape)
            chans.append(np.clip(v + noise, 0, 255).astype(np.uint8))
        arr = np.stack(chans[: {"RGB": 3, "RGBA": 4, "L": 1}[mode]], axis=-1)
        img = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
        path = os.path.join(out, f"{i}.png")
        img.save(path)
        paths.append(path)
    return paths


def seeded_model(weights_file, dims=2048):
    """pytorch-fid's InceptionV3 for `dims`, with the seeded weights in place of the download."""
    state = load_file(weights_file)

    def from_file(*args, **kwargs):
        model = inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        full = model.state_dict()
        # Keys ddpm does not draw (fc, num_batches_tracked) keep their fresh values; they do not
        # reach pool3.
        missing = set(full) - set(state)
        assert all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in missing), missing
        full.update(state)
        return full

    inception.load_state_dict_from_url = from_file
    model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
    return model.eval()


def features(model, paths):
    rows = []
    with torch.no_grad():
        for p in paths:
            x = TF.ToTensor()(Image.open(p).convert("RGB"))[None]
            rows.append(model(x)[0].reshape(-1).numpy())
    return np.stack(rows).astype(np.float32)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "fid")
    torch.set_num_threads(2)
    os.makedirs(out, exist_ok=True)
    expected = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "seeded.safetensors")
        subprocess.run(
            ["cargo", "bench", "--quiet", "--bench", "fid_seeded_weights", "--", weights],
            cwd=ROOT, check=True,
        )
        # Architecture: pool3 features of the fixture images.
        paths = fixture_images(os.path.join(out, "images"))
        feats = features(seeded_model(weights), paths)
        np.save(os.path.join(out, "seeded_features.npy"), feats)
        print("features", feats.shape, "mean", feats.mean(), "std over images", feats.std(0).mean())

        # pytorch-fid's statistics files (64-d block, 80 images) and its FID between two.
        many = os.path.join(tmp, "many")
        os.makedirs(many)
        rs = np.random.RandomState(3)
        for i in range(80):
            arr = (rs.uniform(0, 1, size=(4, 4, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).resize((24, 24), Image.BILINEAR).save(os.path.join(many, f"{i:03}.png"))
        seeded_model(weights, dims=64)
        stats = os.path.join(out, "pytorch_fid_64.npz")
        if os.path.exists(stats):
            os.remove(stats)
        fid_score.save_fid_stats([many, stats], batch_size=8, device="cpu", dims=64, num_workers=0)
        with np.load(stats) as f:
            mu, sigma = f["mu"], f["sigma"]
        shifted = os.path.join(out, "shifted.npz")
        np.savez_compressed(shifted, mu=mu + 0.05, sigma=sigma * 1.3 + np.eye(64) * 1e-3)
        expected["fid_stats_64"] = float(
            fid_score.calculate_fid_given_paths([stats, shifted], 8, "cpu", 64, num_workers=0)
        )

        # A file written by `ddpm fid --save-stats` loads in numpy with pytorch-fid's keys and
        # holds what it read.
        ours = os.path.join(tmp, "ours.npz")
        subprocess.run(["cargo", "run", "--quiet", "--", "fid", stats, "--save-stats", ours],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        with np.load(ours) as f:
            assert sorted(f.keys()) == ["mu", "sigma"], list(f.keys())
            assert f["mu"].dtype == np.float64 and f["sigma"].shape == (64, 64)
            assert np.array_equal(f["mu"], mu) and np.array_equal(f["sigma"], sigma)

        # The two PyTorch file formats, on the first layer's tensors.
        first = {k: v for k, v in load_file(weights).items() if k.startswith("Conv2d_1a_3x3.")}
        torch.save(first, os.path.join(out, "torch_zip.pth"))
        torch.save(first, os.path.join(out, "torch_legacy.pth"), _use_new_zipfile_serialization=False)

    # FID and KID formulas on fixed feature sets.
    rs = np.random.RandomState(1)
    n, d = 200, 24
    a = rs.normal(size=(n, d)) @ rs.normal(size=(d, d)) * 0.3
    b = rs.normal(size=(n, d)) @ rs.normal(size=(d, d)) * 0.35 + 0.2
    np.savez(os.path.join(out, "sets.npz"), a=a, b=b)
    expected["fid_sets"] = float(fid_score.calculate_frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
    kid = metric_kid.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=3, kid_subset_size=n,
        kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
        kid_kernel_poly_coef0=1, rng_seed=0, verbose=False)
    expected["kid_sets_mean"] = kid["kernel_inception_distance_mean"]
    expected["kid_sets_std"] = kid["kernel_inception_distance_std"]
    expected["mmd2_first100"] = float(metric_kid.kernel_mmd(
        a[:100], b[:100], kid_kernel="poly", kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1))

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps(expected, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

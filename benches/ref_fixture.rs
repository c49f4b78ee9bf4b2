//! Writes what benches/reference/parity.py needs to show that the PyTorch reference
//! (benches/reference/unet.py) is the same model as ours: the weights of the model a config
//! describes (seeded; the zero-initialised output layers get small seeded values too, so every
//! layer shapes the output), a seeded input batch with one timestep per example, and our
//! forward pass on it, all in one safetensors file: weights under their model keys, and
//! `fixture.x`, `fixture.t` (as f32), `fixture.y`.
//!
//!     cargo bench --bench ref_fixture -- configs/bench/w1.toml OUT.safetensors [batch]
//!
//! A bench target without a harness (the repository has no examples/ folder); a plain
//! `cargo bench`, which names no config, passes over it.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use ddpm::config::Config;
use ddpm::model;
use ddpm::rng::{Purpose, Stream};

fn main() -> anyhow::Result<()> {
    // cargo bench passes `--bench` to every bench target; it is not ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.is_empty() {
        eprintln!("ref_fixture: no config named; usage: cargo bench --bench ref_fixture -- CONFIG.toml OUT.safetensors [batch]");
        return Ok(());
    }
    let (Some(config), Some(out)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: ref_fixture CONFIG.toml OUT.safetensors [batch]");
    };
    let batch: usize = args.get(2).map_or(Ok(4), |b| b.parse())?;
    let text = std::fs::read_to_string(config)?;
    let cfg = Config::from_toml(&text, config)?;
    let dev = Device::Cpu;
    let (varmap, net) = model::fresh(&cfg, &dev)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, var)) in ddpm::named::named_vars(&varmap)?.into_iter().enumerate() {
        let t = var.as_tensor();
        let zero = t.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
        if zero && t.rank() > 1 || name.starts_with("conv_out") {
            let noise = Stream::new(7, Purpose::Eval, i as u64).randn(t.shape(), &dev)?;
            var.set(&(noise * 0.02)?)?;
        }
        tensors.insert(name, var.as_tensor().copy()?);
    }
    let (c, h, w) = (
        cfg.data.channels,
        cfg.data.image_size.height,
        cfg.data.image_size.width,
    );
    let x = Stream::new(8, Purpose::Eval, 0).randn((batch, c, h, w), &dev)?;
    let t: Vec<usize> = (0..batch)
        .map(|i| (i * 997 + 3) % cfg.diffusion.timesteps)
        .collect();
    let y = net.forward(&x, &t, None, None)?;
    let t_f32: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    tensors.insert("fixture.x".into(), x);
    tensors.insert("fixture.t".into(), Tensor::from_vec(t_f32, batch, &dev)?);
    tensors.insert("fixture.y".into(), y.to_dtype(DType::F32)?);
    candle_core::safetensors::save(&tensors, out)?;
    eprintln!(
        "ref_fixture: {} tensors, batch {batch}, {c}x{h}x{w} -> {out}",
        tensors.len()
    );
    Ok(())
}

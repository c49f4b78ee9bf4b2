//! Write the seeded Inception weights of `ddpm::fid::seeded` (seed `TEST_SEED`, or the second
//! argument) as a safetensors file with pytorch-fid's key names, for `benches/fid/reference.py`:
//!
//!     cargo run --release --example fid_seeded_weights -- seeded.safetensors [SEED]

use anyhow::Context;
use candle_core::Device;

use ddpm::fid::seeded;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .context("usage: fid_seeded_weights OUT.safetensors [SEED]")?;
    let seed = match args.next() {
        Some(s) => s
            .parse()
            .with_context(|| format!("seed {s:?} is not an integer"))?,
        None => seeded::TEST_SEED,
    };
    let (_, weights) = seeded::network(seed, &Device::Cpu)?;
    candle_core::safetensors::save(&weights, &out).with_context(|| format!("writing {out}"))?;
    eprintln!("wrote {} tensors of seed {seed} to {out}", weights.len());
    Ok(())
}

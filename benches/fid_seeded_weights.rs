//! Write the seeded Inception weights of `ddpm::fid::seeded` (seed `TEST_SEED`, or the second
//! argument) as a safetensors file with pytorch-fid's key names, for `benches/fid/reference.py`:
//!
//!     cargo bench --bench fid_seeded_weights -- seeded.safetensors [SEED]
//!
//! A bench target (no harness) rather than an example, so the tool's top level stays as it is;
//! under a plain `cargo bench`, which names no output file, it says so and does nothing.

use anyhow::Context;
use candle_core::Device;

use ddpm::fid::seeded;

fn main() -> anyhow::Result<()> {
    // cargo bench passes `--bench` to every bench target; it is not ours.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let Some(out) = args.next() else {
        eprintln!("fid_seeded_weights: no output file named; usage: cargo bench --bench fid_seeded_weights -- OUT.safetensors [SEED]");
        return Ok(());
    };
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

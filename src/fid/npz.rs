//! pytorch-fid's statistics files: a NumPy .npz archive holding `mu` (dim) and `sigma`
//! (dim, dim). Read whatever numpy wrote (`savez` or pytorch-fid's `savez_compressed`, any
//! float dtype); written as `savez` does, float64, uncompressed, atomically.

use std::io::{Cursor, Write};
use std::path::Path;

use candle_core::{DType, Tensor};

use super::stats::Statistics;
use crate::data::images::npy_header;
use crate::error::{Error, Result};

/// Read `mu` and `sigma` from a pytorch-fid statistics file.
pub fn read_stats(path: &Path) -> Result<Statistics> {
    let bad = |msg: String| Error::Invalid(format!("{}: {msg}", path.display()));
    let arrays = Tensor::read_npz_by_name(path, &["mu", "sigma"]).map_err(|e| {
        bad(format!(
            "not a statistics file with arrays `mu` and `sigma` (as pytorch-fid's --save-stats \
             writes): {e}"
        ))
    })?;
    let values = |t: &Tensor, what: &str| -> Result<Vec<f64>> {
        if !t.dtype().is_float() {
            return Err(bad(format!(
                "`{what}` is {:?}, not a float array",
                t.dtype()
            )));
        }
        Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    };
    let (mu, sigma) = (&arrays[0], &arrays[1]);
    let dim = mu.elem_count();
    if mu.rank() != 1 || sigma.dims() != [dim, dim] {
        return Err(bad(format!(
            "`mu` {:?} and `sigma` {:?}: expected (d) and (d, d)",
            mu.dims(),
            sigma.dims()
        )));
    }
    Statistics::new(values(mu, "mu")?, values(sigma, "sigma")?).map_err(|e| bad(e.to_string()))
}

/// The .npz bytes of `stats`: `mu.npy` (dim) and `sigma.npy` (dim, dim), float64.
pub fn encode_stats(stats: &Statistics) -> Result<Vec<u8>> {
    let npy = |dims: &[usize], values: &[f64]| -> Result<Vec<u8>> {
        let mut out = npy_header("<f8", dims, 8 * values.len())?;
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        Ok(out)
    };
    let d = stats.dim;
    let zip_err =
        |e: zip::result::ZipError| Error::Invalid(format!("writing the .npz archive: {e}"));
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    // Large files: sigma of 2048 dims is 32 MiB, and numpy reads ZIP64 entries too.
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for (name, dims, values) in [
        ("mu.npy", vec![d], &stats.mu),
        ("sigma.npy", vec![d, d], &stats.sigma),
    ] {
        zip.start_file(name, options).map_err(zip_err)?;
        zip.write_all(&npy(&dims, values)?)
            .map_err(|e| Error::Invalid(format!("writing the .npz archive: {e}")))?;
    }
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

/// Write `stats` to `path` as a pytorch-fid statistics file (temp file, fsync, rename).
pub fn write_stats(path: &Path, stats: &Statistics) -> Result<()> {
    crate::atomic::write(path, &encode_stats(stats)?)
}

//! Point files: reading (N, D) sets from CSV (comma-separated numbers, an optional header line)
//! or NumPy .npy (a 2-D little-endian float32/float64 array), and writing CSV. Every error names
//! the file and, for CSV, the line and column. Standardisation and training are not its job.

use std::path::Path;

use super::Points;
use crate::error::{Error, Result};
use crate::limits;
use crate::npy;

/// Read `path` as .npy when its extension says so, else as CSV.
pub fn read(path: &Path) -> Result<Points> {
    // Read whole, then parsed into f64s (at most 4 per byte of CSV, 2 per byte of float32 .npy)
    // and standardised into f32s.
    let bytes = limits::read_within_memory(path, 8).map_err(|e| Error::io(path, e))?;
    let is_npy = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if is_npy {
        parse_npy(&bytes, &path.display().to_string())
    } else {
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::Data(format!("{}: not UTF-8 text (CSV expected)", path.display()))
        })?;
        parse_csv(text, &path.display().to_string())
    }
}

/// Parse CSV text: one point per line, D comma-separated finite numbers per line, blank lines
/// ignored. A first line none of whose cells is a number is a header. `origin` prefixes errors.
pub fn parse_csv(text: &str, origin: &str) -> Result<Points> {
    let mut values = Vec::new();
    let mut dim = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Vec<Option<f64>> = cells.iter().map(|c| c.parse::<f64>().ok()).collect();
        if dim.is_none() && values.is_empty() && parsed.iter().all(Option::is_none) {
            continue;
        }
        for (col, (cell, v)) in cells.iter().zip(&parsed).enumerate() {
            match v {
                Some(v) if v.is_finite() => values.push(*v),
                _ => {
                    return Err(Error::Data(format!(
                        "{origin}: line {}, column {}: `{cell}` is not a finite number",
                        i + 1,
                        col + 1
                    )))
                }
            }
        }
        match dim {
            None => dim = Some(cells.len()),
            Some(d) if d != cells.len() => {
                return Err(Error::Data(format!(
                    "{origin}: line {} has {} columns, earlier lines have {d}",
                    i + 1,
                    cells.len()
                )))
            }
            _ => {}
        }
    }
    match dim {
        Some(d) => Points::new(d, values),
        None => Err(Error::Data(format!("{origin}: no data rows"))),
    }
}

/// Parse a .npy file (format 1.0-3.0) holding a 2-D array of `<f4` or `<f8`, in C or Fortran
/// order. `origin` prefixes errors.
pub fn parse_npy(bytes: &[u8], origin: &str) -> Result<Points> {
    let bad = |msg: &str| Error::Data(format!("{origin}: {msg}"));
    let (shape, values) = npy::decode(bytes, origin)?;
    let (n, d) = match shape[..] {
        [n, d] => (n, d),
        _ => {
            return Err(bad(&format!(
                "array of shape {} has rank {}; expected a 2-D array (N, D)",
                npy::tuple(&shape),
                shape.len()
            )))
        }
    };
    if n == 0 || d == 0 {
        return Err(bad(&format!("array of shape ({n}, {d}) holds no points")));
    }
    Points::new(d, values)
}

/// Points as CSV: a header (`x,y` in 2-D, else `x0,x1,...`), then one row per point, each value
/// written as the shortest text that reads back to the same f32.
pub fn to_csv(points: &Points) -> String {
    let header = if points.dim == 2 {
        "x,y".to_string()
    } else {
        (0..points.dim)
            .map(|j| format!("x{j}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = header + "\n";
    for i in 0..points.len() {
        let row: Vec<String> = points
            .row(i)
            .iter()
            .map(|v| format!("{}", *v as f32))
            .collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

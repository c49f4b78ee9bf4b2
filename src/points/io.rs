//! Point files: reading (N, D) sets from CSV (comma-separated numbers, an optional header line)
//! or NumPy .npy (a 2-D little-endian float32/float64 array), and writing CSV. Every error names
//! the file and, for CSV, the line and column. Standardisation and training are not its job.

use std::path::Path;

use super::Points;
use crate::error::{Error, Result};
use crate::limits;

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
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("unsupported .npy format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated or unreadable header"))?;
    let descr = quoted_value(header, "descr").ok_or_else(|| bad("header has no 'descr'"))?;
    let width = match descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(bad(&format!(
                "dtype `{other}` is not supported; save the array as float32 or float64 (<f4, <f8)"
            )))
        }
    };
    let fortran = header.contains("'fortran_order': True");
    let shape = shape_of(header).ok_or_else(|| bad("header has no readable 'shape'"))?;
    let (n, d) = match shape[..] {
        [n, d] => (n, d),
        _ => {
            return Err(bad(&format!(
                "array of shape {shape:?} has rank {}; expected a 2-D array (N, D)",
                shape.len()
            )))
        }
    };
    if n == 0 || d == 0 {
        return Err(bad(&format!("array of shape ({n}, {d}) holds no points")));
    }
    let data = &bytes[start + header_len..];
    let want = n.checked_mul(d).and_then(|v| v.checked_mul(width));
    if want != Some(data.len()) {
        return Err(bad(&format!(
            "{} data bytes for shape ({n}, {d}) of {width}-byte floats",
            data.len()
        )));
    }
    let flat: Vec<f64> = data
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            if width == 4 {
                f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64
            } else {
                f64::from_le_bytes(b)
            }
        })
        .collect();
    if let Some(k) = flat.iter().position(|v| !v.is_finite()) {
        return Err(bad(&format!("value {k} (row-major) is not finite")));
    }
    let values = if fortran {
        (0..n * d).map(|k| flat[(k % d) * n + k / d]).collect()
    } else {
        flat
    };
    Points::new(d, values)
}

/// The value of `'key': '...'` in a .npy header dict.
fn quoted_value(header: &str, key: &str) -> Option<String> {
    let rest = &header[header.find(&format!("'{key}'"))? + key.len() + 2..];
    let rest = &rest[rest.find(':')? + 1..];
    let open = rest.find(['\'', '"'])?;
    let quote = rest[open..].chars().next()?;
    let body = &rest[open + 1..];
    Some(body[..body.find(quote)?].to_string())
}

/// The `'shape': (a, b, ...)` tuple of a .npy header dict.
fn shape_of(header: &str) -> Option<Vec<usize>> {
    let rest = &header[header.find("'shape'")?..];
    let rest = &rest[rest.find('(')? + 1..];
    let body = &rest[..rest.find(')')?];
    body.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
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

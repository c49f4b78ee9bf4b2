//! Reading NumPy .npy arrays (format 1.0-3.0, little-endian float32 or float64, C or Fortran
//! order) of any rank: point files (`points::io`) and given noise (`ddpm sample --noise`).
//! Writing them is `data::images::encode_npy`'s.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::limits;

/// The shape and the row-major values of the .npy file `bytes`; `origin` prefixes errors.
/// Every value must be finite.
pub fn decode(bytes: &[u8], origin: &str) -> Result<(Vec<usize>, Vec<f64>)> {
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
    let data = &bytes[start + header_len..];
    // Checked: a forged shape's product can overflow.
    let want = shape
        .iter()
        .try_fold(width, |n: usize, &d| n.checked_mul(d));
    if want != Some(data.len()) {
        return Err(bad(&format!(
            "{} data bytes for shape {} of {width}-byte floats",
            data.len(),
            tuple(&shape)
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
    let values = match fortran && shape.len() > 1 {
        true => row_major(&flat, &shape),
        false => flat,
    };
    Ok((shape, values))
}

/// `shape` as NumPy writes it: `(2, 3)`, `(6,)`.
pub fn tuple(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    }
}

/// The .npy file `path` as an f32 tensor on the CPU.
pub fn read_tensor(path: &std::path::Path) -> Result<Tensor> {
    // Held as bytes, f64s (2 per f32 byte) and f32s: 4 times the file.
    let bytes = limits::read_within_memory(path, 4).map_err(|e| Error::io(path, e))?;
    let (shape, values) = decode(&bytes, &path.display().to_string())?;
    let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// Column-major (Fortran) values of `shape` in row-major order.
fn row_major(flat: &[f64], shape: &[usize]) -> Vec<f64> {
    let n = flat.len();
    (0..n)
        .map(|k| {
            // Row-major index k -> multi-index -> column-major offset.
            let mut rest = k;
            let mut idx = vec![0; shape.len()];
            for (d, &s) in shape.iter().enumerate().rev() {
                idx[d] = rest % s;
                rest /= s;
            }
            let (mut offset, mut stride) = (0, 1);
            for (i, &s) in idx.iter().zip(shape) {
                offset += i * stride;
                stride *= s;
            }
            flat[offset]
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::images::encode_npy;

    #[test]
    fn arrays_of_any_rank_read_back_and_fortran_order_is_transposed() {
        let x = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let (shape, values) = decode(&encode_npy(&x).unwrap(), "x.npy").unwrap();
        assert_eq!(shape, vec![2, 3, 4]);
        assert_eq!(values, (0..24).map(|v| v as f64).collect::<Vec<_>>());
        // A 2x3 array [[0, 1, 2], [3, 4, 5]] stored column by column.
        let mut bytes =
            encode_npy(&Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap())
                .unwrap();
        let header_end = bytes.len() - 24;
        let at = bytes.windows(5).position(|w| w == b"False").unwrap();
        bytes[at..at + 5].copy_from_slice(b"True ");
        for (i, v) in [0f32, 3., 1., 4., 2., 5.].iter().enumerate() {
            bytes[header_end + 4 * i..header_end + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        let (_, values) = decode(&bytes, "f.npy").unwrap();
        assert_eq!(values, vec![0., 1., 2., 3., 4., 5.]);
        assert!(decode(b"nope", "n.npy")
            .unwrap_err()
            .to_string()
            .starts_with("n.npy: not a .npy"));
    }
}

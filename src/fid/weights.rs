//! Reading the Inception weights from the user's file: pytorch-fid's
//! `pt_inception-2015-12-05-6726825d.pth` as it is (PyTorch's legacy pickle format of 2019, or
//! the zip format of PyTorch >= 1.6, both through candle's unpickler), or a safetensors file
//! with the same keys (`Mixed_5b.branch1x1.conv.weight`, `....bn.running_var`, ...). We never
//! download: a missing file is an error saying where it comes from.

use std::collections::HashMap;
use std::io::{BufRead, Cursor};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use super::inception::{RawConv, Source};
use crate::error::{Error, Result};

/// Where pytorch-fid downloads the weights from (the TensorFlow FID graph's, ported).
pub const WEIGHTS_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

/// The environment variable naming the weights file when `--inception` is not given.
pub const WEIGHTS_ENV: &str = "DDPM_INCEPTION";

/// The weights file to use: `flag`, else $DDPM_INCEPTION; an error saying how to get one when
/// neither is set or the file does not exist.
pub fn locate(flag: Option<&Path>) -> Result<PathBuf> {
    let how = format!(
        "download pytorch-fid's Inception weights once ({WEIGHTS_URL}, 91 MB) and pass \
         --inception FILE or set {WEIGHTS_ENV}=FILE (ddpm never downloads)"
    );
    let path = match flag {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os(WEIGHTS_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(Error::Invalid(format!(
                    "FID needs the Inception weights: {how}"
                )))
            }
        },
    };
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "Inception weights {} not found: {how}",
            path.display()
        )));
    }
    Ok(path)
}

/// The first bytes of PyTorch's legacy format: pickle protocol 2 of the magic number
/// 0x1950a86a20f9469cfc6c (`torch.serialization.MAGIC_NUMBER`).
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";

/// Every tensor in a weights file, by name, on the CPU; the format is recognised by content.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bad = |msg: String| Error::Invalid(format!("Inception weights {}: {msg}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let tensors = if bytes.starts_with(b"PK\x03\x04") {
        candle_core::pickle::read_all(path)
            .map_err(|e| bad(format!("cannot read the PyTorch file: {e}")))?
    } else if bytes.starts_with(LEGACY_MAGIC) {
        read_legacy(&bytes).map_err(|e| bad(format!("cannot read the PyTorch file: {e}")))?
    } else if bytes.len() > 8 && bytes[8] == b'{' {
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| bad(format!("cannot read the safetensors file: {e}")))?
            .into_iter()
            .collect()
    } else {
        return Err(bad(
            "neither a PyTorch .pth file nor safetensors; expected pytorch-fid's \
             pt_inception-2015-12-05-6726825d.pth"
                .into(),
        ));
    };
    Ok(tensors.into_iter().collect())
}

/// One pickle from `r`, with candle's unpickler.
fn unpickle(r: &mut impl BufRead) -> candle_core::Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r)?;
    stack.finalize()
}

/// PyTorch's legacy `torch.save` format: pickles of the magic number, the protocol version
/// (1001), the system info and the object itself (storages as persistent ids
/// ('storage', type, key, location, numel, view)), a pickled list of the storage keys, then each
/// storage in that order as an i64 element count and the raw little-endian values.
fn read_legacy(bytes: &[u8]) -> candle_core::Result<Vec<(String, Tensor)>> {
    let mut r = Cursor::new(&bytes[LEGACY_MAGIC.len()..]);
    let version = unpickle(&mut r)?;
    if version != Object::Int(1001) {
        candle_core::bail!("unsupported legacy format version {version:?}");
    }
    let sys_info = unpickle(&mut r)?;
    let little = Object::Bool(true);
    let is_little = matches!(&sys_info, Object::Dict(kv)
        if kv.iter().any(|(k, v)| *k == Object::Unicode("little_endian".into()) && *v == little));
    if !is_little {
        candle_core::bail!("written on a big-endian machine");
    }
    let Object::Dict(entries) = unpickle(&mut r)? else {
        candle_core::bail!("the file does not hold a state dict");
    };
    let Object::List(keys) = unpickle(&mut r)? else {
        candle_core::bail!("no storage key list");
    };
    let infos: Vec<_> = entries
        .into_iter()
        .filter_map(|(name, value)| value.into_tensor_info(name, Path::new("")).transpose())
        .collect::<candle_core::Result<_>>()?;
    // TensorInfo.path is "/<storage key>"; its dtype gives the storage's element size.
    let key_of = |path: &str| path.trim_start_matches('/').to_string();
    let dtypes: HashMap<String, DType> = infos.iter().map(|t| (key_of(&t.path), t.dtype)).collect();
    let mut pos = LEGACY_MAGIC.len() + r.position() as usize;
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let key = String::try_from(key)?;
        let Some(dtype) = dtypes.get(&key) else {
            candle_core::bail!("storage {key} belongs to no tensor");
        };
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
            .ok_or_else(|| candle_core::Error::Msg("truncated before a storage".into()))?;
        let len = count.saturating_mul(dtype.size_in_bytes());
        let data = bytes
            .get(pos + 8..pos + 8 + len)
            .ok_or_else(|| candle_core::Error::Msg(format!("storage {key} is truncated")))?;
        storages.insert(key, data);
        pos += 8 + len;
    }
    infos
        .into_iter()
        .map(|t| {
            let Some(data) = storages.get(&key_of(&t.path)) else {
                candle_core::bail!("{}: its storage is missing", t.name);
            };
            if !t.layout.is_contiguous() {
                candle_core::bail!("{}: non-contiguous tensors are not supported", t.name);
            }
            let start = t.layout.start_offset();
            let len = t.layout.shape().elem_count() * t.dtype.size_in_bytes();
            let Some(raw) = data.get(start..start + len) else {
                candle_core::bail!("{}: outside its storage", t.name);
            };
            let tensor = Tensor::from_raw_buffer(raw, t.dtype, t.layout.dims(), &Device::Cpu)?;
            Ok((t.name, tensor))
        })
        .collect()
}

/// The layers of a weights file, by their pytorch-fid names.
pub struct FileSource {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl FileSource {
    /// Read every tensor of `path` (see `read`).
    pub fn open(path: &Path) -> Result<Self> {
        Ok(FileSource {
            path: path.to_path_buf(),
            tensors: read(path)?,
        })
    }

    /// The f32 tensor `key`, which must have `dims`.
    fn take(&mut self, key: &str, dims: &[usize]) -> Result<Tensor> {
        let bad = |msg: String| {
            Error::Invalid(format!(
                "Inception weights {}: {msg}; expected pytorch-fid's \
                 pt_inception-2015-12-05-6726825d.pth or a conversion with its keys",
                self.path.display()
            ))
        };
        let t = self
            .tensors
            .remove(key)
            .ok_or_else(|| bad(format!("no tensor `{key}`")))?;
        if t.dims() != dims {
            return Err(bad(format!(
                "`{key}` has shape {:?}, not {dims:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

impl Source for FileSource {
    fn conv(&mut self, name: &str, shape: [usize; 4]) -> Result<RawConv> {
        let c = [shape[0]];
        Ok(RawConv {
            weight: self.take(&format!("{name}.conv.weight"), &shape)?,
            gamma: self.take(&format!("{name}.bn.weight"), &c)?,
            beta: self.take(&format!("{name}.bn.bias"), &c)?,
            mean: self.take(&format!("{name}.bn.running_mean"), &c)?,
            var: self.take(&format!("{name}.bn.running_var"), &c)?,
        })
    }
}

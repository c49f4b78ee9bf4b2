//! Reading a diffusers config file (JSON) field by field: absent and null fields take
//! diffusers' defaults, a field of the wrong type or an unsupported value is refused with the
//! file, the field and the value, and so is a field that ddpm does not read (diffusers itself
//! warns and goes on; a field we ignored could change what the model computes).

use std::collections::BTreeSet;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::limits;

/// The fields of one JSON object and which of them have been read.
pub(crate) struct Fields {
    path: PathBuf,
    map: Map<String, Value>,
    read: BTreeSet<String>,
}

impl Fields {
    /// Read the JSON object in `path`.
    pub fn read(path: &Path) -> Result<Fields> {
        let bytes = limits::read(path, limits::MAX_CONFIG_BYTES).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Config(format!("{}: not JSON: not UTF-8 text", path.display())))?;
        Self::parse(&text, path)
    }

    /// Parse `text`; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Fields> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("{}: not JSON: {e}", path.display())))?;
        match value {
            Value::Object(map) => Ok(Fields {
                path: path.to_path_buf(),
                map,
                read: BTreeSet::new(),
            }),
            other => Err(Error::Config(format!(
                "{}: expected a JSON object, found {}",
                path.display(),
                short(&other)
            ))),
        }
    }

    /// `key`'s value, None when absent or null; marks it read.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        self.read.insert(key.to_string());
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| self.bad(key, e)),
        }
    }

    /// Whether `key` is present with the value null (diffusers' None, which can differ from
    /// the default an absent field takes); marks it read.
    pub fn is_null(&mut self, key: &str) -> bool {
        self.read.insert(key.to_string());
        matches!(self.map.get(key), Some(Value::Null))
    }

    /// `key`'s value, or `default` (diffusers') when absent or null.
    pub fn or<T: DeserializeOwned>(&mut self, key: &str, default: T) -> Result<T> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// The error for `key`'s value: "{file}: {key} = {value}: {why}".
    pub fn bad(&self, key: &str, why: impl Display) -> Error {
        let value = self.map.get(key).map_or("(absent)".to_string(), short);
        Error::Config(format!("{}: {key} = {value}: {why}", self.path.display()))
    }

    /// Refuse the first field not read, other than diffusers' private `_` fields.
    pub fn finish(self, what: &str) -> Result<()> {
        match self
            .map
            .keys()
            .find(|k| !k.starts_with('_') && !self.read.contains(*k))
        {
            Some(key) => Err(self.bad(
                key,
                format!("ddpm does not read this field of a {what} config"),
            )),
            None => Ok(()),
        }
    }
}

/// A value as JSON, cut to one short line.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_take_defaults_and_errors_name_file_field_and_value() {
        let path = Path::new("unet/config.json");
        let mut f = Fields::parse(
            r#"{"_class_name": "UNet2DModel", "a": 3, "b": null, "c": "x", "d": 1}"#,
            path,
        )
        .unwrap();
        assert_eq!(f.or("a", 0usize).unwrap(), 3);
        assert_eq!(f.or("b", 7usize).unwrap(), 7);
        assert_eq!(f.or("absent", 9usize).unwrap(), 9);
        let e = f.get::<usize>("c").unwrap_err().to_string();
        assert!(
            e.starts_with("unet/config.json: c = \"x\": invalid type"),
            "{e}"
        );
        let e = f.finish("UNet2DModel").unwrap_err().to_string();
        assert_eq!(
            e,
            "unet/config.json: d = 1: ddpm does not read this field of a UNet2DModel config"
        );
        assert!(Fields::parse("[1]", path)
            .err()
            .unwrap()
            .to_string()
            .contains("expected a JSON object"));
    }
}

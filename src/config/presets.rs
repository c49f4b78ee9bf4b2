//! The configs `ddpm init` starts from: the shipped configs/*.toml, compiled in, so a preset
//! and its file cannot differ.

use std::fmt;
use std::str::FromStr;

use super::Config;
use crate::error::{Error, Result};

/// A shipped config to start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The embedded digits: trains in minutes on a CPU, no download.
    Digits,
    /// The DDPM paper's CIFAR-10 model and schedule.
    Cifar10,
    /// A folder of your own images.
    Folder,
    /// 2-D points (two moons) and the MLP; a CSV of your own with dataset = "points".
    Points,
}

impl Preset {
    pub const ALL: [Preset; 4] = [
        Preset::Digits,
        Preset::Cifar10,
        Preset::Folder,
        Preset::Points,
    ];

    /// The name `--preset` takes.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Digits => "digits",
            Preset::Cifar10 => "cifar10",
            Preset::Folder => "folder",
            Preset::Points => "points",
        }
    }

    /// The shipped file the preset is.
    pub fn file(self) -> &'static str {
        match self {
            Preset::Digits => "configs/digits.toml",
            Preset::Cifar10 => "configs/cifar10.toml",
            Preset::Folder => "configs/folder.toml",
            Preset::Points => "configs/moons.toml",
        }
    }

    /// The file's text, with its opening comment.
    pub fn text(self) -> &'static str {
        match self {
            Preset::Digits => include_str!("../../configs/digits.toml"),
            Preset::Cifar10 => include_str!("../../configs/cifar10.toml"),
            Preset::Folder => include_str!("../../configs/folder.toml"),
            Preset::Points => include_str!("../../configs/moons.toml"),
        }
    }

    /// The preset loaded and validated, as `ddpm train` would.
    pub fn config(self) -> Result<Config> {
        Config::parse(self.text(), self.file(), &[])
    }

    /// The preset as a complete config: its file's opening comment, then every key with a
    /// line saying what it does (`docs::commented`).
    pub fn commented(self) -> Result<String> {
        let intro: String = self
            .text()
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        Ok(format!(
            "# ddpm config: preset {} ({}), every key shown; a key left out takes its default.\n\
             {intro}\n{}",
            self.name(),
            self.file(),
            super::docs::commented(&self.config()?)?
        ))
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
                Error::Invalid(format!(
                    "no preset `{s}`; the presets are {}",
                    names.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each preset prints a config that reads back as the preset, and validates as is.
    #[test]
    fn presets_print_complete_configs_that_validate() {
        for p in Preset::ALL {
            let text = p.commented().unwrap();
            let back = Config::parse(&text, "init output", &[]).unwrap();
            assert_eq!(back, p.config().unwrap(), "{p}:\n{text}");
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
            // Every key the preset's network and data use is there, uncommented.
            let mut section = "";
            let mut shown = Vec::new();
            for line in text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                match line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    Some(s) => section = s,
                    None => shown.push(format!("{section}.{}", line.split(" = ").next().unwrap())),
                }
            }
            let used: Vec<String> = back
                .flat()
                .unwrap()
                .into_iter()
                .map(|(key, _)| key)
                .filter(|key| {
                    let (section, name) = key.rsplit_once('.').unwrap();
                    match section {
                        "model" => back.model.arch.uses(name),
                        "model.mlp" => back.model.arch == crate::nn::Arch::Mlp,
                        "data" => back.data.dataset.uses(name),
                        _ => true,
                    }
                })
                .collect();
            assert_eq!(shown, used, "{p}:\n{text}");
        }
        assert!("mnist".parse::<Preset>().is_err());
    }
}

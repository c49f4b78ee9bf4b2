//! Where tensors live: the `--device` value (`auto`, `cpu`, `cuda`, `cuda:N`) and its resolution
//! to a candle [`Device`]. Owns the rules for falling back to the CPU and the wording of the
//! errors when CUDA is asked for but unavailable; it does not print (the notice for `auto`'s
//! fallback on a CUDA build is returned for the binary to show) and does not pick dtypes (see
//! `precision`).
//!
//! CUDA support is a build option (the `cuda` cargo feature): code that only a CUDA build can
//! compile sits behind `#[cfg(feature = "cuda")]`, which `.ci/cuda-check` compiles and lints.
//! cuDNN is found at run time (`cudnn`), not linked, so a CUDA build starts without it.

pub mod cudnn;

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{Error, Result};

/// The valid forms of a device value, for error messages and `--help`.
pub const DEVICE_FORMS: &str = "auto, cpu, cuda or cuda:N (N = 0, 1, ...)";

/// A device as the user names it, before it is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when this build has CUDA and a GPU answers, else the CPU (with a notice on
    /// a CUDA build, where the CPU is not what the user built for).
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal; an error if it cannot be opened.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("unknown device `{s}`; expected {DEVICE_FORMS}"));
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let ordinal = s.strip_prefix("cuda:").ok_or_else(bad)?;
                // usize's parser takes a leading '+'; a device index is plain digits.
                if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                ordinal.parse().map(DeviceSpec::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How a device is named on the command line and in JSON: `cpu`, `cuda:N` (`metal:N`).
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Opens the device `spec` names. The `String`, when present, is a one-line notice for the user
/// (the library never prints): `auto` on a CUDA build fell back to the CPU, and why. A build
/// without CUDA says nothing for `auto`: the CPU is all it has, and a notice on every command
/// (eight in a loop over seeds) would be noise; `cuda` is an error there.
///
/// `cpu` always succeeds. `cuda`/`cuda:N` is an error (never a panic) when this build has no
/// CUDA support, when no driver or GPU answers, or when device N does not exist.
///
/// On a CUDA device cuDNN is looked for too (`cudnn`): not found, the notice says that
/// convolutions fall back to candle's and what to install; a `DDPM_CUDNN` that names an unusable
/// library is an error.
pub fn resolve(spec: DeviceSpec) -> Result<(Device, Option<String>)> {
    let (device, notice) = match spec {
        DeviceSpec::Cpu => (Device::Cpu, None),
        DeviceSpec::Cuda(ordinal) => (open_cuda(ordinal)?, None),
        DeviceSpec::Auto => auto(),
    };
    if !device.is_cuda() {
        return Ok((device, notice));
    }
    let cudnn_notice = cudnn_verdict(cudnn::get().map(|_| ()))?;
    Ok((device, notice.or(cudnn_notice)))
}

/// What cuDNN's state means for a CUDA run: found or turned off, nothing to say; not found, a
/// notice (convolutions fall back to candle's); named by DDPM_CUDNN but unusable, an error.
pub fn cudnn_verdict(state: std::result::Result<(), &cudnn::Missing>) -> Result<Option<String>> {
    match state {
        Ok(()) | Err(cudnn::Missing::Off) => Ok(None),
        Err(m @ cudnn::Missing::NotFound(_)) => Ok(Some(m.message())),
        Err(m @ cudnn::Missing::Unusable(_)) => Err(Error::Invalid(m.message())),
    }
}

#[cfg(not(feature = "cuda"))]
fn auto() -> (Device, Option<String>) {
    (Device::Cpu, None)
}

#[cfg(feature = "cuda")]
fn auto() -> (Device, Option<String>) {
    match try_cuda(0) {
        Ok(device) => (device, None),
        Err((why, _)) => (
            Device::Cpu,
            Some(format!("no CUDA device available ({why}); using the CPU")),
        ),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Err(Error::Invalid(format!(
        "--device cuda:{ordinal}: this ddpm was built without CUDA support; \
         rebuild with `--features cuda`, or use --device cpu"
    )))
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    try_cuda(ordinal)
        .map_err(|(why, fix)| Error::Invalid(format!("--device cuda:{ordinal}: {why}; {fix}")))
}

/// CUDA device `ordinal`, or why it cannot be opened and what to do, each one line.
#[cfg(feature = "cuda")]
fn try_cuda(ordinal: usize) -> std::result::Result<Device, (String, String)> {
    use candle_core::cuda::cudarc::driver::CudaContext;

    let without_gpu = || "use --device cpu (or auto) on a machine without a GPU".to_string();
    // Ask for the count first: it tells "no driver" from "no such device", and a failing
    // driver call is answered here rather than from deep inside candle.
    let count = CudaContext::device_count().map_err(|e| {
        let why = format!("CUDA driver error {:?}", e.0);
        (why, without_gpu())
    })?;
    let count = usize::try_from(count).unwrap_or(0);
    if ordinal >= count {
        return Err(match count {
            0 => ("this machine has no CUDA device".to_string(), without_gpu()),
            1 => (
                "this machine has one CUDA device".to_string(),
                "use cuda:0".to_string(),
            ),
            n => (
                format!("this machine has {n} CUDA devices"),
                format!("use cuda:0 to cuda:{}", n - 1),
            ),
        });
    }
    Device::new_cuda(ordinal).map_err(|e| {
        // Driver errors can span lines; notices and errors are printed as one.
        let why = format!("cannot open it ({e})");
        (
            why.split_whitespace().collect::<Vec<_>>().join(" "),
            without_gpu(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:0".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:7".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(7));
        assert_eq!(
            "cuda:12".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(12)
        );
    }

    #[test]
    fn display_round_trips() {
        for spec in [
            DeviceSpec::Auto,
            DeviceSpec::Cpu,
            DeviceSpec::Cuda(0),
            DeviceSpec::Cuda(3),
        ] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        assert_eq!(DeviceSpec::default(), DeviceSpec::Auto);
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        for bad in [
            "", "gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda0", " cpu", "cuda:1:2",
            "metal",
        ] {
            let msg = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{bad:?}: {msg}");
            assert!(msg.contains(DEVICE_FORMS), "{bad:?}: {msg}");
        }
    }

    #[test]
    fn devices_are_named_as_on_the_command_line() {
        assert_eq!(name(&Device::Cpu), "cpu");
        assert_eq!(
            name(&Device::Cpu).parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cpu
        );
    }

    #[test]
    fn a_missing_cudnn_is_a_notice_and_a_bad_ddpm_cudnn_an_error() {
        assert_eq!(cudnn_verdict(Ok(())).unwrap(), None);
        assert_eq!(cudnn_verdict(Err(&cudnn::Missing::Off)).unwrap(), None);
        let not_found = cudnn::Missing::NotFound("cuDNN 9 not found (...)".into());
        let notice = cudnn_verdict(Err(&not_found)).unwrap().unwrap();
        assert_eq!(notice, "cuDNN 9 not found (...)");
        let bad = cudnn::open(&cudnn::Request::Path("/nonexistent/libcudnn.so.9".into()))
            .err()
            .unwrap();
        let e = cudnn_verdict(Err(&bad)).unwrap_err().to_string();
        assert!(e.contains("DDPM_CUDNN=/nonexistent/libcudnn.so.9"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn cpu_resolves_to_the_cpu_silently() {
        let (device, notice) = resolve(DeviceSpec::Cpu).unwrap();
        assert!(device.is_cpu());
        assert_eq!(notice, None);
    }

    /// A CUDA build that finds no GPU says so in one line; a CPU-only build uses the CPU
    /// without a word (it used to print "built without CUDA support" on every command).
    #[test]
    fn auto_falls_back_to_the_cpu_with_a_notice_only_on_a_cuda_build() {
        let (device, notice) = resolve(DeviceSpec::Auto).unwrap();
        if device.is_cuda() {
            assert_eq!(notice, None);
        } else if cfg!(feature = "cuda") {
            assert!(device.is_cpu());
            let notice = notice.expect("a CUDA build's CPU fallback explains itself");
            assert!(notice.ends_with("using the CPU"), "{notice}");
            assert!(!notice.contains('\n'), "{notice}");
        } else {
            assert!(device.is_cpu());
            assert_eq!(notice, None);
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        for ordinal in [0, 1] {
            let msg = resolve(DeviceSpec::Cuda(ordinal)).unwrap_err().to_string();
            assert!(msg.contains("--features cuda"), "{msg}");
            assert!(msg.contains(&format!("cuda:{ordinal}")), "{msg}");
        }
    }

    /// On a CUDA build: a GPU opens, and any failure (no driver, no GPU) is an error naming the
    /// device, not a panic. An ordinal past any real machine's count is always an error.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_build_opens_a_gpu_or_explains() {
        match resolve(DeviceSpec::Cuda(0)) {
            Ok((device, notice)) => {
                assert!(device.is_cuda());
                assert_eq!(notice, None);
            }
            Err(e) => assert!(e.to_string().contains("cuda:0"), "{e}"),
        }
        let msg = resolve(DeviceSpec::Cuda(4096)).unwrap_err().to_string();
        assert!(msg.contains("cuda:4096"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}

//! Finding and opening cuDNN 9 at run time. candle builds cudarc with dynamic linking, so a cuDNN
//! linked at build time would stop every CUDA binary from starting on a machine without it;
//! instead the library is opened with dlopen on first use and the ~20 functions of cuDNN's
//! legacy convolution API that `nn::kernels::cuda` calls are looked up by name. Their
//! signatures are declared by hand below, checked against cuDNN 9's cudnn_graph.h, cudnn_ops.h
//! and cudnn_cnn.h (9.28; the legacy API has not changed within 9.x). This module owns where
//! the library is looked for and the one-line answer when it is not there; it does not run
//! anything on a GPU.
//!
//! Where: `DDPM_CUDNN` (a path to libcudnn.so.9 or to the folder holding it; `off` turns cuDNN
//! off), else the loader's search for `libcudnn.so.9` (LD_LIBRARY_PATH, the system cache).
//! PyTorch's wheels bring it as `nvidia-cudnn-cu13` (site-packages/nvidia/cudnn/lib).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::Library;

/// The environment variable that points at cuDNN or turns it off.
pub const ENV: &str = "DDPM_CUDNN";
/// The file name the loader searches for.
pub const SONAME: &str = "libcudnn.so.9";
/// What to do about a missing cuDNN, for messages.
pub const INSTALL: &str = "install cuDNN 9 (`pip install nvidia-cudnn-cu13`, then put its \
    nvidia/cudnn/lib on LD_LIBRARY_PATH) or set DDPM_CUDNN=/path/to/libcudnn.so.9";

/// `cudnnStatus_t`.
pub type Status = c_int;
/// `cudnnHandle_t`, `cudnnTensorDescriptor_t`, ...: opaque pointers.
pub type Handle = *mut c_void;
pub type TensorDesc = *mut c_void;
pub type FilterDesc = *mut c_void;
pub type ConvDesc = *mut c_void;

/// CUDNN_STATUS_SUCCESS.
pub const SUCCESS: Status = 0;
/// cudnnDataType_t: CUDNN_DATA_FLOAT, CUDNN_DATA_BFLOAT16.
pub const DATA_FLOAT: c_int = 0;
pub const DATA_BFLOAT16: c_int = 9;
/// cudnnTensorFormat_t: CUDNN_TENSOR_NCHW.
pub const TENSOR_NCHW: c_int = 0;
/// cudnnConvolutionMode_t: CUDNN_CROSS_CORRELATION (what PyTorch's conv2d computes).
pub const CROSS_CORRELATION: c_int = 1;
/// cudnnMathType_t: CUDNN_DEFAULT_MATH (tensor cores allowed, TF32 for f32 on Ampere and later),
/// CUDNN_TENSOR_OP_MATH, CUDNN_FMA_MATH (no tensor cores: exact f32).
pub const DEFAULT_MATH: c_int = 0;
pub const TENSOR_OP_MATH: c_int = 1;
pub const FMA_MATH: c_int = 3;
/// cudnnDeterminism_t: CUDNN_DETERMINISTIC.
pub const DETERMINISTIC: c_int = 1;

/// `cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t` (all three have this layout): algo,
/// status, time (ms), memory (workspace bytes), determinism, mathType, reserved[3].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AlgoPerf {
    pub algo: c_int,
    pub status: Status,
    pub time: f32,
    pub memory: usize,
    pub determinism: c_int,
    pub math_type: c_int,
    pub reserved: [c_int; 3],
}

type GetAlgo = unsafe extern "C" fn(
    Handle,
    *mut c_void,
    *mut c_void,
    ConvDesc,
    *mut c_void,
    c_int,
    *mut c_int,
    *mut AlgoPerf,
) -> Status;
type WorkspaceSize = unsafe extern "C" fn(
    Handle,
    *mut c_void,
    *mut c_void,
    ConvDesc,
    *mut c_void,
    c_int,
    *mut usize,
) -> Status;
type Run = unsafe extern "C" fn(
    Handle,
    *const c_void,
    *mut c_void,
    *const c_void,
    *mut c_void,
    *const c_void,
    ConvDesc,
    c_int,
    *mut c_void,
    usize,
    *const c_void,
    *mut c_void,
    *mut c_void,
) -> Status;

/// The cuDNN functions we call, resolved from one opened library. Argument order as in the
/// headers; the three convolution passes share their shapes, only the descriptors' roles differ:
/// forward (x, w -> y), backward data (w, dy -> dx), backward filter (x, dy -> dw).
pub struct Api {
    pub get_version: unsafe extern "C" fn() -> usize,
    pub get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    pub create: unsafe extern "C" fn(*mut Handle) -> Status,
    pub destroy: unsafe extern "C" fn(Handle) -> Status,
    pub set_stream: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    pub create_tensor_desc: unsafe extern "C" fn(*mut TensorDesc) -> Status,
    /// (desc, dataType, n, c, h, w, nStride, cStride, hStride, wStride)
    pub set_tensor_4d_ex: unsafe extern "C" fn(
        TensorDesc,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
    ) -> Status,
    pub destroy_tensor_desc: unsafe extern "C" fn(TensorDesc) -> Status,
    pub create_filter_desc: unsafe extern "C" fn(*mut FilterDesc) -> Status,
    /// (desc, dataType, format, k, c, h, w)
    pub set_filter_4d:
        unsafe extern "C" fn(FilterDesc, c_int, c_int, c_int, c_int, c_int, c_int) -> Status,
    pub destroy_filter_desc: unsafe extern "C" fn(FilterDesc) -> Status,
    pub create_conv_desc: unsafe extern "C" fn(*mut ConvDesc) -> Status,
    /// (desc, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w, mode, computeType)
    pub set_conv_2d: unsafe extern "C" fn(
        ConvDesc,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
    ) -> Status,
    pub set_conv_math_type: unsafe extern "C" fn(ConvDesc, c_int) -> Status,
    pub destroy_conv_desc: unsafe extern "C" fn(ConvDesc) -> Status,
    /// (handle, xDesc, wDesc, convDesc, yDesc, requested, *returned, *perf)
    pub fwd_algos: GetAlgo,
    /// (handle, wDesc, dyDesc, convDesc, dxDesc, requested, *returned, *perf)
    pub bwd_data_algos: GetAlgo,
    /// (handle, xDesc, dyDesc, convDesc, dwDesc, requested, *returned, *perf)
    pub bwd_filter_algos: GetAlgo,
    /// (handle, xDesc, wDesc, convDesc, yDesc, algo, *bytes)
    pub fwd_workspace: WorkspaceSize,
    /// (handle, wDesc, dyDesc, convDesc, dxDesc, algo, *bytes)
    pub bwd_data_workspace: WorkspaceSize,
    /// (handle, xDesc, dyDesc, convDesc, dwDesc, algo, *bytes)
    pub bwd_filter_workspace: WorkspaceSize,
    /// (handle, *alpha, xDesc, x, wDesc, w, convDesc, algo, ws, wsBytes, *beta, yDesc, y)
    pub forward: Run,
    /// (handle, *alpha, wDesc, w, dyDesc, dy, convDesc, algo, ws, wsBytes, *beta, dxDesc, dx)
    pub backward_data: Run,
    /// (handle, *alpha, xDesc, x, dyDesc, dy, convDesc, algo, ws, wsBytes, *beta, dwDesc, dw)
    pub backward_filter: Run,
}

/// Every symbol `Api` resolves, in field order (for the symbol check and error messages).
pub const SYMBOLS: [&str; 24] = [
    "cudnnGetVersion",
    "cudnnGetErrorString",
    "cudnnCreate",
    "cudnnDestroy",
    "cudnnSetStream",
    "cudnnCreateTensorDescriptor",
    "cudnnSetTensor4dDescriptorEx",
    "cudnnDestroyTensorDescriptor",
    "cudnnCreateFilterDescriptor",
    "cudnnSetFilter4dDescriptor",
    "cudnnDestroyFilterDescriptor",
    "cudnnCreateConvolutionDescriptor",
    "cudnnSetConvolution2dDescriptor",
    "cudnnSetConvolutionMathType",
    "cudnnDestroyConvolutionDescriptor",
    "cudnnGetConvolutionForwardAlgorithm_v7",
    "cudnnGetConvolutionBackwardDataAlgorithm_v7",
    "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
    "cudnnGetConvolutionForwardWorkspaceSize",
    "cudnnGetConvolutionBackwardDataWorkspaceSize",
    "cudnnGetConvolutionBackwardFilterWorkspaceSize",
    "cudnnConvolutionForward",
    "cudnnConvolutionBackwardData",
    "cudnnConvolutionBackwardFilter",
];

/// An opened cuDNN: the library (kept open for the process) and its functions.
pub struct Cudnn {
    pub api: Api,
    /// cudnnGetVersion(): major * 10000 + minor * 100 + patch.
    pub version: usize,
    pub path: PathBuf,
    _lib: Library,
}

impl Cudnn {
    /// The text of a status code, e.g. "CUDNN_STATUS_BAD_PARAM".
    pub fn error_string(&self, status: Status) -> String {
        // SAFETY: cudnnGetErrorString returns a static NUL-terminated string for any code.
        let p = unsafe { (self.api.get_error_string)(status) };
        if p.is_null() {
            return format!("cuDNN status {status}");
        }
        // SAFETY: non-null, static, NUL-terminated (above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// "9.28.1", from `version`.
    pub fn version_string(&self) -> String {
        version_string(self.version)
    }
}

/// "major.minor.patch" of a cudnnGetVersion() value.
pub fn version_string(v: usize) -> String {
    format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
}

/// What `DDPM_CUDNN` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Not set: search for `SONAME`, fall back to candle's convolutions when it is not found.
    Search,
    /// `off`, `0` or `false`: candle's convolutions, without looking.
    Off,
    /// A file, or a folder holding `SONAME`: that one or an error.
    Path(PathBuf),
}

impl Request {
    /// The request of a `DDPM_CUDNN` value (None: unset).
    pub fn from_env_value(value: Option<&str>) -> Request {
        match value.map(str::trim) {
            None | Some("") => Request::Search,
            Some("off" | "0" | "false") => Request::Off,
            Some(p) => Request::Path(PathBuf::from(p)),
        }
    }

    /// The candidates to open, in order.
    fn candidates(&self) -> Vec<PathBuf> {
        match self {
            Request::Search => vec![PathBuf::from(SONAME)],
            Request::Off => Vec::new(),
            Request::Path(p) if p.is_dir() => vec![p.join(SONAME)],
            Request::Path(p) => vec![p.clone()],
        }
    }
}

/// Why cuDNN is not used: one line each, saying what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    /// DDPM_CUDNN=off.
    Off,
    /// Searched and not found (or unusable): fall back, with this notice.
    NotFound(String),
    /// DDPM_CUDNN named a library that cannot be used: an error.
    Unusable(String),
}

impl Missing {
    /// The line to show.
    pub fn message(&self) -> String {
        match self {
            Missing::Off => {
                format!("cuDNN is off ({ENV}=off); convolutions run on candle's kernels")
            }
            Missing::NotFound(why) | Missing::Unusable(why) => why.clone(),
        }
    }
}

/// Open the first candidate of `request` that loads, has every symbol and reports a cuDNN 9.
pub fn open(request: &Request) -> Result<Cudnn, Missing> {
    if *request == Request::Off {
        return Err(Missing::Off);
    }
    let mut tried = Vec::new();
    for path in request.candidates() {
        match open_one(&path) {
            Ok(c) => return Ok(c),
            Err(why) => tried.push(why),
        }
    }
    let tried = tried.join("; ");
    Err(match request {
        Request::Path(p) => Missing::Unusable(format!(
            "{ENV}={}: cannot use it ({tried}); {INSTALL}",
            p.display()
        )),
        _ => Missing::NotFound(format!(
            "cuDNN 9 not found ({tried}); convolutions fall back to candle's slower kernels; {INSTALL}"
        )),
    })
}

/// One library file: loaded, every symbol resolved, version 9.x.
fn open_one(path: &Path) -> Result<Cudnn, String> {
    // SAFETY: loading runs the library's initialisers; cuDNN's only set up its own state.
    let lib =
        unsafe { Library::new(path) }.map_err(|e| one_line(&format!("{}: {e}", path.display())))?;
    let api = resolve(&lib).map_err(|missing| {
        format!(
            "{} has no `{missing}` (not cuDNN 9's legacy API)",
            path.display()
        )
    })?;
    // SAFETY: cudnnGetVersion takes nothing and needs no GPU.
    let version = unsafe { (api.get_version)() };
    if !(90_000..100_000).contains(&version) {
        return Err(format!(
            "{} is cuDNN {}, not 9.x",
            path.display(),
            version_string(version)
        ));
    }
    Ok(Cudnn {
        api,
        version,
        path: path.to_path_buf(),
        _lib: lib,
    })
}

/// Driver and loader errors can span lines; messages here are one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Look up every function of `Api`; Err names the first missing symbol.
fn resolve(lib: &Library) -> Result<Api, &'static str> {
    let mut names = SYMBOLS.iter();
    macro_rules! sym {
        () => {{
            let name = *names.next().ok_or("(symbol list too short)")?;
            // SAFETY: the field's type is the function's C signature from cuDNN 9's headers.
            let f = unsafe { lib.get(name.as_bytes()) }.map_err(|_| name)?;
            *f
        }};
    }
    Ok(Api {
        get_version: sym!(),
        get_error_string: sym!(),
        create: sym!(),
        destroy: sym!(),
        set_stream: sym!(),
        create_tensor_desc: sym!(),
        set_tensor_4d_ex: sym!(),
        destroy_tensor_desc: sym!(),
        create_filter_desc: sym!(),
        set_filter_4d: sym!(),
        destroy_filter_desc: sym!(),
        create_conv_desc: sym!(),
        set_conv_2d: sym!(),
        set_conv_math_type: sym!(),
        destroy_conv_desc: sym!(),
        fwd_algos: sym!(),
        bwd_data_algos: sym!(),
        bwd_filter_algos: sym!(),
        fwd_workspace: sym!(),
        bwd_data_workspace: sym!(),
        bwd_filter_workspace: sym!(),
        forward: sym!(),
        backward_data: sym!(),
        backward_filter: sym!(),
    })
}

/// The process's cuDNN, opened once as `DDPM_CUDNN` asks.
pub fn get() -> Result<&'static Cudnn, &'static Missing> {
    static CUDNN: OnceLock<Result<Cudnn, Missing>> = OnceLock::new();
    CUDNN
        .get_or_init(|| {
            let value = std::env::var(ENV).ok();
            open(&Request::from_env_value(value.as_deref()))
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_value_says_where_to_look() {
        assert_eq!(Request::from_env_value(None), Request::Search);
        assert_eq!(Request::from_env_value(Some(" ")), Request::Search);
        for off in ["off", "0", "false"] {
            assert_eq!(Request::from_env_value(Some(off)), Request::Off);
        }
        assert_eq!(
            Request::from_env_value(Some("/opt/x/libcudnn.so.9")),
            Request::Path("/opt/x/libcudnn.so.9".into())
        );
        assert_eq!(Request::Search.candidates(), vec![PathBuf::from(SONAME)]);
        assert!(Request::Off.candidates().is_empty());
        // A folder means the library inside it.
        let dir = std::env::temp_dir();
        assert_eq!(
            Request::Path(dir.clone()).candidates(),
            vec![dir.join(SONAME)]
        );
    }

    #[test]
    fn a_missing_library_is_one_line_naming_what_to_install() {
        let bad = PathBuf::from("/nonexistent/ddpm-test/libcudnn.so.9");
        let Err(Missing::Unusable(msg)) = open(&Request::Path(bad)) else {
            panic!("a path that does not exist must be unusable");
        };
        assert!(msg.starts_with("DDPM_CUDNN=/nonexistent/ddpm-test/libcudnn.so.9: cannot use it"));
        assert!(msg.contains("pip install nvidia-cudnn-cu13"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(matches!(open(&Request::Off), Err(Missing::Off)));
        assert!(Missing::Off.message().contains("DDPM_CUDNN=off"));
    }

    /// Where the loader finds no libcudnn.so.9 (CI): a notice that convolutions fall back, with
    /// the fix; where it finds one, it must be a usable cuDNN 9.
    #[test]
    fn searching_without_cudnn_falls_back_with_a_notice() {
        match open(&Request::Search) {
            Ok(c) => assert_eq!(c.version / 10000, 9),
            Err(Missing::NotFound(msg)) => {
                assert!(
                    msg.starts_with("cuDNN 9 not found (libcudnn.so.9: "),
                    "{msg}"
                );
                assert!(msg.contains("fall back to candle's"), "{msg}");
                assert!(msg.contains("pip install nvidia-cudnn-cu13"), "{msg}");
                assert!(!msg.contains('\n'), "{msg}");
            }
            Err(other) => panic!("a search is never {other:?}"),
        }
    }

    #[test]
    fn a_library_without_the_symbols_is_refused_by_name() {
        // libm is on every Linux machine and has none of cuDNN's functions.
        let Err(why) = open_one(Path::new("libm.so.6")) else {
            panic!("libm is not cuDNN");
        };
        assert!(why.contains("has no `cudnnGetVersion`"), "{why}");
    }

    #[test]
    fn the_perf_struct_has_the_c_layout() {
        // algo, status, time (4 + 4 + 4), padding to 8, memory (8), determinism, mathType,
        // reserved[3] (4 + 4 + 12), padded to a multiple of 8: 48 bytes.
        assert_eq!(std::mem::size_of::<AlgoPerf>(), 48);
        assert_eq!(std::mem::offset_of!(AlgoPerf, memory), 16);
        assert_eq!(std::mem::offset_of!(AlgoPerf, determinism), 24);
        assert_eq!(version_string(92_801), "9.28.1");
    }

    /// With a real cuDNN 9 (DDPM_TEST_CUDNN=/path/to/libcudnn.so.9; it loads without a GPU):
    /// every symbol resolves and the version reads back. Skipped when unset (CI has none).
    #[test]
    fn a_real_cudnn_resolves_every_symbol() {
        let Ok(path) = std::env::var("DDPM_TEST_CUDNN") else {
            return;
        };
        let c = open(&Request::Path(path.into())).unwrap_or_else(|e| panic!("{}", e.message()));
        assert_eq!(c.version / 10000, 9);
        assert_eq!(c.error_string(SUCCESS), "CUDNN_STATUS_SUCCESS");
    }
}

//! The plumbing every CUDA op here shares: kernels.cu compiled once per process by NVRTC
//! (which candle already links; nothing is compiled at build time) and loaded once per device,
//! device pointers of candle's storages, fresh outputs, and error conversion. No op logic.

use std::sync::OnceLock;

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda::cudarc::driver::{
    CudaFunction, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use candle_core::cuda::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda::{CudaStorageSlice, WrapErr as _};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape};

use super::plan::Elem;

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");
/// The module name the kernels are registered under on each device.
const MODULE: &str = "ddpm_kernels";

/// kernels.cu as PTX, compiled on first use (a fraction of a second) for the process.
fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        let opts = CompileOptions {
            name: Some("kernels.cu".into()),
            ..Default::default()
        };
        compile_ptx_with_opts(SOURCE, opts)
            .map(|p| p.to_src())
            .map_err(|e| format!("compiling ddpm's CUDA kernels with NVRTC: {e}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

/// Kernel `name` of kernels.cu on `dev`.
pub fn function(dev: &CudaDevice, name: &str) -> candle_core::Result<CudaFunction> {
    Ok(dev
        .get_or_load_custom_func(name, MODULE, ptx()?)?
        .into_cuda_function())
}

/// The element type of a storage the ops here take.
pub fn elem(s: &CudaStorage) -> candle_core::Result<Elem> {
    match &s.slice {
        CudaStorageSlice::F32(_) => Ok(Elem::F32),
        CudaStorageSlice::BF16(_) => Ok(Elem::Bf16),
        _ => candle_core::bail!("ddpm's CUDA ops take f32 or bf16, not {:?}", s.dtype()),
    }
}

pub fn dtype(e: Elem) -> DType {
    match e {
        Elem::F32 => DType::F32,
        Elem::Bf16 => DType::BF16,
    }
}

/// The device address of element `l.start_offset()` of `s`, for reading (the guard orders the
/// read on `stream`; keep it until the work is queued).
pub fn ptr<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    stream: &'a CudaStream,
) -> candle_core::Result<(u64, SyncOnDrop<'a>)> {
    let (base, guard, size) = match &s.slice {
        CudaStorageSlice::F32(c) => {
            let (p, g) = c.device_ptr(stream);
            (p, g, 4)
        }
        CudaStorageSlice::BF16(c) => {
            let (p, g) = c.device_ptr(stream);
            (p, g, 2)
        }
        _ => candle_core::bail!("ddpm's CUDA ops take f32 or bf16, not {:?}", s.dtype()),
    };
    Ok((base + (l.start_offset() * size) as u64, guard))
}

/// The address of a contiguous storage argument (an error names `what` otherwise).
pub fn contiguous_ptr<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    stream: &'a CudaStream,
    what: &str,
) -> candle_core::Result<(u64, SyncOnDrop<'a>)> {
    if !l.is_contiguous() {
        candle_core::bail!("{what} must be contiguous");
    }
    ptr(s, l, stream)
}

/// The address of a whole storage, for writing.
pub fn ptr_mut<'a>(
    s: &'a mut CudaStorage,
    stream: &'a CudaStream,
) -> candle_core::Result<(u64, SyncOnDrop<'a>)> {
    let dtype = s.dtype();
    Ok(match &mut s.slice {
        CudaStorageSlice::F32(c) => c.device_ptr_mut(stream),
        CudaStorageSlice::BF16(c) => c.device_ptr_mut(stream),
        _ => candle_core::bail!("ddpm's CUDA ops write f32 or bf16, not {dtype:?}"),
    })
}

/// A new uninitialised storage of `shape` on `dev`.
pub fn alloc(dev: &CudaDevice, shape: &Shape, e: Elem) -> candle_core::Result<CudaStorage> {
    // SAFETY: every caller's kernel (or cuDNN call) writes all of it before it is read.
    unsafe { dev.alloc_uninit(shape, dtype(e)) }
}

/// The library's error as candle's, for the `plan` helpers inside custom ops.
pub fn ce(e: crate::error::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// A 1-d grid of `blocks` blocks of `threads`.
pub fn cfg(blocks: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launch `f` on `stream` with `args`, each a reference to a value the kernel takes by value
/// (device addresses as u64, sizes as the C types of kernels.cu).
///
/// # Safety
/// `args` must match the kernel's parameter list in number, order and type, and every address
/// must stay valid, with the extent the kernel touches, until the kernel has run (the storages'
/// guards must outlive this call).
pub unsafe fn launch(
    stream: &CudaStream,
    f: &CudaFunction,
    cfg: LaunchConfig,
    args: &[&dyn Arg],
) -> candle_core::Result<()> {
    let mut b = stream.launch_builder(f);
    for a in args {
        a.push(&mut b);
    }
    b.launch(cfg).w()?;
    Ok(())
}

/// A kernel argument passed by value.
pub trait Arg {
    fn push<'a>(&'a self, b: &mut candle_core::cuda::cudarc::driver::LaunchArgs<'a>);
}

macro_rules! by_value {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn push<'a>(&'a self, b: &mut candle_core::cuda::cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
        }
    )*};
}
by_value!(u64, i64, i32, f32);

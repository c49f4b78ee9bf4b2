//! cuDNN's three convolution passes on candle's storages: one handle per thread and device
//! (cuDNN handles are not to be shared between threads; candle keeps its own the same way),
//! bound to candle's stream; per shape (`plan::ConvKey`) the descriptors and each pass's
//! algorithm, chosen once from cuDNN's heuristics (`plan::choose`: deterministic, no
//! half-precision conversion of f32), as PyTorch does with `cudnn.benchmark = False`; and one
//! workspace per device that grows to the largest need and is reused by every call (all work is
//! ordered on the one stream).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};

use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtrMut};
use candle_core::cuda::DeviceId;
use candle_core::CudaDevice;

use super::plan::{self, ConvKey};
use crate::device::cudnn::{self as lib, AlgoPerf, Cudnn};

/// Which pass: forward (x, w -> y), backward data (w, dy -> dx), backward filter (x, dy -> dw).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// The descriptors of one shape and the algorithm chosen for each pass so far.
struct Plan {
    x: lib::TensorDesc,
    w: lib::FilterDesc,
    y: lib::TensorDesc,
    conv: lib::ConvDesc,
    /// (algorithm, math mode, workspace bytes) per pass, once chosen.
    chosen: [Option<(c_int, c_int, usize)>; 3],
}

/// One device's cuDNN state on this thread.
struct State {
    cudnn: &'static Cudnn,
    handle: lib::Handle,
    plans: HashMap<ConvKey, Plan>,
    workspace: Option<CudaSlice<u8>>,
}

impl Drop for State {
    fn drop(&mut self) {
        let api = &self.cudnn.api;
        // SAFETY: each descriptor and the handle were created by this state and are freed once.
        unsafe {
            for p in self.plans.values() {
                (api.destroy_tensor_desc)(p.x);
                (api.destroy_filter_desc)(p.w);
                (api.destroy_tensor_desc)(p.y);
                (api.destroy_conv_desc)(p.conv);
            }
            (api.destroy)(self.handle);
        }
    }
}

thread_local! {
    static STATES: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
}

/// Err unless `status` is CUDNN_STATUS_SUCCESS, naming the call.
fn check(c: &Cudnn, status: lib::Status, call: &str) -> candle_core::Result<()> {
    if status == lib::SUCCESS {
        Ok(())
    } else {
        candle_core::bail!("cuDNN {call}: {} ({status})", c.error_string(status))
    }
}

fn new_state(c: &'static Cudnn, dev: &CudaDevice) -> candle_core::Result<State> {
    let mut handle: lib::Handle = std::ptr::null_mut();
    // SAFETY: cudnnCreate writes a handle; cudnnSetStream binds it to candle's stream, which
    // lives as long as the device.
    unsafe {
        check(c, (c.api.create)(&mut handle), "cudnnCreate")?;
        let stream = dev.cuda_stream().cu_stream() as *mut c_void;
        check(c, (c.api.set_stream)(handle, stream), "cudnnSetStream")?;
    }
    Ok(State {
        cudnn: c,
        handle,
        plans: HashMap::new(),
        workspace: None,
    })
}

fn new_plan(c: &Cudnn, key: &ConvKey) -> candle_core::Result<Plan> {
    let ce = super::launch::ce;
    let dims = plan::conv_dims(&key.geom).map_err(ce)?;
    let (pad, stride) = (dims.pad, dims.stride);
    let (xd, xs) = plan::nchw(dims.x).map_err(ce)?;
    let (wd, _) = plan::nchw(dims.w).map_err(ce)?;
    let (yd, ys) = plan::nchw(dims.y).map_err(ce)?;
    let api = &c.api;
    let mut p = Plan {
        x: std::ptr::null_mut(),
        w: std::ptr::null_mut(),
        y: std::ptr::null_mut(),
        conv: std::ptr::null_mut(),
        chosen: [None; 3],
    };
    let t = key.elem.cudnn();
    // SAFETY: create/set calls on descriptors this function owns (freed by `State::drop` once
    // the plan is stored, or leaked only if a set call fails, which cuDNN reports up front).
    unsafe {
        check(c, (api.create_tensor_desc)(&mut p.x), "create x")?;
        check(c, (api.create_filter_desc)(&mut p.w), "create w")?;
        check(c, (api.create_tensor_desc)(&mut p.y), "create y")?;
        check(c, (api.create_conv_desc)(&mut p.conv), "create conv")?;
        let set4 = |d, dims: [c_int; 4], s: [c_int; 4]| {
            (api.set_tensor_4d_ex)(
                d, t, dims[0], dims[1], dims[2], dims[3], s[0], s[1], s[2], s[3],
            )
        };
        check(c, set4(p.x, xd, xs), "cudnnSetTensor4dDescriptorEx(x)")?;
        check(c, set4(p.y, yd, ys), "cudnnSetTensor4dDescriptorEx(y)")?;
        let status = (api.set_filter_4d)(p.w, t, lib::TENSOR_NCHW, wd[0], wd[1], wd[2], wd[3]);
        check(c, status, "cudnnSetFilter4dDescriptor")?;
        // Accumulation in f32 for bf16 too (as PyTorch: bf16 storage, f32 compute).
        let status = (api.set_conv_2d)(
            p.conv,
            pad,
            pad,
            stride,
            stride,
            1,
            1,
            lib::CROSS_CORRELATION,
            lib::DATA_FLOAT,
        );
        check(c, status, "cudnnSetConvolution2dDescriptor")?;
        let status = (api.set_conv_math_type)(p.conv, key.elem.requested_math(key.tf32));
        check(c, status, "cudnnSetConvolutionMathType")?;
    }
    Ok(p)
}

/// Choose the algorithm of `pass` for plan `p` from cuDNN's heuristics.
fn choose(
    c: &Cudnn,
    h: lib::Handle,
    p: &Plan,
    key: &ConvKey,
    pass: Pass,
) -> candle_core::Result<(c_int, c_int, usize)> {
    let api = &c.api;
    let mut perfs = [AlgoPerf::default(); 8];
    let mut n: c_int = 0;
    let (f, ws, a, b, d) = match pass {
        Pass::Forward => (api.fwd_algos, api.fwd_workspace, p.x, p.w, p.y),
        Pass::BackwardData => (api.bwd_data_algos, api.bwd_data_workspace, p.w, p.y, p.x),
        Pass::BackwardFilter => (
            api.bwd_filter_algos,
            api.bwd_filter_workspace,
            p.x,
            p.y,
            p.w,
        ),
    };
    // SAFETY: the descriptors are set; `perfs` holds the 8 entries asked for.
    let status = unsafe {
        f(
            h,
            a,
            b,
            p.conv,
            d,
            perfs.len() as c_int,
            &mut n,
            perfs.as_mut_ptr(),
        )
    };
    check(c, status, &format!("{pass:?} algorithm heuristics"))?;
    let n = (n.max(0) as usize).min(perfs.len());
    let Some(best) = plan::choose(&perfs[..n], key, plan::MAX_WORKSPACE) else {
        candle_core::bail!(
            "cuDNN offers no deterministic {pass:?} algorithm for {:?} {:?} (set DDPM_CUDNN=off \
             to use candle's convolutions)",
            key.elem,
            key.geom
        );
    };
    let mut bytes = 0usize;
    // SAFETY: as above; the chosen math mode is set before the size query and each run.
    unsafe {
        check(
            c,
            (api.set_conv_math_type)(p.conv, best.math_type),
            "math type",
        )?;
        check(
            c,
            ws(h, a, b, p.conv, d, best.algo, &mut bytes),
            "workspace size",
        )?;
    }
    Ok((best.algo, best.math_type, bytes))
}

/// Run `pass` of the convolution `key` on device addresses: forward reads (a = x, b = w) and
/// writes out = y; backward data reads (a = w, b = dy) and writes dx; backward filter reads
/// (a = x, b = dy) and writes dw. out = 1 * result + 0 * out.
pub fn run(
    c: &'static Cudnn,
    dev: &CudaDevice,
    key: ConvKey,
    pass: Pass,
    (a, b, out): (u64, u64, u64),
) -> candle_core::Result<()> {
    STATES.with(|states| {
        let mut states = states.borrow_mut();
        let state = match states.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(new_state(c, dev)?),
        };
        if let std::collections::hash_map::Entry::Vacant(v) = state.plans.entry(key) {
            v.insert(new_plan(c, &key)?);
        }
        let h = state.handle;
        let i = pass as usize;
        let chosen = match state.plans.get(&key).and_then(|p| p.chosen[i]) {
            Some(ch) => ch,
            None => {
                let p = state
                    .plans
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg("plan".into()))?;
                let ch = choose(c, h, p, &key, pass)?;
                if let Some(p) = state.plans.get_mut(&key) {
                    p.chosen[i] = Some(ch);
                }
                ch
            }
        };
        let (algo, math, bytes) = chosen;
        let have = state.workspace.as_ref().map_or(0, |w| w.len());
        if let Some(size) = plan::grow_workspace(have, bytes) {
            // The old buffer is freed in stream order once queued work no longer uses it.
            state.workspace = Some(dev.alloc_zeros::<u8>(size)?);
        }
        let stream = dev.cuda_stream();
        let ws_len = state.workspace.as_ref().map_or(0, |w| w.len());
        let (ws_ptr, _ws_guard) = match state.workspace.as_mut() {
            Some(w) => {
                let (p, g) = w.device_ptr_mut(&stream);
                (p as *mut c_void, Some(g))
            }
            None => (std::ptr::null_mut(), None),
        };
        let p = state
            .plans
            .get(&key)
            .ok_or_else(|| candle_core::Error::Msg("plan".into()))?;
        let (alpha, beta) = (1f32, 0f32);
        let (alpha, beta) = (
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
        );
        let api = &c.api;
        let (f, da, db, dout) = match pass {
            Pass::Forward => (api.forward, p.x, p.w, p.y),
            Pass::BackwardData => (api.backward_data, p.w, p.y, p.x),
            Pass::BackwardFilter => (api.backward_filter, p.x, p.y, p.w),
        };
        // SAFETY: the addresses come from live storages of the descriptors' shapes and type
        // (the callers' guards keep them until the call is queued); alpha and beta are host
        // f32, as cuDNN takes for f32 and bf16 data.
        unsafe {
            check(c, (api.set_conv_math_type)(p.conv, math), "math type")?;
            let status = f(
                h,
                alpha,
                da,
                a as *const c_void,
                db,
                b as *const c_void,
                p.conv,
                algo,
                ws_ptr,
                ws_len,
                beta,
                dout,
                out as *mut c_void,
            );
            check(c, status, &format!("convolution {pass:?}"))
        }
    })
}

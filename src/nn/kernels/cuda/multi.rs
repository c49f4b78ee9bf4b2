//! Multi-tensor kernels (PyTorch's `multi_tensor_apply`): one launch updates up to
//! `plan::TABLE` tensors, their addresses and sizes passed by value, so the optimizer and the
//! EMA over a UNet's few hundred parameter tensors take a few launches instead of several per
//! tensor. The tensors are updated in place: the callers own them (AdamW's moments, the EMA's
//! copies, the parameters, the step's gradients) and no other tensor shares their storage.
//! The writes are ordered on the calling thread's stream, which candle's other ops on that
//! thread follow; they record no write event for other threads' streams (candle's own ops
//! would need each storage locked for writing), so the GPU work of a training run stays on one
//! thread, as the binary keeps it (`kernels::on_pool`).

use candle_core::cuda::cudarc::driver::{DeviceRepr, LaunchArgs, LaunchConfig};
use candle_core::{CudaDevice, Device, Storage, Tensor};

use super::launch::{self, Arg};
use super::plan::{self, Table, TABLE};
use crate::error::{Error, Result};

// SAFETY: plain integers, #[repr(C)] as the C struct (checked by plan's
// `table_matches_the_c_struct`).
unsafe impl DeviceRepr for Table {}

impl Arg for Table {
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        use candle_core::cuda::cudarc::driver::PushKernelArg;
        b.arg(self);
    }
}

/// The CUDA device of the tensors, all f32, contiguous and on one CUDA device.
fn device(rows: &[Vec<&Tensor>]) -> Result<CudaDevice> {
    let first = rows.first().and_then(|r| r.first());
    let Some(Device::Cuda(dev)) = first.map(|t| t.device().clone()) else {
        return Err(Error::Invalid(
            "multi-tensor kernels run on CUDA tensors".into(),
        ));
    };
    for t in rows.iter().flatten() {
        if !t.device().same_device(&Device::Cuda(dev.clone()))
            || t.dtype() != candle_core::DType::F32
            || !t.is_contiguous()
        {
            return Err(Error::Invalid(format!(
                "multi-tensor kernels take contiguous f32 tensors on one GPU, not {:?} {:?}",
                t.dtype(),
                t.device()
            )));
        }
    }
    Ok(dev)
}

/// Launch `kernel` over `rows`: rows[i] holds the tensors of role i (same lengths, same
/// element counts per index), `extra` the scalar arguments after the table.
fn run(kernel: &str, rows: &[Vec<&Tensor>], extra: &[&dyn Arg]) -> Result<()> {
    let dev = device(rows)?;
    let stream = dev.cuda_stream();
    let f = launch::function(&dev, kernel)?;
    let n = rows[0].len();
    if rows.iter().any(|r| r.len() != n) {
        return Err(Error::Invalid(format!(
            "{kernel}: roles of different lengths"
        )));
    }
    let sizes: Vec<usize> = rows[0].iter().map(|t| t.elem_count()).collect();
    let storages: Vec<Vec<_>> = rows
        .iter()
        .map(|r| r.iter().map(|t| t.storage_and_layout()).collect())
        .collect();
    for (range, width) in plan::multi_launches(&sizes) {
        let mut table = Table {
            ptr: [[0; TABLE]; 4],
            numel: [0; TABLE],
            count: range.len() as i32,
            pad: 0,
        };
        let mut guards = Vec::new();
        for (slot, k) in range.clone().enumerate() {
            table.numel[slot] = sizes[k] as i64;
            for (role, r) in storages.iter().enumerate() {
                let (s, l) = &r[k];
                let Storage::Cuda(cs) = &**s else {
                    return Err(Error::Invalid(format!("{kernel}: a tensor left the GPU")));
                };
                let (p, g) = launch::ptr(cs, l, &stream)?;
                table.ptr[role][slot] = p;
                guards.push(g);
            }
        }
        let cfg = LaunchConfig {
            grid_dim: (width, range.len() as u32, 1),
            block_dim: (plan::BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut args: Vec<&dyn Arg> = vec![&table];
        args.extend_from_slice(extra);
        // SAFETY: every kernel here takes (Table, scalars...) as in `extra`; each address is a
        // live contiguous f32 storage of numel values, held by `storages` and `guards` until
        // the launch is queued. Writes go to storages no other tensor reads meanwhile (see the
        // module doc).
        unsafe { launch::launch(&stream, &f, cfg, &args)? };
        drop(guards);
    }
    Ok(())
}

/// The AdamW coefficients the kernel takes, f32 roundings of the f64 values (as candle's
/// scalar ops round them): decay 1 - lr wd, b1, 1 - b1, b2, 1 - b2, 1 / sqrt(1 - b2^k), eps,
/// lr / (1 - b1^k), and the gradient scale of clipping (1: none).
pub type AdamCoefs = [f32; 9];

/// One AdamW step over (p, g, m, v) quadruples in place (`crate::optim::AdamW::step`'s update).
pub fn adamw(
    p: Vec<&Tensor>,
    g: Vec<&Tensor>,
    m: Vec<&Tensor>,
    v: Vec<&Tensor>,
    c: AdamCoefs,
) -> Result<()> {
    let [decay, b1, c1, b2, c2, ibc2, eps, ss, gscale] = c;
    let extra: [&dyn Arg; 9] = [&decay, &b1, &c1, &b2, &c2, &ibc2, &eps, &ss, &gscale];
    run("adamw_multi", &[p, g, m, v], &extra)
}

/// ema <- ema - (ema - p) c for every pair, or ema <- p when `copy` (`crate::ema::Ema::update`).
pub fn ema(ema: Vec<&Tensor>, p: Vec<&Tensor>, c: f32, copy: bool) -> Result<()> {
    let copy = copy as i32;
    let extra: [&dyn Arg; 2] = [&c, &copy];
    run("ema_multi", &[ema, p], &extra)
}

/// g <- g c for every tensor (gradient clipping).
pub fn scale(g: Vec<&Tensor>, c: f32) -> Result<()> {
    let extra: [&dyn Arg; 1] = [&c];
    run("scale_multi", &[g], &extra)
}

/// sum over all tensors of sum g^2, as a 0-d f32 tensor on their GPU (summed in a fixed order,
/// so the same gradients give the same bits).
pub fn sum_squares(g: Vec<&Tensor>) -> Result<Tensor> {
    let rows = [g];
    let dev = device(&rows)?;
    let sizes: Vec<usize> = rows[0].iter().map(|t| t.elem_count()).collect();
    let launches = plan::multi_launches(&sizes);
    let slots: usize = launches.iter().map(|(r, w)| r.len() * *w as usize).sum();
    let partial = Tensor::zeros(
        slots.max(1),
        candle_core::DType::F32,
        &Device::Cuda(dev.clone()),
    )?;
    let total = Tensor::zeros((), candle_core::DType::F32, &Device::Cuda(dev.clone()))?;
    {
        let (ps, pl) = partial.storage_and_layout();
        let (ts, tl) = total.storage_and_layout();
        let (Storage::Cuda(pc), Storage::Cuda(tc)) = (&*ps, &*ts) else {
            return Err(Error::Invalid(
                "sum of squares: buffers left the GPU".into(),
            ));
        };
        let stream = dev.cuda_stream();
        let (pp, _g1) = launch::ptr(pc, pl, &stream)?;
        let (tp, _g2) = launch::ptr(tc, tl, &stream)?;
        let mut slot = 0i32;
        for (range, width) in launches {
            let sub: Vec<&Tensor> = rows[0][range.clone()].to_vec();
            let extra: [&dyn Arg; 2] = [&pp, &slot];
            run("sumsq_multi", &[sub], &extra)?;
            slot += (range.len() * width as usize) as i32;
        }
        let f = launch::function(&dev, "sum_all")?;
        let n = slot;
        // SAFETY: sum_all(const float *partial, int n, float *out): n partial sums written above.
        unsafe {
            let args: [&dyn Arg; 3] = [&pp, &n, &tp];
            launch::launch(&stream, &f, launch::cfg(1, 1024), &args)?;
        }
    }
    Ok(total)
}

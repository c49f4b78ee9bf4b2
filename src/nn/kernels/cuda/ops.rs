//! GroupNorm (+ SiLU), the attention softmax and nearest 2x upsampling on CUDA, each a candle
//! custom op whose forward and backward are one kernel of kernels.cu (candle runs GroupNorm as
//! ~10 elementwise kernels each way, softmax as five, and upsampling's backward as one grouped
//! convolution per channel). Statistics, sums and the softmax are computed in f32 whatever the
//! storage type (bf16 autocast: see `crate::precision`).

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, DevicePtr};
use candle_core::cuda::CudaStorageSlice;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor,
};

use super::launch::{self, cfg, contiguous_ptr, ptr_mut};
use super::plan;

fn cuda_only(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{name} runs on CUDA tensors only"))
}

/// The address of an f32 CudaSlice, for reading or writing inside a kernel launch.
fn f32_ptr<'a>(
    s: &'a mut CudaSlice<f32>,
    stream: &'a candle_core::cuda::cudarc::driver::CudaStream,
) -> (u64, candle_core::cuda::cudarc::driver::SyncOnDrop<'a>) {
    use candle_core::cuda::cudarc::driver::DevicePtrMut;
    s.device_ptr_mut(stream)
}

/// GroupNorm's settings.
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
}

/// y = act((x - mean_g) rstd_g gamma_c + beta_c) over x (B, C, ...), gamma and beta f32 (C);
/// keeps the (mean, rstd) of every (example, group) for its backward.
pub struct GroupNorm {
    pub norm: Norm,
    pub stats: Mutex<Option<CudaSlice<f32>>>,
}

fn nchw(l: &Layout, groups: usize) -> candle_core::Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 3 || groups == 0 || d[1] % groups != 0 {
        candle_core::bail!("group_norm: input {d:?} with {groups} groups");
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

fn f32_params(s: &CudaStorage, l: &Layout, c: usize) -> candle_core::Result<()> {
    if !matches!(s.slice, CudaStorageSlice::F32(_)) || l.dims() != [c] || !l.is_contiguous() {
        candle_core::bail!("group_norm: parameters must be contiguous f32 ({c})");
    }
    Ok(())
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "ddpm-cuda-group-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, c, hw) = nchw(xl, self.norm.groups)?;
        f32_params(gs, gl, c)?;
        f32_params(bs, bl, c)?;
        let e = launch::elem(xs)?;
        let dev = xs.device.clone();
        let stream = dev.cuda_stream();
        let blocks = b * self.norm.groups;
        let mut out = launch::alloc(&dev, xl.shape(), e)?;
        let mut stats = dev.alloc_zeros::<f32>(2 * blocks)?;
        {
            let (x, _gx) = contiguous_ptr(xs, xl, &stream, "group_norm x")?;
            let (gamma, _gg) = contiguous_ptr(gs, gl, &stream, "group_norm weight")?;
            let (beta, _gb) = contiguous_ptr(bs, bl, &stream, "group_norm bias")?;
            let (y, _gy) = ptr_mut(&mut out, &stream)?;
            let (st, _gs) = f32_ptr(&mut stats, &stream);
            let (cc, hw, gg) = (c as i32, hw as i32, self.norm.groups as i32);
            let (eps, silu) = (self.norm.eps, self.norm.silu as i32);
            let f = launch::function(&dev, &format!("gn_fwd_{}", e.suffix()))?;
            // SAFETY: gn_fwd(const T *x, const float *gamma, const float *beta, T *y,
            // float *stats, int C, int HW, int G, float eps, int silu); one block per group.
            unsafe {
                let args: [&dyn launch::Arg; 10] =
                    [&x, &gamma, &beta, &y, &st, &cc, &hw, &gg, &eps, &silu];
                launch::launch(&stream, &f, cfg(blocks as u32, plan::BLOCK), &args)?;
            }
        }
        if let Ok(mut slot) = self.stats.lock() {
            *slot = Some(stats);
        }
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = match self.stats.lock().ok().and_then(|mut s| s.take()) {
            Some(s) => s,
            // A second backward through the same graph: recompute the statistics.
            None => {
                let again = GroupNorm {
                    norm: self.norm,
                    stats: Mutex::new(None),
                };
                x.apply_op3_no_bwd(gamma, beta, &again)?;
                let s = again.stats.lock().ok().and_then(|mut s| s.take());
                s.ok_or_else(|| candle_core::Error::Msg("group_norm: no statistics".into()))?
            }
        };
        let c = gamma.elem_count();
        let gb = Tensor::cat(&[gamma, beta], 0)?;
        let back = GroupNormGrad {
            norm: self.norm,
            stats,
            params: Mutex::new(None),
        };
        let dx = x.apply_op3_no_bwd(&dy.contiguous()?, &gb, &back)?;
        let dgb = gb.apply_op1_no_bwd(&back)?;
        Ok((
            Some(dx),
            Some(dgb.narrow(0, 0, c)?),
            Some(dgb.narrow(0, c, c)?),
        ))
    }
}

/// (pdg, pdb, batch): per (example, channel) sums of dz xh and dz.
type ParamSums = (CudaSlice<f32>, CudaSlice<f32>, usize);

/// GroupNorm's backward: as a CustomOp3 (x, dy, [gamma, beta]) -> dx, leaving the per-example
/// parameter sums behind; then as a CustomOp1 on [gamma, beta] -> [dgamma, dbeta] (f32, 2C),
/// their sum over the batch in batch order.
struct GroupNormGrad {
    norm: Norm,
    stats: CudaSlice<f32>,
    params: Mutex<Option<ParamSums>>,
}

impl CustomOp3 for GroupNormGrad {
    fn name(&self) -> &'static str {
        "ddpm-cuda-group-norm-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cuda_only(CustomOp3::name(self)))
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ds: &CudaStorage,
        dl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, c, hw) = nchw(xl, self.norm.groups)?;
        f32_params(gs, gl, 2 * c)?;
        let e = launch::elem(xs)?;
        if launch::elem(ds)? != e || dl.dims() != xl.dims() {
            candle_core::bail!(
                "group_norm backward: dy {:?} for x {:?}",
                dl.dims(),
                xl.dims()
            );
        }
        let dev = xs.device.clone();
        let stream = dev.cuda_stream();
        let mut out = launch::alloc(&dev, xl.shape(), e)?;
        let mut pdg = dev.alloc_zeros::<f32>(b * c)?;
        let mut pdb = dev.alloc_zeros::<f32>(b * c)?;
        {
            let (x, _gx) = contiguous_ptr(xs, xl, &stream, "group_norm x")?;
            let (dy, _gd) = contiguous_ptr(ds, dl, &stream, "group_norm dy")?;
            let (gamma, _gg) = contiguous_ptr(gs, gl, &stream, "group_norm weight")?;
            let beta = gamma + 4 * c as u64;
            let (dx, _go) = ptr_mut(&mut out, &stream)?;
            let (st, _gs) = self.stats.device_ptr(&stream);
            let (pg, _g1) = f32_ptr(&mut pdg, &stream);
            let (pb, _g2) = f32_ptr(&mut pdb, &stream);
            let (cc, hw, gg) = (c as i32, hw as i32, self.norm.groups as i32);
            let silu = self.norm.silu as i32;
            let f = launch::function(&dev, &format!("gn_bwd_{}", e.suffix()))?;
            let blocks = (b * self.norm.groups) as u32;
            // SAFETY: gn_bwd(const T *x, const T *dy, const float *gamma, const float *beta,
            // const float *stats, T *dx, float *pdg, float *pdb, int C, int HW, int G,
            // int silu); [gamma, beta] is one contiguous f32 buffer of 2C values.
            unsafe {
                let args: [&dyn launch::Arg; 12] = [
                    &x, &dy, &gamma, &beta, &st, &dx, &pg, &pb, &cc, &hw, &gg, &silu,
                ];
                launch::launch(&stream, &f, cfg(blocks, plan::BLOCK), &args)?;
            }
        }
        if let Ok(mut slot) = self.params.lock() {
            *slot = Some((pdg, pdb, b));
        }
        Ok((out, xl.shape().clone()))
    }
}

impl CustomOp1 for GroupNormGrad {
    fn name(&self) -> &'static str {
        "ddpm-cuda-group-norm-param-grad"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cuda_only(CustomOp1::name(self)))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((mut pdg, mut pdb, b)) = self.params.lock().ok().and_then(|mut p| p.take()) else {
            candle_core::bail!("group_norm backward: parameter sums asked before dx");
        };
        let c = l.shape().elem_count() / 2;
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let shape = Shape::from(2 * c);
        let mut out = launch::alloc(&dev, &shape, plan::Elem::F32)?;
        {
            let (pg, _g1) = f32_ptr(&mut pdg, &stream);
            let (pb, _g2) = f32_ptr(&mut pdb, &stream);
            let (dg, _go) = ptr_mut(&mut out, &stream)?;
            let db = dg + 4 * c as u64;
            let (bb, cc) = (b as i32, c as i32);
            let f = launch::function(&dev, "gn_param_grad")?;
            // SAFETY: gn_param_grad(const float *pdg, const float *pdb, float *dgamma,
            // float *dbeta, int B, int C); out holds dgamma then dbeta, C each.
            unsafe {
                let args: [&dyn launch::Arg; 6] = [&pg, &pb, &dg, &db, &bb, &cc];
                launch::launch(&stream, &f, cfg(plan::grid_for(c), plan::BLOCK), &args)?;
            }
        }
        Ok((out, shape))
    }
}

/// y = softmax(scale x) over the last dimension, computed in f32.
pub struct Softmax {
    pub scale: f32,
}

/// One row kernel over a tensor's last dimension: `name`(inputs..., out, rows, n, scale).
fn rows_kernel(
    name: &str,
    inputs: &[(&CudaStorage, &Layout)],
    scale: f32,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (s0, l0) = inputs[0];
    let n = *l0.dims().last().unwrap_or(&1);
    let e = launch::elem(s0)?;
    let dev = s0.device.clone();
    let stream = dev.cuda_stream();
    let mut out = launch::alloc(&dev, l0.shape(), e)?;
    {
        let mut ptrs = Vec::with_capacity(inputs.len());
        let mut guards = Vec::with_capacity(inputs.len());
        for (s, l) in inputs {
            if launch::elem(s)? != e || l.dims() != l0.dims() {
                candle_core::bail!("{name}: inputs of different shapes or types");
            }
            let (p, g) = contiguous_ptr(s, l, &stream, name)?;
            ptrs.push(p);
            guards.push(g);
        }
        let (o, _go) = ptr_mut(&mut out, &stream)?;
        let rows = (l0.shape().elem_count() / n.max(1)) as i64;
        let n32 = n as i32;
        let f = launch::function(&dev, &format!("{name}_{}", e.suffix()))?;
        let grid = plan::grid_for_rows(rows as usize).map_err(launch::ce)?;
        let mut args: Vec<&dyn launch::Arg> = ptrs.iter().map(|p| p as &dyn launch::Arg).collect();
        let tail: [&dyn launch::Arg; 4] = [&o, &rows, &n32, &scale];
        args.extend(tail);
        // SAFETY: softmax_fwd(const T *x, T *y, i64 rows, int n, float scale) and
        // softmax_bwd(const T *y, const T *dy, T *dx, ...): all of rows n values.
        unsafe { launch::launch(&stream, &f, cfg(grid, plan::BLOCK), &args)? };
    }
    Ok((out, l0.shape().clone()))
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "ddpm-cuda-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        rows_kernel("softmax_fwd", &[(s, l)], self.scale)
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = SoftmaxGrad { scale: self.scale };
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &back)?))
    }
}

/// dx = scale y (dy - sum(dy y)) per row, from (y, dy).
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "ddpm-cuda-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        ys: &CudaStorage,
        yl: &Layout,
        ds: &CudaStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        rows_kernel("softmax_bwd", &[(ys, yl), (ds, dl)], self.scale)
    }
}

/// Nearest 2x upsampling of (B, C, H, W), or (`down`) its adjoint, the 2x2 block sum.
pub struct Resample {
    pub down: bool,
}

impl CustomOp1 for Resample {
    fn name(&self) -> &'static str {
        "ddpm-cuda-resample2x"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let &[n, c, h, w] = l.dims() else {
            candle_core::bail!("resample: {:?} is not 4-d", l.dims());
        };
        let ((oh, ow), (ih, iw)) = match self.down {
            false => ((2 * h, 2 * w), (h, w)),
            true if h % 2 == 0 && w % 2 == 0 => ((h / 2, w / 2), (h / 2, w / 2)),
            true => candle_core::bail!("resample: odd gradient {:?}", l.dims()),
        };
        let e = launch::elem(s)?;
        let dev = s.device.clone();
        let stream = dev.cuda_stream();
        let shape = Shape::from((n, c, oh, ow));
        let mut out = launch::alloc(&dev, &shape, e)?;
        {
            let (x, _gx) = contiguous_ptr(s, l, &stream, "resample input")?;
            let (y, _gy) = ptr_mut(&mut out, &stream)?;
            let total = shape.elem_count();
            let (hh, ww, t) = (ih as i32, iw as i32, total as i64);
            let name = if self.down { "downsum2x" } else { "upsample2x" };
            let f = launch::function(&dev, &format!("{name}_{}", e.suffix()))?;
            // SAFETY: upsample2x / downsum2x(const T *in, T *out, int H, int W, i64 total),
            // H and W those of the smaller map; one thread per output value.
            unsafe {
                let args: [&dyn launch::Arg; 5] = [&x, &y, &hh, &ww, &t];
                launch::launch(&stream, &f, cfg(plan::grid_for(total), plan::BLOCK), &args)?;
            }
        }
        Ok((out, shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = Resample { down: !self.down };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

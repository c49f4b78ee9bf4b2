//! The convolution on CUDA as a candle custom op with backward, all three passes through cuDNN
//! (`cudnn`): y = conv(x, w) + bias[b, co] (+ residual), with the bias (per example, or one per
//! channel broadcast over the batch) and the residual added by our `bias_add` kernel in one
//! pass after cuDNN's (the legacy API's fused ConvolutionBiasActivationForward takes neither a
//! per-example bias nor most algorithms); db[b, co] = sum over the map of dy is `row_sum`, and
//! the residual's gradient is dy itself. candle's custom ops take three tensors, so with a
//! residual the weight and its (Cout) bias travel packed as one vector, as on the CPU
//! (`kernels::conv_add`).

use candle_core::{CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::cudnn::{run, Pass};
use super::launch::{self, cfg, contiguous_ptr, ptr, ptr_mut};
use super::plan::{self, ConvKey, Elem};
use crate::device::cudnn as lib;
use crate::nn::kernels::geom::Geom;

/// The process's cuDNN, or the reason it is not used, as a candle error.
fn cudnn() -> candle_core::Result<&'static lib::Cudnn> {
    lib::get().map_err(|m| candle_core::Error::Msg(m.message()))
}

/// TF32 for f32 convolutions, unless NVIDIA_TF32_OVERRIDE=0 (read once).
fn tf32() -> bool {
    static TF32: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TF32.get_or_init(|| plan::tf32_allowed(std::env::var("NVIDIA_TF32_OVERRIDE").ok().as_deref()))
}

fn cuda_only(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{name} runs on CUDA tensors only"))
}

/// Without `packed`: (x, w, bias) -> conv(x, w) + bias[b, co], x (B, Cin, H, W),
/// w (Cout, Cin, k, k), bias (B, Cout) in any layout. With `packed` = the weight's dims:
/// (x, [w flattened, bias (Cout)], residual (B, Cout, Ho, Wo)) -> conv(x, w) + bias[co] + residual.
pub struct Conv {
    pub stride: usize,
    pub pad: usize,
    pub packed: Option<[usize; 4]>,
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "ddpm-cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let c = cudnn()?;
        let w_dims = self.packed.unwrap_or([0; 4]);
        let g = match self.packed {
            Some(d) => Geom::new(xl.dims(), &d, self.stride, self.pad)?,
            None => Geom::new(xl.dims(), wl.dims(), self.stride, self.pad)?,
        };
        let e = launch::elem(xs)?;
        if launch::elem(ws)? != e || launch::elem(bs)? != e {
            candle_core::bail!("conv2d: x, w, bias and residual must have one dtype");
        }
        let w_len: usize = w_dims.iter().product();
        // Where the bias is (None: the third argument; Some: after the packed weight), its
        // (example, channel) strides, and whether the third argument is a residual.
        let (bias_at, sb, sc) = match self.packed {
            None => {
                let (&[b, co], &[sb, sc]) = (bl.dims(), bl.stride()) else {
                    candle_core::bail!("conv2d: bias {:?} must be (batch, cout)", bl.dims());
                };
                if (b, co) != (g.b, g.cout) {
                    candle_core::bail!("conv2d: bias {:?} for {:?}", bl.dims(), g);
                }
                (None, sb, sc)
            }
            Some(_) => {
                if wl.dims() != [w_len + g.cout] || bl.dims() != [g.b, g.cout, g.ho, g.wo] {
                    candle_core::bail!(
                        "conv2d_add: {:?} parameters and residual {:?} for {g:?}",
                        wl.dims(),
                        bl.dims()
                    );
                }
                (Some(w_len), 0, 1)
            }
        };
        let dev = xs.device.clone();
        let stream = dev.cuda_stream();
        let shape = Shape::from((g.b, g.cout, g.ho, g.wo));
        let mut out = launch::alloc(&dev, &shape, e)?;
        {
            let (x, _gx) = contiguous_ptr(xs, xl, &stream, "conv2d x")?;
            let (w, _gw) = contiguous_ptr(ws, wl, &stream, "conv2d w")?;
            let (third, _gb) = match bias_at {
                Some(_) => contiguous_ptr(bs, bl, &stream, "conv2d_add residual")?,
                None => ptr(bs, bl, &stream)?,
            };
            let (y, _gy) = ptr_mut(&mut out, &stream)?;
            let key = ConvKey {
                elem: e,
                geom: g,
                tf32: tf32(),
            };
            run(c, &dev, key, Pass::Forward, (x, w, y))?;
            // bias_add's residual is a null pointer when there is none.
            let (bias, r) = match bias_at {
                Some(at) => (w + (at * e.size()) as u64, third),
                None => (third, 0u64),
            };
            let total = shape.elem_count();
            let f = launch::function(&dev, &format!("bias_add_{}", e.suffix()))?;
            let (sb, sc, cout, hw) = (sb as i64, sc as i64, g.cout as i32, (g.ho * g.wo) as i32);
            let n = total as i64;
            // SAFETY: bias_add(T *y, const T *bias, const T *r, i64 sb, i64 sc, int C, int HW,
            // i64 total); y (and r, when not null) hold `total` values, bias covers every
            // (b sb + c sc) of its layout.
            unsafe {
                let args: [&dyn launch::Arg; 8] = [&y, &bias, &r, &sb, &sc, &cout, &hw, &n];
                launch::launch(&stream, &f, cfg(plan::grid_for(total), plan::BLOCK), &args)?;
            }
        }
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        third: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(w_dims) = self.packed else {
            let (dx, dw, db) = conv_grads(x, w, dy, self.stride, self.pad)?;
            return Ok((dx, Some(dw), Some(db)));
        };
        let w_len = w_dims.iter().product();
        let weight = w.narrow(0, 0, w_len)?.reshape(&w_dims[..])?;
        let (dx, dw, db) = conv_grads(x, &weight, dy, self.stride, self.pad)?;
        let dp = Tensor::cat(&[&dw.flatten_all()?, &db.sum(0)?], 0)?;
        let dr = third.track_op().then(|| dy.clone());
        Ok((dx, Some(dp), dr))
    }
}

/// (dx when x needs one, dw, db (B, Cout)) of y = conv(x, w) + bias[b, co] given dy.
fn conv_grads(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: usize,
    pad: usize,
) -> candle_core::Result<(Option<Tensor>, Tensor, Tensor)> {
    let geom = Geom::new(x.dims(), w.dims(), stride, pad)?;
    let dy = dy.contiguous()?;
    let dx = match x.track_op() {
        true => {
            let op = ConvGrad {
                pass: Pass::BackwardData,
                geom,
            };
            Some(dy.apply_op2_no_bwd(w, &op)?)
        }
        false => None,
    };
    let op = ConvGrad {
        pass: Pass::BackwardFilter,
        geom,
    };
    let dw = x.apply_op2_no_bwd(&dy, &op)?;
    let db = dy.apply_op1_no_bwd(&RowSum)?;
    Ok((dx, dw, db))
}

/// A gradient of the convolution `geom`: backward data (dy, w) -> dx (B, Cin, H, W), or
/// backward filter (x, dy) -> dw (Cout, Cin, k, k).
struct ConvGrad {
    pass: Pass,
    geom: Geom,
}

impl CustomOp2 for ConvGrad {
    fn name(&self) -> &'static str {
        "ddpm-cudnn-conv2d-grad"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let c = cudnn()?;
        let g = self.geom;
        let e = launch::elem(s1)?;
        if launch::elem(s2)? != e {
            candle_core::bail!("conv2d backward: mixed dtypes");
        }
        let dy_dims = [g.b, g.cout, g.ho, g.wo];
        let (want1, want2, shape) = match self.pass {
            Pass::BackwardData => (dy_dims, [g.cout, g.cin, g.k, g.k], (g.b, g.cin, g.h, g.w)),
            _ => ([g.b, g.cin, g.h, g.w], dy_dims, (g.cout, g.cin, g.k, g.k)),
        };
        if l1.dims() != want1 || l2.dims() != want2 {
            candle_core::bail!(
                "conv2d backward: {:?} and {:?} for {g:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let dev = s1.device.clone();
        let stream = dev.cuda_stream();
        let shape = Shape::from(shape);
        let mut out = launch::alloc(&dev, &shape, e)?;
        {
            let (a, _ga) = contiguous_ptr(s1, l1, &stream, "conv2d backward input")?;
            let (b, _gb) = contiguous_ptr(s2, l2, &stream, "conv2d backward input")?;
            let (o, _go) = ptr_mut(&mut out, &stream)?;
            // Backward data takes (w, dy); this op gets (dy, w).
            let args = match self.pass {
                Pass::BackwardData => (b, a, o),
                _ => (a, b, o),
            };
            run(
                c,
                &dev,
                ConvKey {
                    elem: e,
                    geom: g,
                    tf32: tf32(),
                },
                self.pass,
                args,
            )?;
        }
        Ok((out, shape))
    }
}

/// db[b, c] = sum over (h, w) of dy[b, c]: dy (B, C, H, W) -> (B, C).
struct RowSum;

impl CustomOp1 for RowSum {
    fn name(&self) -> &'static str {
        "ddpm-row-sum"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let &[b, c, h, w] = l.dims() else {
            candle_core::bail!("row sum: {:?} is not 4-d", l.dims());
        };
        let e: Elem = launch::elem(s)?;
        let dev = s.device.clone();
        let stream = dev.cuda_stream();
        let shape = Shape::from((b, c));
        let mut out = launch::alloc(&dev, &shape, e)?;
        {
            let (dy, _g) = contiguous_ptr(s, l, &stream, "row sum input")?;
            let (db, _go) = ptr_mut(&mut out, &stream)?;
            let (rows, hw) = ((b * c) as i64, (h * w) as i32);
            let f = launch::function(&dev, &format!("row_sum_{}", e.suffix()))?;
            let grid = plan::grid_for_rows(b * c).map_err(launch::ce)?;
            // SAFETY: row_sum(const T *dy, T *db, i64 rows, int HW); dy has rows HW values.
            unsafe {
                let args: [&dyn launch::Arg; 4] = [&dy, &db, &rows, &hw];
                launch::launch(&stream, &f, cfg(grid, plan::BLOCK), &args)?;
            }
        }
        Ok((out, shape))
    }
}

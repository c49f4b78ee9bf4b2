//! The Inception network's operations beyond candle's: convolutions with any kernel shape and
//! per-axis padding (square ones on `nn::kernels::conv2d`, our Winograd / im2col kernels; the
//! 1x7, 7x1, 1x3 and 3x1 ones on an im2col + GEMM of their own on the CPU, padded candle
//! convolutions elsewhere), and the 3x3 poolings of the FID graph.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::nn::kernels;

/// y = conv(x, w) + b: x (B, Cin, H, W), w (Cout, Cin, kh, kw), b (Cout), zero padding
/// (ph, pw) on each side of the height and width.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    (ph, pw): (usize, usize),
) -> Result<Tensor> {
    let (cout, _, kh, kw) = w.dims4()?;
    if kh == kw && ph == pw {
        return kernels::conv2d(x, w, b, stride, ph);
    }
    if kernels::enabled(x) && stride == 1 {
        return rect_conv_cpu(x, w, b, (ph, pw));
    }
    let padded = x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
    let y = padded.conv2d(w, 0, stride, 1, 1)?;
    Ok(y.broadcast_add(&b.reshape((1, cout, 1, 1))?)?)
}

/// Stride-1 convolution with a kh x kw kernel and padding (ph, pw), one image per work item:
/// col[(ci kh + ky) kw + kx][oy wo + ox] = x[ci, oy + ky - ph, ox + kx - pw] (0 outside), then
/// y = W col + b as one GEMM (Cout, Cin kh kw) x (Cin kh kw, Ho Wo).
fn rect_conv_cpu(x: &Tensor, w: &Tensor, b: &Tensor, (ph, pw): (usize, usize)) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let (cout, _, kh, kw) = w.dims4()?;
    let (ho, wo) = (h + 2 * ph + 1 - kh, wd + 2 * pw + 1 - kw);
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let ws = w.flatten_all()?.to_vec1::<f32>()?;
    let bs = b.to_vec1::<f32>()?;
    let (kk, p) = (cin * kh * kw, ho * wo);
    let mut y = vec![0f32; n * cout * p];
    y.par_chunks_mut(cout * p).enumerate().for_each(|(i, yi)| {
        let xi = &xs[i * cin * h * wd..(i + 1) * cin * h * wd];
        let mut col = vec![0f32; kk * p];
        for ci in 0..cin {
            let plane = &xi[ci * h * wd..(ci + 1) * h * wd];
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = &mut col[((ci * kh + ky) * kw + kx) * p..][..p];
                    for oy in 0..ho {
                        let iy = (oy + ky).wrapping_sub(ph);
                        let out = &mut row[oy * wo..(oy + 1) * wo];
                        if iy >= h {
                            out.fill(0.0);
                            continue;
                        }
                        let line = &plane[iy * wd..(iy + 1) * wd];
                        for (ox, v) in out.iter_mut().enumerate() {
                            let ix = (ox + kx).wrapping_sub(pw);
                            *v = if ix < wd { line[ix] } else { 0.0 };
                        }
                    }
                }
            }
        }
        for (co, dst) in yi.chunks_exact_mut(p).enumerate() {
            dst.fill(bs[co]);
        }
        // SAFETY: yi is (cout, p) row-major, ws (cout, kk), col (kk, p), all of those lengths;
        // gemm adds W col to yi (read_dst true, alpha 1, beta 1).
        unsafe {
            gemm::gemm(
                cout,
                p,
                kk,
                yi.as_mut_ptr(),
                1,
                p as isize,
                true,
                ws.as_ptr(),
                1,
                kk as isize,
                col.as_ptr(),
                1,
                p as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    });
    Ok(Tensor::from_vec(y, (n, cout, ho, wo), x.device())?)
}

/// 3x3 max pooling, stride 2, no padding (maxpool1, maxpool2, Mixed_6a, Mixed_7a).
pub fn max_pool3_stride2(x: &Tensor) -> Result<Tensor> {
    Ok(x.max_pool2d_with_stride(3, 2)?)
}

/// 3x3 max pooling, stride 1, padding 1. The zero padding stands in for -inf exactly because
/// the input is a ReLU output (>= 0) and every window holds its centre.
pub fn max_pool3_same(x: &Tensor) -> Result<Tensor> {
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    Ok(padded.max_pool2d_with_stride(3, 1)?)
}

/// 3x3 average pooling, stride 1, padding 1, count_include_pad=False: the mean over the
/// window's pixels inside the map, = (zero-padded 3x3 mean) 9 / count(y, x), count = (3 - edges
/// in y)(3 - edges in x).
pub fn avg_pool3_same(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mean9 = padded.avg_pool2d_with_stride(3, 1)?;
    Ok(mean9.broadcast_mul(&inside_fraction_inverse(h, w, x.device())?)?)
}

/// 9 / count(y, x) over an (h, w) map, shaped (1, 1, h, w).
fn inside_fraction_inverse(h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let inside = |i: usize, n: usize| 3 - usize::from(i == 0) - usize::from(i + 1 == n);
    let values: Vec<f32> = (0..h * w)
        .map(|i| 9.0 / (inside(i / w, h) * inside(i % w, w)) as f32)
        .collect();
    Ok(Tensor::from_vec(values, (1, 1, h, w), device)?)
}

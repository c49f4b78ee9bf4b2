//! The shape of one 2-D convolution, shared by the kernels that compute it (`conv` chooses
//! between `winograd` and `im2col` by it; `conv_add` and `norm_conv` build on `conv`).

/// The shape of one convolution: x (b, cin, h, w), w (cout, cin, k, k), y (b, cout, ho, wo).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geom {
    pub b: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geom {
    pub(crate) fn new(
        x: &[usize],
        w: &[usize],
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Geom> {
        let (&[b, cin, h, wd], &[cout, wcin, k, k2]) = (x, w) else {
            candle_core::bail!("conv2d: x {x:?} and w {w:?} must both be 4-d");
        };
        if wcin != cin || k != k2 || k == 0 || stride == 0 || h + 2 * pad < k || wd + 2 * pad < k {
            candle_core::bail!(
                "conv2d: x {x:?}, w {w:?}, stride {stride}, padding {pad} do not fit together"
            );
        }
        let out = |n: usize| (n + 2 * pad - k) / stride + 1;
        Ok(Geom {
            b,
            cin,
            h,
            w: wd,
            cout,
            k,
            stride,
            pad,
            ho: out(h),
            wo: out(wd),
        })
    }

    /// Values per input image, cin h w.
    pub fn x_image(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// The GEMM depth of im2col, cin k k.
    pub fn kk(&self) -> usize {
        self.cin * self.k * self.k
    }

    /// Whether Winograd F(4x4, 3x3) applies and pays: 3x3, stride 1, padding 1, and both
    /// channel counts wide enough for its GEMMs (thin layers keep im2col's deeper GEMM).
    pub(super) fn winograd(&self) -> bool {
        self.k == 3 && self.stride == 1 && self.pad == 1 && self.cin >= 16 && self.cout >= 16
    }
}

//! pytorch-fid's `FIDInceptionV3` up to its 2048-d pool3 features: torchvision's Inception-v3
//! with the blocks patched to match the TensorFlow FID graph (Heusel et al. 2017):
//! `FIDInceptionA`, `FIDInceptionC` and `FIDInceptionE_1` average-pool their pool branch with
//! count_include_pad=False, and `FIDInceptionE_2` (Mixed_7c) max-pools it instead. Every
//! convolution is torchvision's `BasicConv2d` (no bias, BatchNorm with eps 0.001, ReLU), the
//! norm folded into the convolution at load time. Layer names are the checkpoint keys, so the
//! weights come from pytorch-fid's own file. Forward only; no autograd graph is built.

use candle_core::{Device, Tensor};

use super::ops;
use crate::error::Result;

/// BatchNorm's epsilon in torchvision's BasicConv2d.
pub const BN_EPS: f64 = 0.001;

/// The raw tensors of one BasicConv2d, as stored: conv weight (cout, cin, kh, kw) and the
/// BatchNorm's gamma, beta, running mean and running variance (cout each), f32 on the CPU.
pub struct RawConv {
    pub weight: Tensor,
    pub gamma: Tensor,
    pub beta: Tensor,
    pub mean: Tensor,
    pub var: Tensor,
}

/// Where the layers' weights come from: a file (`weights::FileSource`) or a seeded draw
/// (`seeded`). `shape` is (cout, cin, kh, kw); the source checks what it hands out has it.
pub trait Source {
    fn conv(&mut self, name: &str, shape: [usize; 4]) -> Result<RawConv>;
}

/// conv + BatchNorm + ReLU with the norm folded in: with s = gamma / sqrt(var + eps),
/// y = relu(conv(x, w s) + beta - mean s).
struct BasicConv {
    w: Tensor,
    b: Tensor,
    stride: usize,
    pad: (usize, usize),
}

impl BasicConv {
    fn new(
        src: &mut dyn Source,
        device: &Device,
        name: &str,
        (cin, cout): (usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> Result<Self> {
        let raw = src.conv(name, [cout, cin, kh, kw])?;
        let s = (raw.gamma / (raw.var + BN_EPS)?.sqrt()?)?;
        let w = raw.weight.broadcast_mul(&s.reshape((cout, 1, 1, 1))?)?;
        let b = (raw.beta - (raw.mean * &s)?)?;
        Ok(BasicConv {
            w: w.to_device(device)?,
            b: b.to_device(device)?,
            stride,
            pad,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::conv2d(x, &self.w, &self.b, self.stride, self.pad)?.relu()?)
    }
}

/// Builds layers named `prefix.name` from one source onto one device.
struct Builder<'a> {
    src: &'a mut dyn Source,
    device: &'a Device,
}

impl Builder<'_> {
    /// A square k x k convolution with equal padding.
    fn conv(
        &mut self,
        name: &str,
        io: (usize, usize),
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<BasicConv> {
        BasicConv::new(self.src, self.device, name, io, (k, k), stride, (pad, pad))
    }

    /// A 1 x k (`wide`) or k x 1 convolution, stride 1, padded to keep the map's size.
    fn rect(&mut self, name: &str, io: (usize, usize), k: usize, wide: bool) -> Result<BasicConv> {
        let (kernel, pad) = if wide {
            ((1, k), (0, k / 2))
        } else {
            ((k, 1), (k / 2, 0))
        };
        BasicConv::new(self.src, self.device, name, io, kernel, 1, pad)
    }
}

/// How a block's pool branch pools, 3x3 stride 1 padding 1.
#[derive(Clone, Copy)]
enum Pool {
    /// Average over the window's pixels inside the image (count_include_pad=False).
    Avg,
    /// Maximum (Mixed_7c, `FIDInceptionE_2`).
    Max,
}

impl Pool {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Pool::Avg => ops::avg_pool3_same(x),
            Pool::Max => ops::max_pool3_same(x),
        }
    }
}

/// `FIDInceptionA` (Mixed_5b..5d): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1.
struct BlockA {
    b1: BasicConv,
    b5: [BasicConv; 2],
    b3: [BasicConv; 3],
    pool: BasicConv,
}

impl BlockA {
    fn new(b: &mut Builder, p: &str, cin: usize, pool_features: usize) -> Result<Self> {
        Ok(BlockA {
            b1: b.conv(&format!("{p}.branch1x1"), (cin, 64), 1, 1, 0)?,
            b5: [
                b.conv(&format!("{p}.branch5x5_1"), (cin, 48), 1, 1, 0)?,
                b.conv(&format!("{p}.branch5x5_2"), (48, 64), 5, 1, 2)?,
            ],
            b3: [
                b.conv(&format!("{p}.branch3x3dbl_1"), (cin, 64), 1, 1, 0)?,
                b.conv(&format!("{p}.branch3x3dbl_2"), (64, 96), 3, 1, 1)?,
                b.conv(&format!("{p}.branch3x3dbl_3"), (96, 96), 3, 1, 1)?,
            ],
            pool: b.conv(&format!("{p}.branch_pool"), (cin, pool_features), 1, 1, 0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let b5 = chain(&self.b5, x)?;
        let b3 = chain(&self.b3, x)?;
        let pool = self.pool.forward(&Pool::Avg.apply(x)?)?;
        Ok(Tensor::cat(&[b1, b5, b3, pool], 1)?)
    }
}

/// Mixed_6a (torchvision's InceptionB): 3x3 stride 2 | 1x1 -> 3x3 -> 3x3 stride 2 | max pool.
struct BlockB {
    b3: BasicConv,
    b3dbl: [BasicConv; 3],
}

impl BlockB {
    fn new(b: &mut Builder, p: &str, cin: usize) -> Result<Self> {
        Ok(BlockB {
            b3: b.conv(&format!("{p}.branch3x3"), (cin, 384), 3, 2, 0)?,
            b3dbl: [
                b.conv(&format!("{p}.branch3x3dbl_1"), (cin, 64), 1, 1, 0)?,
                b.conv(&format!("{p}.branch3x3dbl_2"), (64, 96), 3, 1, 1)?,
                b.conv(&format!("{p}.branch3x3dbl_3"), (96, 96), 3, 2, 0)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = self.b3.forward(x)?;
        let b3dbl = chain(&self.b3dbl, x)?;
        let pool = ops::max_pool3_stride2(x)?;
        Ok(Tensor::cat(&[b3, b3dbl, pool], 1)?)
    }
}

/// `FIDInceptionC` (Mixed_6b..6e): 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 |
/// avg pool -> 1x1, with c7 channels inside the 7-wide branches.
struct BlockC {
    b1: BasicConv,
    b7: [BasicConv; 3],
    b7dbl: [BasicConv; 5],
    pool: BasicConv,
}

impl BlockC {
    fn new(b: &mut Builder, p: &str, c7: usize) -> Result<Self> {
        let cin = 768;
        Ok(BlockC {
            b1: b.conv(&format!("{p}.branch1x1"), (cin, 192), 1, 1, 0)?,
            b7: [
                b.conv(&format!("{p}.branch7x7_1"), (cin, c7), 1, 1, 0)?,
                b.rect(&format!("{p}.branch7x7_2"), (c7, c7), 7, true)?,
                b.rect(&format!("{p}.branch7x7_3"), (c7, 192), 7, false)?,
            ],
            b7dbl: [
                b.conv(&format!("{p}.branch7x7dbl_1"), (cin, c7), 1, 1, 0)?,
                b.rect(&format!("{p}.branch7x7dbl_2"), (c7, c7), 7, false)?,
                b.rect(&format!("{p}.branch7x7dbl_3"), (c7, c7), 7, true)?,
                b.rect(&format!("{p}.branch7x7dbl_4"), (c7, c7), 7, false)?,
                b.rect(&format!("{p}.branch7x7dbl_5"), (c7, 192), 7, true)?,
            ],
            pool: b.conv(&format!("{p}.branch_pool"), (cin, 192), 1, 1, 0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let b7 = chain(&self.b7, x)?;
        let b7dbl = chain(&self.b7dbl, x)?;
        let pool = self.pool.forward(&Pool::Avg.apply(x)?)?;
        Ok(Tensor::cat(&[b1, b7, b7dbl, pool], 1)?)
    }
}

/// Mixed_7a (torchvision's InceptionD): 1x1 -> 3x3 stride 2 | 1x1 -> 1x7 -> 7x1 -> 3x3
/// stride 2 | max pool.
struct BlockD {
    b3: [BasicConv; 2],
    b7x3: [BasicConv; 4],
}

impl BlockD {
    fn new(b: &mut Builder, p: &str, cin: usize) -> Result<Self> {
        Ok(BlockD {
            b3: [
                b.conv(&format!("{p}.branch3x3_1"), (cin, 192), 1, 1, 0)?,
                b.conv(&format!("{p}.branch3x3_2"), (192, 320), 3, 2, 0)?,
            ],
            b7x3: [
                b.conv(&format!("{p}.branch7x7x3_1"), (cin, 192), 1, 1, 0)?,
                b.rect(&format!("{p}.branch7x7x3_2"), (192, 192), 7, true)?,
                b.rect(&format!("{p}.branch7x7x3_3"), (192, 192), 7, false)?,
                b.conv(&format!("{p}.branch7x7x3_4"), (192, 192), 3, 2, 0)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b3 = chain(&self.b3, x)?;
        let b7x3 = chain(&self.b7x3, x)?;
        let pool = ops::max_pool3_stride2(x)?;
        Ok(Tensor::cat(&[b3, b7x3, pool], 1)?)
    }
}

/// `FIDInceptionE_1` / `_2` (Mixed_7b, 7c): 1x1 | 1x1 -> (1x3 | 3x1) | 1x1 -> 3x3 -> (1x3 |
/// 3x1) | pool -> 1x1.
struct BlockE {
    b1: BasicConv,
    b3: BasicConv,
    b3_split: [BasicConv; 2],
    b3dbl: [BasicConv; 2],
    b3dbl_split: [BasicConv; 2],
    pool_conv: BasicConv,
    pool: Pool,
}

impl BlockE {
    fn new(b: &mut Builder, p: &str, cin: usize, pool: Pool) -> Result<Self> {
        Ok(BlockE {
            b1: b.conv(&format!("{p}.branch1x1"), (cin, 320), 1, 1, 0)?,
            b3: b.conv(&format!("{p}.branch3x3_1"), (cin, 384), 1, 1, 0)?,
            b3_split: [
                b.rect(&format!("{p}.branch3x3_2a"), (384, 384), 3, true)?,
                b.rect(&format!("{p}.branch3x3_2b"), (384, 384), 3, false)?,
            ],
            b3dbl: [
                b.conv(&format!("{p}.branch3x3dbl_1"), (cin, 448), 1, 1, 0)?,
                b.conv(&format!("{p}.branch3x3dbl_2"), (448, 384), 3, 1, 1)?,
            ],
            b3dbl_split: [
                b.rect(&format!("{p}.branch3x3dbl_3a"), (384, 384), 3, true)?,
                b.rect(&format!("{p}.branch3x3dbl_3b"), (384, 384), 3, false)?,
            ],
            pool_conv: b.conv(&format!("{p}.branch_pool"), (cin, 192), 1, 1, 0)?,
            pool,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b1 = self.b1.forward(x)?;
        let b3 = self.b3.forward(x)?;
        let b3a = self.b3_split[0].forward(&b3)?;
        let b3b = self.b3_split[1].forward(&b3)?;
        let d = chain(&self.b3dbl, x)?;
        let da = self.b3dbl_split[0].forward(&d)?;
        let db = self.b3dbl_split[1].forward(&d)?;
        let pool = self.pool_conv.forward(&self.pool.apply(x)?)?;
        Ok(Tensor::cat(&[b1, b3a, b3b, da, db, pool], 1)?)
    }
}

/// Apply `convs` in order.
fn chain(convs: &[BasicConv], x: &Tensor) -> Result<Tensor> {
    let mut y = convs[0].forward(x)?;
    for c in &convs[1..] {
        y = c.forward(&y)?;
    }
    Ok(y)
}

/// The network from its input (B, 3, 299, 299) in [-1, 1] to the pool3 features (B, 2048).
pub struct Inception {
    stem: [BasicConv; 5],
    a: [BlockA; 3],
    b: BlockB,
    c: [BlockC; 4],
    d: BlockD,
    e: [BlockE; 2],
    device: Device,
}

/// The size of the pool3 features.
pub const FEATURES: usize = 2048;

impl Inception {
    /// Every layer from `src`, onto `device`.
    pub fn new(src: &mut dyn Source, device: &Device) -> Result<Self> {
        let b = &mut Builder { src, device };
        Ok(Inception {
            stem: [
                b.conv("Conv2d_1a_3x3", (3, 32), 3, 2, 0)?,
                b.conv("Conv2d_2a_3x3", (32, 32), 3, 1, 0)?,
                b.conv("Conv2d_2b_3x3", (32, 64), 3, 1, 1)?,
                b.conv("Conv2d_3b_1x1", (64, 80), 1, 1, 0)?,
                b.conv("Conv2d_4a_3x3", (80, 192), 3, 1, 0)?,
            ],
            a: [
                BlockA::new(b, "Mixed_5b", 192, 32)?,
                BlockA::new(b, "Mixed_5c", 256, 64)?,
                BlockA::new(b, "Mixed_5d", 288, 64)?,
            ],
            b: BlockB::new(b, "Mixed_6a", 288)?,
            c: [
                BlockC::new(b, "Mixed_6b", 128)?,
                BlockC::new(b, "Mixed_6c", 160)?,
                BlockC::new(b, "Mixed_6d", 160)?,
                BlockC::new(b, "Mixed_6e", 192)?,
            ],
            d: BlockD::new(b, "Mixed_7a", 768)?,
            e: [
                BlockE::new(b, "Mixed_7b", 1280, Pool::Avg)?,
                BlockE::new(b, "Mixed_7c", 2048, Pool::Max)?,
            ],
            device: device.clone(),
        })
    }

    /// The device the network runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// pool3 features (B, 2048) of x (B, 3, 299, 299) in [-1, 1]: 299 -> 149 -> 147 -> 147,
    /// max pool -> 73 -> 73 -> 71, max pool -> 35 (Mixed_5*), 17 (Mixed_6*), 8 (Mixed_7*), then
    /// the spatial mean.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, conv) in self.stem.iter().enumerate() {
            h = conv.forward(&h)?;
            // maxpool1 after Conv2d_2b_3x3, maxpool2 after Conv2d_4a_3x3.
            if i == 2 || i == 4 {
                h = ops::max_pool3_stride2(&h)?;
            }
        }
        for block in &self.a {
            h = block.forward(&h)?;
        }
        h = self.b.forward(&h)?;
        for block in &self.c {
            h = block.forward(&h)?;
        }
        h = self.d.forward(&h)?;
        for block in &self.e {
            h = block.forward(&h)?;
        }
        Ok(h.mean((2, 3))?)
    }
}

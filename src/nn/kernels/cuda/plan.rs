//! The decisions around the CUDA ops that need no GPU, so they are unit-tested on any machine:
//! cuDNN descriptor dimensions and strides, the key of the per-shape algorithm cache, which
//! algorithm a cuDNN heuristic list yields, the math mode per dtype, how the shared workspace
//! grows, how a launch covers a tensor, and how the multi-tensor kernels split a list of tensors
//! into launches.

use std::ffi::c_int;

use crate::device::cudnn::{self, AlgoPerf};
use crate::error::{Error, Result};
use crate::nn::kernels::geom::Geom;

/// The element type of a CUDA op: the two the network computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    Bf16,
}

impl Elem {
    /// The suffix of the kernels for this type in kernels.cu (`gn_fwd_f32`, ...).
    pub fn suffix(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::Bf16 => "bf16",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 => 2,
        }
    }

    /// cudnnDataType_t of the tensors.
    pub fn cudnn(self) -> c_int {
        match self {
            Elem::F32 => cudnn::DATA_FLOAT,
            Elem::Bf16 => cudnn::DATA_BFLOAT16,
        }
    }

    /// The math modes a convolution in this type may run with. f32 with `tf32` as PyTorch's
    /// default (`torch.backends.cudnn.allow_tf32 = True`): cuDNN reports its TF32 tensor-core
    /// algorithms for f32 data as TENSOR_OP_MATH; without `tf32` only the default and FMA modes
    /// (exact f32). bf16 on tensor cores. Never TENSOR_OP_MATH_ALLOW_CONVERSION, which would
    /// round f32 data to half precision.
    pub fn allowed_math(self, tf32: bool) -> &'static [c_int] {
        match (self, tf32) {
            (Elem::F32, true) => &[cudnn::DEFAULT_MATH, cudnn::TENSOR_OP_MATH, cudnn::FMA_MATH],
            (Elem::F32, false) => &[cudnn::DEFAULT_MATH, cudnn::FMA_MATH],
            (Elem::Bf16, _) => &[cudnn::DEFAULT_MATH, cudnn::TENSOR_OP_MATH],
        }
    }

    /// The math mode asked for when the heuristics are queried.
    pub fn requested_math(self, tf32: bool) -> c_int {
        match (self, tf32) {
            (Elem::F32, true) => cudnn::DEFAULT_MATH,
            (Elem::F32, false) => cudnn::FMA_MATH,
            (Elem::Bf16, _) => cudnn::TENSOR_OP_MATH,
        }
    }
}

/// Whether f32 convolutions may use TF32: yes (PyTorch's default for cuDNN) unless
/// `NVIDIA_TF32_OVERRIDE=0`, NVIDIA's switch that cuDNN and cuBLAS also obey.
pub fn tf32_allowed(override_value: Option<&str>) -> bool {
    override_value.map(str::trim) != Some("0")
}

/// One convolution shape in one type and math policy: the key of the algorithm cache. Every
/// field changes the descriptors or the algorithm cuDNN picks, so none can be left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvKey {
    pub elem: Elem,
    pub geom: Geom,
    pub tf32: bool,
}

/// cuDNN takes dimensions as C ints.
fn int(v: usize, what: &str) -> Result<c_int> {
    c_int::try_from(v)
        .map_err(|_| Error::Invalid(format!("cuDNN convolution: {what} = {v} exceeds a C int")))
}

/// (n, c, h, w) and contiguous NCHW strides of a 4-d tensor, as cuDNN's 4d descriptors take
/// them: strides (c h w, h w, w, 1).
pub fn nchw(dims: [usize; 4]) -> Result<([c_int; 4], [c_int; 4])> {
    let [n, c, h, w] = dims;
    let d = [int(n, "n")?, int(c, "c")?, int(h, "h")?, int(w, "w")?];
    let s = [int(c * h * w, "c h w")?, int(h * w, "h w")?, d[3], 1];
    Ok((d, s))
}

/// The three descriptors' dimensions of a convolution, x (b, cin, h, w), w (cout, cin, k, k),
/// y (b, cout, ho, wo), and its padding and stride as C ints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub y: [usize; 4],
    pub pad: c_int,
    pub stride: c_int,
}

pub fn conv_dims(g: &Geom) -> Result<ConvDims> {
    Ok(ConvDims {
        x: [g.b, g.cin, g.h, g.w],
        w: [g.cout, g.cin, g.k, g.k],
        y: [g.b, g.cout, g.ho, g.wo],
        pad: int(g.pad, "padding")?,
        stride: int(g.stride, "stride")?,
    })
}

/// The algorithm to run from cuDNN's heuristic list (best first): the first that succeeded,
/// is deterministic (so a run repeats bit for bit on the same GPU, as on the CPU), runs in a
/// math mode `elem` allows, and needs at most `max_workspace` bytes. None when no entry
/// qualifies.
pub fn choose(perfs: &[AlgoPerf], key: &ConvKey, max_workspace: usize) -> Option<AlgoPerf> {
    perfs.iter().copied().find(|p| {
        p.status == cudnn::SUCCESS
            && p.determinism == cudnn::DETERMINISTIC
            && key.elem.allowed_math(key.tf32).contains(&p.math_type)
            && p.memory <= max_workspace
    })
}

/// The most workspace one convolution may take (PyTorch lets cuDNN take what it asks; a cap
/// keeps an odd heuristic from claiming a large share of the GPU).
pub const MAX_WORKSPACE: usize = 1 << 30;

/// The workspace size after a call needing `needed` bytes, when the current one has `current`:
/// unchanged when it is large enough, else `needed` rounded up to whole MiB (so a run settles
/// after the largest convolution and allocates nothing more).
pub fn grow_workspace(current: usize, needed: usize) -> Option<usize> {
    const MIB: usize = 1 << 20;
    (needed > current).then(|| needed.div_ceil(MIB) * MIB)
}

/// Threads per block of the elementwise and row kernels.
pub const BLOCK: u32 = 256;

/// Blocks for a grid-stride loop over `n` elements: enough to fill the GPU, at most 65535
/// (the loop covers the rest).
pub fn grid_for(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32
}

/// Blocks for one warp per row over `rows` rows (8 rows per block of 256).
pub fn grid_for_rows(rows: usize) -> Result<u32> {
    let warps = (BLOCK / 32) as usize;
    u32::try_from(rows.div_ceil(warps).max(1))
        .map_err(|_| Error::Invalid(format!("{rows} rows exceed one CUDA grid")))
}

/// Tensors per multi-tensor launch: kernels.cu's `TABLE`.
pub const TABLE: usize = 96;

/// kernels.cu's `Table`, passed by value to the multi-tensor kernels: up to TABLE tensors, each
/// with up to four addresses (one per role: parameter, gradient, moments), and their sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Table {
    pub ptr: [[u64; TABLE]; 4],
    pub numel: [i64; TABLE],
    pub count: i32,
    pub pad: i32,
}

/// The launches of a multi-tensor kernel over tensors of `sizes` elements, in order: each is
/// the range of tensor indices it covers (at most `TABLE`) and its grid width, enough blocks
/// of `BLOCK` threads with 4 elements per thread for its largest tensor, at most 1024 (blocks
/// stride over the rest). Empty tensors are skipped by the kernel (their loop does nothing).
pub fn multi_launches(sizes: &[usize]) -> Vec<(std::ops::Range<usize>, u32)> {
    let per_block = 4 * BLOCK as usize;
    (0..sizes.len())
        .step_by(TABLE)
        .map(|start| {
            let end = (start + TABLE).min(sizes.len());
            let largest = sizes[start..end].iter().copied().max().unwrap_or(0);
            (
                start..end,
                largest.div_ceil(per_block).clamp(1, 1024) as u32,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perf(algo: c_int, status: c_int, memory: usize, det: bool, math: c_int) -> AlgoPerf {
        AlgoPerf {
            algo,
            status,
            memory,
            determinism: if det { cudnn::DETERMINISTIC } else { 0 },
            math_type: math,
            ..AlgoPerf::default()
        }
    }

    fn geom(b: usize, cin: usize, h: usize, cout: usize, k: usize, stride: usize) -> Geom {
        Geom::new(&[b, cin, h, h], &[cout, cin, k, k], stride, k / 2).unwrap()
    }

    #[test]
    fn descriptors_are_nchw_with_contiguous_strides() {
        let (d, s) = nchw([32, 64, 16, 8]).unwrap();
        assert_eq!(d, [32, 64, 16, 8]);
        assert_eq!(s, [64 * 16 * 8, 16 * 8, 8, 1]);
        assert!(nchw([1, 1 << 20, 1 << 11, 1]).is_err(), "c h w past i32");
        // W1's downsampling: 3x3, stride 2, padding 1 on 32x32 gives 16x16.
        let g = geom(32, 64, 32, 64, 3, 2);
        let d = conv_dims(&g).unwrap();
        assert_eq!(d.x, [32, 64, 32, 32]);
        assert_eq!(d.w, [64, 64, 3, 3]);
        assert_eq!(d.y, [32, 64, 16, 16]);
        assert_eq!((d.pad, d.stride), (1, 2));
        let d = conv_dims(&geom(4, 8, 8, 16, 1, 1)).unwrap();
        assert_eq!((d.y, d.pad, d.stride), ([4, 16, 8, 8], 0, 1));
    }

    #[test]
    fn the_cache_key_tells_every_shape_and_type_apart() {
        use std::collections::HashSet;
        let base = ConvKey {
            elem: Elem::F32,
            geom: geom(32, 64, 32, 64, 3, 1),
            tf32: true,
        };
        let variants = [
            base,
            ConvKey {
                tf32: false,
                ..base
            },
            ConvKey {
                elem: Elem::Bf16,
                ..base
            },
            ConvKey {
                geom: geom(16, 64, 32, 64, 3, 1),
                ..base
            },
            ConvKey {
                geom: geom(32, 128, 32, 64, 3, 1),
                ..base
            },
            ConvKey {
                geom: geom(32, 64, 16, 64, 3, 1),
                ..base
            },
            ConvKey {
                geom: geom(32, 64, 32, 128, 3, 1),
                ..base
            },
            ConvKey {
                geom: geom(32, 64, 32, 64, 1, 1),
                ..base
            },
            ConvKey {
                geom: geom(32, 64, 32, 64, 3, 2),
                ..base
            },
        ];
        let set: HashSet<ConvKey> = variants.iter().copied().collect();
        assert_eq!(set.len(), variants.len());
        assert!(set.contains(&ConvKey {
            elem: Elem::F32,
            geom: geom(32, 64, 32, 64, 3, 1),
            tf32: true,
        }));
    }

    #[test]
    fn the_first_deterministic_successful_algorithm_in_an_allowed_mode_wins() {
        let ok = cudnn::SUCCESS;
        let list = [
            perf(0, 3000, 0, true, cudnn::DEFAULT_MATH), // not supported
            perf(1, ok, 0, false, cudnn::DEFAULT_MATH),  // atomics
            perf(2, ok, 0, true, 2),                     // f32 -> half conversion
            perf(3, ok, MAX_WORKSPACE + 1, true, cudnn::FMA_MATH), // too large
            perf(4, ok, 1 << 20, true, cudnn::DEFAULT_MATH),
            perf(5, ok, 0, true, cudnn::DEFAULT_MATH),
        ];
        let key = |elem, tf32| ConvKey {
            elem,
            geom: geom(4, 8, 8, 8, 3, 1),
            tf32,
        };
        let f32 = key(Elem::F32, true);
        assert_eq!(choose(&list, &f32, MAX_WORKSPACE).unwrap().algo, 4);
        assert_eq!(choose(&list, &f32, 1 << 19).unwrap().algo, 5);
        // TF32 (tensor-op math on f32 data) only where allowed; bf16 always on tensor cores.
        let tensor_op = [perf(7, ok, 0, true, cudnn::TENSOR_OP_MATH)];
        assert_eq!(
            choose(&tensor_op, &key(Elem::Bf16, false), 0).unwrap().algo,
            7
        );
        assert_eq!(choose(&tensor_op, &f32, 0).unwrap().algo, 7);
        assert_eq!(choose(&tensor_op, &key(Elem::F32, false), 0), None);
        assert_eq!(choose(&[], &f32, MAX_WORKSPACE), None);
        assert_eq!(Elem::F32.requested_math(true), cudnn::DEFAULT_MATH);
        assert_eq!(Elem::F32.requested_math(false), cudnn::FMA_MATH);
        assert_eq!(Elem::Bf16.requested_math(false), cudnn::TENSOR_OP_MATH);
        assert!(tf32_allowed(None));
        assert!(tf32_allowed(Some("1")));
        assert!(!tf32_allowed(Some("0")));
    }

    #[test]
    fn the_workspace_grows_to_whole_mib_and_never_shrinks() {
        assert_eq!(grow_workspace(0, 0), None);
        assert_eq!(grow_workspace(0, 1), Some(1 << 20));
        assert_eq!(grow_workspace(1 << 20, 1 << 20), None);
        assert_eq!(grow_workspace(1 << 20, (1 << 20) + 1), Some(2 << 20));
        assert_eq!(grow_workspace(8 << 20, 1 << 20), None);
    }

    #[test]
    fn table_matches_the_c_struct() {
        // kernels.cu: unsigned long long ptr[4][96]; long long numel[96]; int count; int pad.
        assert_eq!(std::mem::size_of::<Table>(), 4 * 96 * 8 + 96 * 8 + 8);
        assert_eq!(std::mem::offset_of!(Table, numel), 4 * 96 * 8);
        assert_eq!(std::mem::offset_of!(Table, count), 4 * 96 * 8 + 96 * 8);
        // With the AdamW scalars the parameters stay under the 4 KiB every GPU takes.
        assert!(std::mem::size_of::<Table>() + 9 * 4 <= 4096);
        let source = include_str!("kernels.cu");
        assert!(source.contains(&format!("#define TABLE {TABLE}\n")));
    }

    #[test]
    fn launches_cover_every_tensor_once_within_the_table() {
        assert_eq!(grid_for(0), 1);
        assert_eq!(grid_for(257), 2);
        assert_eq!(grid_for(usize::MAX / 2), 65_535);
        assert_eq!(grid_for_rows(2048).unwrap(), 256);
        assert_eq!(grid_for_rows(9).unwrap(), 2);
        let sizes: Vec<usize> = (0..200).map(|i| i * 1000).collect();
        let l = multi_launches(&sizes);
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l[0].0.clone(), l[1].0.clone(), l[2].0.clone()),
            (0..96, 96..192, 192..200)
        );
        // The largest tensor of each launch sets its width: 95000 / 1024 -> 93 blocks.
        assert_eq!(l[0].1, 93);
        assert_eq!(l[2].1, 195);
        assert_eq!(multi_launches(&[1 << 30])[0].1, 1024);
        assert!(multi_launches(&[]).is_empty());
        assert_eq!(multi_launches(&[0, 0]), vec![(0..2, 1)]);
    }
}

//! A sum over ranks whose rounding does not depend on the communication library: each rank
//! owns one chunk of the buffer, receives every rank's piece of that chunk (all-to-all) and
//! adds them in rank order, and the summed chunks are then shared (all-gather), the two halves
//! of a ring all-reduce with the additions done in a fixed order. Each element of the result
//! is ((b_0 + b_1) + b_2) + ..., over micro-batches too (a run of several adds micro-batch
//! after micro-batch, continuing the same sums), exactly the order in which one process adds
//! the gradients of its shards: W ranks of one shard each compute what one process with W
//! shards computes, bit for bit. The traffic per rank is that of a ring all-reduce:
//! 2 (W - 1) / W of the buffer.

use candle_core::{DType, Shape, Tensor};

use super::Comm;
use crate::error::{Error, Result};

/// The rank-ordered sum of one buffer per rank, made of parts of fixed shapes (a model's
/// gradients, one part per parameter).
pub struct OrderedSum<'a> {
    comm: &'a dyn Comm,
    shapes: Vec<Shape>,
    /// Elements of all parts together.
    len: usize,
    /// Elements per rank's chunk: len / size rounded up (the buffer is padded with zeros).
    chunk: usize,
    /// This rank's chunk of the running sum, once anything was added.
    owned: Option<Tensor>,
    device: candle_core::Device,
}

impl<'a> OrderedSum<'a> {
    /// An empty sum of buffers made of parts of `shapes`, on `device`.
    pub fn new(comm: &'a dyn Comm, shapes: Vec<Shape>, device: &candle_core::Device) -> Self {
        let len = shapes.iter().map(Shape::elem_count).sum::<usize>();
        let chunk = len.div_ceil(comm.size().max(1)).max(1);
        OrderedSum {
            comm,
            shapes,
            len,
            chunk,
            owned: None,
            device: device.clone(),
        }
    }

    /// Add every rank's buffer; `parts` is this rank's, one f32 tensor per shape (None counts
    /// as zeros: a part this rank has no value for).
    pub fn add(&mut self, parts: &[Option<Tensor>]) -> Result<()> {
        let flat = self.flatten(parts)?;
        let got = self.comm.all_to_all(&flat)?;
        for j in 0..self.comm.size() {
            let piece = got.narrow(0, j * self.chunk, self.chunk)?;
            self.owned = Some(match self.owned.take() {
                Some(sum) => (sum + piece)?,
                None => piece,
            });
        }
        Ok(())
    }

    /// The sums, one tensor per shape, the same on every rank; and every rank's `extra` values
    /// (as many on each rank), rank after rank, carried by the same all-gather.
    pub fn finish(self, extra: &[f32]) -> Result<(Vec<Tensor>, Vec<f32>)> {
        let owned = match self.owned {
            Some(t) => t,
            None => Tensor::zeros(self.chunk, DType::F32, &self.device)?,
        };
        let e = extra.len();
        let mine = Tensor::cat(&[owned, Tensor::new(extra, &self.device)?], 0)?;
        let all = self.comm.all_gather(&mine)?;
        let size = self.comm.size();
        let row = self.chunk + e;
        if all.dim(0)? != size * row {
            return Err(Error::Invalid(format!(
                "all-gather returned {} values, expected {size} ranks x {row}",
                all.dim(0)?
            )));
        }
        let all = all.reshape((size, row))?;
        let sums = all.narrow(1, 0, self.chunk)?.flatten_all()?;
        let mut parts = Vec::with_capacity(self.shapes.len());
        let mut at = 0;
        for shape in &self.shapes {
            let n = shape.elem_count();
            parts.push(sums.narrow(0, at, n)?.reshape(shape)?);
            at += n;
        }
        let extras = all
            .narrow(1, self.chunk, e)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((parts, extras))
    }

    /// `parts` as one (size * chunk) buffer, zero-padded.
    fn flatten(&self, parts: &[Option<Tensor>]) -> Result<Tensor> {
        if parts.len() != self.shapes.len() {
            return Err(Error::Invalid(format!(
                "{} parts given for a sum of {}",
                parts.len(),
                self.shapes.len()
            )));
        }
        let mut pieces = Vec::with_capacity(parts.len() + 1);
        for (part, shape) in parts.iter().zip(&self.shapes) {
            pieces.push(match part {
                Some(t) if t.shape() == shape => t.to_dtype(DType::F32)?.flatten_all()?,
                Some(t) => {
                    return Err(Error::Invalid(format!(
                        "a part of shape {:?} where {:?} was expected",
                        t.dims(),
                        shape.dims()
                    )))
                }
                None => Tensor::zeros(shape.elem_count(), DType::F32, &self.device)?,
            });
        }
        let pad = self.chunk * self.comm.size() - self.len;
        if pad > 0 {
            pieces.push(Tensor::zeros(pad, DType::F32, &self.device)?);
        }
        Ok(Tensor::cat(&pieces, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::threads::run_ranks;
    use crate::rng::{Purpose, Stream};
    use candle_core::Device;

    /// Rank r's buffer of micro-batch m: parts of shapes (3, 5) and (7,).
    fn parts(m: usize, r: usize) -> Vec<Option<Tensor>> {
        let mut s = Stream::new(m as u64, Purpose::Eval, r as u64);
        let dev = Device::Cpu;
        vec![
            Some(s.randn((3, 5), &dev).unwrap()),
            Some((s.randn(7, &dev).unwrap() * 1e-3).unwrap()),
        ]
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// Three ranks and two micro-batches: the sums are those of one process adding the six
    /// buffers one after another (micro-batch 0's ranks 0, 1, 2, then micro-batch 1's), bit
    /// for bit on every rank, and the extra values arrive in rank order.
    #[test]
    fn ranks_sum_in_the_order_one_process_adds() {
        let (size, micro) = (3, 2);
        let mut want: Vec<Option<Tensor>> = vec![None, None];
        for m in 0..micro {
            for r in 0..size {
                for (w, p) in want.iter_mut().zip(parts(m, r)) {
                    let p = p.unwrap();
                    *w = Some(match w.take() {
                        Some(s) => (s + p).unwrap(),
                        None => p,
                    });
                }
            }
        }
        let results = run_ranks(size, |comm| {
            let shapes = vec![Shape::from((3, 5)), Shape::from(7)];
            let mut sum = OrderedSum::new(comm, shapes, &Device::Cpu);
            for m in 0..micro {
                sum.add(&parts(m, comm.rank())).unwrap();
            }
            let extra = [comm.rank() as f32, 10.0 + comm.rank() as f32];
            sum.finish(&extra).unwrap()
        });
        for (rank, (sums, extras)) in results.iter().enumerate() {
            assert_eq!(extras, &[0.0, 10.0, 1.0, 11.0, 2.0, 12.0], "rank {rank}");
            for (got, want) in sums.iter().zip(&want) {
                let want = want.as_ref().unwrap();
                assert_eq!(got.dims(), want.dims());
                assert_eq!(bits(got), bits(want), "rank {rank}");
            }
        }
    }

    /// A missing part counts as zeros, and a buffer shorter than the ranks (padding) works.
    #[test]
    fn missing_parts_are_zeros_and_tiny_buffers_pad() {
        let results = run_ranks(4, |comm| {
            let mut sum = OrderedSum::new(comm, vec![Shape::from(2)], &Device::Cpu);
            let part = (comm.rank() != 2)
                .then(|| Tensor::new(&[1f32, comm.rank() as f32], &Device::Cpu).unwrap());
            sum.add(&[part]).unwrap();
            sum.finish(&[]).unwrap().0[0].to_vec1::<f32>().unwrap()
        });
        for r in results {
            assert_eq!(r, [3.0, 4.0]);
        }
    }
}

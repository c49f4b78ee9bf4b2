//! Which examples make up batch s, and which of them are flipped: a pure function of
//! (seed, dataset length, batch size, s), so a run resumed at step s sees exactly the batches
//! an uninterrupted run would have. Decoding and threads are `loader`'s.
//!
//! The example sequence is the concatenation of per-epoch permutations (epoch e shuffled by
//! `Stream(seed, Shuffle, e)`); batch s takes positions [s B, (s+1) B), crossing epoch
//! boundaries. The flip at position k of epoch e is the top bit of the k-th draw of
//! `Stream(seed, Augment, e)`.

use crate::rng::{Purpose, Stream};

/// The permutation of 0..n that epoch `epoch` visits.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    Stream::new(seed, Purpose::Shuffle, epoch).shuffle(&mut perm);
    perm
}

/// The flip decision for each position of epoch `epoch`.
pub fn flips(n: usize, seed: u64, epoch: u64) -> Vec<bool> {
    let mut s = Stream::new(seed, Purpose::Augment, epoch);
    (0..n).map(|_| s.next_u64() >> 63 == 1).collect()
}

/// One epoch's plan.
#[derive(Clone, Debug)]
struct Epoch {
    index: u64,
    perm: Vec<usize>,
    flips: Vec<bool>,
}

/// The batch plan, with the last two epochs' permutations kept (a batch spans at most two
/// epochs unless it is larger than the dataset).
#[derive(Clone, Debug)]
pub struct Order {
    n: usize,
    batch_size: usize,
    seed: u64,
    random_flip: bool,
    recent: Vec<Epoch>,
}

impl Order {
    /// The order over `n` examples (n > 0) in batches of `batch_size` (> 0).
    pub fn new(n: usize, batch_size: usize, seed: u64, random_flip: bool) -> Self {
        Order {
            n,
            batch_size,
            seed,
            random_flip,
            recent: Vec::with_capacity(2),
        }
    }

    /// Examples per epoch.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for an empty dataset.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// (example index, flip) at sequence position `position`.
    pub fn at(&mut self, position: u64) -> (usize, bool) {
        let n = self.n as u64;
        let (e, k) = (position / n, (position % n) as usize);
        let epoch = self.epoch(e);
        (epoch.perm[k], epoch.flips.get(k).copied().unwrap_or(false))
    }

    /// (example index, flip) for each slot of batch `step`: positions [step B, (step+1) B).
    pub fn batch(&mut self, step: u64) -> Vec<(usize, bool)> {
        let b = self.batch_size as u64;
        (step * b..(step + 1) * b).map(|p| self.at(p)).collect()
    }

    fn epoch(&mut self, index: u64) -> &Epoch {
        let at = match self.recent.iter().position(|e| e.index == index) {
            Some(at) => at,
            None => {
                if self.recent.len() == 2 {
                    self.recent.remove(0);
                }
                let flips = if self.random_flip {
                    flips(self.n, self.seed, index)
                } else {
                    Vec::new()
                };
                self.recent.push(Epoch {
                    index,
                    perm: permutation(self.n, self.seed, index),
                    flips,
                });
                self.recent.len() - 1
            }
        };
        &self.recent[at]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_and_epochs_differ() {
        let n = 10;
        let mut order = Order::new(n, 3, 42, false);
        let seq: Vec<usize> = (0..3 * n as u64).map(|p| order.at(p).0).collect();
        for epoch in seq.chunks(n) {
            let mut sorted = epoch.to_vec();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        }
        assert_ne!(seq[..n], seq[n..2 * n]);
        assert_eq!(seq[..n], permutation(n, 42, 0));
    }

    #[test]
    fn batches_tile_the_sequence_across_epoch_boundaries() {
        let (n, b) = (7, 3);
        let mut order = Order::new(n, b, 1, true);
        let mut naive = Vec::new();
        for e in 0..4 {
            let f = flips(n, 1, e);
            naive.extend(permutation(n, 1, e).into_iter().zip(f));
        }
        for s in 0..9u64 {
            let start = s as usize * b;
            assert_eq!(order.batch(s), naive[start..start + b], "step {s}");
        }
    }

    #[test]
    fn any_step_can_be_computed_first() {
        let mut fresh = Order::new(13, 5, 9, true);
        let all: Vec<_> = (0..12).map(|s| fresh.batch(s)).collect();
        for s in [11u64, 2, 7, 0] {
            let mut resumed = Order::new(13, 5, 9, true);
            assert_eq!(resumed.batch(s), all[s as usize]);
        }
    }

    #[test]
    fn seeds_differ_and_flips_are_balanced() {
        assert_ne!(permutation(50, 1, 0), permutation(50, 2, 0));
        let f = flips(10_000, 3, 0);
        let on = f.iter().filter(|&&x| x).count();
        // Binomial(10000, 1/2): sd 50.
        assert!((4800..5200).contains(&on), "{on}");
        assert_ne!(flips(64, 3, 0), flips(64, 3, 1));
    }

    #[test]
    fn batches_larger_than_the_dataset_wrap_epochs() {
        let mut order = Order::new(3, 8, 5, false);
        let batch: Vec<usize> = order.batch(0).into_iter().map(|(i, _)| i).collect();
        let mut want = permutation(3, 5, 0);
        want.extend(permutation(3, 5, 1));
        want.extend(&permutation(3, 5, 2)[..2]);
        assert_eq!(batch, want);
    }
}

//! Tests for `loader`, on a dataset whose values say which example and flip produced them.

use std::time::Duration;

use super::*;
use crate::data::config::ImageSize;
use crate::data::Digits;

/// Example i is [i, flip, i + 0.5] (C = 1, H = 1, W = 3), labelled i % 4; example `fail_at`
/// returns an error and every example takes `delay`.
struct Tagged {
    n: usize,
    fail_at: Option<usize>,
    delay: Duration,
}

impl Tagged {
    fn shared(n: usize) -> Arc<dyn Dataset> {
        Arc::new(Tagged {
            n,
            fail_at: None,
            delay: Duration::ZERO,
        })
    }
}

impl Dataset for Tagged {
    fn len(&self) -> usize {
        self.n
    }
    fn channels(&self) -> usize {
        1
    }
    fn image_size(&self) -> ImageSize {
        ImageSize {
            height: 1,
            width: 3,
        }
    }
    fn example(&self, i: usize, flip: bool, out: &mut [f32]) -> Result<Option<u32>> {
        std::thread::sleep(self.delay);
        if Some(i) == self.fail_at {
            return Err(Error::Data(format!(
                "broken/file_{i}.png: cannot decode image"
            )));
        }
        out.copy_from_slice(&[i as f32, flip as u8 as f32, i as f32 + 0.5]);
        Ok(Some(i as u32 % 4))
    }
    fn num_classes(&self) -> Option<usize> {
        Some(4)
    }
    fn class_names(&self) -> Option<&[String]> {
        None
    }
}

fn opts(batch_size: usize, seed: u64, start_step: u64, workers: usize) -> LoaderOptions {
    LoaderOptions {
        batch_size,
        seed,
        random_flip: true,
        start_step,
        workers,
        prefetch: 3,
        part: Part::WHOLE,
    }
}

fn take(ds: &Arc<dyn Dataset>, o: LoaderOptions, n: usize) -> Vec<Batch> {
    Loader::new(ds.clone(), o)
        .unwrap()
        .take(n)
        .map(|b| b.unwrap())
        .collect()
}

/// (example, flip) for each slot of a batch of `Tagged` examples.
fn slots(b: &Batch) -> Vec<(usize, bool)> {
    b.x.chunks(3)
        .map(|c| (c[0] as usize, c[1] == 1.0))
        .collect()
}

#[test]
fn same_seed_same_batches_in_step_order_whatever_the_worker_count() {
    let ds = Tagged::shared(10);
    let a = take(&ds, opts(4, 7, 0, 1), 8);
    let b = take(&ds, opts(4, 7, 0, 3), 8);
    assert_eq!(a, b);
    let steps: Vec<u64> = a.iter().map(|b| b.step).collect();
    assert_eq!(steps, (0..8).collect::<Vec<_>>());
    let c = take(&ds, opts(4, 8, 0, 2), 8);
    assert_ne!(a, c);
    for batch in &a {
        assert_eq!(batch.dims, [4, 1, 1, 3]);
        let labels: Vec<u32> = slots(batch).iter().map(|&(i, _)| i as u32 % 4).collect();
        assert_eq!(batch.labels.as_ref().unwrap(), &labels);
        for c in batch.x.chunks(3) {
            assert_eq!(c[2], c[0] + 0.5, "slot values stay together");
        }
    }
}

#[test]
fn every_example_once_per_epoch() {
    let n = 12;
    let ds = Tagged::shared(n);
    // 12 examples in batches of 4: each 3 batches are exactly one epoch.
    let batches = take(&ds, opts(4, 3, 0, 2), 9);
    let seq: Vec<usize> = batches.iter().flat_map(slots).map(|(i, _)| i).collect();
    for epoch in seq.chunks(n) {
        let mut sorted = epoch.to_vec();
        sorted.sort();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    }
    assert_ne!(seq[..n], seq[n..2 * n], "epochs are reshuffled");
}

#[test]
fn started_at_step_s_continues_the_fresh_sequence_across_epochs() {
    // 10 examples in batches of 4: step 2 holds positions 8..12, crossing into epoch 1.
    let ds = Tagged::shared(10);
    let fresh = take(&ds, opts(4, 11, 0, 2), 12);
    for s in [2u64, 5, 7] {
        let resumed = take(&ds, opts(4, 11, s, 3), 12 - s as usize);
        assert_eq!(resumed[..], fresh[s as usize..], "start {s}");
    }
}

#[test]
fn flips_are_reproducible_and_follow_the_option() {
    let ds = Tagged::shared(50);
    let a = take(&ds, opts(10, 2, 0, 2), 10);
    let b = take(&ds, opts(10, 2, 0, 1), 10);
    let flips = |bs: &[Batch]| -> Vec<bool> { bs.iter().flat_map(slots).map(|(_, f)| f).collect() };
    assert_eq!(flips(&a), flips(&b));
    let on = flips(&a).iter().filter(|&&f| f).count();
    // Binomial(100, 1/2): sd 5.
    assert!((30..70).contains(&on), "{on}");
    let plain = LoaderOptions {
        random_flip: false,
        ..opts(10, 2, 0, 2)
    };
    assert!(flips(&take(&ds, plain, 10)).iter().all(|&f| !f));
}

#[test]
fn worker_errors_reach_the_caller_then_the_loader_ends() {
    let ds: Arc<dyn Dataset> = Arc::new(Tagged {
        n: 6,
        fail_at: Some(4),
        delay: Duration::ZERO,
    });
    let mut loader = Loader::new(ds, opts(6, 1, 0, 2)).unwrap();
    let err = loader.next().unwrap().unwrap_err().to_string();
    assert!(err.contains("file_4.png"), "{err}");
    assert!(loader.next().is_none());
}

#[test]
fn dropping_a_busy_loader_stops_its_workers() {
    let ds: Arc<dyn Dataset> = Arc::new(Tagged {
        n: 100,
        fail_at: None,
        delay: Duration::from_millis(1),
    });
    let mut loader = Loader::new(ds.clone(), opts(8, 1, 0, 3)).unwrap();
    loader.next().unwrap().unwrap();
    // Let the workers fill their queues and block on them, then drop mid-flight.
    std::thread::sleep(Duration::from_millis(50));
    drop(loader);
    // Only this test's handle remains: the workers' clones of the dataset were released.
    assert_eq!(Arc::strong_count(&ds), 1);
    let never_read = Loader::new(ds.clone(), opts(8, 1, 0, 2)).unwrap();
    drop(never_read);
    assert_eq!(Arc::strong_count(&ds), 1);
}

#[test]
fn digits_batches_become_tensors() {
    let ds: Arc<dyn Dataset> = Arc::new(Digits::new(ImageSize::square(8), 3, true).unwrap());
    let o = LoaderOptions::new(16, 5);
    let mut loader = Loader::new(ds.clone(), o).unwrap();
    assert_eq!(loader.dims(), [16, 3, 8, 8]);
    let batch = loader.next().unwrap().unwrap();
    let first = crate::data::order::permutation(ds.len(), 5, 0)[0];
    let mut want = vec![0f32; 3 * 64];
    let label = ds.example(first, false, &mut want).unwrap().unwrap();
    assert_eq!(batch.x[..3 * 64], want[..]);
    let (x, labels) = batch.into_tensors(&Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[16, 3, 8, 8]);
    let labels: Vec<u32> = labels.unwrap().to_vec1().unwrap();
    assert_eq!(labels[0], label);
    assert_eq!(loader.step(), 1);
}

#[test]
fn zero_batch_size_is_refused() {
    assert!(Loader::new(Tagged::shared(3), opts(0, 1, 0, 1)).is_err());
}

/// The parts of a batch (one per rank of a data-parallel run) are its examples cut in order,
/// the labels with them; an empty part is refused.
#[test]
fn parts_of_a_batch_put_together_are_the_batch() {
    let ds = Tagged::shared(23);
    let whole = take(&ds, opts(10, 4, 3, 2), 3);
    let parts: Vec<Vec<Batch>> = (0..3)
        .map(|index| {
            let part = Part { index, count: 3 };
            take(
                &ds,
                LoaderOptions {
                    part,
                    ..opts(10, 4, 3, 1)
                },
                3,
            )
        })
        .collect();
    for (s, batch) in whole.iter().enumerate() {
        let x: Vec<f32> = parts.iter().flat_map(|p| p[s].x.clone()).collect();
        let labels: Vec<u32> = parts
            .iter()
            .flat_map(|p| p[s].labels.clone().unwrap())
            .collect();
        assert_eq!(x, batch.x);
        assert_eq!(Some(labels), batch.labels);
        let sizes: Vec<usize> = parts.iter().map(|p| p[s].dims[0]).collect();
        assert_eq!(sizes, [3, 3, 4]);
        assert_eq!(parts[2][s].step, batch.step);
    }
    let empty = LoaderOptions {
        part: Part { index: 0, count: 3 },
        ..opts(2, 4, 0, 1)
    };
    let err = Loader::new(ds, empty).err().unwrap().to_string();
    assert!(err.contains("leaves part 0 of 3 empty"), "{err}");
}

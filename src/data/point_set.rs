//! Vector data as a training dataset: a point set's rows, standardised (`points::Standardization`)
//! so the network sees unit-scale data, served to the loader as examples of shape (D,). The
//! points themselves (generators, files, the standardisation) are `points`'.

use super::{Dataset, ImageSize};
use crate::error::{Error, Result};
use crate::points::{Points, Standardization};

/// A point set as a training dataset: examples are its standardised rows, shape (D,).
pub struct PointDataset {
    standardized: Points,
    standardization: Standardization,
}

impl PointDataset {
    /// Standardise `points` for training; an empty set is an error.
    pub fn new(points: &Points, what: &str) -> Result<Self> {
        if points.is_empty() {
            return Err(Error::Data(format!("{what} holds no points")));
        }
        let standardization = Standardization::fit(points);
        Ok(PointDataset {
            standardized: standardization.apply(points),
            standardization,
        })
    }
}

impl Dataset for PointDataset {
    fn len(&self) -> usize {
        self.standardized.len()
    }

    fn channels(&self) -> usize {
        self.standardized.dim
    }

    fn image_size(&self) -> ImageSize {
        ImageSize::square(1)
    }

    fn example_shape(&self) -> Vec<usize> {
        vec![self.standardized.dim]
    }

    fn example(&self, i: usize, _flip: bool, out: &mut [f32]) -> Result<Option<u32>> {
        for (o, v) in out.iter_mut().zip(self.standardized.row(i)) {
            *o = *v as f32;
        }
        Ok(None)
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }

    fn class_names(&self) -> Option<&[String]> {
        None
    }

    fn standardization(&self) -> Option<&Standardization> {
        Some(&self.standardization)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_dataset_serves_standardised_rows() {
        let p = Points::new(2, vec![0.0, 10.0, 2.0, 30.0]).unwrap();
        let ds = PointDataset::new(&p, "test").unwrap();
        assert_eq!(
            (ds.len(), ds.channels(), ds.example_shape()),
            (2, 2, vec![2])
        );
        let mut out = [0f32; 2];
        ds.example(1, false, &mut out).unwrap();
        assert_eq!(out, [1.0, 1.0]);
        assert!(PointDataset::new(&Points::new(2, vec![]).unwrap(), "empty").is_err());
    }
}

//! Fréchet Inception Distance and Kernel Inception Distance.

pub mod inception;
pub mod inputs;
pub mod kid;
pub mod linalg;
pub mod npz;
mod ops;
pub mod preprocess;
pub mod seeded;
pub mod stats;
pub mod weights;

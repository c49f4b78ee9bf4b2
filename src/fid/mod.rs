//! Fréchet Inception Distance and Kernel Inception Distance.

pub mod linalg;

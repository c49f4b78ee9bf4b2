//! Fréchet Inception Distance and Kernel Inception Distance, computed as pytorch-fid and
//! torch-fidelity compute them: `inception` is pytorch-fid's FIDInceptionV3 up to its pool3
//! features (`ops` its convolutions and poolings), `weights` reads pytorch-fid's weights file,
//! `seeded` draws stand-in weights for tests, `preprocess` prepares images as pytorch-fid does,
//! `inputs` turns folders, arrays and images into features, `stats` holds the Gaussian
//! statistics and the distance (its matrix square root in `linalg`), `kid` the kernel distance
//! and `npz` pytorch-fid's statistics files. Sampling a checkpoint is the binary's job
//! (`generate` sits above this module).

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

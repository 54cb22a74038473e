//! The integration tests, in one binary so that burn is linked once (the MNIST
//! pipeline, which runs itself as a child process, is its own binary).
//! Each module is one concern; `common` holds the devices, the seeded
//! generator, tensor helpers and tolerance checks they share.

mod common;

#[cfg(feature = "cube-kernel")]
mod cube_kernel;
#[cfg(feature = "wgpu")]
mod device_reads;
mod devices;
mod divergences;
mod engine_parity;
mod ensemble;
mod errors;
mod feature_parity;
#[cfg(feature = "train")]
mod feature_train;
mod features;
mod gold;
mod gradients;
mod linear;
#[cfg(feature = "train")]
mod lm;
mod numerics;
mod properties;
mod sequences;
mod specialists;
#[cfg(feature = "store")]
mod store;
mod teacher_output;
mod top_k;
mod torch_parity;
#[cfg(feature = "train")]
mod train;
mod uld;
mod vocabulary;

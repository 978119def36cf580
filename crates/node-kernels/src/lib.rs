#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod activation;
pub mod alloc;
pub mod bmv;
pub mod conv;
#[cfg(feature = "cuda")]
mod cuda;
pub mod cuda_graph;
mod gemm;
pub mod group_norm;
pub mod linear;
pub mod optim;
mod pool;
mod transpose;
mod util;

pub use activation::{elu, exp, relu, sigmoid, softplus, tanh};
pub use alloc::{keep_freed_memory, skip_unused_cuda_events};
pub use bmv::batched_matvec;
pub use conv::{conv2d, conv2d_bias, conv2d_time};
pub use cuda_graph::GraphStep;
pub use group_norm::{group_norm, group_norm_relu};
pub use linear::linear;
pub use optim::{sgd_descend, sgd_momentum_update};

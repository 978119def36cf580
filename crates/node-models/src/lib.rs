#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod mnist;
pub mod rng;

pub use rng::Rng;

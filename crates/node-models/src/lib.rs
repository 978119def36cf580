#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod cde;
pub mod checkpoint;
pub mod cnf;
pub mod delay;
pub mod ffjord;
pub mod galerkin;
pub mod hnn;
pub mod hyper;
pub mod init;
pub mod latent_ode;
pub mod latent_sde;
pub mod layers;
pub mod mnist;
pub mod mnist_models;
pub mod optim;
pub mod reaction_diffusion;
pub mod rng;
pub mod rnn;
pub mod sde_gan;
pub mod second_order;
pub mod shooting;
pub mod toy;

pub use cde::{ControlPath, Interpolation, NeuralCde, NeuralCdeConfig};
pub use cnf::{Cnf, CnfConfig, CnfField};
pub use delay::NeuralDde;
pub use ffjord::{Ffjord, FfjordConfig, FfjordField};
pub use galerkin::{Basis, GalerkinConv2d, GalerkinLinear};
pub use hnn::{Hnn, HnnConfig, HnnKind, HnnSystem};
pub use hyper::{HyperConv, HyperMlp};
pub use latent_ode::{LatentOde, LatentOdeConfig};
pub use latent_sde::{LatentSde, LatentSdeConfig, SdeGradient};
pub use layers::{
    Activation, BlockStats, ConcatConv2d, Conv2d, Gradient, GroupNorm, Linear, Mlp, OdeBlock,
    OdeFunc, ResBlock, TimeDependence,
};
pub use mnist_models::{MnistModel, ModelKind, OdeConfig};
pub use optim::{Adam, AdamConfig, PiecewiseSchedule, SgdConfig, SgdMomentum};
pub use reaction_diffusion::{Diffusion1d, Diffusion2d, PointwiseReaction};
pub use rng::Rng;
pub use rnn::{Rnn, RnnConfig};
pub use sde_gan::{SdeGan, SdeGanConfig};
pub use second_order::SecondOrder;
pub use shooting::{MultipleShooting, ShootingSolution};

//! The paper's MNIST models (Table 1), as torchdiffeq's `examples/odenet_mnist.py` builds them:
//! downsampling `Conv(1→64, 3×3) – GN – ReLU – Conv(64→64, 4×4, s2, p1) – GN – ReLU –
//! Conv(64→64, 4×4, s2, p1)` to 64×6×6, a feature stage, and the head
//! `GN – ReLU – global average pool – Linear(64→10)`.
//!
//! | model | feature stage | parameters |
//! |---|---|---:|
//! | ODE-Net | one [`OdeBlock`] of [`OdeFunc`], t 0→1, adaptive with the adjoint | 208,266 |
//! | RK-Net | the same block, fixed-step Runge–Kutta, backprop through the solver | 208,266 |
//! | ResNet | 6 [`ResBlock`]s | 576,778 |
//! | MLP | no convolutions: Linear(784→300) – ReLU – Linear(300→10) | 238,510 |
//!
//! ODE-Net and RK-Net take two variations of the block ([`OdeConfig`]): channels of zeros
//! added to its state (`augment`, ANODE), and Galerkin convolutions in its field instead of
//! the time channel (`time`, [`TimeDependence::Galerkin`]: 354,826 parameters on Legendre
//! polynomials to degree 2).

use crate::layers::{
    conv2d, linear, norm, BlockStats, Conv2d, Gradient, GroupNorm, Linear, OdeBlock, OdeFunc,
    ResBlock, TimeDependence,
};
use candle_core::{Result, Tensor, D};
use candle_nn::{Module, VarBuilder};
use node_adjoint::AdjointOptions;
use node_kernels::relu;
use node_solvers::{Method, SolveOptions};
use std::fmt;
use std::str::FromStr;

/// Which model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// ODE block, adaptive solver, adjoint gradients.
    OdeNet,
    /// ODE block, fixed-step solver, backprop through the solver.
    RkNet,
    /// Six residual blocks.
    ResNet,
    /// One hidden layer of 300 units (the table's first row).
    Mlp,
}

impl ModelKind {
    /// All kinds, in the order of the paper's table.
    pub const ALL: [ModelKind; 4] = [
        ModelKind::Mlp,
        ModelKind::ResNet,
        ModelKind::RkNet,
        ModelKind::OdeNet,
    ];

    /// The name used on command lines and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::OdeNet => "odenet",
            ModelKind::RkNet => "rknet",
            ModelKind::ResNet => "resnet",
            ModelKind::Mlp => "mlp",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown model `{s}` (expected odenet, rknet, resnet or mlp)"))
    }
}

/// How the ODE block of ODE-Net and RK-Net is solved and differentiated.
#[derive(Clone, Debug)]
pub struct OdeConfig {
    /// Solver options of the block.
    pub opts: SolveOptions,
    /// Gradient mode.
    pub gradient: Gradient,
    /// Channels of zeros added to the ODE block's 64 (an augmented neural ODE, Dupont et
    /// al. 2019): the field, the head's norm and the classifier see `64 + augment`. 0 (the
    /// paper's): none. ODE-Net and RK-Net only.
    pub augment: usize,
    /// How the block's convolutions depend on `t`: the paper's time channel, or Galerkin
    /// kernels (depth-variant weights, [`TimeDependence::Galerkin`]). ODE-Net and RK-Net only.
    pub time: TimeDependence,
}

impl OdeConfig {
    /// The paper's/torchdiffeq's defaults for a kind: ODE-Net dopri5 at `rtol = atol = 1e-3`
    /// with the adjoint; RK-Net classic RK4 with 20 fixed steps (80 evaluations) and backprop.
    pub fn default_for(kind: ModelKind) -> Self {
        match kind {
            ModelKind::RkNet => OdeConfig {
                opts: SolveOptions::default().method(Method::Rk4).fixed_steps(20),
                gradient: Gradient::Backprop,
                augment: 0,
                time: TimeDependence::Concat,
            },
            _ => OdeConfig {
                opts: SolveOptions::default()
                    .method(Method::Dopri5)
                    .tolerances(1e-3, 1e-3),
                gradient: Gradient::Adjoint(AdjointOptions::default()),
                augment: 0,
                time: TimeDependence::Concat,
            },
        }
    }
}

enum Features {
    Ode(Box<OdeBlock<OdeFunc>>),
    Res(Vec<ResBlock>),
}

/// A Table 1 model.
pub struct MnistModel {
    kind: ModelKind,
    time: TimeDependence,
    down: Option<(Conv2d, GroupNorm, Conv2d, GroupNorm, Conv2d)>,
    features: Option<Features>,
    head_norm: Option<GroupNorm>,
    fc: Linear,
    hidden: Option<Linear>,
}

/// Counts of one forward pass.
#[derive(Clone, Debug, Default)]
pub struct ForwardStats {
    /// The ODE block's counts (ODE-Net and RK-Net).
    pub block: Option<BlockStats>,
}

impl MnistModel {
    /// Builds `kind` with its variables under `vb` (use a `VarMap`-backed builder to train).
    /// `ode` configures ODE-Net and RK-Net; the others ignore it, but refuse augmentation.
    ///
    /// # Errors
    /// `ode.augment` or Galerkin convolutions for the ResNet or the MLP; a basis
    /// [`crate::GalerkinConv2d`] refuses; those of `vb`.
    pub fn new(kind: ModelKind, ode: &OdeConfig, vb: VarBuilder) -> Result<Self> {
        if matches!(kind, ModelKind::ResNet | ModelKind::Mlp) {
            if ode.augment > 0 {
                candle_core::bail!("augmentation is for ODE-Net and RK-Net, not the {kind} model");
            }
            if ode.time != TimeDependence::Concat {
                candle_core::bail!(
                    "Galerkin convolutions are for ODE-Net and RK-Net, not the {kind} model"
                );
            }
        }
        if kind == ModelKind::Mlp {
            return Ok(Self {
                kind,
                time: ode.time,
                down: None,
                features: None,
                head_norm: None,
                hidden: Some(linear(784, 300, vb.pp("fc1"))?),
                fc: linear(300, 10, vb.pp("fc2"))?,
            });
        }
        let d = vb.pp("down");
        let down = (
            conv2d(1, 64, 3, 1, 0, true, d.pp("conv1"))?,
            norm(64, d.pp("norm1"))?,
            conv2d(64, 64, 4, 2, 1, true, d.pp("conv2"))?,
            norm(64, d.pp("norm2"))?,
            conv2d(64, 64, 4, 2, 1, true, d.pp("conv3"))?,
        );
        let (features, dim) = match kind {
            ModelKind::ResNet => {
                let blocks = (0..6)
                    .map(|i| ResBlock::new(64, vb.pp(format!("res{i}"))))
                    .collect::<Result<_>>()?;
                (Features::Res(blocks), 64)
            }
            _ => {
                let dim = 64 + ode.augment;
                let block = OdeBlock::new(
                    OdeFunc::with_time(dim, ode.time, vb.pp("odefunc"))?,
                    1.0,
                    ode.opts.clone(),
                    ode.gradient.clone(),
                )
                .augmented(ode.augment);
                (Features::Ode(Box::new(block)), dim)
            }
        };
        Ok(Self {
            kind,
            time: ode.time,
            down: Some(down),
            features: Some(features),
            head_norm: Some(norm(dim, vb.pp("head_norm"))?),
            fc: linear(dim, 10, vb.pp("fc"))?,
            hidden: None,
        })
    }

    /// The model's kind.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The name checkpoints record and check: the kind's ([`ModelKind::name`]), and for
    /// Galerkin convolutions the basis after it, `odenet-galerkin-legendre:2`, so that a
    /// checkpoint is never loaded into a model with another basis of as many functions.
    pub fn name(&self) -> String {
        match self.time {
            TimeDependence::Concat => self.kind.name().to_string(),
            TimeDependence::Galerkin(basis) => format!("{}-galerkin-{basis}", self.kind),
        }
    }

    /// Logits for a batch of images.
    ///
    /// # Shapes
    /// `x: [B, 1, 28, 28]` → `[B, 10]`.
    ///
    /// # Errors
    /// Shape errors, and the ODE block's solver errors.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, ForwardStats)> {
        if let Some(hidden) = &self.hidden {
            let h = relu(&hidden.forward(&x.flatten_from(1)?)?)?;
            return Ok((self.fc.forward(&h)?, ForwardStats::default()));
        }
        let mut h = self.encode(x)?;
        let mut stats = ForwardStats::default();
        match self.features.as_ref().expect("conv models have features") {
            Features::Ode(block) => {
                let (y, s) = block.forward_with_stats(&h)?;
                h = y;
                stats.block = Some(s);
            }
            Features::Res(blocks) => {
                for b in blocks {
                    h = b.forward(&h)?;
                }
            }
        }
        Ok((self.classify(&h)?, stats))
    }

    /// The downsampling stage of the convolutional models: the feature stage's input.
    ///
    /// # Shapes
    /// `x: [B, 1, 28, 28]` → `[B, 64, 6, 6]`.
    ///
    /// # Errors
    /// The MLP (it has no convolutions); shape errors.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let Some((c1, n1, c2, n2, c3)) = self.down.as_ref() else {
            candle_core::bail!("the {} model has no downsampling stage", self.kind);
        };
        let h = c1.forward(x)?;
        let h = c2.forward(&n1.forward_relu(&h)?)?;
        c3.forward(&n2.forward_relu(&h)?)
    }

    /// The ODE block of ODE-Net and RK-Net (`None` for the others): solved on its own, with
    /// other solvers than the model's (a hypersolver, fewer steps), between
    /// [`MnistModel::encode`] and [`MnistModel::classify`]. An augmented block's field sees
    /// `64 + augment` channels, the first 64 from `encode` and zeros after them.
    pub fn ode_block(&self) -> Option<&OdeBlock<OdeFunc>> {
        match self.features.as_ref()? {
            Features::Ode(block) => Some(block),
            Features::Res(_) => None,
        }
    }

    /// The head of the convolutional models: `GN – ReLU – global average pool – Linear` on the
    /// feature stage's output.
    ///
    /// # Shapes
    /// `h: [B, C, 6, 6]` (`C = 64`, or `64 + augment`) → `[B, 10]`.
    ///
    /// # Errors
    /// The MLP; shape errors.
    pub fn classify(&self, h: &Tensor) -> Result<Tensor> {
        let Some(head_norm) = self.head_norm.as_ref() else {
            candle_core::bail!("the {} model has no convolutional head", self.kind);
        };
        let h = head_norm.forward_relu(h)?;
        let pooled = h.mean(D::Minus1)?.mean(D::Minus1)?;
        self.fc.forward(&pooled)
    }
}

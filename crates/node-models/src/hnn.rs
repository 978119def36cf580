//! Hamiltonian neural networks (Greydanus, Dzamba & Yosinski, *Hamiltonian Neural Networks*,
//! NeurIPS 2019) and their baseline, on the paper's ideal mass–spring and pendulum.
//!
//! The state is `x = [q, p]` (`[B, 2n]`, `n` degrees of freedom). An HNN learns a scalar
//! `H_θ(q, p)` and moves along its symplectic gradient, `dq/dt = ∂H/∂p`, `dp/dt = −∂H/∂q`, so
//! the learned dynamics conserve the learned energy exactly. The baseline learns `dx/dt`
//! directly. Both train on observed time derivatives; the gradient of `H` comes from the
//! chain rule in tensor ops ([`Mlp::input_gradient`]), which autograd
//! differentiates again for training.
//!
//! A separable HNN, `H = T_θ(p) + V_θ(q)`, is a [`SeparableField`]. It can then be rolled out
//! by [`node_solvers::odeint_symplectic`], whose steps conserve a nearby energy too, and
//! trained on observed trajectories alone through such rollouts
//! ([`node_adjoint::odeint_symplectic_adjoint`] differentiates them with memory independent
//! of the steps; Chen, Zhang, Arjovsky & Bottou, *Symplectic Recurrent Neural Networks*, ICLR
//! 2020).

use crate::layers::{Activation, Mlp};
use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Module, VarBuilder};
use node_adjoint::{ParamSeparableField, ParamVectorField};
use node_solvers::{SeparableField, SolverError, VectorField};

/// What the network learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HnnKind {
    /// The paper's baseline: an MLP `x ↦ dx/dt`.
    Baseline,
    /// An MLP `H_θ(q, p)`; the field is its symplectic gradient.
    Hamiltonian,
    /// `H_θ = T_θ(p) + V_θ(q)`, two MLPs: a [`SeparableField`] as well.
    Separable,
}

impl HnnKind {
    /// The kind's name: `baseline`, `hnn`, `separable`.
    pub fn name(self) -> &'static str {
        match self {
            HnnKind::Baseline => "baseline",
            HnnKind::Hamiltonian => "hnn",
            HnnKind::Separable => "separable",
        }
    }
}

/// The network's shape.
#[derive(Clone, Debug)]
pub struct HnnConfig {
    /// Degrees of freedom `n`: `q` and `p` have `n` components each.
    pub dof: usize,
    /// Width of the hidden layers (the paper's 200).
    pub width: usize,
    /// Hidden layers (the paper's 2: three linear layers).
    pub depth: usize,
    /// Activation of the hidden layers (the paper's tanh; it must be smooth for `H`'s
    /// gradient to be).
    pub activation: Activation,
    /// What is learned.
    pub kind: HnnKind,
}

impl Default for HnnConfig {
    fn default() -> Self {
        Self {
            dof: 1,
            width: 200,
            depth: 2,
            activation: Activation::Tanh,
            kind: HnnKind::Hamiltonian,
        }
    }
}

/// An HNN or its baseline ([`HnnKind`]).
#[derive(Clone, Debug)]
pub struct Hnn {
    cfg: HnnConfig,
    /// Baseline: the field. Hamiltonian: `H`. Separable: `T(p)`, then `V(q)`.
    nets: Vec<Mlp>,
    /// The nets' variables, in order.
    vars: Vec<Var>,
}

impl Hnn {
    /// The network, parameters under `vb` (`field`, `hamiltonian`, or `kinetic` and
    /// `potential`).
    ///
    /// # Errors
    /// A zero `dof`, `width` or `depth`; those of `vb`.
    pub fn new(cfg: &HnnConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.dof == 0 || cfg.width == 0 || cfg.depth == 0 {
            return Err(SolverError::InvalidOptions(format!(
                "an HNN needs positive dof, width and depth, got {}, {}, {}",
                cfg.dof, cfg.width, cfg.depth
            ))
            .into());
        }
        let (n, w, d, a) = (cfg.dof, cfg.width, cfg.depth, cfg.activation);
        let nets = match cfg.kind {
            HnnKind::Baseline => vec![Mlp::new(2 * n, 2 * n, w, d, a, false, vb.pp("field"))?],
            HnnKind::Hamiltonian => {
                vec![Mlp::new(2 * n, 1, w, d, a, false, vb.pp("hamiltonian"))?]
            }
            HnnKind::Separable => vec![
                Mlp::new(n, 1, w, d, a, false, vb.pp("kinetic"))?,
                Mlp::new(n, 1, w, d, a, false, vb.pp("potential"))?,
            ],
        };
        let mut vars = vec![];
        for net in &nets {
            vars.extend(net.vars()?);
        }
        Ok(Self {
            cfg: cfg.clone(),
            nets,
            vars,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HnnConfig {
        &self.cfg
    }

    /// The trained variables.
    ///
    /// # Errors
    /// Candle errors.
    pub fn vars(&self) -> Result<Vec<Var>> {
        Ok(self.vars.clone())
    }

    fn check(&self, x: &Tensor) -> Result<usize> {
        let n = self.cfg.dof;
        match x.dims() {
            [_, w] if *w == 2 * n => Ok(n),
            d => Err(SolverError::OutputMismatch(format!(
                "the state must be [batch, {}] = [q, p], got {d:?}",
                2 * n
            ))
            .into()),
        }
    }

    /// `dx/dt` at `x = [q, p]` (`[B, 2n]`).
    ///
    /// # Errors
    /// A state of the wrong shape; Candle errors.
    pub fn time_derivative(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.check(x)?;
        match self.cfg.kind {
            HnnKind::Baseline => self.nets[0].forward(x),
            HnnKind::Hamiltonian => {
                let g = self.nets[0].input_gradient(x)?;
                Tensor::cat(&[g.narrow(1, n, n)?, g.narrow(1, 0, n)?.neg()?], 1)
            }
            HnnKind::Separable => {
                let (q, p) = (x.narrow(1, 0, n)?, x.narrow(1, n, n)?);
                Tensor::cat(&[self.velocity(0.0, &p)?, self.force(0.0, &q)?], 1)
            }
        }
    }

    /// The learned energy `H_θ(x)` (`[B]`).
    ///
    /// # Errors
    /// The baseline has none; a state of the wrong shape; Candle errors.
    pub fn energy(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.check(x)?;
        match self.cfg.kind {
            HnnKind::Baseline => {
                Err(SolverError::InvalidOptions("the baseline learns no energy".into()).into())
            }
            HnnKind::Hamiltonian => self.nets[0].forward(x)?.squeeze(1),
            HnnKind::Separable => {
                let t = self.nets[0].forward(&x.narrow(1, n, n)?)?;
                let v = self.nets[1].forward(&x.narrow(1, 0, n)?)?;
                (t + v)?.squeeze(1)
            }
        }
    }

    fn separable(&self) -> Result<()> {
        if self.cfg.kind == HnnKind::Separable {
            Ok(())
        } else {
            Err(SolverError::InvalidOptions(format!(
                "only a separable HNN splits into velocity and force, this one is `{}`",
                self.cfg.kind.name()
            ))
            .into())
        }
    }
}

impl VectorField for Hnn {
    fn eval(&self, _t: f64, y: &Tensor) -> Result<Tensor> {
        self.time_derivative(y)
    }
}

impl SeparableField for Hnn {
    /// `∂T/∂p`.
    fn velocity(&self, _t: f64, p: &Tensor) -> Result<Tensor> {
        self.separable()?;
        self.nets[0].input_gradient(p)
    }

    /// `−∂V/∂q`.
    fn force(&self, _t: f64, q: &Tensor) -> Result<Tensor> {
        self.separable()?;
        self.nets[1].input_gradient(q)?.neg()
    }
}

/// The parameters, for the adjoint solvers: [`Hnn::vars`].
impl ParamVectorField for Hnn {
    fn params(&self) -> Vec<Var> {
        self.vars.clone()
    }
}

/// The parameters, for [`node_adjoint::odeint_symplectic_adjoint`]: [`Hnn::vars`].
impl ParamSeparableField for Hnn {
    fn params(&self) -> Vec<Var> {
        self.vars.clone()
    }
}

/// The paper's two ideal systems, one degree of freedom each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HnnSystem {
    /// `H = q² + p²` (the paper's mass–spring, `k = 2`, `m = 1/2`): circles, period π.
    Spring,
    /// `H = 3(1 − cos q) + p²` (the paper's pendulum, `m = l = 1`, `g = 3`).
    Pendulum,
}

impl HnnSystem {
    /// The system's name: `spring`, `pendulum`.
    pub fn name(self) -> &'static str {
        match self {
            HnnSystem::Spring => "spring",
            HnnSystem::Pendulum => "pendulum",
        }
    }

    /// The true energy.
    pub fn hamiltonian(self, q: f64, p: f64) -> f64 {
        match self {
            HnnSystem::Spring => q * q + p * p,
            HnnSystem::Pendulum => 3.0 * (1.0 - q.cos()) + p * p,
        }
    }

    /// The true `(dq/dt, dp/dt)`.
    pub fn derivative(self, q: f64, p: f64) -> (f64, f64) {
        match self {
            HnnSystem::Spring => (2.0 * p, -2.0 * q),
            HnnSystem::Pendulum => (2.0 * p, -3.0 * q.sin()),
        }
    }

    /// The true states at `ts` (from 0, increasing) from `(q0, p0)` at 0: in closed form for
    /// the spring, by RK4 steps of at most 1e-3 for the pendulum (error ~1e-12).
    pub fn trajectory(self, q0: f64, p0: f64, ts: &[f64]) -> Vec<(f64, f64)> {
        match self {
            HnnSystem::Spring => ts
                .iter()
                .map(|&t| {
                    let (s, c) = (2.0 * t).sin_cos();
                    (q0 * c + p0 * s, p0 * c - q0 * s)
                })
                .collect(),
            HnnSystem::Pendulum => {
                let (mut q, mut p, mut t) = (q0, p0, 0.0);
                let f = |q: f64, p: f64| self.derivative(q, p);
                ts.iter()
                    .map(|&target| {
                        let n = ((target - t) / 1e-3).ceil().max(0.0) as usize;
                        let h = if n > 0 { (target - t) / n as f64 } else { 0.0 };
                        for _ in 0..n {
                            let k1 = f(q, p);
                            let k2 = f(q + h / 2.0 * k1.0, p + h / 2.0 * k1.1);
                            let k3 = f(q + h / 2.0 * k2.0, p + h / 2.0 * k2.1);
                            let k4 = f(q + h * k3.0, p + h * k3.1);
                            q += h / 6.0 * (k1.0 + 2.0 * k2.0 + 2.0 * k3.0 + k4.0);
                            p += h / 6.0 * (k1.1 + 2.0 * k2.1 + 2.0 * k3.1 + k4.1);
                        }
                        t = target;
                        (q, p)
                    })
                    .collect()
            }
        }
    }

    /// A random initial state as the paper draws it: a uniform direction in the `(q, p)`
    /// plane at a radius uniform in [0.1, 1] (spring) or [1.3, 2.3] (pendulum).
    pub fn initial(self, rng: &mut Rng) -> (f64, f64) {
        let (q, p) = (2.0 * rng.uniform() - 1.0, 2.0 * rng.uniform() - 1.0);
        let norm = (q * q + p * p).sqrt().max(1e-12);
        let radius = match self {
            HnnSystem::Spring => 0.1 + 0.9 * rng.uniform(),
            HnnSystem::Pendulum => 1.3 + rng.uniform(),
        };
        (q / norm * radius, p / norm * radius)
    }

    /// The observation times of a trajectory: `t ∈ [0, 3]` at 30 (spring) or 45 (pendulum)
    /// points, as the paper.
    pub fn times(self) -> Vec<f64> {
        let n = match self {
            HnnSystem::Spring => 30,
            HnnSystem::Pendulum => 45,
        };
        (0..n).map(|i| 3.0 * i as f64 / (n - 1) as f64).collect()
    }
}

/// Observed states and their true time derivatives.
#[derive(Clone, Debug)]
pub struct HnnData {
    /// Noisy states `[N, 2]`.
    pub x: Tensor,
    /// The true `dx/dt` at the clean states, `[N, 2]`.
    pub dx: Tensor,
    /// Each trajectory's clean initial state.
    pub initial: Vec<(f64, f64)>,
}

/// `trajectories` trajectories of `system` at [`HnnSystem::times`], the states with Gaussian
/// noise of standard deviation `noise`, the derivatives of the clean states (the paper's
/// data).
///
/// # Errors
/// Candle errors.
pub fn hnn_dataset(
    system: HnnSystem,
    trajectories: usize,
    noise: f64,
    rng: &mut Rng,
    dtype: DType,
    dev: &Device,
) -> Result<HnnData> {
    let ts = system.times();
    let (mut x, mut dx, mut initial) = (vec![], vec![], vec![]);
    for _ in 0..trajectories {
        let (q0, p0) = system.initial(rng);
        initial.push((q0, p0));
        for (q, p) in system.trajectory(q0, p0, &ts) {
            let (dq, dp) = system.derivative(q, p);
            dx.extend([dq, dp]);
            x.extend([q + noise * rng.normal(), p + noise * rng.normal()]);
        }
    }
    let rows = trajectories * ts.len();
    let tensor = |v: Vec<f64>| Tensor::from_vec(v, (rows, 2), dev)?.to_dtype(dtype);
    Ok(HnnData {
        x: tensor(x)?,
        dx: tensor(dx)?,
        initial,
    })
}

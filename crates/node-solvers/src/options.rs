//! Typed options of a solve.

use crate::error::SolverError;
use crate::method::Method;
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// Absolute tolerance: one number, or a tensor broadcastable to the state for per-component
/// tolerances (e.g. a looser one on a component that passes through zero).
#[derive(Clone, Debug)]
pub enum Atol {
    /// The same tolerance for every component.
    Scalar(f64),
    /// One tolerance per component; broadcast to the state's shape.
    PerComponent(Tensor),
}

impl From<f64> for Atol {
    fn from(v: f64) -> Self {
        Atol::Scalar(v)
    }
}

impl From<Tensor> for Atol {
    fn from(t: Tensor) -> Self {
        Atol::PerComponent(t)
    }
}

impl From<&Tensor> for Atol {
    fn from(t: &Tensor) -> Self {
        Atol::PerComponent(t.clone())
    }
}

/// How steps are chosen.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum StepSize {
    /// Error-controlled steps (adaptive methods only).
    #[default]
    Adaptive,
    /// Fixed steps of this size from `ts[0]`; the last step is shortened to end on `ts[last]`.
    Fixed(f64),
    /// This many equal steps over `[ts[0], ts[last]]`.
    Count(usize),
    /// Steps between consecutive times of this grid, which runs from `ts[0]` to `ts[last]`
    /// exactly, strictly monotone (diffrax's `StepTo`, torchdiffeq's `grid_constructor`).
    /// Output times between grid points come from dense output.
    Grid(Arc<[f64]>),
}

/// The step-size controller of adaptive solves. With `ε` the error ratio (≤ 1 accepts) and
/// `k = q + 1` (`q` the embedded order) the next step is
/// `h · clamp(safety · ε_n^(−β1/k) · ε_(n−1)^(β2/k))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepController {
    /// `β1 = 1, β2 = 0`: the classic controller, the one torchdiffeq uses.
    Integral,
    /// Proportional–integral control (Gustafsson 1991; Söderlind 2002), smoother step
    /// sequences and fewer rejections.
    PI {
        /// Weight of the current error, `β1`.
        beta1: f64,
        /// Weight of the previous accepted error, `β2`.
        beta2: f64,
    },
}

impl StepController {
    /// PI control with `β1 = 0.7, β2 = 0.4` (diffrax's suggested `pcoeff = 0.4, icoeff = 0.3`).
    pub const PI_DEFAULT: StepController = StepController::PI {
        beta1: 0.7,
        beta2: 0.4,
    };
}

/// The default is [`StepController::Integral`]: on our test problems (damped rotation and
/// Riccati, bosh3/dopri5/tsit5/dopri8, tolerances 1e-4..1e-8) PI control needed more
/// evaluations in most cases (dopri5 at 1e-6 on the rotation: 278 vs 212), while giving
/// smaller errors and fewer rejections. See the crate README for the table.
impl Default for StepController {
    fn default() -> Self {
        StepController::Integral
    }
}

/// Which part of the state the error estimate is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ErrorNorm {
    /// Root-mean-square over every component (torchdiffeq's default).
    #[default]
    Rms,
    /// RMS over the first `len` components of the flattened state only: a seminorm (Kidger et
    /// al., "Hey, that's not an ODE", ICML 2021). The adjoint uses it to ignore the parameter
    /// gradient integrals when choosing steps.
    RmsPrefix(usize),
}

/// The structure of the Jacobian `∂f/∂y` that the implicit methods ([`Method::is_implicit`])
/// solve their Newton iterations with. It is the field's own
/// ([`crate::VectorField::jacobian`], e.g. [`crate::WithJacobian`]) when it has one, and
/// otherwise a finite-difference approximation (the evaluation counts below). It is made at
/// the start of a step and kept for later steps while Newton's method converges well; only
/// the speed of convergence depends on it, not the accuracy of the solution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Jacobian {
    /// The full Jacobian of the flattened state, `n × n`: `n` evaluations of `f` to build
    /// it. For small systems (a few hundred components).
    #[default]
    Dense,
    /// The rows of the state's leading dimension are independent systems (a batch of
    /// samples, each with its own state): one `D × D` block per row, with `D` the size of
    /// a row, built with `D` evaluations whatever the batch size. Wrong (slow or failing
    /// Newton iterations) when the rows are coupled.
    Batched,
    /// Only the first `len` components of the flattened state enter the field; the others
    /// are integrals that the field accumulates (the adjoint's parameter gradients, a CNF's
    /// log-density). `len × len` dense, `len` evaluations.
    DensePrefix(usize),
    /// Both at once: the first `count · size` components of the flattened state are `count`
    /// independent systems of `size` components each (one `size × size` block apiece, built
    /// with `size` evaluations), and the rest are integrals the field accumulates.
    /// `Batched` on a `[B, D]` state is `Blocks { count: B, size: D }`, and `DensePrefix(len)`
    /// is `Blocks { count: 1, size: len }`. The interpolated adjoint's reverse solve of a
    /// batched forward solve uses it.
    Blocks {
        /// The number of independent systems.
        count: usize,
        /// The components of each.
        size: usize,
    },
}

/// Options of [`crate::odeint`]. Build with `SolveOptions::default()` and the builder methods.
///
/// Defaults: `dopri5`, `rtol = 1e-7`, `atol = 1e-9`, adaptive steps with the integral controller,
/// Hairer's initial step, no minimum or maximum step, at most 100 000 steps.
#[derive(Clone, Debug)]
pub struct SolveOptions {
    /// The method.
    pub method: Method,
    /// The order of the Adams methods: of [`Method::ExplicitAdams`] (1 to 12) and
    /// [`Method::ImplicitAdams`] (2 to 12), 4 by default; the highest order of
    /// [`Method::Adams`] (2 to 12), which varies its order and goes up to 12 by default.
    /// Ignored by the Runge–Kutta methods.
    pub adams_order: Option<usize>,
    /// Relative tolerance (1e-7 by default, torchdiffeq's). A half-precision state takes no
    /// less than its dtype's epsilon ([`crate::dtype_epsilon`]: 9.8e-4 for f16, 7.8e-3 for
    /// bf16) under adaptive steps.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: Atol,
    /// Adaptive or fixed steps.
    pub step: StepSize,
    /// First step of an adaptive solve; `None` picks it with Hairer's rule (two evaluations).
    pub first_step: Option<f64>,
    /// Smallest allowed adaptive step (absolute value). A rejected step at this size fails.
    pub min_step: f64,
    /// Largest allowed adaptive step (absolute value).
    pub max_step: f64,
    /// Maximum number of steps, accepted and rejected together.
    pub max_steps: usize,
    /// Step-size controller.
    pub controller: StepController,
    /// Safety factor of the controller.
    pub safety: f64,
    /// Largest growth of the step per step.
    pub max_factor: f64,
    /// Smallest shrink factor of the step after a rejection.
    pub min_factor: f64,
    /// Norm of the error estimate.
    pub norm: ErrorNorm,
    /// Whether a fixed-step solve checks its outputs for NaN and infinity at the end (one
    /// read back to the host, [`SolverError::NonFinite`] on failure). Adaptive solves always
    /// check: their step control reads the error anyway.
    pub check_finite: bool,
    /// Times an adaptive solve steps to exactly, clipping the step that would cross one
    /// (diffrax's `step_ts`, torchdiffeq's `step_t`); any order, only those strictly between
    /// the first and last output time matter.
    pub step_ts: Arc<[f64]>,
    /// Times where the field jumps (diffrax's `jump_ts`, torchdiffeq's `jump_t`). An adaptive
    /// solve steps to each, as to a `step_ts`, and evaluates the field on the side each
    /// evaluation belongs to: a step ending at a jump at the float just before it, a step
    /// starting there just after it (no first-same-as-last reuse across the jump). Fixed
    /// steps do not step to them, but any of their grid points that is a jump is evaluated
    /// on both sides the same way: give a [`StepSize::Grid`] that holds the jumps.
    pub jump_ts: Arc<[f64]>,
    /// The Jacobian of the implicit methods' Newton iterations (ignored by explicit methods).
    pub jacobian: Jacobian,
    /// The most steps a Rosenbrock W-method ([`Method::Ros34pw2`]) keeps one Jacobian for;
    /// a step rejected with a kept Jacobian is retried with a fresh one. Above 1, a system of
    /// 64 components or more also keeps its step size unless it can grow by a fifth, so that
    /// the LU factors serve several steps, as the ESDIRK methods' do. 1 (the default): a
    /// fresh Jacobian every step, as the classical Rosenbrock methods need. The ESDIRK and
    /// IMEX methods ignore it (they keep theirs while Newton's iterations converge).
    pub jacobian_reuse: usize,
    /// An upper bound on the spectral radius of `∂f/∂y` over the solve, for
    /// [`Method::Rkc`] (ignored by the other methods): `rkc` then takes as many stages as it
    /// makes a step stable and reads nothing back for it. `None` (the default): `rkc`
    /// estimates it by the power method ([`crate::rkc`]).
    pub spectral_radius: Option<f64>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        Self {
            method: Method::Dopri5,
            adams_order: None,
            rtol: 1e-7,
            atol: Atol::Scalar(1e-9),
            step: StepSize::Adaptive,
            first_step: None,
            min_step: 0.0,
            max_step: f64::INFINITY,
            max_steps: 100_000,
            controller: StepController::default(),
            safety: 0.9,
            max_factor: 10.0,
            min_factor: 0.2,
            norm: ErrorNorm::Rms,
            check_finite: true,
            step_ts: Arc::from([]),
            jump_ts: Arc::from([]),
            jacobian: Jacobian::Dense,
            jacobian_reuse: 1,
            spectral_radius: None,
        }
    }
}

impl SolveOptions {
    /// Sets the method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }
    /// Sets the order of the Adams methods ([`SolveOptions::adams_order`]).
    pub fn adams_order(mut self, order: usize) -> Self {
        self.adams_order = Some(order);
        self
    }
    /// Sets the relative tolerance.
    pub fn rtol(mut self, rtol: f64) -> Self {
        self.rtol = rtol;
        self
    }
    /// Sets the absolute tolerance (a number or a tensor).
    pub fn atol(mut self, atol: impl Into<Atol>) -> Self {
        self.atol = atol.into();
        self
    }
    /// Sets both tolerances to numbers.
    pub fn tolerances(self, rtol: f64, atol: f64) -> Self {
        self.rtol(rtol).atol(atol)
    }
    /// Fixed steps of size `h`.
    pub fn step_size(mut self, h: f64) -> Self {
        self.step = StepSize::Fixed(h);
        self
    }
    /// `n` equal fixed steps over the whole interval.
    pub fn fixed_steps(mut self, n: usize) -> Self {
        self.step = StepSize::Count(n);
        self
    }
    /// Fixed steps between consecutive times of `grid`, which must run from the first output
    /// time to the last, strictly monotone ([`StepSize::Grid`]). A solve's accepted steps
    /// replayed this way take the same steps and give the same values.
    pub fn step_grid(mut self, grid: impl Into<Arc<[f64]>>) -> Self {
        self.step = StepSize::Grid(grid.into());
        self
    }
    /// Error-controlled steps (the default).
    pub fn adaptive(mut self) -> Self {
        self.step = StepSize::Adaptive;
        self
    }
    /// First adaptive step.
    pub fn first_step(mut self, h: f64) -> Self {
        self.first_step = Some(h);
        self
    }
    /// Smallest adaptive step.
    pub fn min_step(mut self, h: f64) -> Self {
        self.min_step = h;
        self
    }
    /// Largest adaptive step.
    pub fn max_step(mut self, h: f64) -> Self {
        self.max_step = h;
        self
    }
    /// Maximum number of steps.
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }
    /// Step-size controller.
    pub fn controller(mut self, c: StepController) -> Self {
        self.controller = c;
        self
    }
    /// Error norm.
    pub fn norm(mut self, norm: ErrorNorm) -> Self {
        self.norm = norm;
        self
    }
    /// Whether a fixed-step solve checks its outputs for NaN and infinity (the default).
    /// `false` makes it read nothing back from the device, as recording it into a CUDA graph
    /// requires; a non-finite state then reaches the caller unchecked.
    pub fn check_finite(mut self, check: bool) -> Self {
        self.check_finite = check;
        self
    }

    /// Times an adaptive solve must step to ([`SolveOptions::step_ts`]): where the user wants
    /// a step boundary, e.g. to keep the dense output of a step from reaching across a time
    /// where the dynamics change character.
    pub fn step_ts(mut self, times: impl Into<Arc<[f64]>>) -> Self {
        self.step_ts = times.into();
        self
    }
    /// Times where the field is discontinuous in `t` ([`SolveOptions::jump_ts`]): a forcing
    /// that switches on, a piecewise-constant control. Stepping to them saves the rejected
    /// steps with which the controller would otherwise find each jump, and the evaluations on
    /// the right side of each keep the method's order.
    pub fn jump_ts(mut self, times: impl Into<Arc<[f64]>>) -> Self {
        self.jump_ts = times.into();
        self
    }

    /// The Jacobian the implicit methods use ([`Jacobian`]; dense by default).
    pub fn jacobian(mut self, jacobian: Jacobian) -> Self {
        self.jacobian = jacobian;
        self
    }

    /// Keeps a Rosenbrock W-method's Jacobian for up to `steps` steps
    /// ([`SolveOptions::jacobian_reuse`]): for fields whose Jacobian costs much more than an
    /// evaluation (one evaluation per component by differences).
    pub fn jacobian_reuse(mut self, steps: usize) -> Self {
        self.jacobian_reuse = steps;
        self
    }

    /// Gives `rkc` an upper bound on the spectral radius of `∂f/∂y`
    /// ([`SolveOptions::spectral_radius`]), e.g. `4 D / Δx²` for diffusion on a grid of
    /// spacing `Δx`, instead of its estimates.
    pub fn spectral_radius(mut self, rho: f64) -> Self {
        self.spectral_radius = Some(rho);
        self
    }

    /// Checks the options on their own; state-dependent checks happen in the solve.
    ///
    /// # Errors
    /// [`SolverError::InvalidTolerance`] or [`SolverError::InvalidOptions`].
    pub fn validate(&self) -> Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        match &self.step {
            StepSize::Adaptive => {
                if !self.method.is_adaptive() {
                    return Err(SolverError::InvalidOptions(format!(
                        "method `{}` has no error estimate: set a step size (`step_size`) or a step count (`fixed_steps`), or use an adaptive method such as dopri5",
                        self.method
                    ))
                    .into());
                }
                if !positive(self.rtol) {
                    return Err(SolverError::InvalidTolerance {
                        name: "rtol",
                        value: self.rtol,
                    }
                    .into());
                }
                if let Atol::Scalar(a) = self.atol {
                    if !positive(a) {
                        return Err(SolverError::InvalidTolerance {
                            name: "atol",
                            value: a,
                        }
                        .into());
                    }
                }
            }
            StepSize::Fixed(h) if !positive(*h) => {
                return Err(SolverError::InvalidOptions(format!(
                    "step size must be finite and > 0, got {h}"
                ))
                .into());
            }
            StepSize::Count(0) => {
                return Err(
                    SolverError::InvalidOptions("fixed step count must be > 0".into()).into(),
                );
            }
            StepSize::Grid(g) => check_grid(g)?,
            _ => {}
        }
        if let Some(h) = self.first_step {
            if !positive(h) {
                return Err(SolverError::InvalidOptions(format!(
                    "first step must be finite and > 0, got {h}"
                ))
                .into());
            }
        }
        if !(self.min_step >= 0.0 && self.max_step > 0.0 && self.min_step <= self.max_step) {
            return Err(SolverError::InvalidOptions(format!(
                "need 0 <= min_step <= max_step and max_step > 0, got {} and {}",
                self.min_step, self.max_step
            ))
            .into());
        }
        if let (true, Some(order)) = (self.method.is_multistep(), self.adams_order) {
            let lowest = if self.method == Method::ExplicitAdams {
                1
            } else {
                2
            };
            if !(lowest..=crate::adams::MAX_ORDER).contains(&order) {
                return Err(SolverError::InvalidOptions(format!(
                    "`{}` has orders {lowest} to {}, got adams_order = {order}",
                    self.method,
                    crate::adams::MAX_ORDER,
                ))
                .into());
            }
        }
        if self.max_steps == 0 {
            return Err(SolverError::InvalidOptions("max_steps must be > 0".into()).into());
        }
        if self.jacobian_reuse == 0 {
            return Err(SolverError::InvalidOptions("jacobian_reuse must be >= 1".into()).into());
        }
        if self.jacobian_reuse > 1 && self.method.is_rosenbrock() && !self.method.is_w_method() {
            return Err(SolverError::InvalidOptions(format!(
                "`{}` needs a fresh Jacobian every step (its order holds only with the exact one): jacobian_reuse > 1 is for a W-method such as ros34pw2",
                self.method
            ))
            .into());
        }
        if let Some(rho) = self.spectral_radius {
            if !(rho.is_finite() && rho >= 0.0) {
                return Err(SolverError::InvalidOptions(format!(
                    "spectral_radius must be finite and >= 0, got {rho}"
                ))
                .into());
            }
        }
        for (name, times) in [("step_ts", &self.step_ts), ("jump_ts", &self.jump_ts)] {
            if let Some(i) = times.iter().position(|t| !t.is_finite()) {
                return Err(SolverError::InvalidOptions(format!(
                    "{name}[{i}] = {} is not finite",
                    times[i]
                ))
                .into());
            }
        }
        if !(self.safety > 0.0
            && self.safety <= 1.0
            && self.min_factor > 0.0
            && self.min_factor < 1.0
            && self.max_factor > 1.0)
        {
            return Err(SolverError::InvalidOptions(
                "need 0 < safety <= 1, 0 < min_factor < 1 < max_factor".into(),
            )
            .into());
        }
        Ok(())
    }
}

/// A step grid has two times or more, all finite, strictly monotone.
fn check_grid(g: &[f64]) -> Result<()> {
    let bad = |msg: String| -> Result<()> { Err(SolverError::InvalidOptions(msg).into()) };
    if g.len() < 2 {
        return bad(format!(
            "a step grid needs 2 times or more, got {}",
            g.len()
        ));
    }
    if let Some(i) = g.iter().position(|t| !t.is_finite()) {
        return bad(format!("step grid time {i} is {}", g[i]));
    }
    let dir = (g[1] - g[0]).signum();
    if let Some(i) = (1..g.len()).find(|&i| (g[i] - g[i - 1]) * dir <= 0.0) {
        return bad(format!(
            "step grid is not strictly monotone at {i}: {} then {}",
            g[i - 1],
            g[i]
        ));
    }
    Ok(())
}

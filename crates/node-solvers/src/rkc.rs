//! The Runge–Kutta–Chebyshev method `rkc` ([`crate::Method::Rkc`]): explicit, of second order, for
//! mildly stiff problems whose Jacobians have eigenvalues near the negative real axis, such as
//! diffusion discretized on a grid (Sommeijer, Shampine & Verwer, *RKC: an explicit solver for
//! parabolic PDEs*, J. Comput. Appl. Math. 88, 1998).
//!
//! A step of `s` stages follows the three-term recurrence of the Chebyshev polynomials `T_j`:
//! with `w0 = 1 + 2/(13 s²)` and `w1 = T_s'(w0) / T_s''(w0)`,
//!
//! ```text
//! Y_0 = y,    Y_1 = y + μ̃_1 h f(t, y),
//! Y_j = (1 − μ_j − ν_j) y + μ_j Y_(j−1) + ν_j Y_(j−2) + μ̃_j h f(t + c_(j−1) h, Y_(j−1)) + γ̃_j h f(t, y),
//! y1  = Y_s,
//! ```
//!
//! with `b_j = T_j''(w0) / T_j'(w0)²` (`b_0 = b_1 = b_2`), `a_j = 1 − b_j T_j(w0)`,
//! `μ̃_1 = b_1 w1`, `μ_j = 2 b_j w0 / b_(j−1)`, `ν_j = −b_j / b_(j−2)`, `μ̃_j = 2 b_j w1 / b_(j−1)`,
//! `γ̃_j = −a_(j−1) μ̃_j`. Its stability polynomial is `a_s + b_s T_s(w0 + w1 z)`: stable (and
//! damped) on the real interval `[−β(s), 0]`, `β(s) = (1 + w0) / w1 ≈ 0.65 s²`
//! ([`stability_bound`]). So the stages grow with the square root of the stiffness, where an
//! explicit method's steps shrink with the stiffness itself: a step of size `h` takes
//! `s = 1 + ⌊√(1 + 1.54 h ρ)⌋` stages ([`stages_for`]) for a spectral radius `ρ` of `∂f/∂y`.
//!
//! - **Spectral radius.** Given as [`crate::SolveOptions::spectral_radius`] (an upper bound over
//!   the solve, e.g. `4D/Δx²` for diffusion), or estimated by a nonlinear power method on
//!   differences of `f` (RKC's: 1.2 times the estimate, converged to 1%; at most 20
//!   evaluations, each one host read, after which the largest estimate seen serves, as for
//!   a dominant complex pair, where the iteration does not settle; warm-started from the last
//!   direction found), at the start, every 25 accepted steps and after a rejected step.
//! - **Error estimate** (RKC's): `(12 (y − y1) + 6 h (f(t, y) + f(t1, y1))) / 15`, of order
//!   `h³`, with `y1 − y` the increment the stages build up (not the difference of two
//!   states, whose round-off in f32 is about a tight tolerance); `f(t1, y1)` is the next step's first evaluation. Steps are chosen by the solve's
//!   controller for an error of order 3, the first one by RKC's rule from the spectral radius
//!   unless [`crate::SolveOptions::first_step`] is given.
//! - **Round-off.** The stages of one step are at most `√(rtol / (10 u))` (`u` the dtype's unit
//!   round-off, at least 2), as in RKC; a longer step is shortened to what they allow. In f32
//!   that is few stages at tight tolerances: `rkc` is a method for f64 or loose tolerances.
//!   Fixed steps take as many stages as their step needs. No step takes more than
//!   [`MAX_STAGES`] (10 000): a fixed step that would is refused, as a problem too stiff for
//!   an explicit method.
//! - **Dense output**: the cubic Hermite interpolant of the step's ends (third order, no
//!   evaluation).
//!
//! A step costs `s` evaluations, and `f(t1, y1)`, which the next step reuses. Events
//! ([`crate::odeint_event`]), `step_ts`/`jump_ts`, dense solutions ([`crate::odeint_dense`]),
//! backprop through the solve and the adjoint (`node_adjoint::odeint_adjoint`, solved
//! backwards or interpolated; its reverse solve is itself an `rkc` solve, the spectral
//! radius estimated on the augmented system) work. Solves that replay their steps
//! (checkpointed backprop, [`crate::odeint_traced`]) are refused: the stages follow the
//! estimates of the radius.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use node_solvers::{odeint, Method, SolveOptions};
//! # fn main() -> candle_core::Result<()> {
//! // Heat on 100 interior points of [0, 1], zero at the ends: eigenvalues down to −4/Δx² ≈ −4e4.
//! let n = 100;
//! let dx = 1.0 / (n + 1) as f64;
//! let heat = move |_t: f64, u: &Tensor| {
//!     let z = Tensor::zeros(1, u.dtype(), u.device())?;
//!     let p = Tensor::cat(&[&z, u, &z], 0)?;
//!     let sides = (p.narrow(0, 0, n)? + p.narrow(0, 2, n)?)?;
//!     (sides - u.affine(2.0, 0.0)?)?.affine(1.0 / (dx * dx), 0.0)
//! };
//! // The first mode decays as exp(λ1 t), λ1 = −(4/Δx²) sin²(πΔx/2).
//! let mode: Vec<f64> = (1..=n).map(|i| (std::f64::consts::PI * i as f64 * dx).sin()).collect();
//! let u0 = Tensor::new(mode.as_slice(), &Device::Cpu)?;
//! let opts = SolveOptions::default()
//!     .method(Method::Rkc)
//!     .tolerances(1e-6, 1e-6)
//!     .spectral_radius(4.0 / (dx * dx)); // or leave it out: estimated
//! let sol = odeint(&heat, &u0, &[0.0, 0.1], &opts)?;
//! let lambda = -4.0 / (dx * dx) * (std::f64::consts::PI * dx / 2.0).sin().powi(2);
//! let want = u0.affine((lambda * 0.1).exp(), 0.0)?;
//! let err = (sol.last()? - want)?.abs()?.max(0)?.to_scalar::<f64>()?;
//! // rkc controls each step's local error: globally a few tens of tolerances (1.9e-5).
//! assert!(err < 5e-5);
//! // dopri5 would need about 4e4 · 0.1 / 3.3 ≈ 1200 steps of 6 evaluations.
//! assert!(sol.stats.nfe < 1000);
//! # Ok(()) }
//! ```

use crate::error::SolverError;
use crate::event::EventWatch;
use crate::field::VectorField;
use crate::options::SolveOptions;
use crate::rk::{lincomb, Evaluator, Step};
use crate::solve::{
    accepts, dtype_epsilon, error_scale, first_step, fixed_grid, for_norm, read_ratios,
    scaled_norm_sq, Controller, PreparedAtol, SolverStats, StepEnd, Stops,
};
use crate::tableau::{ButcherTableau, Interpolant};
use crate::trace::Recorder;
use candle_core::{DType, Result, Tensor};

/// Accepted steps between two estimates of the spectral radius (RKC's).
const REESTIMATE_EVERY: usize = 25;

/// The most iterations of the power method.
const POWER_ITERATIONS: usize = 20;

/// The most stages of a step: 10 000 evaluations for one step (`h ρ ≈ 6.5e7`) is past
/// where an implicit method is the better choice. An adaptive step that would need more is
/// shortened; a fixed one is refused.
pub const MAX_STAGES: usize = 10_000;

/// The damping of the stability polynomial: `w0 = 1 + DAMPING / s²`.
const DAMPING: f64 = 2.0 / 13.0;

/// How a dense solution ([`crate::odeint_dense`], the interpolated adjoint) keeps an `rkc`
/// step: as the "stages" `f(t, y)` and `(y1 − y) / h` of a method with `y1 = y + h k_1`,
/// whose Hermite interpolant (with `f(t1, y1)`) is the step's own.
pub(crate) const DENSE: ButcherTableau = ButcherTableau {
    name: "rkc",
    c: &[0.0, 0.0],
    a: &[&[0.0]],
    implicit: None,
    rosenbrock: None,
    b: &[0.0, 1.0],
    b_err: None,
    order: 2,
    error_order: 0,
    interpolant: Interpolant::Hermite,
};

/// Reports an accepted step to a dense solution's recorder.
fn record(
    trace: Option<&mut (dyn Recorder + '_)>,
    t: f64,
    t1: f64,
    y: &Tensor,
    f0: &Tensor,
    (y1, dy): (&Tensor, &Tensor),
    f1: &Tensor,
) -> Result<()> {
    if let Some(tr) = trace {
        let slope = dy.affine(1.0 / (t1 - t), 0.0)?;
        let step = Step {
            k: vec![f0.clone(), slope],
            y1: y1.clone(),
            err: None,
        };
        tr.accepted(t, t1, y, &step, Some(f1));
    }
    Ok(())
}

/// The stages a step of size `h` needs for a spectral radius `ρ`, from `h_rho = h ρ`:
/// `1 + ⌊√(1 + 1.54 h ρ)⌋`, at least 2. Then `h ρ ≤ (s² − 1) / 1.54 ≤ β(s)`.
pub fn stages_for(h_rho: f64) -> usize {
    // Saturating: an infinite `h ρ` asks for more than any step may take.
    1 + (1.0 + 1.54 * h_rho.max(0.0)).sqrt().floor().min(1e15) as usize
}

/// `β(s)`: the step of `s` stages is stable for the eigenvalues of `h ∂f/∂y` in `[−β(s), 0]`
/// (`≈ 0.653 s²`). For `s ≤ 1`, the family's one-stage member, Euler's method: 2.
pub fn stability_bound(s: usize) -> f64 {
    if s < 2 {
        return 2.0;
    }
    let c = Coefficients::new(s);
    (1.0 + c.w0) / c.w1
}

/// The value at `z` of the stability polynomial of `s` stages: one step of `y' = λy` from
/// `y = 1` with `z = hλ`. For `s ≤ 1`, Euler's `1 + z`.
pub fn stability_polynomial(s: usize, z: f64) -> f64 {
    if s < 2 {
        return 1.0 + z;
    }
    let c = Coefficients::new(s);
    let (t, _, _) = chebyshev(s, c.w0);
    let b = c.b_s;
    let (ts, _, _) = chebyshev(s, c.w0 + c.w1 * z);
    1.0 - b * t + b * ts
}

/// `T_n(x)`, `T_n'(x)`, `T_n''(x)`.
fn chebyshev(n: usize, x: f64) -> (f64, f64, f64) {
    let (mut t0, mut d0, mut dd0) = (1.0, 0.0, 0.0);
    let (mut t1, mut d1, mut dd1) = (x, 1.0, 0.0);
    if n == 0 {
        return (t0, d0, dd0);
    }
    for _ in 1..n {
        let t2 = 2.0 * x * t1 - t0;
        let d2 = 2.0 * x * d1 - d0 + 2.0 * t1;
        let dd2 = 2.0 * x * dd1 - dd0 + 4.0 * d1;
        (t0, d0, dd0) = (t1, d1, dd1);
        (t1, d1, dd1) = (t2, d2, dd2);
    }
    (t1, d1, dd1)
}

/// Stage `j ≥ 2` of a step: `Y_j = (1 − μ − ν) y + μ Y_(j−1) + ν Y_(j−2) + μ̃ h F_(j−1) + γ̃ h F_0`,
/// `F_(j−1)` evaluated at `t + c h`.
#[derive(Clone, Copy, Debug)]
struct Stage {
    mu: f64,
    nu: f64,
    mu_tilde: f64,
    gamma_tilde: f64,
    /// The time (in units of the step) at which `F_(j−1)` is evaluated: `c_(j−1)`.
    c_prev: f64,
}

/// The coefficients of a step of `s` stages.
#[derive(Clone, Debug)]
struct Coefficients {
    w0: f64,
    w1: f64,
    /// `b_s`, for the stability polynomial.
    b_s: f64,
    /// `μ̃_1`.
    mu1: f64,
    /// Stages 2 to `s`.
    stages: Vec<Stage>,
}

impl Coefficients {
    /// The coefficients for `s ≥ 2` stages (callers ensure it: [`stages_for`] is at least 2).
    fn new(s: usize) -> Self {
        debug_assert!(s >= 2, "an RKC step has 2 stages or more");
        let w0 = 1.0 + DAMPING / (s * s) as f64;
        let (_, ds, dds) = chebyshev(s, w0);
        let w1 = ds / dds;
        // b_0 = b_1 = b_2 = T_2''/T_2'² = 1 / (4 w0²).
        let b2 = 1.0 / (4.0 * w0 * w0);
        let (mut b_prev2, mut b_prev) = (b2, b2);
        let mu1 = b2 * w1;
        let (mut c_prev2, mut c_prev) = (0.0, mu1);
        let (mut t_prev, mut d_prev, mut dd_prev) = (w0, 1.0, 0.0); // T_1
        let (mut t_prev2, mut d_prev2, mut dd_prev2) = (1.0, 0.0, 0.0); // T_0
        let mut stages = Vec::with_capacity(s - 1);
        let mut b_s = b2;
        for _ in 2..=s {
            let t = 2.0 * w0 * t_prev - t_prev2;
            let d = 2.0 * w0 * d_prev - d_prev2 + 2.0 * t_prev;
            let dd = 2.0 * w0 * dd_prev - dd_prev2 + 4.0 * d_prev;
            let b = dd / (d * d);
            let a_prev = 1.0 - b_prev * t_prev;
            let mu = 2.0 * w0 * b / b_prev;
            let nu = -b / b_prev2;
            let mu_tilde = 2.0 * w1 * b / b_prev;
            let gamma_tilde = -a_prev * mu_tilde;
            stages.push(Stage {
                mu,
                nu,
                mu_tilde,
                gamma_tilde,
                c_prev,
            });
            let c = mu * c_prev + nu * c_prev2 + mu_tilde + gamma_tilde;
            (c_prev2, c_prev) = (c_prev, c);
            (b_prev2, b_prev) = (b_prev, b);
            (t_prev2, d_prev2, dd_prev2) = (t_prev, d_prev, dd_prev);
            (t_prev, d_prev, dd_prev) = (t, d, dd);
            b_s = b;
        }
        Self {
            w0,
            w1,
            b_s,
            mu1,
            stages,
        }
    }
}

/// A step of `s` stages from `(t, y)`, `f0 = f(t, y)`, of size `h`: `(y1, y1 − y)`.
///
/// The recurrence runs on the increments `D_j = Y_j − y`, which follow it too (the weights
/// of `y` add up to one): the increment, and so the error estimate, then carries no
/// round-off of a difference of two states (in f32 about a tight tolerance's size).
fn step<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    c: &Coefficients,
    t: f64,
    h: f64,
    y: &Tensor,
    f0: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let mut prev2: Option<Tensor> = None;
    let mut prev = f0.affine(h * c.mu1, 0.0)?;
    for st in &c.stages {
        let f = ev.eval(t + st.c_prev * h, &(y + &prev)?)?;
        let next = lincomb(
            None,
            [
                (st.mu, &prev),
                (h * st.mu_tilde, &f),
                (h * st.gamma_tilde, f0),
            ]
            .into_iter()
            .chain(prev2.as_ref().map(|d| (st.nu, d))),
        )?;
        prev2 = Some(prev);
        prev = next;
    }
    Ok(((y + &prev)?, prev))
}

/// The cubic Hermite interpolant at `tn` of a step `t → t1` from `y` by `dy` to `y1`.
fn hermite(
    t: f64,
    t1: f64,
    y: &Tensor,
    f0: &Tensor,
    (y1, dy): (&Tensor, &Tensor),
    f1: &Tensor,
    tn: f64,
) -> Result<Tensor> {
    if tn == t1 {
        return Ok(y1.clone());
    }
    if tn == t {
        return Ok(y.clone());
    }
    let h = t1 - t;
    let u = (tn - t) / h;
    let (u2, u3) = (u * u, u * u * u);
    lincomb(
        Some(y),
        [
            (-2.0 * u3 + 3.0 * u2, dy),
            (h * (u3 - 2.0 * u2 + u), f0),
            (h * (u3 - u2), f1),
        ],
    )
}

/// The spectral radius of `∂f/∂y`: given, or estimated by the power method and kept with the
/// direction it converged to.
struct SpectralRadius {
    given: Option<f64>,
    value: f64,
    /// The last eigenvector estimate (a difference of states), the next estimate's start.
    direction: Option<Tensor>,
    /// Accepted steps since the last estimate.
    age: usize,
    /// Whether the value was estimated at the current step's start.
    fresh: bool,
}

impl SpectralRadius {
    fn new(opts: &SolveOptions) -> Self {
        Self {
            given: opts.spectral_radius,
            value: opts.spectral_radius.unwrap_or(0.0),
            direction: None,
            age: 0,
            fresh: false,
        }
    }

    /// Estimates the radius at `(t, y)` (`f0 = f(t, y)`) unless it is given.
    fn estimate<F: VectorField + ?Sized>(
        &mut self,
        ev: &Evaluator<'_, F>,
        t: f64,
        y: &Tensor,
        f0: &Tensor,
    ) -> Result<()> {
        if self.given.is_some() {
            return Ok(());
        }
        // Nothing of the estimate belongs in a graph that backprop walks.
        let (y, f0) = (&y.detach(), &f0.detach());
        let sqrt_u = dtype_epsilon(y.dtype()).sqrt();
        if self.direction.is_none() {
            // A first direction with a part along every eigenvector (neither `y` nor
            // `f(t, y)`, which may lie along one, as a smooth initial profile of diffusion).
            self.direction = Some(spread(y)?);
        }
        let v = self.direction.as_ref().expect("set above");
        let norms = ev.read(&Tensor::stack(&[sq_norm(y)?, sq_norm(v)?], 0)?)?;
        let (y_norm, v_norm) = (norms[0].sqrt(), norms[1].sqrt());
        // The perturbation's size, as RKC's: relative to the state's.
        let dy = if y_norm > 0.0 {
            y_norm * sqrt_u
        } else {
            sqrt_u
        };
        if !(v_norm.is_finite() && y_norm.is_finite()) {
            return Err(SolverError::NonFinite { t }.into());
        }
        let mut dir = if v_norm > 0.0 {
            v.affine(dy / v_norm, 0.0)?
        } else {
            y.ones_like()?
                .affine(dy / (y.elem_count() as f64).sqrt(), 0.0)?
        };
        let mut sigma = 0.0f64;
        let mut largest = 0.0f64;
        for iter in 1..=POWER_ITERATIONS {
            let v = (y + &dir)?;
            let df = (ev.eval(t, &v)? - f0)?;
            let df_norm = ev.read(&sq_norm(&df)?.reshape(1)?)?[0].sqrt();
            if !df_norm.is_finite() {
                return Err(SolverError::NonFinite { t }.into());
            }
            let last = sigma;
            sigma = df_norm / dy;
            largest = largest.max(sigma);
            if iter >= 2 && (sigma - last).abs() <= sigma.max(f64::MIN_POSITIVE) * 0.01 {
                break;
            }
            if df_norm > 0.0 {
                dir = df.affine(dy / df_norm, 0.0)?;
            }
            if iter == POWER_ITERATIONS {
                // Not converged (eigenvalues of equal size, or round-off in a low precision):
                // the largest estimate seen. The error control rejects a step that turns out
                // unstable, and a rejection estimates again.
                sigma = largest;
            }
        }
        self.value = 1.2 * sigma;
        self.direction = Some(dir);
        self.age = 0;
        self.fresh = true;
        Ok(())
    }
}

/// A deterministic vector of the shape, dtype and device of `y`, entries spread over
/// `[−0.5, 0.5)` without pattern (an additive recurrence by the golden ratio), of norm 1.
fn spread(y: &Tensor) -> Result<Tensor> {
    let n = y.elem_count();
    let g = 0.5 * (5f64.sqrt() - 1.0);
    let v: Vec<f64> = (0..n)
        .map(|i| (0.5 + g * (i + 1) as f64).fract() - 0.5)
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    let v: Vec<f64> = v.into_iter().map(|x| x / norm).collect();
    Tensor::from_vec(v, y.shape(), y.device())?.to_dtype(y.dtype())
}

/// `‖x‖²` as an f32 or f64 device scalar (half precisions summed in f32).
fn sq_norm(x: &Tensor) -> Result<Tensor> {
    for_norm(x)?.sqr()?.sum_all()
}

/// The most stages a step may take at relative tolerance `rtol` in `dtype`: `√(rtol / (10 u))`,
/// at least 2 (RKC's bound on the growth of round-off).
pub fn max_stages(rtol: f64, dtype: DType) -> usize {
    ((rtol / (10.0 * dtype_epsilon(dtype))).sqrt().round() as usize).max(2)
}

/// The first step of an adaptive solve: `opts.first_step`, or RKC's rule from the spectral
/// radius `rho` (one evaluation, one read).
#[allow(clippy::too_many_arguments)]
fn initial_step<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    t: f64,
    y: &Tensor,
    f0: &Tensor,
    dir: f64,
    span: f64,
    rho: f64,
    opts: &SolveOptions,
    atol: &PreparedAtol,
) -> Result<f64> {
    if opts.first_step.is_some() {
        return first_step(ev, t, y, f0, dir, opts, atol, 3.0);
    }
    let mut h = if rho * span > 1.0 { 1.0 / rho } else { span };
    let trial = lincomb(Some(y), [(dir * h, f0)])?;
    let df = (ev.eval(t + dir * h, &trial)? - f0)?;
    let scale = error_scale(y, None, opts.rtol, atol)?;
    let est = h * ev.read(&scaled_norm_sq(&df, &scale, opts.norm)?)?[0].sqrt();
    if !est.is_finite() {
        return Err(SolverError::NonFinite { t }.into());
    }
    if 0.1 * h < span * est.sqrt() {
        h = 0.1 * h / est.sqrt();
    } else {
        h = span;
    }
    Ok(h.clamp(opts.min_step, opts.max_step))
}

/// An `rkc` solve, adaptive (`atol` given) or on fixed steps.
#[allow(clippy::too_many_arguments)]
pub(crate) fn solve<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    y0: &Tensor,
    ts: &[f64],
    dir: f64,
    opts: &SolveOptions,
    atol: Option<&PreparedAtol>,
    out: &mut Vec<Tensor>,
    watch: Option<&mut EventWatch<'_>>,
    trace: Option<&mut dyn Recorder>,
) -> Result<(SolverStats, f64)> {
    match atol {
        Some(atol) => adaptive(ev, y0, ts, dir, opts, atol, out, watch, trace),
        None => fixed(ev, y0, ts, dir, opts, out, watch, trace),
    }
}

/// The outputs in `(t, t1]` of an accepted step.
#[allow(clippy::too_many_arguments)]
fn emit(
    t: f64,
    t1: f64,
    y: &Tensor,
    f0: &Tensor,
    end: (&Tensor, &Tensor),
    f1: &Tensor,
    ts: &[f64],
    dir: f64,
    next: &mut usize,
    out: &mut Vec<Tensor>,
) -> Result<()> {
    while *next < ts.len() && (ts[*next] - t1) * dir <= 0.0 {
        out.push(hermite(t, t1, y, f0, end, f1, ts[*next])?);
        *next += 1;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn fixed<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    y0: &Tensor,
    ts: &[f64],
    dir: f64,
    opts: &SolveOptions,
    out: &mut Vec<Tensor>,
    mut watch: Option<&mut EventWatch<'_>>,
    mut trace: Option<&mut dyn Recorder>,
) -> Result<(SolverStats, f64)> {
    let (t0, t_end) = (ts[0], ts[ts.len() - 1]);
    let grid = fixed_grid(opts, t0, t_end, dir)?;
    let n = grid.len() - 1;
    let stops = Stops::new(opts, ts, dir);
    let mut rho = SpectralRadius::new(opts);
    let mut t = t0;
    let mut y = y0.clone();
    let mut f0 = ev.eval(stops.start(t), &y)?;
    let mut next = 1;
    let mut most_stages = 0;
    for (i, &t1) in grid.iter().enumerate().skip(1) {
        if rho.given.is_none() && (i == 1 || rho.age >= REESTIMATE_EVERY) {
            rho.estimate(ev, stops.start(t), &y, &f0)?;
        }
        let h = t1 - t;
        let s = stages_for(h.abs() * rho.value);
        if s > MAX_STAGES {
            return Err(SolverError::InvalidOptions(format!(
                "rkc: a step of {} needs {s} stages for the spectral radius {:e}, more than {MAX_STAGES}: take more steps, or an implicit method for a problem this stiff",
                h.abs(),
                rho.value
            ))
            .into());
        }
        let (y1, dy) = step(ev, &Coefficients::new(s), stops.start(t), h, &y, &f0)?;
        most_stages = most_stages.max(s);
        let f1 = ev.eval(stops.end(t1), &y1)?;
        rho.age += 1;
        record(trace.as_deref_mut(), t, t1, &y, &f0, (&y1, &dy), &f1)?;
        if let Some(w) = watch.as_deref_mut() {
            let g1 = ev.read(&w.values(t1, &y1)?)?;
            let mut dense = |tn| hermite(t, t1, &y, &f0, (&y1, &dy), &f1, tn);
            if w.accepted(t, t1, &y, &g1, &mut dense, &|x| ev.read(x))? {
                let stats = SolverStats {
                    accepted_steps: i,
                    most_stages,
                    ..SolverStats::default()
                };
                return Ok((stats, h.abs()));
            }
        }
        emit(t, t1, &y, &f0, (&y1, &dy), &f1, ts, dir, &mut next, out)?;
        f0 = if stops.is_jump(t1) && i < n {
            ev.eval(stops.start(t1), &y1)?
        } else {
            f1
        };
        t = t1;
        y = y1;
    }
    let stats = SolverStats {
        accepted_steps: n,
        most_stages,
        ..SolverStats::default()
    };
    Ok((stats, (grid[n] - grid[n - 1]).abs()))
}

#[allow(clippy::too_many_arguments)]
fn adaptive<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    y0: &Tensor,
    ts: &[f64],
    dir: f64,
    opts: &SolveOptions,
    atol: &PreparedAtol,
    out: &mut Vec<Tensor>,
    mut watch: Option<&mut EventWatch<'_>>,
    mut trace: Option<&mut dyn Recorder>,
) -> Result<(SolverStats, f64)> {
    let control = Controller::for_exponent(opts, 3.0);
    let max_s = max_stages(opts.rtol, y0.dtype()).min(MAX_STAGES);
    let t_end = ts[ts.len() - 1];
    let stops = Stops::new(opts, ts, dir);
    let mut rho = SpectralRadius::new(opts);
    let mut next_stop = 0;
    let mut t = ts[0];
    let mut y = y0.clone();
    let mut f0 = ev.eval(stops.start(t), &y)?;
    rho.estimate(ev, stops.start(t), &y, &f0)?;
    let span = (t_end - t).abs();
    let mut h_abs = initial_step(
        ev,
        stops.start(t),
        &y,
        &f0,
        dir,
        span,
        rho.value,
        opts,
        atol,
    )?;
    let mut stats = SolverStats::default();
    let mut prev_ratio = 1.0f64;
    let mut next = 1;
    while next < ts.len() {
        let steps = stats.accepted_steps + stats.rejected_steps;
        if steps >= opts.max_steps {
            return Err(SolverError::MaxStepsExceeded { t, steps }.into());
        }
        if rho.given.is_none() && rho.age >= REESTIMATE_EVERY {
            rho.estimate(ev, stops.start(t), &y, &f0)?;
        }
        let (target, is_stop) = stops.target(next_stop, t_end);
        let mut end = StepEnd::new(t, target, dir, h_abs, opts.min_step);
        let mut s = stages_for((end.t1 - t).abs() * rho.value);
        if s > max_s {
            // Round-off allows no more stages: the step those stages make stable.
            s = max_s;
            h_abs = ((s * s - 1) as f64 / (1.54 * rho.value)).max(opts.min_step);
            end = StepEnd::new(t, target, dir, h_abs, opts.min_step);
        }
        let StepEnd {
            t1,
            clipped,
            at_min_step,
        } = end;
        let h = t1 - t;
        let h_try = h.abs();
        let (y1, dy) = step(ev, &Coefficients::new(s), stops.start(t), h, &y, &f0)?;
        stats.most_stages = stats.most_stages.max(s);
        let f1 = ev.eval(stops.end(t1), &y1)?;
        let err = lincomb(None, [(-0.8, &dy), (0.4 * h, &f0), (0.4 * h, &f1)])?;
        let scale = error_scale(&y, Some(&y1), opts.rtol, atol)?;
        let ratio_sq = scaled_norm_sq(&err, &scale, opts.norm)?;
        let (ratios, g1) = read_ratios(ev, &[ratio_sq], watch.as_deref(), t1, &y1)?;
        let ratio = ratios[0];
        if !accepts(ratio) {
            stats.rejected_steps += 1;
            h_abs = control
                .retry(t, dir, h_try, ratio, at_min_step, opts.min_step)?
                .min(opts.max_step);
            // An unstable step is one reason to be rejected: estimate again, unless the
            // estimate is this step's own.
            if !rho.fresh {
                rho.estimate(ev, stops.start(t), &y, &f0)?;
            }
            continue;
        }
        stats.accepted_steps += 1;
        rho.age += 1;
        rho.fresh = false;
        if clipped && is_stop {
            next_stop += 1;
        }
        record(trace.as_deref_mut(), t, t1, &y, &f0, (&y1, &dy), &f1)?;
        if let Some(w) = watch.as_deref_mut() {
            let mut dense = |tn| hermite(t, t1, &y, &f0, (&y1, &dy), &f1, tn);
            if w.accepted(t, t1, &y, &g1, &mut dense, &|x| ev.read(x))? {
                return Ok((stats, h_try));
            }
        }
        emit(t, t1, &y, &f0, (&y1, &dy), &f1, ts, dir, &mut next, out)?;
        h_abs = (h_try * control.grow(ratio, prev_ratio)).min(opts.max_step);
        prev_ratio = ratio.max(1e-4);
        f0 = if stops.is_jump(t1) && next < ts.len() {
            ev.eval(stops.start(t1), &y1)?
        } else {
            f1
        };
        t = t1;
        y = y1;
    }
    Ok((stats, h_abs))
}

//! Delay differential equations with constant delays,
//! `dy/dt = f(t, y(t), y(t − τ_1), …, y(t − τ_k))` for `t > t0`, `y(t) = φ(t)` for `t < t0`
//! and `y(t0) = y0`: the neural DDEs of Zhu, Guo & Lin (ICLR 2021), whose flows can cross
//! where an ODE's cannot, and the classic delay models (Mackey–Glass, Hutchinson).
//!
//! [`ddeint`] solves them by the method of steps on the Runge–Kutta solvers of
//! [`crate::odeint`]: every step is at most as long as the shortest delay, so that each lagged
//! state `y(t − τ)` a stage asks for lies in the history or in a step already accepted, where
//! the method's dense output gives it (the [`DenseSolution`] the solve returns). The history's
//! kink at `t0` (where `φ'(t0)` and `f` differ) comes back at every `t0 + τ_i`, and smoothed one
//! order more at each further sum of delays: an adaptive solve steps to each such time up to
//! the method's order (the first ones as jumps, evaluated on their two sides), so that no
//! step straddles a kink that would cost it its order. torchdiffeq and torchdyn have no delay
//! equations; diffrax has none in its releases.
//!
//! Gradients: the lagged states are combinations of earlier stages in Candle's graph, so a
//! loss backpropagates through the whole solve, delays included (the "RK-Net" mode: memory
//! grows with the steps). There is no adjoint for delay equations here.

use crate::dense::DenseSolution;
use crate::error::SolverError;
use crate::method::Method;
use crate::options::{SolveOptions, StepSize};
use crate::rk::{lincomb, Step};
use crate::solve::{check_times, fixed_grid, interpolate, solve, Solution};
use crate::tableau::ButcherTableau;
use crate::trace::Recorder;
use crate::VectorField;
use candle_core::{Result, Tensor};
use std::cell::RefCell;

/// The right-hand side of a delay equation: `f(t, y(t), [y(t − τ_1), …, y(t − τ_k)])`.
///
/// Any closure `Fn(f64, &Tensor, &[Tensor]) -> Result<Tensor>` is one.
///
/// # Shapes
/// `lagged` holds one tensor per delay, in the order of the delays given to [`ddeint`], each
/// of `y`'s shape, dtype and device; `eval` returns a tensor of `y`'s shape, dtype and device.
///
/// # Errors
/// Whatever the implementation returns is passed through by the solver.
pub trait DelayField {
    /// Evaluates `f(t, y, lagged)`.
    fn eval(&self, t: f64, y: &Tensor, lagged: &[Tensor]) -> Result<Tensor>;
}

impl<F> DelayField for F
where
    F: Fn(f64, &Tensor, &[Tensor]) -> Result<Tensor>,
{
    fn eval(&self, t: f64, y: &Tensor, lagged: &[Tensor]) -> Result<Tensor> {
        self(t, y, lagged)
    }
}

/// The state before the first time, `φ(t)` for `t < t0`.
#[derive(Clone, Copy)]
pub enum History<'a> {
    /// `φ(t) = y0`: the system at rest before it starts.
    Constant,
    /// `φ(t)` given by a function, which returns a tensor of `y0`'s shape, dtype and device.
    /// It need not end at `y0`: a jump at `t0` is allowed (it comes back as a jump of the
    /// field at each `t0 + τ_i`, which the solve steps to).
    Function(&'a dyn Fn(f64) -> Result<Tensor>),
}

impl std::fmt::Debug for History<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            History::Constant => f.write_str("History::Constant"),
            History::Function(_) => f.write_str("History::Function(..)"),
        }
    }
}

/// The most kinks [`ddeint`] steps to; past it, later (smoother) ones are left out.
pub const MAX_BREAKPOINTS: usize = 10_000;

/// The times after `t0` where the solution of a delay equation is less smooth, up to `levels`
/// sums of delays: `t0 + τ_i` (`first`, where the field itself jumps when the history does
/// not end at `y0`), then `t0 + τ_i + τ_j` and so on (`later`), each strictly inside
/// `(t0, t_end)`, sorted, the ones closer than `1e-12` of the span merged, at most
/// [`MAX_BREAKPOINTS`] in all. At level `m` the `m + 1`-th derivative of the solution jumps:
/// a method of order `p` needs those of levels `1..=p`.
///
/// # Example
/// ```
/// use node_solvers::delay::breakpoints;
/// let (first, later) = breakpoints(0.0, 3.5, &[1.0, 1.5], 3);
/// assert_eq!(first, [1.0, 1.5]);
/// assert_eq!(later, [2.0, 2.5, 3.0]);
/// ```
pub fn breakpoints(t0: f64, t_end: f64, delays: &[f64], levels: usize) -> (Vec<f64>, Vec<f64>) {
    let span = t_end - t0;
    let merge = 1e-12 * span.abs().max(1.0);
    let inside = |t: f64| t > t0 + merge && t < t_end - merge;
    let dedup = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.dedup_by(|b, a| *b - *a <= merge);
        v
    };
    let first = dedup(
        delays
            .iter()
            .map(|d| t0 + d)
            .filter(|&t| inside(t))
            .collect(),
    );
    let mut later: Vec<f64> = vec![];
    let mut level = first.clone();
    for _ in 1..levels {
        if first.len() + later.len() >= MAX_BREAKPOINTS {
            break;
        }
        level = dedup(
            level
                .iter()
                .flat_map(|b| delays.iter().map(move |d| b + d))
                .filter(|&t| inside(t))
                .collect(),
        );
        if level.is_empty() {
            break;
        }
        later.extend(&level);
    }
    let mut later = dedup(later);
    later.retain(|t| first.iter().all(|f| (t - f).abs() > merge));
    later.truncate(MAX_BREAKPOINTS.saturating_sub(first.len()));
    (first, later)
}

/// Solves the delay equation `dy/dt = f(t, y(t), y(t − τ_1), …)` from `y(ts[0]) = y0`, with
/// `y(t) = history(t)` before `ts[0]`, and returns the states at `ts` and the
/// [`DenseSolution`] that the lagged states were read from (it evaluates the solution
/// anywhere in `[ts[0], ts[last]]`).
///
/// `opts` is the ODE solve's: any method with a dense output (those with a Butcher tableau,
/// explicit or implicit, and [`Method::Rkc`]; not the Adams methods), adaptive or fixed
/// steps. Steps are limited to the shortest delay (divided by the method's largest stage
/// time `c`, where it is above 1: kvaerno5's 1.23): an adaptive solve's `max_step` is
/// lowered to it, and a longer fixed step is refused. Adaptive solves add the kinks of
/// [`breakpoints`] up to the method's order to `jump_ts` (the first level) and `step_ts`
/// (the others). Fixed steps do not step to them: for the method's full order, take steps
/// that divide the delays (or a [`StepSize::Grid`] through the kinks).
///
/// It keeps every accepted step's stages, as [`crate::odeint_dense`] does: the lagged states
/// need them. Time runs forwards only.
///
/// # Shapes
/// `y0`: any shape, a float dtype; `history` and `f` return that shape. Result: as
/// [`crate::odeint`].
///
/// # Errors
/// Those of [`crate::odeint`]; [`SolverError::InvalidOptions`] for no delays, a delay that is
/// not finite and positive, a method without dense output, a fixed step or a `min_step`
/// longer than the shortest delay; [`SolverError::InvalidTimes`] for decreasing `ts`;
/// [`SolverError::InvalidHistory`] for a history value of another shape, dtype or device.
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::delay::{ddeint, History};
/// use node_solvers::SolveOptions;
/// # fn main() -> candle_core::Result<()> {
/// // y'(t) = −y(t − 1), y = 1 before 0: on [0, 1] y = 1 − t, on [1, 2] 1 − t + (t − 1)²/2.
/// let f = |_t: f64, _y: &Tensor, lagged: &[Tensor]| lagged[0].neg();
/// let y0 = Tensor::new(&[1.0f64], &Device::Cpu)?;
/// let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
/// let (sol, dense) = ddeint(&f, &[1.0], History::Constant, &y0, &[0.0, 2.0], &opts)?;
/// let y = sol.last()?.to_vec1::<f64>()?[0];
/// assert!((y - (1.0 - 2.0 + 0.5)).abs() < 1e-9);
/// let y = dense.evaluate(0.5)?.to_vec1::<f64>()?[0];
/// assert!((y - 0.5).abs() < 1e-9);
/// # Ok(()) }
/// ```
pub fn ddeint<F: DelayField + ?Sized>(
    f: &F,
    delays: &[f64],
    history: History<'_>,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
) -> Result<(Solution, DenseSolution)> {
    opts.validate()?;
    if delays.is_empty() {
        return Err(SolverError::InvalidOptions(
            "a delay equation needs at least one delay (without, solve it with odeint)".into(),
        )
        .into());
    }
    if let Some(d) = delays.iter().find(|d| !(d.is_finite() && **d > 0.0)) {
        return Err(
            SolverError::InvalidOptions(format!("delays must be finite and > 0, got {d}")).into(),
        );
    }
    let tab = match opts.method {
        Method::Rkc => &crate::rkc::DENSE,
        m => m.runge_kutta("a delay equation (its lagged states come from dense output)")?,
    };
    let dir = check_times(ts)?;
    if dir < 0.0 {
        return Err(SolverError::InvalidTimes(
            "a delay equation is solved forwards in time: give increasing times".into(),
        )
        .into());
    }
    let t0 = ts[0];
    let t_end = ts[ts.len() - 1];
    let shortest = delays.iter().copied().fold(f64::INFINITY, f64::min);
    // A stage at `t + c h` reads `y(t + c h − τ)`: inside the accepted steps when `c h ≤ τ`
    // (kvaerno5 has a stage at `c = 1.23`).
    let reach = tab.c.iter().copied().fold(1.0, f64::max);
    let longest_step = shortest / reach;
    let mut opts = opts.clone();
    if matches!(opts.step, StepSize::Adaptive) {
        if opts.min_step > longest_step {
            return Err(SolverError::InvalidOptions(format!(
                "min_step {} is longer than the longest step the shortest delay {shortest} allows                  ({longest_step})",
                opts.min_step
            ))
            .into());
        }
        opts.max_step = opts.max_step.min(longest_step);
        if let Some(h) = opts.first_step {
            opts.first_step = Some(h.min(longest_step));
        }
        let levels = match opts.method {
            Method::Rkc => 2,
            _ => tab.order,
        };
        let (first, later) = breakpoints(t0, t_end, delays, levels);
        opts.jump_ts = opts.jump_ts.iter().copied().chain(first).collect();
        opts.step_ts = opts.step_ts.iter().copied().chain(later).collect();
    } else if ts.len() > 1 {
        let grid = fixed_grid(&opts, t0, t_end, dir)?;
        let longest = grid.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        // Rounding of the grid's times must not refuse a step of exactly the delay.
        if longest > longest_step * (1.0 + 1e-12) {
            return Err(SolverError::InvalidOptions(format!(
                "fixed steps of up to {longest} are longer than the shortest delay {shortest} \
                 allows ({longest_step}): a step's stages must not reach past a delay"
            ))
            .into());
        }
    }
    let past = Past {
        history,
        y0,
        t0,
        dense: RefCell::new(DenseSolution::new(tab, t0, y0)),
    };
    let field = Lagged {
        f,
        delays,
        past: &past,
    };
    let mut keep = Keep::new(&field, tab);
    let sol = solve(&field, y0, ts, &opts, Some(&mut keep))?;
    Ok((sol, past.dense.into_inner()))
}

/// The solution before the current step: the history, then the accepted steps.
struct Past<'a> {
    history: History<'a>,
    y0: &'a Tensor,
    t0: f64,
    dense: RefCell<DenseSolution>,
}

impl Past<'_> {
    /// `y(t − d)` for an evaluation at `t`.
    fn lagged(&self, t: f64, d: f64) -> Result<Tensor> {
        // The side is decided by `t` against `t0 + d`, the very float the solve steps to as a
        // jump, not by the rounded `t − d` against `t0`: an evaluation just before the jump
        // (`t0 + d` less an ulp) can round `t − d` onto `t0` (where `|t0| > |t0 + d|`), and
        // would read the solution's side.
        let t_lag = t - d;
        if t >= self.t0 + d {
            // A stage at the end of a step of exactly the delay may ask for a hair past the
            // last accepted time: the last step's interpolant there.
            return self.dense.borrow().evaluate_extended(t_lag);
        }
        let t = t_lag.min(self.t0);
        match self.history {
            History::Constant => Ok(self.y0.clone()),
            History::Function(phi) => {
                let v = phi(t)?;
                let y0 = self.y0;
                if v.shape() != y0.shape()
                    || v.dtype() != y0.dtype()
                    || !v.device().same_device(y0.device())
                {
                    return Err(SolverError::InvalidHistory(format!(
                        "at t = {t} it has shape {:?}, {:?} on {:?}; the state {:?}, {:?} on {:?}",
                        v.dims(),
                        v.dtype(),
                        v.device().location(),
                        y0.dims(),
                        y0.dtype(),
                        y0.device().location()
                    ))
                    .into());
                }
                Ok(v)
            }
        }
    }
}

/// The delay equation as the vector field of the solve: the lagged states from the past.
struct Lagged<'a, F: ?Sized> {
    f: &'a F,
    delays: &'a [f64],
    past: &'a Past<'a>,
}

impl<F: DelayField + ?Sized> VectorField for Lagged<'_, F> {
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        let lagged = self
            .delays
            .iter()
            .map(|&d| self.past.lagged(t, d))
            .collect::<Result<Vec<_>>>()?;
        self.f.eval(t, y, &lagged)
    }
}

/// Where in a step its dense output's defect is measured (fractions of the step).
const DEFECT_AT: [f64; 2] = [1.0 / 3.0, 2.0 / 3.0];

/// Records the accepted steps into the past that the field reads, and measures each adaptive
/// step's dense output by its defect.
struct Keep<'a, F: ?Sized> {
    field: &'a Lagged<'a, F>,
    tab: &'static ButcherTableau,
    /// The dense output's derivative weights at [`DEFECT_AT`]: `u'(t + θh) = Σ_i w_i k_i
    /// (+ w_s f1)`.
    weights: Vec<Vec<f64>>,
}

impl<'a, F: ?Sized> Keep<'a, F> {
    fn new(field: &'a Lagged<'a, F>, tab: &'static ButcherTableau) -> Self {
        let s = tab.stages();
        let derivative = |theta: f64| {
            // The weights are polynomials in θ: a fourth-order central difference is exact
            // to ~1e-11, far below any tolerance.
            let eps = 1e-3;
            let mut w = vec![0.0; s + 1];
            let mut dw = vec![0.0; s + 1];
            for (shift, c) in [(-2.0, 1.0), (-1.0, -8.0), (1.0, 8.0), (2.0, -1.0)] {
                tab.dense_weights(theta + shift * eps, &mut w);
                for (d, wi) in dw.iter_mut().zip(&w) {
                    *d += c * wi / (12.0 * eps);
                }
            }
            dw
        };
        let weights = DEFECT_AT.iter().map(|&th| derivative(th)).collect();
        Self {
            field,
            tab,
            weights,
        }
    }
}

impl<F: DelayField + ?Sized> Recorder for Keep<'_, F> {
    fn needs_f1(&self) -> bool {
        self.field.past.dense.borrow().needs_f1()
    }

    /// The later steps read this step's dense output `u` wherever a delay lands in it, and
    /// its error there is not in the step's embedded estimate (the lagged states of a step
    /// that keeps to kinks are smooth, and a high-order method's estimate may be nil while
    /// its lower-order dense output is far off). So the defect `u'(t) − f(t, u(t), …)` is
    /// measured at two times inside the step (Enright's defect control, as DDVERK's), `h`
    /// times it estimating the dense output's error: two evaluations a step.
    fn defects(
        &mut self,
        t: f64,
        t1: f64,
        y: &Tensor,
        step: &Step,
        f1: Option<&Tensor>,
    ) -> Result<Vec<Tensor>> {
        let tab = self.tab;
        let s = tab.stages();
        let h = t1 - t;
        let f1 = match f1 {
            Some(f1) => Some(f1.clone()),
            None if self.weights.iter().any(|w| w[s] != 0.0) => {
                Some(self.field.eval(t1, &step.y1)?)
            }
            None => None,
        };
        DEFECT_AT
            .iter()
            .zip(&self.weights)
            .map(|(&theta, dw)| {
                let tn = t + theta * h;
                let u = interpolate(tab, t, t1, y, &step.k, &step.y1, f1.as_ref(), tn)?;
                let terms = dw[..s].iter().zip(&step.k).map(|(d, k)| (*d, k));
                let du = match &f1 {
                    Some(f1) if dw[s] != 0.0 => lincomb(None, terms.chain([(dw[s], f1)]))?,
                    _ => lincomb(None, terms)?,
                };
                (du - self.field.eval(tn, &u)?)?.affine(h.abs(), 0.0)
            })
            .collect()
    }

    fn accepted(&mut self, t: f64, t1: f64, y: &Tensor, step: &Step, f1: Option<&Tensor>) {
        self.field
            .past
            .dense
            .borrow_mut()
            .accepted(t, t1, y, step, f1);
    }
}

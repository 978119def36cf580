//! Hypersolvers (Poli, Massaroli, Yamashita, Asama & Park, "Hypersolvers: Toward Fast
//! Continuous-Depth Models", NeurIPS 2020; torchdyn's `HyperEuler`): a fixed-step explicit
//! Runge–Kutta method of order `p` whose every step is corrected by a learned term,
//!
//! `y_(k+1) = y_k + h ψ(t_k, y_k, h) + h^(p+1) g(t_k, h, y_k, f(t_k, y_k))`,
//!
//! where `h ψ` is the base method's increment and `g` (a [`Correction`], usually a small
//! network) is trained to predict the base method's local error divided by `h^(p+1)`: the
//! *residual* `R_k = (y*(t_(k+1)) − y*(t_k) − h ψ(t_k, y*(t_k), h)) / h^(p+1)` along accurate
//! reference solutions `y*` ([`hyper_residuals`]). With `g = R` the steps are exact; a `g`
//! within `δ` of it leaves a local error of `h^(p+1) δ`, so a trained Euler can reach the
//! accuracy of a higher-order method at the cost of one field evaluation per step (plus the
//! correction's own, usually much cheaper).

use crate::error::SolverError;
use crate::field::VectorField;
use crate::method::Method;
use crate::options::{SolveOptions, StepSize};
use crate::rk::{rk_step, Evaluator};
use crate::solve::{check_state, check_times, first_non_finite, fixed_grid, Solution, SolverStats};
use candle_core::{Result, Tensor};

/// The learned term `g(t, h, y, f(t, y))` of a hypersolver step.
///
/// Any closure `Fn(f64, f64, &Tensor, &Tensor) -> Result<Tensor>` taking `(t, h, y, fy)` is a
/// correction. `fy = f(t, y)` is the base method's first stage, passed because it costs
/// nothing more and most hypernetworks take it as an input (torchdyn's `HyperNetwork` takes
/// `[y, f(y)]`).
///
/// # Shapes
/// `y` and `fy` have the state's shape; the output must have it too, with its dtype and device.
pub trait Correction {
    /// Evaluates `g(t, h, y, fy)`.
    fn eval(&self, t: f64, h: f64, y: &Tensor, fy: &Tensor) -> Result<Tensor>;
}

impl<G> Correction for G
where
    G: Fn(f64, f64, &Tensor, &Tensor) -> Result<Tensor>,
{
    fn eval(&self, t: f64, h: f64, y: &Tensor, fy: &Tensor) -> Result<Tensor> {
        self(t, h, y, fy)
    }
}

/// The explicit Runge–Kutta tableau of a hypersolver's base method, or the error that says
/// why `opts` cannot be hypersolved.
fn base_method(opts: &SolveOptions, what: &str) -> Result<&'static crate::ButcherTableau> {
    let tab = opts.method.runge_kutta(what)?;
    if tab.is_implicit() {
        return Err(SolverError::InvalidOptions(format!(
            "{what} needs an explicit Runge–Kutta method, and `{}` is implicit",
            opts.method
        ))
        .into());
    }
    Ok(tab)
}

/// Solves `dy/dt = f(t, y)` with the hypersolver of base method `opts.method` and correction
/// `g` (see the [module](self)), returning the states at `ts`.
///
/// The steps are those of a fixed-step [`crate::odeint`] with the same options
/// ([`StepSize::Count`], [`StepSize::Fixed`] or [`StepSize::Grid`]), and every output time
/// must be a step's end: the correction is trained for the steps' ends, so there is no
/// dense output between them. `stats.nfe` counts the evaluations of `f` (the base method's
/// stages); `g` is evaluated once per step on top. The solve is a differentiable function of
/// `y0` and of whatever `f` and `g` depend on (backprop through the steps), which is how a
/// correction can also be trained end to end on a task's loss.
///
/// # Shapes
/// `y0`: any shape `S`; `ys`: `[ts.len(), ...S]`.
///
/// # Errors
/// [`SolverError::InvalidOptions`] for adaptive steps, an implicit or multistep method, or
/// jumps (`opts.jump_ts`); [`SolverError::InvalidTimes`] for an output time that is not a
/// step's end; a field or correction output of the wrong shape, dtype or device; too many
/// steps; [`SolverError::NonFinite`] at the first output time whose state is not finite
/// (with `opts.check_finite`, one read at the end); the errors of `f` and `g`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{hyper::odeint_hyper, Method, SolveOptions};
///
/// // y' = −y with Euler, corrected by the exact residual of an Euler step on it:
/// // e^(−h) = 1 − h + h² (e^(−h) − 1 + h)/h², so the steps are exact.
/// let f = |_t: f64, y: &Tensor| y.neg();
/// let g = |_t: f64, h: f64, y: &Tensor, _fy: &Tensor| {
///     y.affine(((-h).exp() - 1.0 + h) / (h * h), 0.0)
/// };
/// let y0 = Tensor::new(&[1.0f64], &Device::Cpu)?;
/// let opts = SolveOptions::default().method(Method::Euler).fixed_steps(4);
/// let sol = odeint_hyper(&f, &g, &y0, &[0.0, 1.0], &opts)?;
/// let y1 = sol.last()?.to_vec1::<f64>()?[0];
/// assert!((y1 - (-1.0f64).exp()).abs() < 1e-14);
/// assert_eq!(sol.stats.nfe, 4);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn odeint_hyper<F, G>(
    f: &F,
    g: &G,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
) -> Result<Solution>
where
    F: VectorField + ?Sized,
    G: Correction + ?Sized,
{
    opts.validate()?;
    if matches!(opts.step, StepSize::Adaptive) {
        return Err(SolverError::InvalidOptions(
            "a hypersolver takes fixed steps: set a step count (`fixed_steps`), a step size \
             (`step_size`) or a grid (`step_grid`)"
                .into(),
        )
        .into());
    }
    if !opts.jump_ts.is_empty() {
        return Err(SolverError::InvalidOptions(
            "a hypersolver does not step across jumps (`jump_ts`): its correction is trained \
             on a smooth field"
                .into(),
        )
        .into());
    }
    let tab = base_method(opts, "a hypersolver")?;
    let dir = check_times(ts)?;
    check_state(y0, opts)?;
    if ts.len() == 1 {
        return Solution::start_only(y0, ts);
    }
    let (t0, t_end) = (ts[0], ts[ts.len() - 1]);
    let grid = fixed_grid(opts, t0, t_end, dir)?;
    let outputs = output_steps(&grid, ts, dir)?;
    let ev = Evaluator::new(f);
    let scale = (tab.order + 1) as i32;
    let mut out = Vec::with_capacity(ts.len());
    out.push(y0.clone());
    let mut y = y0.clone();
    let mut next = 1;
    for (i, w) in grid.windows(2).enumerate() {
        let (t, t1) = (w[0], w[1]);
        let h = t1 - t;
        let (f0, y1) = base_step(tab, &ev, t, t1, &y)?;
        let c = correct(g, t, h, &y, &f0)?;
        y = (y1 + c.affine(h.powi(scale), 0.0)?)?;
        while next < ts.len() && outputs[next] == i + 1 {
            out.push(y.clone());
            next += 1;
        }
    }
    let ys = Tensor::stack(&out, 0)?;
    if opts.check_finite {
        if let Some(i) = first_non_finite(&ev, &ys)? {
            return Err(SolverError::NonFinite { t: ts[i] }.into());
        }
    }
    let mut stats = SolverStats {
        accepted_steps: grid.len() - 1,
        ..SolverStats::default()
    };
    ev.count_into(&mut stats);
    Ok(Solution {
        ts: ts.to_vec(),
        ys,
        stats,
        last_step: (grid[grid.len() - 1] - grid[grid.len() - 2]).abs(),
    })
}

/// `f(t, y)` and the base method's (uncorrected) state at `t1` after one step from `(t, y)`.
fn base_step<F: VectorField + ?Sized>(
    tab: &crate::ButcherTableau,
    ev: &Evaluator<'_, F>,
    t: f64,
    t1: f64,
    y: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let f0 = ev.eval(t, y)?;
    let step = rk_step(tab, ev, t, t1, t, t1, y, &f0, false, None)?
        .expect("an explicit step always succeeds");
    Ok((f0, step.y1))
}

/// For each output time, the index of the grid point it is (within rounding: the grid's
/// points are computed as `t0 + i h` and may differ from the caller's by an ulp or two).
fn output_steps(grid: &[f64], ts: &[f64], dir: f64) -> Result<Vec<usize>> {
    let span = (grid[grid.len() - 1] - grid[0]).abs();
    let slack = 1e-12 * span;
    let mut j = 0;
    ts.iter()
        .enumerate()
        .map(|(i, &t)| {
            while j + 1 < grid.len() && (t - grid[j]) * dir > slack {
                j += 1;
            }
            if (grid[j] - t).abs() <= slack {
                Ok(j)
            } else {
                Err(SolverError::InvalidTimes(format!(
                    "ts[{i}] = {t} is not the end of a step: a hypersolver has no dense \
                     output, so every output time must be on the step grid (use \
                     `step_grid` with the output times among its points)"
                ))
                .into())
            }
        })
        .collect()
}

/// `g(t, h, y, fy)`, checked to have the state's shape, dtype and device.
fn correct<G: Correction + ?Sized>(
    g: &G,
    t: f64,
    h: f64,
    y: &Tensor,
    fy: &Tensor,
) -> Result<Tensor> {
    let c = g.eval(t, h, y, fy)?;
    if c.shape() != y.shape() || c.dtype() != y.dtype() || !c.device().same_device(y.device()) {
        return Err(SolverError::OutputMismatch(format!(
            "the hypersolver's correction returned shape {:?}, dtype {:?} on {:?}, but the \
             state has shape {:?}, dtype {:?} on {:?} (at t = {t})",
            c.dims(),
            c.dtype(),
            c.device().location(),
            y.dims(),
            y.dtype(),
            y.device().location()
        ))
        .into());
    }
    Ok(c)
}

/// What a correction is trained on along one reference trajectory: the states it starts
/// from, the field there, and the base method's residual that it should predict.
#[derive(Clone, Debug)]
pub struct Residuals {
    /// The times `t_k` the steps start at (all but the last reference time).
    pub ts: Vec<f64>,
    /// The steps' sizes `h_k = t_(k+1) − t_k`.
    pub hs: Vec<f64>,
    /// The reference states `y*(t_k)`, `[K, ...S]`, detached.
    pub ys: Tensor,
    /// `f(t_k, y*(t_k))`, `[K, ...S]`, detached.
    pub fys: Tensor,
    /// The residuals `R_k`, `[K, ...S]`, detached.
    pub targets: Tensor,
}

impl Residuals {
    /// The number of steps `K`.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// True when there are no steps.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// The residual-fitting loss of `g`: the mean over the steps and the state's components
    /// of `(g(t_k, h_k, y*_k, f_k) − R_k)²`. Differentiable in whatever `g` depends on.
    ///
    /// # Errors
    /// A correction output of the wrong shape, dtype or device; the errors of `g`.
    pub fn loss<G: Correction + ?Sized>(&self, g: &G) -> Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for k in 0..self.len() {
            let (y, fy) = (self.ys.get(k)?, self.fys.get(k)?);
            let c = correct(g, self.ts[k], self.hs[k], &y, &fy)?;
            let e = (c - self.targets.get(k)?)?.sqr()?.mean_all()?;
            sum = Some(match sum {
                Some(s) => (s + e)?,
                None => e,
            });
        }
        let sum = sum.ok_or_else(|| {
            candle_core::Error::from(SolverError::InvalidTimes(
                "no steps to fit: the reference needs at least two times".into(),
            ))
        })?;
        sum.affine(1.0 / self.len() as f64, 0.0)
    }
}

/// The residuals of base method `method` along a reference trajectory `ys` of
/// `dy/dt = f(t, y)` at times `ts` (one step between consecutive times): `R_k = (y*_(k+1) −
/// y*_k − h_k ψ(t_k, y*_k, h_k)) / h_k^(p+1)`, with `p` the method's order, and the inputs of
/// the correction at each step. The reference should be far more accurate than the base
/// method's local error (an adaptive solve at tight tolerances): what is left of its error
/// is learned as if it were the base method's.
///
/// # Shapes
/// `ys`: `[ts.len(), ...S]` (a [`Solution::ys`]); the outputs: `[ts.len() − 1, ...S]`.
///
/// # Errors
/// [`SolverError::InvalidTimes`] for fewer than two or non-monotone times;
/// [`SolverError::InvalidOptions`] for an implicit or multistep method; a `ys` whose first
/// dimension is not `ts.len()`; a field output of the wrong shape, dtype or device; the
/// errors of `f`.
pub fn hyper_residuals<F: VectorField + ?Sized>(
    f: &F,
    method: Method,
    ts: &[f64],
    ys: &Tensor,
) -> Result<Residuals> {
    let tab = base_method(
        &SolveOptions::default().method(method),
        "a hypersolver's residuals",
    )?;
    check_times(ts)?;
    if ts.len() < 2 {
        return Err(SolverError::InvalidTimes(
            "a reference trajectory needs at least two times".into(),
        )
        .into());
    }
    if ys.rank() == 0 || ys.dim(0)? != ts.len() {
        return Err(SolverError::OutputMismatch(format!(
            "the reference states have shape {:?}, but {} times need a first dimension of {}",
            ys.dims(),
            ts.len(),
            ts.len()
        ))
        .into());
    }
    let ys = ys.detach();
    let ev = Evaluator::new(f);
    let scale = (tab.order + 1) as i32;
    let k = ts.len() - 1;
    let (mut starts, mut fys, mut targets) = (vec![], vec![], vec![]);
    for i in 0..k {
        let (t, t1) = (ts[i], ts[i + 1]);
        let h = t1 - t;
        let y = ys.get(i)?;
        let (f0, y1) = base_step(tab, &ev, t, t1, &y)?;
        let f0 = f0.detach();
        targets.push((ys.get(i + 1)? - y1)?.affine(h.powi(-scale), 0.0)?.detach());
        starts.push(y);
        fys.push(f0);
    }
    Ok(Residuals {
        ts: ts[..k].to_vec(),
        hs: ts.windows(2).map(|w| w[1] - w[0]).collect(),
        ys: Tensor::stack(&starts, 0)?,
        fys: Tensor::stack(&fys, 0)?,
        targets: Tensor::stack(&targets, 0)?,
    })
}

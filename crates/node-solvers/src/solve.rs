//! `odeint`: integrate `dy/dt = f(t, y)` from `ts[0]` through every time in `ts`.
//!
//! Adaptive solves accept a step when the error ratio
//! `ε = ‖err / (atol + rtol · max(|y0|, |y1|))‖_rms ≤ 1`, the one value read back to the host
//! per step. Output times inside a step come from the method's dense output and cost no extra
//! evaluations; only the final time clips a step.

use crate::adams;
use crate::error::SolverError;
use crate::event::EventWatch;
use crate::field::VectorField;
use crate::implicit::Newton;
use crate::method::Method;
use crate::options::{Atol, ErrorNorm, SolveOptions, StepController, StepSize};
use crate::rk::{lincomb, rk_step, Evaluator, Step};
use crate::rkc;
use crate::tableau::{ButcherTableau, Interpolant};
use crate::trace::Recorder;
use candle_core::{DType, Result, Tensor};

/// Counts of a solve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SolverStats {
    /// Evaluations of the vector field; of a split field ([`crate::Split`]), of its implicit
    /// part, alone or in the sum.
    pub nfe: usize,
    /// Evaluations of a split field's explicit part, alone or in the sum; 0 for a field that
    /// is not split.
    pub explicit_nfe: usize,
    /// Accepted steps (all steps of a fixed-step solve).
    pub accepted_steps: usize,
    /// Rejected steps.
    pub rejected_steps: usize,
    /// Reads of device values back to the host, each one a wait for the device: one per
    /// adaptive step (its error ratio), two to choose the first step when none is given, one
    /// to check a per-component `atol` or a given first step, and one to check a fixed-step
    /// solve's outputs. An explicit method reads nothing inside a step's stages; an implicit
    /// one reads the state at each step start, each Newton iteration's residual (or each
    /// Rosenbrock stage's right-hand side), and its Jacobian when built by differences.
    pub host_reads: usize,
    /// Jacobians built for an implicit method (its Newton iterations, or a Rosenbrock
    /// method's stages, which need one per step): each one either a call of
    /// [`crate::VectorField::jacobian`] or `n` finite-difference evaluations (counted in
    /// `nfe` too).
    pub jacobians: usize,
    /// LU factorizations of the matrix `I − hγJ` of an implicit method (block by block for
    /// [`crate::Jacobian::Batched`]): one per new Jacobian or new step size.
    pub factorizations: usize,
    /// The most stages one step took, for [`crate::Method::Rkc`], whose stages follow the
    /// spectral radius (RKC's `maxm`: hundreds mean a problem stiffer than rkc is for);
    /// 0 for the other methods. Combined solves keep the largest.
    pub most_stages: usize,
}

impl std::ops::AddAssign for SolverStats {
    fn add_assign(&mut self, o: Self) {
        self.nfe += o.nfe;
        self.explicit_nfe += o.explicit_nfe;
        self.accepted_steps += o.accepted_steps;
        self.rejected_steps += o.rejected_steps;
        self.host_reads += o.host_reads;
        self.jacobians += o.jacobians;
        self.factorizations += o.factorizations;
        self.most_stages = self.most_stages.max(o.most_stages);
    }
}

/// The result of [`odeint`].
#[derive(Clone, Debug)]
pub struct Solution {
    /// The output times, as given.
    pub ts: Vec<f64>,
    /// The states at `ts`, stacked: shape `[ts.len(), ...y0.shape]`.
    pub ys: Tensor,
    /// Evaluation and step counts.
    pub stats: SolverStats,
    /// The step size the controller proposed last (absolute value; for fixed steps, the last
    /// step). Useful as `first_step` of a follow-up solve.
    pub last_step: f64,
}

impl Solution {
    /// The solution of a solve with one output time: `y0` there, no steps.
    pub(crate) fn start_only(y0: &Tensor, ts: &[f64]) -> Result<Self> {
        Ok(Solution {
            ts: ts.to_vec(),
            ys: y0.unsqueeze(0)?,
            stats: SolverStats::default(),
            last_step: 0.0,
        })
    }

    /// The state at the last output time.
    pub fn last(&self) -> Result<Tensor> {
        self.ys.get(self.ts.len() - 1)
    }
}

/// Solves `dy/dt = f(t, y)`, `y(ts[0]) = y0`, returning the states at every time of `ts`.
///
/// `ts` is strictly increasing or strictly decreasing (reverse-time solves). The solve is
/// built from Candle tensor ops, so gradients flow through it with `backward()` (backprop
/// through the solver, the paper's RK-Net); step-size decisions are not differentiated.
///
/// # Shapes
/// - `y0`: any shape `S` (a scalar, or one without components), float dtype (f32, f64, f16,
///   bf16), any device. Error norms of f16 and bf16 states are measured in f32.
/// - `f.eval(t, y)`: same shape, dtype and device as `y`.
/// - result `ys`: `[ts.len(), ...S]`, `ys[0] = y0`.
///
/// # Errors
/// [`SolverError`] (inside `candle_core::Error`, see [`SolverError::find`]) for invalid options
/// or times, a field output of the wrong shape, dtype or device, a non-finite state,
/// step-size underflow and too many steps; errors of `f` are passed through. With an f16 or
/// bf16 state, [`SolverError::InvalidOptions`] for adaptive steps at an `rtol` below the
/// dtype's epsilon (their updates would round away) and for the implicit methods.
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint, SolveOptions};
/// # fn main() -> candle_core::Result<()> {
/// // dy/dt = -y, y(0) = 1  →  y(1) = e^{-1}
/// let y0 = Tensor::new(&[1.0f64], &Device::Cpu)?;
/// let f = |_t: f64, y: &Tensor| y.neg();
/// let sol = odeint(&f, &y0, &[0.0, 1.0], &SolveOptions::default())?;
/// let y1 = sol.last()?.to_vec1::<f64>()?[0];
/// assert!((y1 - (-1.0f64).exp()).abs() < 1e-7);
/// # Ok(()) }
/// ```
pub fn odeint<F: VectorField + ?Sized>(
    f: &F,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
) -> Result<Solution> {
    solve(f, y0, ts, opts, None)
}

/// [`odeint`], recording every accepted step in `trace` when there is one.
pub(crate) fn solve<F: VectorField + ?Sized>(
    f: &F,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
    trace: Option<&mut dyn Recorder>,
) -> Result<Solution> {
    opts.validate()?;
    let dir = check_times(ts)?;
    check_state(y0, opts)?;
    if ts.len() == 1 {
        return Solution::start_only(y0, ts);
    }
    let ev = Evaluator::new(f);
    let mut out = Vec::with_capacity(ts.len());
    out.push(y0.clone());
    let (mut stats, last_step) = run_steps(&ev, y0, ts, dir, opts, &mut out, None, trace)?;
    let ys = Tensor::stack(&out, 0)?;
    if opts.check_finite && !matches!(opts.step, StepSize::Adaptive) {
        // Fixed steps read nothing back per step; NaN/inf propagate, so checking the outputs
        // once catches a blow-up anywhere before them.
        if let Some(i) = first_non_finite(&ev, &ys)? {
            return Err(SolverError::NonFinite { t: ts[i] }.into());
        }
    }
    ev.count_into(&mut stats);
    Ok(Solution {
        ts: ts.to_vec(),
        ys,
        stats,
        last_step,
    })
}

/// Checks that the state can be solved with these options.
pub(crate) fn check_state(y0: &Tensor, opts: &SolveOptions) -> Result<()> {
    if !y0.dtype().is_float() {
        return Err(SolverError::InvalidOptions(format!(
            "the state must have a float dtype, got {:?}",
            y0.dtype()
        ))
        .into());
    }
    if matches!(opts.step, StepSize::Adaptive) {
        check_resolvable(y0.dtype(), opts.rtol)?;
    }
    if let ErrorNorm::RmsPrefix(len) = opts.norm {
        if len == 0 || len > y0.elem_count() {
            return Err(SolverError::InvalidOptions(format!(
                "seminorm length {len} must be in 1..={}",
                y0.elem_count()
            ))
            .into());
        }
    }
    Ok(())
}

/// Half precisions resolve relative changes of about 1e-3 (f16) and 1e-2 (bf16): asked for
/// more, an adaptive solve takes steps whose updates round away and returns a state that has
/// hardly moved (measured: bf16 at rtol 1e-7, dopri5 took y' = −y from 1 to 0.988 by t = 1,
/// not e⁻¹ = 0.368; Rodas5P in f16 at 1e-5 to 0.9995), or shrinks them until `max_steps`.
/// f32 and f64 only run out of steps first. An error for an adaptive solve of a `dtype`
/// state at an `rtol` below the dtype's epsilon.
pub(crate) fn check_resolvable(dtype: DType, rtol: f64) -> Result<()> {
    let eps = dtype_epsilon(dtype);
    if matches!(dtype, DType::F16 | DType::BF16) && rtol < eps {
        return Err(SolverError::InvalidOptions(format!(
            "rtol {rtol:e} is finer than a {dtype:?} state resolves (its epsilon is {eps:e}): the steps' updates would round away; solve in f32 (`y0.to_dtype(DType::F32)`) or set rtol >= {eps:e}"
        ))
        .into());
    }
    Ok(())
}

/// Runs the steps from `ts[0]` to the last time, pushing the outputs after `y0` to `out`;
/// with a `watch`, stops at the first event it finds (its outputs then stop short); with a
/// `trace`, records every accepted step in it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_steps<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    y0: &Tensor,
    ts: &[f64],
    dir: f64,
    opts: &SolveOptions,
    out: &mut Vec<Tensor>,
    watch: Option<&mut EventWatch<'_>>,
    trace: Option<&mut dyn Recorder>,
) -> Result<(SolverStats, f64)> {
    match &trace {
        Some(tr) if opts.method == Method::Rkc && tr.replays() => {
            return Err(SolverError::InvalidOptions(
                "checkpointed backprop and traced events replay the solve's steps, and `rkc`'s \
                 stages follow its estimates of the spectral radius: differentiate an rkc solve \
                 by the adjoint (solved backwards or interpolated) or by backprop"
                    .into(),
            )
            .into());
        }
        Some(_) if opts.method != Method::Rkc => {
            opts.method.runge_kutta(
                "a traced solve (a dense solution, checkpointed backprop, the interpolated \
                 adjoint, a differentiable event)",
            )?;
        }
        _ => {}
    }
    if opts.method == Method::Rkc {
        let atol = match opts.step {
            StepSize::Adaptive => Some(prepare_atol(ev, &opts.atol, y0)?),
            _ => None,
        };
        return rkc::solve(ev, y0, ts, dir, opts, atol.as_ref(), out, watch, trace);
    }
    let multistep = opts.method.is_multistep();
    match (&opts.step, multistep) {
        (StepSize::Adaptive, _) => {
            let atol = prepare_atol(ev, &opts.atol, y0)?;
            if multistep {
                adams::adaptive(ev, y0, ts, dir, opts, &atol, out, watch)
            } else {
                adaptive(ev, y0, ts, dir, opts, &atol, out, watch, trace)
            }
        }
        (_, true) => adams::fixed(ev, y0, ts, dir, opts, out, watch),
        (_, false) => fixed(ev, y0, ts, dir, opts, out, watch, trace),
    }
}

/// Checks `ts` and returns the direction of integration (+1 or -1).
pub(crate) fn check_times(ts: &[f64]) -> Result<f64> {
    if ts.is_empty() {
        return Err(SolverError::InvalidTimes("no output times".into()).into());
    }
    if let Some(i) = ts.iter().position(|t| !t.is_finite()) {
        return Err(SolverError::InvalidTimes(format!("ts[{i}] = {} is not finite", ts[i])).into());
    }
    if ts.len() == 1 {
        return Ok(1.0);
    }
    let dir = if ts[1] > ts[0] { 1.0 } else { -1.0 };
    for i in 1..ts.len() {
        if (ts[i] - ts[i - 1]) * dir <= 0.0 {
            return Err(SolverError::TimesNotMonotone {
                index: i,
                prev: ts[i - 1],
                next: ts[i],
            }
            .into());
        }
    }
    Ok(dir)
}

/// The times a solve steps to ([`SolveOptions::step_ts`] and [`SolveOptions::jump_ts`]) and
/// the sides on which it evaluates the field at a jump.
#[derive(Clone, Debug)]
pub(crate) struct Stops {
    /// The stops strictly between the first and last output time, in the direction of
    /// integration (adaptive solves only), those within [`STOP_MERGE`] of each other merged
    /// into the first.
    pub(crate) inner: Vec<f64>,
    /// Every jump, as clusters `(lo, hi)` of jumps within [`STOP_MERGE`] of each other,
    /// ascending.
    jumps: Vec<(f64, f64)>,
    dir: f64,
}

/// Stops closer than this (relative to `max(|t|, 1)`) are one: two floats of one time
/// computed two ways (an output time and a sum of delays) would otherwise leave a step of an
/// ulp between them, and the controller would take a dozen steps to grow back.
pub(crate) const STOP_MERGE: f64 = 1e-14;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= STOP_MERGE * a.abs().max(b.abs()).max(1.0)
}

impl Stops {
    pub(crate) fn new(opts: &SolveOptions, ts: &[f64], dir: f64) -> Self {
        let (t0, t_end) = (ts[0], ts[ts.len() - 1]);
        let mut inner: Vec<f64> = match opts.step {
            StepSize::Adaptive => opts
                .step_ts
                .iter()
                .chain(opts.jump_ts.iter())
                .copied()
                .filter(|&s| (s - t0) * dir > 0.0 && (t_end - s) * dir > 0.0 && !close(s, t_end))
                .collect(),
            _ => vec![],
        };
        inner.sort_by(|a, b| (a * dir).total_cmp(&(b * dir)));
        inner.dedup_by(|b, a| close(*a, *b));
        let mut sorted = opts.jump_ts.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut jumps: Vec<(f64, f64)> = vec![];
        for j in sorted {
            match jumps.last_mut() {
                Some((_, hi)) if close(*hi, j) => *hi = j,
                _ => jumps.push((j, j)),
            }
        }
        Self { inner, jumps, dir }
    }

    /// Where an adaptive step must end at the latest: the next stop (`true`) or `t_end`.
    pub(crate) fn target(&self, next_stop: usize, t_end: f64) -> (f64, bool) {
        match self.inner.get(next_stop) {
            Some(&s) => (s, true),
            None => (t_end, false),
        }
    }

    /// The cluster of jumps that holds `t`, if any.
    fn jump_at(&self, t: f64) -> Option<(f64, f64)> {
        if self.jumps.is_empty() {
            return None;
        }
        let i = self
            .jumps
            .partition_point(|&(_, hi)| hi < t && !close(hi, t));
        self.jumps
            .get(i)
            .copied()
            .filter(|&(lo, hi)| (lo <= t || close(lo, t)) && (t <= hi || close(hi, t)))
    }

    pub(crate) fn is_jump(&self, t: f64) -> bool {
        self.jump_at(t).is_some()
    }

    /// Where a step that starts at `t` evaluates the field there: just past a jump (past
    /// every jump of its cluster).
    pub(crate) fn start(&self, t: f64) -> f64 {
        match self.jump_at(t) {
            Some((lo, hi)) => {
                step_float(if self.dir > 0.0 { hi.max(t) } else { lo.min(t) }, self.dir)
            }
            None => t,
        }
    }

    /// Where a step that ends at `t1` evaluates the field there: just before a jump (before
    /// every jump of its cluster).
    pub(crate) fn end(&self, t1: f64) -> f64 {
        match self.jump_at(t1) {
            Some((lo, hi)) => step_float(
                if self.dir > 0.0 {
                    lo.min(t1)
                } else {
                    hi.max(t1)
                },
                -self.dir,
            ),
            None => t1,
        }
    }
}

/// Where an adaptive step of intended size `h_abs` from `t` ends: at `target` (the next stop
/// or the last time) when it would reach it (`clipped`), else at `t ± h_abs`.
pub(crate) struct StepEnd {
    pub(crate) t1: f64,
    pub(crate) clipped: bool,
    /// Decided on the intended step: `(t + h) − t` may round above `min_step`.
    pub(crate) at_min_step: bool,
}

impl StepEnd {
    pub(crate) fn new(t: f64, target: f64, dir: f64, h_abs: f64, min_step: f64) -> Self {
        // `t + h` can round onto the target (or past it) with `h` a hair below the gap:
        // that step ends there too, or the next would be of length zero.
        let clipped = h_abs >= (target - t) * dir || (t + dir * h_abs - target) * dir >= 0.0;
        Self {
            t1: if clipped { target } else { t + dir * h_abs },
            clipped,
            at_min_step: h_abs <= min_step,
        }
    }
}

/// The squared error ratios `ratios_sq` (device scalars) and, with events, `g(t1, y1)`, in
/// one read: the ratios and `g1` (empty without events).
pub(crate) fn read_ratios<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    ratios_sq: &[Tensor],
    watch: Option<&EventWatch<'_>>,
    t1: f64,
    y1: &Tensor,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut v = match (ratios_sq, watch) {
        ([one], None) => ev.read(one)?,
        _ => {
            let mut parts = ratios_sq
                .iter()
                .map(|r| r.to_dtype(DType::F64)?.reshape(1))
                .collect::<Result<Vec<_>>>()?;
            if let Some(w) = watch {
                parts.push(w.values(t1, y1)?);
            }
            ev.read(&Tensor::cat(&parts, 0)?)?
        }
    };
    let g1 = v.split_off(ratios_sq.len());
    Ok((v.into_iter().map(f64::sqrt).collect(), g1))
}

/// The float next to `t` in direction `dir`.
fn step_float(t: f64, dir: f64) -> f64 {
    if dir > 0.0 {
        t.next_up()
    } else {
        t.next_down()
    }
}

pub(crate) enum PreparedAtol {
    Scalar(f64),
    Tensor(Tensor),
}

pub(crate) fn prepare_atol<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    atol: &Atol,
    y0: &Tensor,
) -> Result<PreparedAtol> {
    prepare_atol_with(atol, y0, &|t| ev.read(t))
}

/// [`prepare_atol`] with the read back to the host given: the tolerance of `y0`'s shape,
/// dtype and device, a per-component one checked finite and positive (one read).
pub(crate) fn prepare_atol_with(
    atol: &Atol,
    y0: &Tensor,
    read: &dyn Fn(&Tensor) -> Result<Vec<f64>>,
) -> Result<PreparedAtol> {
    match atol {
        Atol::Scalar(a) => Ok(PreparedAtol::Scalar(*a)),
        Atol::PerComponent(t) => {
            let t = t
                .to_device(y0.device())?
                .to_dtype(norm_dtype(y0.dtype()))?
                .broadcast_as(y0.shape())
                .map_err(|_| {
                    SolverError::InvalidOptions(format!(
                        "atol of shape {:?} does not broadcast to the state's shape {:?}",
                        t.shape(),
                        y0.shape()
                    ))
                })?
                .contiguous()?;
            let min = read(&t.flatten_all()?.min(0)?)?[0];
            if !(min.is_finite() && min > 0.0) {
                return Err(SolverError::InvalidTolerance {
                    name: "atol",
                    value: min,
                }
                .into());
            }
            Ok(PreparedAtol::Tensor(t))
        }
    }
}

/// The machine epsilon of a float dtype (the spacing of its numbers at 1): the finest `rtol`
/// an adaptive solve of a half-precision state takes. Non-float dtypes get f64's.
pub fn dtype_epsilon(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON,
        DType::F32 => f32::EPSILON as f64,
        DType::F16 => 9.765625e-4,
        DType::BF16 => 7.8125e-3,
        _ => f64::EPSILON,
    }
}

/// The dtype error norms are measured in: a half-precision state's in f32, whose range
/// holds what the norm computes (the default `atol`, 1e-9, is 0 in f16, and scaled errors
/// pass f16's largest value, 65504, long before a step is rejected). Other dtypes keep theirs.
pub(crate) fn norm_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// `x` in [`norm_dtype`].
pub(crate) fn for_norm(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(norm_dtype(x.dtype()))
}

/// `‖x / scale‖` under `norm`, as a device scalar; 0 for a state without components (as
/// diffrax's RMS norm), whose steps then grow as fast as the controller lets them.
pub(crate) fn scaled_norm_sq(x: &Tensor, scale: &Tensor, norm: ErrorNorm) -> Result<Tensor> {
    if x.elem_count() == 0 {
        return Tensor::zeros((), scale.dtype(), scale.device());
    }
    let r = (for_norm(x)? / scale)?;
    match norm {
        ErrorNorm::Rms => r.sqr()?.mean_all(),
        ErrorNorm::RmsPrefix(len) => r.flatten_all()?.narrow(0, 0, len)?.sqr()?.mean_all(),
    }
}

pub(crate) fn error_scale(
    y0: &Tensor,
    y1: Option<&Tensor>,
    rtol: f64,
    atol: &PreparedAtol,
) -> Result<Tensor> {
    let m = for_norm(&match y1 {
        Some(y1) => y0.abs()?.maximum(&y1.abs()?)?,
        None => y0.abs()?,
    })?;
    match atol {
        PreparedAtol::Scalar(a) => m.affine(rtol, *a),
        PreparedAtol::Tensor(a) => m.affine(rtol, 0.0)? + a,
    }
}

/// Index of the first entry (along dim 0) holding NaN or inf, with one read.
#[allow(clippy::eq_op)] // `ys - ys` is the point: 0 where finite, NaN where not.
pub(crate) fn first_non_finite<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    ys: &Tensor,
) -> Result<Option<usize>> {
    let z = ev.read(&finite_rows(ys)?)?;
    Ok(z.iter().position(|v| !v.is_finite()))
}

/// One value per row of `ys` (its first dimension), finite exactly when the row is: the
/// sum of `x − x`, which is 0 for finite `x` and NaN otherwise, and cannot overflow.
pub(crate) fn finite_rows(ys: &Tensor) -> Result<Tensor> {
    // A reshape, not `flatten_from(1)`: rows of a scalar state have no dimension to flatten.
    ys.sub(ys)?.reshape((ys.dim(0)?, ()))?.sum(1)
}

/// The fewest equal steps of at most `h` over `span`. A relative slack keeps rounding from
/// adding a sliver step (span = 10 h + 1e-16).
pub(crate) fn steps_over(span: f64, h: f64) -> usize {
    ((span / h) * (1.0 - 1e-12)).ceil().max(1.0) as usize
}

/// The first step of an adaptive solve from `(t, y)`, `f = f(t, y)`: `opts.first_step`
/// (with `y` and `f` checked finite, one read) or Hairer's rule for an error estimate that
/// scales as `h^exponent`; within `[min_step, max_step]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn first_step<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    t: f64,
    y: &Tensor,
    f: &Tensor,
    dir: f64,
    opts: &SolveOptions,
    atol: &PreparedAtol,
    exponent: f64,
) -> Result<f64> {
    let h = match opts.first_step {
        Some(h) => {
            if first_non_finite(ev, &Tensor::stack(&[y, f], 0)?)?.is_some() {
                return Err(SolverError::NonFinite { t }.into());
            }
            h
        }
        None => initial_step(ev, t, y, f, dir, opts, atol, exponent)?,
    };
    Ok(h.clamp(opts.min_step, opts.max_step))
}

/// Hairer's initial step (Hairer, Nørsett & Wanner, Solving ODEs I, II.4), as torchdiffeq,
/// for an error estimate that scales as `h^exponent`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn initial_step<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    t0: f64,
    y0: &Tensor,
    f0: &Tensor,
    dir: f64,
    opts: &SolveOptions,
    atol: &PreparedAtol,
    exponent: f64,
) -> Result<f64> {
    let scale = error_scale(y0, None, opts.rtol, atol)?;
    let d01 = ev.read(&Tensor::stack(
        &[
            scaled_norm_sq(y0, &scale, opts.norm)?,
            scaled_norm_sq(f0, &scale, opts.norm)?,
        ],
        0,
    )?)?;
    let (d0, d1) = (d01[0].sqrt(), d01[1].sqrt());
    if !(d0.is_finite() && d1.is_finite()) {
        return Err(SolverError::NonFinite { t: t0 }.into());
    }
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    };
    let y1 = lincomb(Some(y0), [(dir * h0, f0)])?;
    let f1 = ev.eval(t0 + dir * h0, &y1)?;
    let d2 = ev.read(&scaled_norm_sq(&(f1 - f0)?, &scale, opts.norm)?)?[0].sqrt() / h0;
    let h1 = if !d2.is_finite() {
        h0
    } else if d1 <= 1e-15 && d2 <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(1.0 / exponent)
    };
    Ok((100.0 * h0).min(h1))
}

/// The dense output of an accepted step `t → t1` at `tn` (`y1` itself at `t1`); computes
/// `f(t1, y1)` only if the interpolant needs it, keeping it in `f1` for reuse. `stops`
/// says where: just before `t1` when a jump is there.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_at<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    tab: &ButcherTableau,
    stops: &Stops,
    t: f64,
    t1: f64,
    y: &Tensor,
    step: &Step,
    f1: &mut Option<Tensor>,
    tn: f64,
) -> Result<Tensor> {
    if tn != t && tn != t1 && needs_f1(tab) && f1.is_none() {
        *f1 = Some(ev.eval(stops.end(t1), &step.y1)?);
    }
    interpolate(tab, t, t1, y, &step.k, &step.y1, f1.as_ref(), tn)
}

/// Whether the method's dense output uses `f(t1, y1)` besides the stages.
pub(crate) fn needs_f1(tab: &ButcherTableau) -> bool {
    matches!(tab.interpolant, Interpolant::Hermite) && !tab.is_fsal()
}

/// The dense output at `tn` of a step `t → t1` from `y` with stages `k`, ending in `y1`;
/// `f1 = f(t1, y1)` where the method needs it ([`needs_f1`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn interpolate(
    tab: &ButcherTableau,
    t: f64,
    t1: f64,
    y: &Tensor,
    k: &[Tensor],
    y1: &Tensor,
    f1: Option<&Tensor>,
    tn: f64,
) -> Result<Tensor> {
    if tn == t1 {
        return Ok(y1.clone());
    }
    if tn == t {
        return Ok(y.clone());
    }
    let h = t1 - t;
    let s = tab.stages();
    let mut w = vec![0.0; s + 1];
    tab.dense_weights((tn - t) / h, &mut w);
    let extra = match (w[s] != 0.0, f1) {
        (false, _) => None,
        (true, Some(f1)) => Some((h * w[s], f1)),
        (true, None) => candle_core::bail!("dense output: f(t1, y1) is needed and missing"),
    };
    let terms = w[..s]
        .iter()
        .zip(k)
        .map(|(wi, ki)| (h * wi, ki))
        .chain(extra);
    lincomb(Some(y), terms)
}

/// Pushes the outputs that fall in `(t, t1]` of an accepted step; computes `f(t1, y1)` only if
/// the dense output needs it, returning it for reuse.
#[allow(clippy::too_many_arguments)]
fn emit_outputs<F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    tab: &ButcherTableau,
    stops: &Stops,
    t: f64,
    t1: f64,
    y: &Tensor,
    step: &Step,
    f1: &mut Option<Tensor>,
    ts: &[f64],
    dir: f64,
    next: &mut usize,
    out: &mut Vec<Tensor>,
) -> Result<()> {
    while *next < ts.len() && (ts[*next] - t1) * dir <= 0.0 {
        out.push(dense_at(ev, tab, stops, t, t1, y, step, f1, ts[*next])?);
        *next += 1;
    }
    Ok(())
}

/// An accepted step's `f1 = f(t1, y1)` where it is known or needed now: the last stage of
/// an FSAL method; otherwise evaluated only when the recorder asks for it (the dense output
/// evaluates it when an output or event falls inside the step, [`dense_at`]). Reports the
/// step to the recorder.
#[allow(clippy::too_many_arguments)]
fn accept<'r, F: VectorField + ?Sized>(
    ev: &Evaluator<'_, F>,
    tab: &ButcherTableau,
    stops: &Stops,
    t: f64,
    t1: f64,
    y: &Tensor,
    step: &Step,
    trace: Option<&mut (dyn Recorder + 'r)>,
) -> Result<Option<Tensor>> {
    let mut f1 = tab.is_fsal().then(|| step.k[tab.stages() - 1].clone());
    let wanted = trace.as_ref().is_some_and(|tr| tr.needs_f1());
    if wanted && f1.is_none() {
        f1 = Some(ev.eval(stops.end(t1), &step.y1)?);
    }
    if let Some(tr) = trace {
        tr.accepted(t, t1, y, step, f1.as_ref());
    }
    Ok(f1)
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
    let tab = opts.method.runge_kutta("an adaptive Runge–Kutta solve")?;
    let control = Controller::new(opts)?;
    let t_end = ts[ts.len() - 1];
    let stops = Stops::new(opts, ts, dir);
    let mut next_stop = 0;
    let mut t = ts[0];
    let mut y = y0.clone();
    let mut f0 = ev.eval(stops.start(t), &y)?;
    let mut h_abs = first_step(ev, t, &y, &f0, dir, opts, atol, tab.error_exponent())?;
    let mut newton = Newton::for_method(ev, opts, y0)?;
    let mut stats = SolverStats::default();
    let mut prev_ratio = 1.0f64;
    let mut next = 1;
    while next < ts.len() {
        let steps = stats.accepted_steps + stats.rejected_steps;
        if steps >= opts.max_steps {
            return Err(SolverError::MaxStepsExceeded { t, steps }.into());
        }
        let (target, is_stop) = stops.target(next_stop, t_end);
        let StepEnd {
            t1,
            clipped,
            at_min_step,
        } = StepEnd::new(t, target, dir, h_abs, opts.min_step);
        let h_try = (t1 - t).abs();
        let t0_eval = stops.start(t);
        let t1_eval = stops.end(t1);
        let Some(step) = rk_step(
            tab,
            ev,
            t,
            t1,
            t0_eval,
            t1_eval,
            &y,
            &f0,
            true,
            newton.as_mut(),
        )?
        else {
            // Newton's iterations failed even with a fresh Jacobian: halve the step.
            stats.rejected_steps += 1;
            h_abs = shrink(
                t,
                dir,
                h_try,
                NEWTON_FACTOR,
                at_min_step,
                false,
                opts.min_step,
            )?;
            continue;
        };
        let err = step
            .err
            .as_ref()
            .expect("adaptive methods have an error estimate");
        let scale = error_scale(&y, Some(&step.y1), opts.rtol, atol)?;
        let mut ratios_sq = vec![scaled_norm_sq(err, &scale, opts.norm)?];
        if let Some(tr) = trace.as_deref_mut() {
            let f1 = tab.is_fsal().then(|| &step.k[tab.stages() - 1]);
            for d in tr.defects(t, t1, &y, &step, f1)? {
                ratios_sq.push(scaled_norm_sq(&d, &scale, opts.norm)?);
            }
        }
        let (ratios, g1) = read_ratios(ev, &ratios_sq, watch.as_deref(), t1, &step.y1)?;
        // The largest, NaN kept (the rejection reports it).
        let ratio = ratios
            .iter()
            .copied()
            .fold(0.0, |a, r| if r.is_nan() || r > a { r } else { a });
        if accepts(ratio) {
            stats.accepted_steps += 1;
            if clipped && is_stop {
                next_stop += 1;
            }
            // Before the event check: the step in which an event is found is traced too.
            let at_jump = stops.is_jump(t1);
            let mut f1 = accept(ev, tab, &stops, t, t1, &y, &step, trace.as_deref_mut())?;
            if let Some(w) = watch.as_deref_mut() {
                let mut dense = |tn| dense_at(ev, tab, &stops, t, t1, &y, &step, &mut f1, tn);
                if w.accepted(t, t1, &y, &g1, &mut dense, &|x| ev.read(x))? {
                    return Ok((stats, h_try));
                }
            }
            emit_outputs(
                ev, tab, &stops, t, t1, &y, &step, &mut f1, ts, dir, &mut next, out,
            )?;
            t = t1;
            if next < ts.len() {
                f0 = match f1 {
                    Some(f1) if !at_jump => f1,
                    _ => ev.eval(stops.start(t), &step.y1)?,
                };
            }
            y = step.y1;
            let mut factor = control.grow(ratio, prev_ratio);
            // As RADAU5: an implicit method with a large Newton matrix keeps its step, and so
            // the matrix's LU factors, unless the step can grow by a fifth.
            if factor < KEEP_STEP_BELOW && newton.as_ref().is_some_and(Newton::keeps_steps) {
                factor = 1.0;
            }
            h_abs = h_try * factor;
            prev_ratio = ratio.max(1e-4);
        } else {
            stats.rejected_steps += 1;
            if let Some(n) = newton.as_mut() {
                n.rejected(t);
            }
            h_abs = control.retry(t, dir, h_try, ratio, at_min_step, opts.min_step)?;
        }
        h_abs = h_abs.min(opts.max_step);
    }
    Ok((stats, h_abs))
}

/// The step-size controller: the factor by which the next step grows after an accepted step
/// and shrinks after a rejected one.
pub(crate) struct Controller {
    k_exp: f64,
    beta1: f64,
    beta2: f64,
    safety: f64,
    min_factor: f64,
    max_factor: f64,
}

impl Controller {
    /// The controller of `opts` for its Runge–Kutta method.
    pub(crate) fn new(opts: &SolveOptions) -> Result<Self> {
        let tab = opts.method.runge_kutta("this step-size controller")?;
        Ok(Self::for_exponent(opts, tab.error_exponent()))
    }

    /// The controller of `opts` for an error estimate that scales as `h^k_exp`.
    pub(crate) fn for_exponent(opts: &SolveOptions, k_exp: f64) -> Self {
        let (beta1, beta2) = match opts.controller {
            StepController::Integral => (1.0, 0.0),
            StepController::PI { beta1, beta2 } => (beta1, beta2),
        };
        Self {
            k_exp,
            beta1,
            beta2,
            safety: opts.safety,
            min_factor: opts.min_factor,
            max_factor: opts.max_factor,
        }
    }

    /// The integral controller (`β1 = 1, β2 = 0`) for an error that scales as `h^k_exp`.
    pub(crate) fn integral(k_exp: f64, safety: f64, min_factor: f64, max_factor: f64) -> Self {
        Self {
            k_exp,
            beta1: 1.0,
            beta2: 0.0,
            safety,
            min_factor,
            max_factor,
        }
    }

    /// The factor after a step accepted with error ratio `ratio`, the one before it having
    /// had `prev_ratio`.
    pub(crate) fn grow(&self, ratio: f64, prev_ratio: f64) -> f64 {
        let factor = if ratio == 0.0 {
            self.max_factor
        } else {
            self.safety
                * ratio.powf(-self.beta1 / self.k_exp)
                * prev_ratio.powf(self.beta2 / self.k_exp)
        };
        // As torchdiffeq and diffrax: an accepted step never shrinks the next one.
        factor.clamp(1.0, self.max_factor)
    }

    /// The factor after a step rejected with error ratio `ratio` (the smallest one for a
    /// non-finite ratio).
    pub(crate) fn cut(&self, ratio: f64) -> f64 {
        if ratio.is_finite() {
            (self.safety * ratio.powf(-1.0 / self.k_exp)).clamp(self.min_factor, 1.0)
        } else {
            self.min_factor
        }
    }

    /// The step after one of `h_try` at `t` rejected with error ratio `ratio`: [`shrink`]
    /// by [`Controller::cut`], an error when the step was already `min_step` or less.
    pub(crate) fn retry(
        &self,
        t: f64,
        dir: f64,
        h_try: f64,
        ratio: f64,
        at_min_step: bool,
        min_step: f64,
    ) -> Result<f64> {
        let factor = self.cut(ratio);
        shrink(
            t,
            dir,
            h_try,
            factor,
            at_min_step,
            !ratio.is_finite(),
            min_step,
        )
    }
}

/// Whether a step with error ratio `ratio` is accepted: at most 1. A NaN ratio (a step that
/// met a non-finite value) is a rejection, which `ratio > 1.0` alone would let through.
pub(crate) fn accepts(ratio: f64) -> bool {
    ratio <= 1.0
}

/// How much an implicit step shrinks when its Newton iterations fail (RADAU5's choice).
const NEWTON_FACTOR: f64 = 0.5;

/// An implicit method's accepted step grows only by this factor or more (RADAU5's `quot2`)
/// when its Newton matrix is large ([`Newton::keeps_steps`]): a step kept unchanged keeps
/// the LU factors of `I − hγJ`.
const KEEP_STEP_BELOW: f64 = 1.2;

/// The step after a rejected one of `h_try` at `t`, scaled by `factor`; an error when that is
/// below `min_step` or what `t` can resolve (a non-finite error ratio reports as such).
pub(crate) fn shrink(
    t: f64,
    dir: f64,
    h_try: f64,
    factor: f64,
    at_min_step: bool,
    non_finite: bool,
    min_step: f64,
) -> Result<f64> {
    let too_small = at_min_step || t + dir * h_try * factor == t;
    // Below the smallest normal float a step's products with the tableau's coefficients
    // underflow to zero (near t = 0 the relative test alone lets a step shrink that far).
    if too_small
        || h_try * factor <= 4.0 * f64::EPSILON * t.abs()
        || h_try * factor < f64::MIN_POSITIVE
    {
        return Err(if non_finite {
            SolverError::NonFinite { t }
        } else {
            SolverError::StepSizeTooSmall {
                t,
                dt: h_try * factor,
            }
        }
        .into());
    }
    Ok((h_try * factor).max(min_step))
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
    let tab = opts.method.runge_kutta("a fixed-step Runge–Kutta solve")?;
    let (t0, t_end) = (ts[0], ts[ts.len() - 1]);
    let grid = fixed_grid(opts, t0, t_end, dir)?;
    let n = grid.len() - 1;
    let stops = Stops::new(opts, ts, dir);
    let mut t = t0;
    let mut y = y0.clone();
    let mut f0 = ev.eval(stops.start(t), &y)?;
    let mut newton = Newton::for_method(ev, opts, y0)?;
    let mut next = 1;
    for (i, &t1) in grid.iter().enumerate().skip(1) {
        let (t0_eval, t1_eval) = (stops.start(t), stops.end(t1));
        let Some(step) = rk_step(
            tab,
            ev,
            t,
            t1,
            t0_eval,
            t1_eval,
            &y,
            &f0,
            false,
            newton.as_mut(),
        )?
        else {
            return Err(SolverError::NewtonFailed { t, h: t1 - t }.into());
        };
        let at_jump = stops.is_jump(t1);
        let mut f1 = accept(ev, tab, &stops, t, t1, &y, &step, trace.as_deref_mut())?;
        if let Some(w) = watch.as_deref_mut() {
            let g1 = ev.read(&w.values(t1, &step.y1)?)?;
            let mut dense = |tn| dense_at(ev, tab, &stops, t, t1, &y, &step, &mut f1, tn);
            if w.accepted(t, t1, &y, &g1, &mut dense, &|x| ev.read(x))? {
                let stats = SolverStats {
                    accepted_steps: i,
                    ..SolverStats::default()
                };
                return Ok((stats, (t1 - t).abs()));
            }
        }
        emit_outputs(
            ev, tab, &stops, t, t1, &y, &step, &mut f1, ts, dir, &mut next, out,
        )?;
        t = t1;
        if i < n {
            f0 = match f1 {
                Some(f1) if !at_jump => f1,
                _ => ev.eval(stops.start(t), &step.y1)?,
            };
        }
        y = step.y1;
    }
    let stats = SolverStats {
        nfe: 0,
        accepted_steps: n,
        ..SolverStats::default()
    };
    let last_step = match &opts.step {
        StepSize::Grid(_) => (grid[n] - grid[n - 1]).abs(),
        _ => (t_end - t0).abs() / n as f64,
    };
    Ok((stats, last_step))
}

/// The step ends of a fixed-step solve from `t0` to `t_end`: `grid[0] = t0`, the last
/// `t_end`, one step between neighbours.
pub(crate) fn fixed_grid(opts: &SolveOptions, t0: f64, t_end: f64, dir: f64) -> Result<Vec<f64>> {
    let span = (t_end - t0).abs();
    let n = match &opts.step {
        StepSize::Count(n) => *n,
        StepSize::Fixed(h) => steps_over(span, *h),
        StepSize::Grid(g) => {
            if g[0] != t0 || g[g.len() - 1] != t_end {
                return Err(SolverError::InvalidOptions(format!(
                    "the step grid runs from {} to {}, the solve from {t0} to {t_end}",
                    g[0],
                    g[g.len() - 1]
                ))
                .into());
            }
            g.len() - 1
        }
        StepSize::Adaptive => unreachable!("fixed_grid() is called for fixed steps"),
    };
    if n > opts.max_steps {
        return Err(SolverError::MaxStepsExceeded { t: t0, steps: n }.into());
    }
    Ok((0..=n)
        .map(|i| match &opts.step {
            _ if i == n => t_end,
            StepSize::Fixed(h) => t0 + dir * h * i as f64,
            StepSize::Grid(g) => g[i],
            _ => t0 + (t_end - t0) * (i as f64 / n as f64),
        })
        .collect())
}

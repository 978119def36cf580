//! `odeint_steady_state`: integrate `dy/dt = f(t, y)` until the field vanishes.
//!
//! A steady state `y*` has `f(y*) = 0`; a stable one is where the solution comes to rest,
//! so integrating from any start in its basin finds it (diffrax's `steady_state_event`;
//! the forward pass of an equilibrium model). The solve stops at the first time the
//! field's size, measured against the tolerances,
//! `r(t, y) = rms(f(t, y) / (atol + rtol |y|))`, falls to 1: an event `1 − r = 0`, checked
//! with each adaptive step's error ratio (one more evaluation per step) and located on the
//! step's dense output.
//!
//! The stopping tolerances default to 100 times the solve's. Near a stable steady state an
//! explicit method's steps grow until they reach the end of its stability region and stay
//! there, where the state keeps a deviation of about the solve's own tolerance: the field's
//! size is that deviation times the field's fast rates (measured: `dy/dt = 2 − 4y` with
//! dopri5 never came below 2.6 times the solve's own tolerances). An L-stable implicit
//! method lets the deviation die out.

use crate::error::SolverError;
use crate::event::{locate_event, Crossing, EventOptions};
use crate::field::VectorField;
use crate::options::{ErrorNorm, SolveOptions};
use crate::rk::{read_to_host, Evaluator};
use crate::solve::{error_scale, prepare_atol, scaled_norm_sq, PreparedAtol, SolverStats};
use candle_core::{Result, Tensor};
use std::cell::Cell;

/// Options of [`odeint_steady_state`] beside the solve's own [`SolveOptions`].
#[derive(Clone, Debug, PartialEq)]
pub struct SteadyStateOptions {
    /// The solve gives up at this time ([`SolverError::NoSteadyState`]).
    pub t_max: f64,
    /// Relative tolerance of the field's size; `None`: 100 times the solve's `rtol`.
    pub rtol: Option<f64>,
    /// Absolute tolerance of the field's size; `None`: 100 times the solve's `atol`.
    pub atol: Option<f64>,
}

impl SteadyStateOptions {
    /// Look for a steady state until `t_max`, with the default tolerances (100 times the
    /// solve's).
    pub fn new(t_max: f64) -> Self {
        Self {
            t_max,
            rtol: None,
            atol: None,
        }
    }

    /// Sets both tolerances of the field's size.
    pub fn tolerances(mut self, rtol: f64, atol: f64) -> Self {
        self.rtol = Some(rtol);
        self.atol = Some(atol);
        self
    }
}

/// The result of [`odeint_steady_state`].
#[derive(Clone, Debug)]
pub struct SteadyStateSolution {
    /// When the field's size fell to its tolerance.
    pub t: f64,
    /// The steady state: the solution at `t`.
    pub y: Tensor,
    /// Counts of the solve, the evaluations of the stopping test included.
    pub stats: SolverStats,
}

/// The default stopping tolerances over the solve's (see the module's notes).
const DEFAULT_FACTOR: f64 = 100.0;

/// `r(t, y) = rms(f(t, y) / (atol + rtol |y|))`, the field's size against the tolerances
/// (the solver's own error scale and norm), as a 0-d tensor of the state's dtype; counts
/// its evaluations of `f`.
struct FieldSize<'a, F: ?Sized> {
    f: &'a F,
    rtol: f64,
    atol: PreparedAtol,
    evals: Cell<usize>,
}

impl<'a, F: VectorField + ?Sized> FieldSize<'a, F> {
    /// The tolerances of `ss`, or `DEFAULT_FACTOR` times the solve's (a per-component
    /// `atol` checked against `y0` and read once, counted in `stats`).
    fn new(
        f: &'a F,
        y0: &Tensor,
        opts: &SolveOptions,
        ss: &SteadyStateOptions,
        stats: &mut SolverStats,
    ) -> Result<Self> {
        let rtol = ss.rtol.unwrap_or(DEFAULT_FACTOR * opts.rtol);
        if !(rtol.is_finite() && rtol >= 0.0) {
            return Err(SolverError::InvalidTolerance {
                name: "rtol",
                value: rtol,
            }
            .into());
        }
        let atol = match ss.atol {
            Some(a) => PreparedAtol::Scalar(a),
            None => {
                let ev = Evaluator::new(f);
                let prepared = prepare_atol(&ev, &opts.atol, y0)?;
                let mut read = SolverStats::default();
                ev.count_into(&mut read);
                *stats += read;
                match prepared {
                    PreparedAtol::Scalar(a) => PreparedAtol::Scalar(DEFAULT_FACTOR * a),
                    PreparedAtol::Tensor(a) => PreparedAtol::Tensor(a.affine(DEFAULT_FACTOR, 0.0)?),
                }
            }
        };
        if let PreparedAtol::Scalar(a) = atol {
            if !(a.is_finite() && a > 0.0) {
                return Err(SolverError::InvalidTolerance {
                    name: "atol",
                    value: a,
                }
                .into());
            }
        }
        Ok(Self {
            f,
            rtol,
            atol,
            evals: Cell::new(0),
        })
    }

    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        self.evals.set(self.evals.get() + 1);
        let scale = error_scale(y, None, self.rtol, &self.atol)?;
        scaled_norm_sq(&self.f.eval(t, y)?, &scale, ErrorNorm::Rms)?.sqrt()
    }

    /// `r(t, y)` on the host (one read, counted by the caller).
    fn read(&self, t: f64, y: &Tensor) -> Result<f64> {
        Ok(read_to_host(&self.eval(t, y)?)?[0])
    }
}

/// Integrates `dy/dt = f(t, y)` from `(t0, y0)` until the field's size against the
/// tolerances, `rms(f(t, y) / (atol + rtol |y|))`, falls to 1, and returns that time and
/// state. The tolerances are [`SteadyStateOptions`]' or else 100 times the solve's (see the
/// module's notes); a start that already satisfies them is returned as it is. `y` is differentiable by backprop through
/// the solver (with `t` held fixed); `node_adjoint::odeint_steady_state_adjoint`
/// differentiates the steady state by the implicit function theorem instead, in constant
/// memory.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use node_solvers::{odeint_steady_state, SolveOptions, SteadyStateOptions};
/// # fn main() -> candle_core::Result<()> {
/// // dy/dt = 2 − y comes to rest at y = 2.
/// let f = |_t: f64, y: &Tensor| y.affine(-1.0, 2.0);
/// let y0 = Tensor::new(&[0.0f64, 5.0], &Device::Cpu)?;
/// let sol = odeint_steady_state(&f, &y0, 0.0, &SolveOptions::default(), &SteadyStateOptions::new(100.0))?;
/// let y = sol.y.to_vec1::<f64>()?;
/// // It stops once |2 − y| ≤ atol + rtol |y| (by default 100 times the solve's
/// // 1e-9 + 1e-7 |y|), in RMS.
/// assert!((y[0] - 2.0).abs() < 1e-4 && (y[1] - 2.0).abs() < 1e-4);
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`SolverError::NoSteadyState`] when `t_max` comes first; an invalid tolerance; and the
/// solve's own errors (a non-finite state, too many steps, …).
pub fn odeint_steady_state<F: VectorField + ?Sized>(
    f: &F,
    y0: &Tensor,
    t0: f64,
    opts: &SolveOptions,
    ss: &SteadyStateOptions,
) -> Result<SteadyStateSolution> {
    if !(t0.is_finite() && ss.t_max.is_finite() && ss.t_max != t0) {
        return Err(SolverError::InvalidTimes(format!(
            "a steady-state solve needs finite, distinct t0 and t_max, got {t0} and {}",
            ss.t_max
        ))
        .into());
    }
    let mut stats = SolverStats::default();
    let size = FieldSize::new(f, y0, opts, ss, &mut stats)?;
    let r0 = size.read(t0, y0)?;
    stats.host_reads += 1;
    if !r0.is_finite() {
        return Err(SolverError::NonFinite { t: t0 }.into());
    }
    if r0 <= 1.0 {
        stats.nfe = size.evals.get();
        return Ok(SteadyStateSolution {
            t: t0,
            y: y0.clone(),
            stats,
        });
    }
    let g = |t: f64, y: &Tensor| size.eval(t, y)?.affine(-1.0, 1.0);
    let ev = EventOptions::default().crossing(Crossing::Rising);
    let found = locate_event(f, y0, t0, ss.t_max, &g, opts, &ev)?;
    stats += found.stats;
    if found.event.is_none() {
        let residual = size.read(found.t, &found.y)?;
        return Err(SolverError::NoSteadyState {
            t: found.t,
            residual,
        }
        .into());
    }
    stats.nfe += size.evals.get();
    Ok(SteadyStateSolution {
        t: found.t,
        y: found.y,
        stats,
    })
}

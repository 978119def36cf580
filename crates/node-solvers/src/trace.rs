//! `odeint_traced`: a solve that also records its accepted steps and the states at some of
//! them, so that any stretch of it can be replayed later, step for step (with
//! [`SolveOptions::step_grid`]), from the nearest stored state.
//!
//! This is what checkpointed backprop needs (`node_adjoint::odeint_checkpointed`): the gradient
//! of the discrete solve, exactly, with memory bounded by the stored states plus one replayed
//! stretch instead of the graph of every step. The stored states are thinned as the solve goes:
//! when there would be more than `max_states`, every other one is dropped and the spacing
//! doubles, so a solve of `n` steps keeps at most `max_states` states, spaced by the smallest
//! power of two `s` with `⌈n / s⌉ ≤ max_states` (binary thinning; Griewank's binomial schedule
//! reaches fewer recomputations with the same memory, at the price of a schedule that must
//! know `n` in advance).

use crate::error::SolverError;
use crate::field::VectorField;
use crate::options::SolveOptions;
use crate::rk::Step;
use crate::solve::{solve, Solution};
use candle_core::{Result, Tensor};

/// What a solve reports of each accepted step, before its outputs and the event check: a
/// [`StepTrace`] keeps its end and some states, a [`crate::DenseSolution`] all of it.
pub(crate) trait Recorder {
    /// Whether the step's `f1 = f(t1, y1)` must be known when it is recorded (the solve
    /// computes it then if the method does not have it; it is the next step's `f0` anyway,
    /// except at a jump and after the last step).
    fn needs_f1(&self) -> bool {
        false
    }
    /// Whether what is recorded is replayed later by a fixed-step solve on the recorded
    /// steps, which must then compute exactly what the solve did (checkpointed backprop,
    /// traced events): not so for `rkc`, whose stages follow estimates of the spectral radius.
    fn replays(&self) -> bool {
        false
    }
    /// Estimates of errors of a step from `(t, y)` to `t1` that its embedded error estimate
    /// does not see, each the state's shape, measured and controlled as that estimate is
    /// (the delay equations' dense output, [`crate::delay`]); `f1` when the method has it.
    /// None by default. Adaptive Runge–Kutta solves only.
    fn defects(
        &mut self,
        t: f64,
        t1: f64,
        y: &Tensor,
        step: &Step,
        f1: Option<&Tensor>,
    ) -> candle_core::Result<Vec<Tensor>> {
        let _ = (t, t1, y, step, f1);
        Ok(vec![])
    }
    /// An accepted step from `(t, y)` to `t1`; `f1` when known.
    fn accepted(&mut self, t: f64, t1: f64, y: &Tensor, step: &Step, f1: Option<&Tensor>);
}

impl Recorder for StepTrace {
    fn replays(&self) -> bool {
        true
    }

    fn accepted(&mut self, _t: f64, t1: f64, _y: &Tensor, step: &Step, _f1: Option<&Tensor>) {
        self.record(t1, &step.y1);
    }
}

/// The accepted steps of a solve, with states stored every `stride` steps.
#[derive(Clone, Debug)]
pub struct StepTrace {
    /// The accepted steps' ends, from `ts[0]` to `ts[last]` (for [`crate::locate_event_traced`],
    /// to the end of the step that holds the event): step `i` runs from `times[i]` to
    /// `times[i + 1]`.
    pub times: Vec<f64>,
    /// The states at `times[k · stride]`, `k = 0, 1, …`: `states[0] = y0`. The state at the last
    /// time is not kept (the solve's last output is it).
    pub states: Vec<Tensor>,
    /// Steps between stored states: a power of two.
    pub stride: usize,
    max_states: usize,
}

impl StepTrace {
    /// An empty trace from `(t0, y0)`.
    pub(crate) fn new(t0: f64, y0: &Tensor, max_states: usize) -> Result<Self> {
        if max_states == 0 {
            return Err(SolverError::InvalidOptions("max_states must be > 0".into()).into());
        }
        Ok(Self {
            times: vec![t0],
            states: vec![y0.clone()],
            stride: 1,
            max_states,
        })
    }

    /// Number of accepted steps.
    pub fn steps(&self) -> usize {
        self.times.len() - 1
    }

    /// The stretches that start at a stored state, as ranges of step indices: stretch `k` is
    /// the steps `k · stride .. min((k + 1) · stride, steps)`, starting from `states[k]`.
    pub fn segments(
        &self,
    ) -> impl DoubleEndedIterator<Item = std::ops::Range<usize>> + ExactSizeIterator {
        let (n, stride) = (self.steps(), self.stride);
        (0..n.div_ceil(stride)).map(move |k| k * stride..((k + 1) * stride).min(n))
    }

    /// Records an accepted step ending at `t1` in `y1`.
    pub(crate) fn record(&mut self, t1: f64, y1: &Tensor) {
        self.times.push(t1);
        if !self.steps().is_multiple_of(self.stride) {
            return;
        }
        self.states.push(y1.clone());
        if self.states.len() > self.max_states {
            // Keep the states at even multiples of the stride: those at multiples of twice it.
            let mut keep = false;
            self.states.retain(|_| {
                keep = !keep;
                keep
            });
            self.stride *= 2;
        }
    }

    /// Drops the state stored at the last time, which no stretch starts from.
    fn finish(&mut self) {
        if self.steps() > 0 && self.steps().is_multiple_of(self.stride) {
            self.states.pop();
        }
    }

    /// Runs `solve` with a fresh trace from `(t0, y0)` to record into, and returns its result
    /// with the finished trace.
    pub(crate) fn around<T>(
        t0: f64,
        y0: &Tensor,
        max_states: usize,
        solve: impl FnOnce(&mut dyn Recorder) -> Result<T>,
    ) -> Result<(T, Self)> {
        let mut trace = Self::new(t0, y0, max_states)?;
        let out = solve(&mut trace)?;
        trace.finish();
        Ok((out, trace))
    }
}

/// Solves like [`crate::odeint`] and also returns the [`StepTrace`]: every accepted step's
/// times, and the state every `stride` steps, at most `max_states` of them.
///
/// Replaying the steps of segment `k` from `trace.states[k]` with
/// `opts.clone().step_grid(&trace.times[range.start..=range.end])` takes the same steps as the
/// solve did and gives the same values (the steps of a fixed grid are computed as the solve
/// computed them; only a non-deterministic field could differ).
///
/// # Shapes
/// As [`crate::odeint`]; every stored state has the shape of `y0`.
///
/// # Errors
/// Those of [`crate::odeint`], and [`SolverError::InvalidOptions`] when `max_states` is 0.
pub fn odeint_traced<F: VectorField + ?Sized>(
    f: &F,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
    max_states: usize,
) -> Result<(Solution, StepTrace)> {
    let t0 = ts.first().copied().unwrap_or(0.0);
    StepTrace::around(t0, y0, max_states, |tr| solve(f, y0, ts, opts, Some(tr)))
}

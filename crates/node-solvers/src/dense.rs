//! `odeint_dense`: a solve that keeps every accepted step's stages, so that its solution can be
//! evaluated at any time of the interval afterwards by the method's dense output (diffrax's
//! `SaveAt(dense=True)`, SciPy's `dense_output`; torchdiffeq has none).

use crate::error::SolverError;
use crate::field::VectorField;
use crate::method::Method;
use crate::options::SolveOptions;
use crate::rk::Step;
use crate::solve::{interpolate, needs_f1, solve, Solution};
use crate::tableau::ButcherTableau;
use crate::trace::Recorder;
use candle_core::{Result, Tensor};

/// The continuous solution of a solve ([`odeint_dense`]): every accepted step's start, stages
/// and end, evaluated by the method's interpolant.
///
/// Its values at the solve's output times are the solve's outputs, bit for bit; between them
/// they are what an output time there would have given. Evaluating costs no evaluation of the
/// field: one combination of the step's stages. The tensors keep their graph: when the field
/// tracks gradients, so do the values.
#[derive(Clone, Debug)]
pub struct DenseSolution {
    tab: &'static ButcherTableau,
    /// Step boundaries, `times[0] = ts[0]` to `times[n] = ts[last]`.
    times: Vec<f64>,
    /// The states at `times`.
    states: Vec<Tensor>,
    /// Each step's stages.
    stages: Vec<Vec<Tensor>>,
    /// Each step's `f(t1, y1)`, where the method's interpolant uses it.
    ends: Vec<Option<Tensor>>,
}

impl DenseSolution {
    pub(crate) fn new(tab: &'static ButcherTableau, t0: f64, y0: &Tensor) -> Self {
        Self {
            tab,
            times: vec![t0],
            states: vec![y0.clone()],
            stages: vec![],
            ends: vec![],
        }
    }

    /// The first and last time: the interval where the solution can be evaluated.
    pub fn span(&self) -> (f64, f64) {
        (self.times[0], self.times[self.times.len() - 1])
    }

    /// The accepted steps' boundaries, from the first time to the last.
    pub fn step_times(&self) -> &[f64] {
        &self.times
    }

    /// The solution at `t`.
    ///
    /// # Shapes
    /// Result: the shape of `y0`.
    ///
    /// # Errors
    /// [`SolverError::InvalidTimes`] for a `t` outside [`DenseSolution::span`] or not finite.
    pub fn evaluate(&self, t: f64) -> Result<Tensor> {
        let (t0, t_end) = self.span();
        let dir = if t_end >= t0 { 1.0 } else { -1.0 };
        if !t.is_finite() || (t - t0) * dir < 0.0 || (t - t_end) * dir > 0.0 {
            return Err(SolverError::InvalidTimes(format!(
                "t = {t} is outside the solved interval [{t0}, {t_end}]"
            ))
            .into());
        }
        self.at(t, dir)
    }

    /// As [`DenseSolution::evaluate`], and a time outside the span is evaluated by the first
    /// or last step's interpolant continued past its end: for a method that evaluates a
    /// stage beyond its step (kvaerno5's `c = 1.23`) in a solve that reads this solution,
    /// as the interpolated adjoint's reverse solve does.
    ///
    /// # Errors
    /// [`SolverError::InvalidTimes`] for a `t` that is not finite.
    pub fn evaluate_extended(&self, t: f64) -> Result<Tensor> {
        if !t.is_finite() {
            return Err(SolverError::InvalidTimes(format!("t = {t} is not finite")).into());
        }
        let (t0, t_end) = self.span();
        self.at(t, if t_end >= t0 { 1.0 } else { -1.0 })
    }

    /// The nearest step's interpolant at `t`.
    fn at(&self, t: f64, dir: f64) -> Result<Tensor> {
        let n = self.stages.len();
        if n == 0 {
            return Ok(self.states[0].clone());
        }
        // The step that holds t: the first whose end is at or past it.
        let i = self.times[1..]
            .partition_point(|&ti| (ti - t) * dir < 0.0)
            .min(n - 1);
        interpolate(
            self.tab,
            self.times[i],
            self.times[i + 1],
            &self.states[i],
            &self.stages[i],
            &self.states[i + 1],
            self.ends[i].as_ref(),
            t,
        )
    }

    /// The solution at each of `ts` (any order, each inside the interval), stacked.
    ///
    /// # Shapes
    /// Result: `[ts.len(), ...y0.shape]`.
    ///
    /// # Errors
    /// As [`DenseSolution::evaluate`]; [`SolverError::InvalidTimes`] for no times.
    pub fn evaluate_many(&self, ts: &[f64]) -> Result<Tensor> {
        if ts.is_empty() {
            return Err(SolverError::InvalidTimes("no times to evaluate at".into()).into());
        }
        let ys = ts
            .iter()
            .map(|&t| self.evaluate(t))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&ys, 0)
    }
}

impl Recorder for DenseSolution {
    fn needs_f1(&self) -> bool {
        needs_f1(self.tab)
    }

    fn accepted(&mut self, _t: f64, t1: f64, _y: &Tensor, step: &Step, f1: Option<&Tensor>) {
        self.times.push(t1);
        self.states.push(step.y1.clone());
        self.stages.push(step.k.clone());
        self.ends.push(f1.cloned());
    }
}

/// Solves like [`crate::odeint`] and also returns the [`DenseSolution`], which evaluates the
/// solution at any time between the first and last of `ts`.
///
/// It keeps every accepted step's stages (7 tensors the size of `y0` a step for dopri5): use
/// it for analysis and plots of a solve of moderate length; for many values at known times,
/// pass them as `ts`, which costs nothing either.
///
/// # Shapes
/// As [`crate::odeint`].
///
/// # Errors
/// Those of [`crate::odeint`].
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint_dense, SolveOptions};
/// # fn main() -> candle_core::Result<()> {
/// // dy/dt = −y from y(0) = 1: y(t) = e^{−t}.
/// let f = |_t: f64, y: &Tensor| y.neg();
/// let y0 = Tensor::new(&[1.0f64], &Device::Cpu)?;
/// let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
/// let (_, dense) = odeint_dense(&f, &y0, &[0.0, 2.0], &opts)?;
/// let y = dense.evaluate(0.73)?.to_vec1::<f64>()?[0];
/// assert!((y - (-0.73f64).exp()).abs() < 1e-8);
/// # Ok(()) }
/// ```
pub fn odeint_dense<F: VectorField + ?Sized>(
    f: &F,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
) -> Result<(Solution, DenseSolution)> {
    let tab = match opts.method {
        Method::Rkc => &crate::rkc::DENSE,
        m => m.runge_kutta("a dense solution")?,
    };
    let mut dense = DenseSolution::new(tab, ts.first().copied().unwrap_or(0.0), y0);
    let sol = solve(f, y0, ts, opts, Some(&mut dense))?;
    Ok((sol, dense))
}

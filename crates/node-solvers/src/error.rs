//! Typed solver errors.
//!
//! Library functions return [`candle_core::Result`]; a [`SolverError`] travels inside it as
//! `candle_core::Error::WrappedContext` and can be recovered with [`SolverError::find`], so
//! callers can match on what went wrong instead of parsing a message.

use candle_core::Shape;

/// What can go wrong in a solve, with the data needed to act on it.
#[derive(Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SolverError {
    /// The adaptive controller asked for a step below `min_step` or below what `t` can resolve.
    #[error("step size too small at t = {t}: dt = {dt:e} (stiff or singular problem, or tolerances too tight for the dtype)")]
    StepSizeTooSmall {
        /// Time reached.
        t: f64,
        /// The step that was too small.
        dt: f64,
    },
    /// More than `max_steps` steps (accepted and rejected) were attempted.
    #[error("maximum number of steps ({steps}) exceeded at t = {t}")]
    MaxStepsExceeded {
        /// Time reached.
        t: f64,
        /// Steps taken. A fixed-step solve whose grid would need more than `max_steps` is
        /// refused before any work, with the steps it needs here (at most `usize::MAX`) and
        /// its start as `t`.
        steps: usize,
    },
    /// The state or its derivative became NaN or infinite at (or, for fixed steps, before) `t`.
    #[error("non-finite value (NaN or inf) in the state or its derivative at t = {t}")]
    NonFinite {
        /// Time at which it was detected.
        t: f64,
    },
    /// `ts` is not strictly monotone: `ts[index]` does not move past `ts[index - 1]` in the
    /// direction set by `ts[0]` and `ts[1]`.
    #[error("output times are not strictly monotone at index {index} ({prev} then {next})")]
    TimesNotMonotone {
        /// Index of the offending time.
        index: usize,
        /// `ts[index - 1]`.
        prev: f64,
        /// `ts[index]`.
        next: f64,
    },
    /// `ts` is empty or holds a non-finite time.
    #[error("invalid output times: {0}")]
    InvalidTimes(String),
    /// The vector field returned a tensor whose shape differs from the state's.
    #[error(
        "vector field output has shape {got:?} but the state has shape {expected:?} (at t = {t})"
    )]
    ShapeMismatch {
        /// The state's shape.
        expected: Shape,
        /// What the field returned.
        got: Shape,
        /// Time of the evaluation.
        t: f64,
    },
    /// The vector field returned a tensor of another dtype or device than the state.
    #[error("vector field output does not match the state: {0}")]
    OutputMismatch(String),
    /// The history of a delay equation ([`crate::delay::History`]) returned a tensor unlike
    /// the state.
    #[error("the history of the delay equation does not match the state: {0}")]
    InvalidHistory(String),
    /// A tolerance is not a finite positive number.
    #[error("tolerance `{name}` must be finite and > 0, got {value}")]
    InvalidTolerance {
        /// `rtol` or `atol`.
        name: &'static str,
        /// The value given (the smallest, for a tensor).
        value: f64,
    },
    /// An event was found where the event function does not change along the solution
    /// (`D = ∂g/∂t + ∂g/∂y · f = 0`, or not finite), so its time has no derivative.
    #[error("the event at t = {t} is not transversal (dg/dt along the solution = {rate}): the event time has no gradient")]
    EventNotTransversal {
        /// The event time.
        t: f64,
        /// The rate `D` found.
        rate: f64,
    },
    /// Options that cannot work together or are out of range.
    #[error("invalid solver options: {0}")]
    InvalidOptions(String),
    /// An implicit method's Newton iterations did not converge in a fixed step, even with a
    /// fresh Jacobian (an adaptive solve shrinks the step instead).
    #[error("Newton's method did not converge in the implicit step from t = {t} with h = {h:e}: take smaller steps")]
    NewtonFailed {
        /// Start of the step.
        t: f64,
        /// The step.
        h: f64,
    },
    /// A reversible solve ([`crate::odeint_reversible`]) could not keep its two copies of the
    /// solution, `y` and `z`, together: their difference is a parasitic mode that evolves
    /// like the dynamics run backwards, so dynamics that contract fast make it grow faster
    /// than the coupling damps it.
    #[error("the reversible solve diverged at t = {t}: y and z differ by {gap:.3e} times the tolerance (the dynamics contract too fast for the reversible scheme; use checkpointed backprop or the adjoint)")]
    ReversibleDiverged {
        /// Time reached.
        t: f64,
        /// `‖y − z‖` over the error scale (for a fixed-step solve, over `0.1 ‖y‖`).
        gap: f64,
    },
    /// A steady-state solve ([`crate::odeint_steady_state`]) reached `t_max` with the field
    /// still above its tolerance.
    #[error("no steady state by t = {t}: the field is still {residual:.3e} times its tolerance (raise t_max, or loosen the steady-state tolerances against the solve's, or the state does not come to rest)")]
    NoSteadyState {
        /// Where the solve gave up (`t_max`).
        t: f64,
        /// `rms(f / (atol + rtol |y|))` there.
        residual: f64,
    },
    /// An implicit method was asked to be differentiated by backprop through its steps.
    #[error("implicit method `{method}` cannot be differentiated through by backprop (its Newton iterations or linear solves run on the host): detach the inputs, or use the adjoint (node_adjoint::odeint_adjoint)")]
    NotDifferentiable {
        /// The method.
        method: &'static str,
    },
}

// `candle_core::Error::WrappedContext` formats the wrapped error with `Debug`: make that the
// human message rather than the derive's struct dump.
impl std::fmt::Debug for SolverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl SolverError {
    /// Finds a `SolverError` inside a candle error (through backtrace and context wrappers).
    pub fn find(err: &candle_core::Error) -> Option<&SolverError> {
        use candle_core::Error as E;
        match err {
            E::WrappedContext { wrapped, .. } => wrapped.downcast_ref::<SolverError>(),
            E::WithBacktrace { inner, .. }
            | E::Context { inner, .. }
            | E::WithPath { inner, .. } => Self::find(inner),
            _ => None,
        }
    }
}

impl From<SolverError> for candle_core::Error {
    fn from(e: SolverError) -> Self {
        candle_core::Error::WrappedContext {
            wrapped: Box::new(e),
            context: "ODE solve failed".to_string(),
        }
    }
}

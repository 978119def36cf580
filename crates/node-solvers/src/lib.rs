#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod adams;
pub mod brownian;
pub mod delay;
pub mod dense;
pub mod error;
pub mod event;
pub mod field;
mod fused;
pub mod hyper;
mod implicit;
pub mod independent;
pub mod independent_event;
pub mod method;
pub mod options;
pub mod problems;
pub mod reversible;
pub mod rk;
pub mod rkc;
pub mod sde;
pub mod solve;
pub mod steady;
pub mod symplectic;
pub mod tableau;
pub mod trace;

pub use brownian::{BrownianPath, LevyIncrement, VirtualBrownianTree};
pub use delay::{ddeint, DelayField, History};
pub use dense::{odeint_dense, DenseSolution};
pub use error::SolverError;
pub use event::{
    differentiable_start, event_gradients, locate_event, locate_event_traced, locate_events,
    locate_events_traced, odeint_event, odeint_events, Crossing, EventFunction, EventOptions,
    EventSolution, EventsSolution, LocatedEvent, LocatedEvents, RecordedEvent,
};
pub use field::{Split, VectorField, WithJacobian};
pub use hyper::{hyper_residuals, odeint_hyper, Correction, Residuals};
pub use independent::{
    odeint_independent, BatchField, IndependentSolution, SampleStats, TimeInvariant,
};
pub use independent_event::{
    independent_event_gradients, locate_independent_event, odeint_independent_event,
    odeint_independent_events, BatchEventFunction, IndependentEventSolution,
    IndependentEventsSolution, LocatedIndependentEvent,
};
pub use method::{Method, UnknownMethod};
pub use options::{Atol, ErrorNorm, Jacobian, SolveOptions, StepController, StepSize};
pub use reversible::{odeint_reversible, ReversibleTrace, DEFAULT_COUPLING};
pub use sde::{
    sdeint, sdeint_increments, step_times, Additive as AdditiveSde, Calculus,
    Detached as DetachedSde, Noise, ReversibleHeunState, SdeAdaptive, SdeErrorEstimate, SdeField,
    SdeIncrement, SdeMethod, SdeOptions, SdeSolution, SdeStats,
};
pub use solve::{dtype_epsilon, odeint, Solution, SolverStats};
pub use steady::{odeint_steady_state, SteadyStateOptions, SteadyStateSolution};
pub use symplectic::{
    odeint_symplectic, Separable, SeparableField, Substep, SymplecticMethod, SymplecticOptions,
    SymplecticSolution, SymplecticStats,
};
pub use tableau::{ButcherTableau, Implicit, Interpolant, Rosenbrock};
pub use trace::{odeint_traced, StepTrace};

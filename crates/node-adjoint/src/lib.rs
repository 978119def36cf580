#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod adjoint;
pub mod checkpoint;
pub mod delay;
pub mod direct;
pub mod field;
pub mod independent;
mod op;
pub mod options;
pub mod reversible;
pub mod sde;
pub mod steady;
pub mod symplectic;

pub use adjoint::{
    odeint_adjoint, odeint_adjoint_with_times, odeint_event_adjoint, odeint_events_adjoint,
    AdjointEventSolution, AdjointEventsSolution, AdjointSolution, AdjointStats, GradientStats,
};
pub use checkpoint::{
    odeint_checkpointed, odeint_checkpointed_with_times, odeint_event_checkpointed,
    odeint_events_checkpointed,
};
pub use delay::{
    ddeint_adjoint, with_delay_params, DelayHistory, ParamDelayField, WithDelayParams,
};
pub use direct::odeint_direct;
pub use field::{
    has_tensor_params, sorted_vars, with_params, ParamVectorField, TensorParam, WithParams,
};
pub use independent::{
    odeint_independent_adjoint, odeint_independent_event_adjoint, with_batch_params,
    AdjointIndependentEventSolution, ParamBatchField, WithBatchParams,
};
pub use options::{
    AdjointNorm, AdjointOptions, AdjointState, CheckpointOptions, ReversibleOptions,
};
pub use reversible::{odeint_reversible_adjoint, odeint_reversible_adjoint_with_times};
pub use sde::{
    sdeint_adjoint, with_additive_sde_params, with_sde_params, ParamSdeField, SdeAdjointOptions,
    SdeAdjointSolution, SdeAdjointStats,
};
pub use steady::{
    odeint_steady_state_adjoint, SteadyStateAdjointSolution, SteadyStateAdjointStats,
};
pub use symplectic::{
    odeint_symplectic_adjoint, with_separable_params, ParamSeparableField,
    SymplecticAdjointSolution, SymplecticAdjointStats,
};

//! Options of the reverse (adjoint) solve.

use node_solvers::{Method, SolveOptions, StepSize};

/// The norm the reverse solve's step-size control measures its error in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AdjointNorm {
    /// Error on the state and the adjoint only, not on the parameter-gradient integrals
    /// (Kidger, Chen & Lyons, "Hey, that's not an ODE", ICML 2021). Those integrals do not feed
    /// back into the dynamics, so their error need not limit the step: fewer backward steps.
    #[default]
    Seminorm,
    /// RMS over the whole augmented state `[y, a, g_θ]` (torchdiffeq's default).
    Full,
}

/// Where the reverse solve takes the forward state `y(t)` from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AdjointState {
    /// Integrated backwards alongside the adjoint, from the stored final state (the paper's
    /// method, torchdiffeq's): memory O(1) in the number of steps. Backwards, dynamics that
    /// contract forwards expand: on a stiff or strongly dissipative problem the
    /// reconstructed `y` leaves the forward trajectory or blows up, whatever the method.
    #[default]
    Backsolve,
    /// Interpolated from the forward solve's dense output ([`node_solvers::odeint_dense`]):
    /// the reverse solve integrates only `[a, g_θ]`, so it is as stable as the adjoint
    /// equation itself, and stiff problems get gradients (Kim et al., "Stiff neural ordinary
    /// differential equations", Chaos 2021; Julia's `InterpolatingAdjoint`). Memory grows
    /// with the forward steps: their states and stages are kept (7 tensors the size of `y`
    /// per dopri5 step), but no graph. The accuracy of `y` between steps is the method's
    /// dense output (cubic Hermite for the implicit methods).
    Interpolated,
}

/// Options of the reverse solve. Unset fields take the forward solve's values.
#[derive(Clone, Debug, Default)]
pub struct AdjointOptions {
    /// Method of the reverse solve.
    pub method: Option<Method>,
    /// Relative tolerance of the reverse solve.
    pub rtol: Option<f64>,
    /// Absolute tolerance of the reverse solve.
    pub atol: Option<f64>,
    /// Fixed step size of the reverse solve.
    pub step_size: Option<f64>,
    /// Maximum number of steps of each reverse interval.
    pub max_steps: Option<usize>,
    /// Error norm.
    pub norm: AdjointNorm,
    /// Where the forward state comes from ([`AdjointState::Backsolve`] by default).
    pub state: AdjointState,
    /// With several output times the reverse solve runs one interval after the other (the
    /// adjoint jumps at each output time). By default an adaptive interval starts with the
    /// step its predecessor's controller proposed last; `true` picks each first step afresh
    /// with Hairer's rule instead, as torchdiffeq does (one more evaluation per interval, and
    /// usually a smaller first step).
    pub reselect_first_step: bool,
}

impl AdjointOptions {
    /// Sets the reverse method.
    pub fn method(mut self, m: Method) -> Self {
        self.method = Some(m);
        self
    }
    /// Sets both reverse tolerances.
    pub fn tolerances(mut self, rtol: f64, atol: f64) -> Self {
        self.rtol = Some(rtol);
        self.atol = Some(atol);
        self
    }
    /// Fixed reverse steps of size `h`.
    pub fn step_size(mut self, h: f64) -> Self {
        self.step_size = Some(h);
        self
    }
    /// Sets the norm.
    pub fn norm(mut self, norm: AdjointNorm) -> Self {
        self.norm = norm;
        self
    }
    /// Sets where the forward state comes from ([`AdjointState`]).
    pub fn state(mut self, state: AdjointState) -> Self {
        self.state = state;
        self
    }
    /// Picks the first step of every reverse interval afresh (see
    /// [`AdjointOptions::reselect_first_step`]).
    pub fn reselect_first_step(mut self, yes: bool) -> Self {
        self.reselect_first_step = yes;
        self
    }

    /// The options of the reverse solve, given the forward ones and the length of the
    /// forward solve's span (a forward step count becomes the equivalent step size): the
    /// forward's, with this method, tolerances, step size and step limit where they are set,
    /// and the first step chosen afresh. For solves that take reverse options of their own
    /// ([`crate::odeint_independent_adjoint`]).
    pub fn reverse_solve_options(&self, fwd: &SolveOptions, span: f64) -> SolveOptions {
        let mut o = fwd.clone();
        o.first_step = None;
        if let Some(m) = self.method {
            o.method = m;
            // A kept Jacobian is for W-methods only.
            if !m.is_w_method() {
                o.jacobian_reuse = 1;
            }
        }
        if let Some(r) = self.rtol {
            o.rtol = r;
        }
        if let Some(a) = self.atol {
            o.atol = a.into();
        }
        if let Some(n) = self.max_steps {
            o.max_steps = n;
        }
        // A forward step grid stays: each reverse interval steps back over its part of it.
        o.step = match (self.step_size, &fwd.step) {
            (Some(h), _) => StepSize::Fixed(h),
            (None, StepSize::Count(n)) => StepSize::Fixed(span / *n as f64),
            (None, s) => s.clone(),
        };
        o
    }
}

/// Options of checkpointed backprop ([`crate::odeint_checkpointed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// At most this many states are stored by the forward solve (`y0` among them). Up to this
    /// many steps, every step's start is stored and the backward pass replays one step at a
    /// time; beyond, the spacing doubles as often as needed (see
    /// [`node_solvers::StepTrace`]) and each replayed stretch holds the graph of that many
    /// steps. Default 64.
    pub checkpoints: usize,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        Self { checkpoints: 64 }
    }
}

impl CheckpointOptions {
    /// Sets the largest number of stored states.
    pub fn checkpoints(mut self, n: usize) -> Self {
        self.checkpoints = n;
        self
    }
}

/// Options of reversible backprop ([`crate::odeint_reversible_adjoint`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReversibleOptions {
    /// The coupling `λ ∈ (0, 1]` of the reversible scheme ([`node_solvers::reversible`]).
    /// Below 1 the pair `(y, z)` stays together (at 1 the scheme is only weakly stable); the
    /// backward pass divides by `λ` every step, so round-off in the reconstructed states
    /// grows like `λ^(−n)` over `n` steps: keep it near 1. Default 0.999 (diffrax's).
    pub coupling: f64,
}

impl Default for ReversibleOptions {
    fn default() -> Self {
        Self {
            coupling: node_solvers::DEFAULT_COUPLING,
        }
    }
}

impl ReversibleOptions {
    /// Sets the coupling `λ`.
    pub fn coupling(mut self, coupling: f64) -> Self {
        self.coupling = coupling;
        self
    }
}

//! Neural delay differential equations (Zhu, Guo & Lin, "Neural Delay Differential
//! Equations", ICLR 2021): `dy/dt = g_θ(y(t), y(t − τ_1), …, y(t − τ_k))` with `g_θ` a
//! network, solved by [`node_solvers::delay::ddeint`] and trained by backprop through the
//! solve. Their flows can cross where an ODE's cannot: a one-dimensional ODE is monotone,
//! a one-dimensional delay equation oscillates (Mackey–Glass,
//! [`node_solvers::problems::MackeyGlass`]).

use crate::layers::{Activation, Mlp};
use candle_core::{Result, Tensor, Var};
use candle_nn::{Module, VarBuilder};
use node_adjoint::{ddeint_adjoint, AdjointSolution, DelayHistory, ParamDelayField};
use node_solvers::delay::{ddeint, DelayField, History};
use node_solvers::{Solution, SolveOptions};

/// `g_θ(y, y(t − τ_1), …) = MLP([y, y(t − τ_1), …])` on states `[..., D]`: the network reads
/// the state and its lagged copies side by side (`D · (k + 1)` inputs), `depth` hidden
/// layers of `width` with `tanh`.
#[derive(Clone, Debug)]
pub struct NeuralDde {
    mlp: Mlp,
    state: usize,
    delays: Vec<f64>,
}

impl NeuralDde {
    /// The model for states of `state` components and these delays, parameters under `vb`
    /// (`mlp.layer0`, …).
    ///
    /// # Errors
    /// No delays, a delay that is not finite and positive, `state`, `width` or `depth` zero;
    /// those of `vb`.
    pub fn new(
        state: usize,
        delays: &[f64],
        width: usize,
        depth: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if delays.is_empty() || delays.iter().any(|d| !(d.is_finite() && *d > 0.0)) {
            candle_core::bail!("a neural DDE needs delays, each finite and > 0, got {delays:?}");
        }
        if state == 0 || width == 0 || depth == 0 {
            candle_core::bail!(
                "a neural DDE needs a state, a width and a depth above 0, got {state}, {width}, {depth}"
            );
        }
        let inputs = state * (delays.len() + 1);
        let mlp = Mlp::new(
            inputs,
            state,
            width,
            depth,
            Activation::Tanh,
            false,
            vb.pp("mlp"),
        )?;
        Ok(Self {
            mlp,
            state,
            delays: delays.to_vec(),
        })
    }

    /// The delays, in the order the lagged states are read.
    pub fn delays(&self) -> &[f64] {
        &self.delays
    }

    /// The trained `Var`s.
    ///
    /// # Errors
    /// Candle errors.
    pub fn vars(&self) -> Result<Vec<Var>> {
        self.mlp.vars()
    }

    /// Solves from `y0` at `ts[0]` with `history` before it, by
    /// [`node_solvers::delay::ddeint`] (backprop through the solve gives the gradients).
    ///
    /// # Shapes
    /// `y0`: `[..., D]`. Result: `[ts.len(), ..., D]`.
    ///
    /// # Errors
    /// Those of [`node_solvers::delay::ddeint`]; a last dimension other than `D`.
    pub fn solve(
        &self,
        y0: &Tensor,
        history: History<'_>,
        ts: &[f64],
        opts: &SolveOptions,
    ) -> Result<Solution> {
        self.check_state(y0)?;
        Ok(ddeint(self, &self.delays, history, y0, ts, opts)?.0)
    }

    /// As [`NeuralDde::solve`], with gradients by the adjoint method
    /// ([`node_adjoint::ddeint_adjoint`]): the backward pass solves the adjoint's equation
    /// with `adjoint_opts` instead of backpropagating through every stage's network.
    ///
    /// # Shapes
    /// As [`NeuralDde::solve`].
    ///
    /// # Errors
    /// Those of [`node_adjoint::ddeint_adjoint`]; a last dimension other than `D`.
    pub fn solve_adjoint(
        &self,
        y0: &Tensor,
        history: DelayHistory,
        ts: &[f64],
        opts: &SolveOptions,
        adjoint_opts: &SolveOptions,
    ) -> Result<AdjointSolution> {
        self.check_state(y0)?;
        ddeint_adjoint(self, &self.delays, history, y0, ts, opts, adjoint_opts)
    }

    fn check_state(&self, y0: &Tensor) -> Result<()> {
        if y0.dims().last() != Some(&self.state) {
            candle_core::bail!(
                "the neural DDE's state has {} components, the initial state's shape is {:?}",
                self.state,
                y0.dims()
            );
        }
        Ok(())
    }
}

impl ParamDelayField for NeuralDde {
    fn params(&self) -> Vec<Var> {
        self.mlp.vars().unwrap_or_default()
    }
}

impl DelayField for NeuralDde {
    fn eval(&self, _t: f64, y: &Tensor, lagged: &[Tensor]) -> Result<Tensor> {
        if lagged.len() != self.delays.len() {
            candle_core::bail!(
                "the neural DDE has {} delays and was given {} lagged states",
                self.delays.len(),
                lagged.len()
            );
        }
        let mut parts = vec![y.clone()];
        parts.extend(lagged.iter().cloned());
        self.mlp.forward(&Tensor::cat(&parts, y.rank() - 1)?)
    }
}

//! `ddeint_adjoint`: gradients of a delay equation's solve by the adjoint method, as one
//! Candle op.
//!
//! For `dy/dt = f(t, y(t), y(t − τ_1), …; θ)` on `[t0, T]` and a loss `L` of the outputs
//! `y(t_i)`, the adjoint `λ(t) = ∂L/∂y(t)` obeys an advanced equation (Zhu et al. 2021, after
//! Kolmanovskii & Myshkis): `dλ/dt = −λ(t)ᵀ ∂f/∂y(t) − Σ_j λ(t + τ_j)ᵀ ∂f/∂y_j(t + τ_j)`, the
//! second term only where `t + τ_j < T`, with `∂L/∂y(t_i)` added at each output time; and
//! `dL/dθ = ∫ λᵀ ∂f/∂θ dt`. In reversed time `s = −t` the advanced terms are delays, so the
//! reverse solve is itself a delay equation, solved by [`node_solvers::delay::ddeint`] in
//! one go: `λ = μ + G(t)` with `G` the sum of the gradients of the outputs after `t`, `μ`
//! continuous and zero from `T` on, `G`'s jumps (at each output time, and a delay before)
//! jumps of the reverse field. `y(t)` and its lagged values come from the forward
//! solve's dense solution ("interpolated"). With the constant history (`y = y0` before
//! `t0`), `dL/dy0` also gathers `∫ λᵀ ∂f/∂y_j` over the times whose lag `t − τ_j` falls
//! before `t0`.
//!
//! The vector–Jacobian products come from Candle autograd on fresh `Var`s: one at `t` and one
//! at each `t + τ_j` per evaluation of the reverse field; `dL/dθ` is integrated over each
//! reverse step afterwards by Gauss–Legendre quadrature (four products a step), so that the
//! reverse state is `[μ, c]` alone. Memory: the forward dense solution (detached: no graph of
//! the network) and the reverse one (two state-sized vectors a stage), not the graph of
//! every stage.

use crate::adjoint::{
    check_not_empty, check_param_list, flat_grad, flat_params, AdjointSolution, AdjointStats,
};
use crate::op::{Precomputed, SolveOp};
use candle_core::{Result, Shape, Tensor, Var};
use node_solvers::delay::{breakpoints, ddeint, DelayField, History};
use node_solvers::{DenseSolution, SolveOptions};
use std::sync::Arc;

/// A [`DelayField`] whose parameters θ are Candle `Var`s, for [`ddeint_adjoint`].
///
/// `params` must return the same `Var`s in the same order on every call; they share the
/// state's dtype.
pub trait ParamDelayField: DelayField {
    /// The parameters θ, in a stable order.
    fn params(&self) -> Vec<Var>;
}

/// A delay closure with the `Var`s it uses ([`with_delay_params`]).
#[derive(Clone)]
pub struct WithDelayParams<F> {
    f: F,
    params: Vec<Var>,
}

/// Attaches the parameters `params` to the delay closure `f`, for [`ddeint_adjoint`].
pub fn with_delay_params<F>(f: F, params: Vec<Var>) -> WithDelayParams<F>
where
    F: Fn(f64, &Tensor, &[Tensor]) -> Result<Tensor>,
{
    WithDelayParams { f, params }
}

impl<F: Fn(f64, &Tensor, &[Tensor]) -> Result<Tensor>> DelayField for WithDelayParams<F> {
    fn eval(&self, t: f64, y: &Tensor, lagged: &[Tensor]) -> Result<Tensor> {
        (self.f)(t, y, lagged)
    }
}

impl<F: Fn(f64, &Tensor, &[Tensor]) -> Result<Tensor>> ParamDelayField for WithDelayParams<F> {
    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// The state before `t0` for [`ddeint_adjoint`]: kept by the op for the reverse solve.
#[derive(Clone)]
pub enum DelayHistory {
    /// `y(t) = y0` before `t0`: its gradient goes to `y0`.
    Constant,
    /// `y(t) = φ(t)` before `t0`, given data: its values get no gradient.
    Function(Arc<dyn Fn(f64) -> Result<Tensor> + Send + Sync>),
}

impl std::fmt::Debug for DelayHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DelayHistory::Constant => f.write_str("DelayHistory::Constant"),
            DelayHistory::Function(_) => f.write_str("DelayHistory::Function(..)"),
        }
    }
}

/// Solves the delay equation `dy/dt = f(t, y(t), y(t − τ_1), …; θ)` from `y(ts[0]) = y0`
/// like [`node_solvers::delay::ddeint`], with gradients by the adjoint method:
/// `loss.backward()` reaches `y0` (through the solution and, with
/// [`DelayHistory::Constant`], through the history) and every parameter in `f.params()`.
///
/// The forward solve runs detached and keeps its dense solution (no graph); the backward pass
/// solves the adjoint's advanced equation in reversed time as a delay equation (see the
/// module's documentation) with `adjoint_opts` (the forward's options are a good start;
/// its `method` must have a dense output, as the forward's). The gradients are those of the
/// continuous problem: they match backprop through the solver up to the two solves' errors.
/// Memory: the two dense solutions, not the network's graph at every stage, which is what
/// backprop through `ddeint` keeps.
///
/// # Shapes
/// `y0`: any shape `S`; result `ys`: `[ts.len(), ...S]`.
///
/// # Errors
/// Those of [`node_solvers::delay::ddeint`]; parameters of another dtype than `y0`; and,
/// during `backward()`, those of the reverse solve.
pub fn ddeint_adjoint<F>(
    f: &F,
    delays: &[f64],
    history: DelayHistory,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
    adjoint_opts: &SolveOptions,
) -> Result<AdjointSolution>
where
    F: ParamDelayField + Clone + Send + Sync + 'static,
{
    let params = f.params();
    let sources: Vec<Tensor> = params.iter().map(|p| p.as_tensor().clone()).collect();
    check_param_list(&params, &sources, y0)?;
    check_not_empty(y0)?;
    adjoint_opts.validate()?;
    let y0d = y0.detach();
    let detached = Detached(f);
    let (sol, dense) = {
        let phi;
        let h = match &history {
            DelayHistory::Constant => History::Constant,
            DelayHistory::Function(p) => {
                phi = |t: f64| Ok(p(t)?.detach());
                History::Function(&phi)
            }
        };
        ddeint(&detached, delays, h, &y0d, ts, opts)?
    };
    let stats = AdjointStats::default();
    stats.lock().0 = sol.stats;
    let op = SolveOp(Arc::new(Inner {
        f: f.clone(),
        params: params.clone(),
        delays: delays.to_vec(),
        history,
        y0: y0d,
        ts: ts.to_vec(),
        ys: sol.ys.detach().contiguous()?,
        dense,
        opts: adjoint_opts.clone(),
        stats: stats.clone(),
    }));
    let ys = match flat_params(&sources)? {
        None => y0.apply_op1(op)?,
        Some(theta) => y0.apply_op2(&theta, op)?,
    };
    Ok(AdjointSolution { ys, stats })
}

/// The field with its outputs detached: the forward solve keeps no graph.
struct Detached<'a, F>(&'a F);

impl<F: DelayField> DelayField for Detached<'_, F> {
    fn eval(&self, t: f64, y: &Tensor, lagged: &[Tensor]) -> Result<Tensor> {
        Ok(self.0.eval(t, y, lagged)?.detach())
    }
}

struct Inner<F> {
    f: F,
    params: Vec<Var>,
    delays: Vec<f64>,
    history: DelayHistory,
    y0: Tensor,
    ts: Vec<f64>,
    ys: Tensor,
    dense: DenseSolution,
    opts: SolveOptions,
    stats: AdjointStats,
}

impl<F: ParamDelayField> Inner<F> {
    /// The forward state `y(t − d)` for an evaluation at `t`: the dense solution from `t0`
    /// on, the history before. The side is decided by `t` against `t0 + d`, the float the
    /// reverse solve steps to as a jump, as `ddeint` decides it (the rounded `t − d` can
    /// land on `t0` from just before the jump, and read the wrong side of a history that
    /// jumps there).
    fn state(&self, t: f64, d: f64) -> Result<Tensor> {
        let t0 = self.ts[0];
        if t >= t0 + d {
            return self.dense.evaluate_extended(t - d);
        }
        match &self.history {
            DelayHistory::Constant => Ok(self.y0.clone()),
            DelayHistory::Function(p) => Ok(p((t - d).min(t0))?.detach()),
        }
    }

    /// `y(t)` and its lagged values.
    fn arguments(&self, t: f64) -> Result<(Tensor, Vec<Tensor>)> {
        let y = self.state(t, 0.0)?;
        let lagged = self
            .delays
            .iter()
            .map(|&d| self.state(t, d))
            .collect::<Result<Vec<_>>>()?;
        Ok((y, lagged))
    }

    /// `λᵀ ∂f/∂(y, y_1, …, θ)` at `t`: the state's, each lagged state's and the flat
    /// parameters' parts.
    fn vjp(&self, t: f64, lam: &Tensor) -> Result<(Tensor, Vec<Tensor>, Option<Tensor>)> {
        let (y, lagged) = self.arguments(t)?;
        let y = Var::from_tensor(&y)?;
        let lagged = lagged
            .iter()
            .map(Var::from_tensor)
            .collect::<Result<Vec<_>>>()?;
        let lag_tensors: Vec<Tensor> = lagged.iter().map(|v| v.as_tensor().clone()).collect();
        let out = self.f.eval(t, y.as_tensor(), &lag_tensors)?;
        let grads = (out * lam)?.sum_all()?.backward()?;
        let gy = flat_grad(&grads, y.as_tensor())?;
        let glag = lagged
            .iter()
            .map(|v| flat_grad(&grads, v.as_tensor()))
            .collect::<Result<Vec<_>>>()?;
        let gtheta = if self.params.is_empty() {
            None
        } else {
            let parts = self
                .params
                .iter()
                .map(|p| flat_grad(&grads, p.as_tensor()))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&parts, 0)?)
        };
        Ok((gy, glag, gtheta))
    }

    fn backward(&self, grad_ys: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let g = grad_ys.detach();
        let shape = self.y0.shape().clone();
        let n = shape.elem_count();
        let p: usize = self.params.iter().map(|v| v.elem_count()).sum();
        let (t0, t_end) = (self.ts[0], self.ts[self.ts.len() - 1]);
        let last = self.ts.len() - 1;
        let dev = self.y0.device();
        let dtype = self.y0.dtype();
        let zeros = |k: usize| Tensor::zeros(k, dtype, dev);
        // λ jumps by each output's gradient: λ = μ + G(t), `G(t) = Σ_{k ≥ 1, t < t_k} g_k`
        // (`tails[k]` from the `k`-th output on), and μ is continuous, zero from `T` on. So
        // one reverse solve of the state [μ, c] (c: the constant history's gradient) from
        // `T` to `t0`, with `G`'s jumps (at each `t_k`, and at `t_k − τ_j` through a delay)
        // as jumps of its field, instead of a solve per interval between outputs.
        let mut tails = vec![zeros(n)?; last + 2];
        for k in (1..=last).rev() {
            tails[k] = (&tails[k + 1] + g.get(k)?.flatten_all()?)?;
        }
        // Where the reverse field is not smooth, in reversed time: the forward solution's
        // kinks and where c starts, and G's jumps, directly and through each delay.
        let order = self.opts.method.order().max(1);
        let (first, later) = breakpoints(t0, t_end, &self.delays, order);
        let mut jumps: Vec<f64> = first.iter().chain(&later).map(|t| -t).collect();
        for &tk in &self.ts[1..] {
            jumps.push(-tk);
            jumps.extend(self.delays.iter().map(|d| d - tk));
        }
        let opts = self.opts.clone().jump_ts(
            self.opts
                .jump_ts
                .iter()
                .copied()
                .chain(jumps)
                .collect::<Vec<_>>(),
        );
        let field = Reverse {
            inner: self,
            n,
            shape: &shape,
            t_end,
            tails: &tails,
        };
        let start = zeros(2 * n)?;
        let (sol, dense) = ddeint(
            &field,
            &self.delays,
            History::Constant,
            &start,
            &[-t_end, -t0],
            &opts,
        )?;
        self.stats.lock().1 = sol.stats;
        let state = sol.last()?;
        // λ(t0) = μ(t0) + G(t0) + g_0.
        let lam = ((state.narrow(0, 0, n)? + &tails[1])? + g.get(0)?.flatten_all()?)?;
        let c = state.narrow(0, n, n)?;
        let gy0 = match self.history {
            DelayHistory::Constant => (lam + c)?,
            DelayHistory::Function(_) => lam,
        }
        .reshape(shape.clone())?;
        let gtheta = if p == 0 {
            None
        } else {
            Some(self.parameter_integral(&dense, &field)?)
        };
        Ok((gy0, gtheta))
    }

    /// `∫ λᵀ ∂f/∂θ dt` by four-point Gauss–Legendre quadrature on each step of the reverse
    /// solve (exact for polynomials of degree 7; the steps keep to the kinks and jumps, so
    /// the integrand is smooth on each): four vector–Jacobian products a step.
    fn parameter_integral(
        &self,
        reverse: &DenseSolution,
        field: &Reverse<'_, F>,
    ) -> Result<Tensor> {
        const NODES: [f64; 4] = [
            0.069_431_844_202_973_71,
            0.330_009_478_207_571_9,
            0.669_990_521_792_428_1,
            0.930_568_155_797_026_3,
        ];
        const WEIGHTS: [f64; 4] = [
            0.173_927_422_568_726_93,
            0.326_072_577_431_273_07,
            0.326_072_577_431_273_07,
            0.173_927_422_568_726_93,
        ];
        let mut acc: Option<Tensor> = None;
        for w in reverse.step_times().windows(2) {
            let h = w[1] - w[0];
            for (x, wq) in NODES.iter().zip(WEIGHTS) {
                let s = w[0] + x * h;
                let lam = field.lambda(-s, &reverse.evaluate(s)?)?;
                if let (_, _, Some(gt)) = self.vjp(-s, &lam)? {
                    let term = gt.affine(wq * h, 0.0)?;
                    acc = Some(match acc {
                        Some(a) => (a + term)?,
                        None => term,
                    });
                }
            }
        }
        match acc {
            Some(a) => Ok(a),
            None => {
                let p: usize = self.params.iter().map(|v| v.elem_count()).sum();
                Tensor::zeros(p, self.y0.dtype(), self.y0.device())
            }
        }
    }
}

/// The adjoint's reverse field in `s = −t` on `[μ, c]`, `λ = μ + G(t)`:
/// `dμ/ds = λᵀ∂f/∂y(t) + Σ_j λ(t + τ_j)ᵀ ∂f/∂y_j(t + τ_j)` (where `t + τ_j < T`),
/// `dc/ds = Σ_{j: t − τ_j < t0} λᵀ∂f/∂y_j(t)`; the lagged states are at `s − τ_j`, i.e.
/// `t + τ_j`.
struct Reverse<'a, F> {
    inner: &'a Inner<F>,
    n: usize,
    shape: &'a Shape,
    t_end: f64,
    /// `tails[k] = Σ_{m ≥ k} g_m` (flat), `tails[last + 1] = 0`.
    tails: &'a [Tensor],
}

impl<F: ParamDelayField> Reverse<'_, F> {
    /// `λ` at `t` from the reverse state there: `μ + G(t)`, in the state's shape. `t` is
    /// compared with the output times, the floats the reverse solve steps to as jumps.
    fn lambda(&self, t: f64, state: &Tensor) -> Result<Tensor> {
        self.lambda_shifted(t, 0.0, state)
    }

    /// `λ(t + d)` from the reverse state at `t + d`: `G` by `t < t_k − d` (the jump's float).
    fn lambda_shifted(&self, t: f64, d: f64, state: &Tensor) -> Result<Tensor> {
        let ts = &self.inner.ts;
        // The first output after `t + d`, by the test the jumps are placed with (`t_k − d`;
        // the times increase, so it is monotone).
        let k = 1 + ts[1..].partition_point(|&tk| t >= tk - d);
        (state.narrow(0, 0, self.n)? + &self.tails[k])?.reshape(self.shape)
    }
}

impl<F: ParamDelayField> DelayField for Reverse<'_, F> {
    fn eval(&self, s: f64, state: &Tensor, lagged: &[Tensor]) -> Result<Tensor> {
        let inner = self.inner;
        let t = -s;
        let t0 = inner.ts[0];
        let lam = self.lambda(t, state)?;
        let (gy, glag, _) = inner.vjp(t, &lam)?;
        let mut dmu = gy;
        let mut dc = dmu.zeros_like()?;
        for (j, (d, lag)) in inner.delays.iter().zip(lagged).enumerate() {
            // Both switches compare `t` with the very floats the reverse solve steps to as
            // jumps (`t0 + d`, `T − d`), so that an evaluation just past a jump falls on its
            // side: `t + d < T` rounds to false at `t = T − d − ulp`, and the step after
            // the jump would start from the field before it (O(1) defects, tiny steps).
            if t < t0 + d {
                dc = (dc + &glag[j])?;
            }
            if t < self.t_end - d {
                let lam_ahead = self.lambda_shifted(t, *d, lag)?;
                let (_, ahead, _) = inner.vjp(t + d, &lam_ahead)?;
                dmu = (dmu + &ahead[j])?;
            }
        }
        Tensor::cat(&[dmu, dc], 0)
    }
}

impl<F: ParamDelayField + Send + Sync + 'static> Precomputed for Inner<F> {
    const NAME: &'static str = "ddeint-adjoint";
    fn solution(&self) -> &Tensor {
        &self.ys
    }
    fn gradients(
        &self,
        grad: &Tensor,
        _times: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let (gy0, gtheta) = self.backward(grad)?;
        Ok((gy0, gtheta, None))
    }
}

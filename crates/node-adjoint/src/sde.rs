//! `sdeint_adjoint`: gradients through an SDE solve by the stochastic adjoint method, as
//! one Candle op (Li, Wong, Chen & Duvenaud 2020, *Scalable gradients for stochastic
//! differential equations*; torchsde's `sdeint_adjoint`).
//!
//! For a Stratonovich SDE `dy = f(t, y; θ) dt + g(t, y; θ) ∘ dW` and a loss `L` of the
//! outputs, the adjoint `a(t) = ∂L/∂y(t)` obeys, backwards in time along the *same*
//! Brownian path, `da = −aᵀ ∂f/∂y dt − aᵀ ∂g/∂y ∘ dW`, and `dL/dθ = ∫ aᵀ ∂f/∂θ dt +
//! aᵀ ∂g/∂θ ∘ dW`. The reverse solve integrates `[y, a, g_θ]` from the last output time to
//! the first, `y` reconstructed backwards (the Stratonovich solution runs backwards along
//! its path), one interval at a time, re-anchoring `y` at each output and adding that
//! output's gradient to `a`. Each stage's increment `D = f h + g · ΔW` is differentiated
//! once by Candle autograd: `[D, −aᵀ∂D/∂y, −aᵀ∂D/∂θ]` is the augmented increment, so
//! one vector–Jacobian product covers the drift and the diffusion. Memory is O(outputs),
//! not O(steps); the gradients differ from backprop through the solver by the error of
//! the reverse solve, which falls with the step.

use crate::adjoint::GradientStats;
use crate::adjoint::{check_not_empty, check_param_list, flat_grad, flat_params, VjpSeed};
use crate::field::WithParams;
use crate::op::{Precomputed, SolveOp};
use candle_core::{Result, Shape, Tensor, Var};
use node_solvers::{
    rk::concat_flat, sdeint, sdeint_increments, step_times, AdditiveSde, BrownianPath, Calculus,
    DetachedSde, Noise, ReversibleHeunState, SdeAdaptive, SdeField, SdeIncrement, SdeMethod,
    SdeOptions, SdeStats, SolverError,
};
use std::sync::Arc;

/// An [`SdeField`] `(f, g)(t, y; θ)` whose parameters θ are Candle `Var`s, for
/// [`sdeint_adjoint`]: the same contract as [`crate::ParamVectorField`] (a stable order, the
/// state's dtype, [`crate::TensorParam`]s through `param_sources`, which
/// [`WithParams::with_tensor_params`] sets).
pub trait ParamSdeField: SdeField {
    /// The parameters θ of the drift and the diffusion, in a stable order.
    fn params(&self) -> Vec<Var>;

    /// Where each parameter's gradient goes (see
    /// [`crate::ParamVectorField::param_sources`]); the default is the parameters.
    fn param_sources(&self) -> Vec<Tensor> {
        self.params()
            .iter()
            .map(|p| p.as_tensor().clone())
            .collect()
    }
}

/// Makes a [`ParamSdeField`] of a drift and a diffusion closure and the `Var`s they use:
/// `with_sde_params(f, g, vec![w, sigma])`.
pub fn with_sde_params<F, G>(drift: F, diffusion: G, params: Vec<Var>) -> WithParams<(F, G)>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
    G: Fn(f64, &Tensor) -> Result<Tensor>,
{
    WithParams::from_parts((drift, diffusion), params, Vec::new())
}

impl<F, G> SdeField for WithParams<(F, G)>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
    G: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn drift(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        (self.inner().0)(t, y)
    }
    fn diffusion(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        (self.inner().1)(t, y)
    }
}

impl<F, G> ParamSdeField for WithParams<(F, G)>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
    G: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn params(&self) -> Vec<Var> {
        self.all_params()
    }
    fn param_sources(&self) -> Vec<Tensor> {
        self.all_sources()
    }
}

/// Makes a [`ParamSdeField`] with additive noise ([`AdditiveSde`]) of a drift closure, a
/// diffusion closure of time only and the `Var`s they use, for the methods for additive
/// noise ([`SdeMethod::Shark`] and its kin):
/// `with_additive_sde_params(f, |t| sigma.affine(1.0 + t, 0.0), vec![w, sigma_var])`.
pub fn with_additive_sde_params<F, G>(
    drift: F,
    diffusion: G,
    params: Vec<Var>,
) -> WithParams<AdditiveSde<F, G>>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
    G: Fn(f64) -> Result<Tensor>,
{
    WithParams::from_parts(AdditiveSde::new(drift, diffusion), params, Vec::new())
}

impl<F, G> SdeField for WithParams<AdditiveSde<F, G>>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
    G: Fn(f64) -> Result<Tensor>,
{
    fn drift(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        self.inner().drift(t, y)
    }
    fn diffusion(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        self.inner().diffusion(t, y)
    }
    fn additive_noise(&self) -> bool {
        true
    }
}

impl<F, G> ParamSdeField for WithParams<AdditiveSde<F, G>>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
    G: Fn(f64) -> Result<Tensor>,
{
    fn params(&self) -> Vec<Var> {
        self.all_params()
    }
    fn param_sources(&self) -> Vec<Tensor> {
        self.all_sources()
    }
}

/// Options of the reverse solve of [`sdeint_adjoint`]. Unset fields take the forward
/// solve's values.
#[derive(Clone, Debug, Default)]
pub struct SdeAdjointOptions {
    /// The reverse solve's method: [`SdeMethod::Heun`] or [`SdeMethod::Midpoint`]. By
    /// default the forward method when it is one of these, Heun otherwise.
    pub method: Option<SdeMethod>,
    /// The reverse solve's largest step (with fixed steps) or first step (adaptive).
    pub dt: Option<f64>,
    /// The reverse solve's error control, over the whole augmented state `[y, a, g_θ]`
    /// (torchsde's `adjoint_rtol`, `adjoint_atol`). Unset: the forward solve's, so the
    /// reverse solve is adaptive exactly when the forward one is.
    pub adaptive: Option<SdeAdaptive>,
}

/// Forward and backward counts of [`sdeint_adjoint`] (each evaluation of the augmented
/// increment counts as one drift and one diffusion evaluation; the reverse solves' counts
/// are summed over the intervals).
pub type SdeAdjointStats = GradientStats<SdeStats>;

/// The result of [`sdeint_adjoint`].
#[derive(Clone, Debug)]
pub struct SdeAdjointSolution {
    /// The states at the output times, `[ts.len(), ...y0.shape]`, differentiable with
    /// respect to `y0` and the parameters.
    pub ys: Tensor,
    /// Forward and backward counts.
    pub stats: SdeAdjointStats,
}

/// Solves `dy = f(t, y; θ) dt + g(t, y; θ) ∘ dW` along the path `bm` like
/// [`node_solvers::sdeint`], as an op whose backward runs the stochastic adjoint: gradients
/// to `y0` and to the parameters ([`ParamSdeField::params`]), memory independent of the
/// steps.
///
/// With [`SdeMethod::ReversibleHeun`] (Kidger et al. 2021) the backward pass solves no
/// adjoint SDE: it walks the forward steps back by their closed-form inverse from the state
/// carried at the last time, and differentiates each step on the way, for the gradient of
/// the discrete solve itself (backprop's, to round-off) with one evaluation of each term per
/// step and memory independent of the steps. [`SdeAdjointOptions`] does not apply then.
///
/// The adjoint holds for Stratonovich SDEs: the forward method must be
/// [`SdeMethod::Heun`], [`SdeMethod::Midpoint`], [`SdeMethod::StratonovichMilstein`] or
/// [`SdeMethod::ReversibleHeun`], or for additive noise (where the two calculi agree)
/// [`SdeMethod::Shark`], [`SdeMethod::Sra1`] or [`SdeMethod::Sea`] (their terms built with
/// [`with_additive_sde_params`], the path with Lévy area; the reverse solve is Heun's, of
/// order 1). (An
/// Itô SDE `dy = f dt + g dW` with diagonal noise is the Stratonovich SDE with drift
/// `f − ½ g ∂g/∂y`.) The path is queried again, backwards, by the reverse solve, so it must
/// give the same increments every time, as [`node_solvers::VirtualBrownianTree`] does; the
/// op keeps a clone of it.
///
/// # Shapes
/// As [`node_solvers::sdeint`]. The parameters share the state's dtype.
///
/// # Errors
/// Those of [`node_solvers::sdeint`]; [`SolverError::InvalidOptions`] for an Itô method, a
/// reverse method other than Heun or the midpoint method, or parameters that do not match
/// their sources. Errors of the reverse solve surface from `backward()`.
///
/// # Example
/// Geometric Brownian motion `dy = μ y dt + σ y ∘ dW`: `y(1) = y0 exp(μ + σ W(1))`, so
/// `∂y(1)/∂μ = y(1)`.
/// ```
/// use candle_core::{DType, Device, Tensor, Var};
/// use node_adjoint::{sdeint_adjoint, with_sde_params, SdeAdjointOptions};
/// use node_solvers::{BrownianPath, SdeMethod, SdeOptions, VirtualBrownianTree};
/// # fn main() -> candle_core::Result<()> {
/// let dev = Device::Cpu;
/// let mu = Var::new(0.5f64, &dev)?;
/// let m = mu.as_tensor().clone();
/// let sde = with_sde_params(
///     move |_t: f64, y: &Tensor| y.broadcast_mul(&m),
///     |_t: f64, y: &Tensor| y.affine(0.8, 0.0),
///     vec![mu.clone()],
/// );
/// let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-6, 1, 3, DType::F64, &dev)?;
/// let y0 = Tensor::new(&[1.0f64], &dev)?;
/// let opts = SdeOptions::default().method(SdeMethod::Heun).dt(1e-3);
/// let sol = sdeint_adjoint(&sde, &y0, &[0.0, 1.0], &bm, &opts, &SdeAdjointOptions::default())?;
/// let y1 = sol.ys.get(1)?.sum_all()?;
/// let grads = y1.backward()?;
/// let dmu = grads.get(mu.as_tensor()).unwrap().to_scalar::<f64>()?;
/// let exact = (0.5 + 0.8 * bm.value(1.0)?.to_vec1::<f64>()?[0]).exp();
/// assert!((dmu - exact).abs() < 1e-2 * exact);
/// # Ok(()) }
/// ```
pub fn sdeint_adjoint<F, B>(
    sde: &F,
    y0: &Tensor,
    ts: &[f64],
    bm: &B,
    opts: &SdeOptions,
    adj: &SdeAdjointOptions,
) -> Result<SdeAdjointSolution>
where
    F: ParamSdeField + Clone + Send + Sync + 'static,
    B: BrownianPath + Clone + Send + Sync + 'static,
{
    if opts.method.calculus() != Calculus::Stratonovich {
        return Err(SolverError::InvalidOptions(format!(
            "the SDE adjoint needs a Stratonovich method (heun, midpoint, \
             stratonovich_milstein or reversible_heun), got `{}`: write the Itô SDE in \
             Stratonovich form (drift f − ½ g ∂g/∂y for diagonal noise)",
            opts.method
        ))
        .into());
    }
    let reverse = reverse_options(opts, adj)?;
    let params = sde.params();
    let sources = sde.param_sources();
    check_param_list(&params, &sources, y0)?;
    check_not_empty(y0)?;
    // The forward solve builds no graph.
    let sol = sdeint(&DetachedSde(sde), &y0.detach(), ts, bm, opts)?;
    let walk_back = match (opts.method, sol.reversible) {
        (SdeMethod::ReversibleHeun, Some(last)) => Some((last, opts.dt)),
        _ => None,
    };
    let stats = SdeAdjointStats::default();
    stats.lock().0 = sol.stats;
    let op = SolveOp(Arc::new(Inner {
        sde: sde.clone(),
        bm: bm.clone(),
        params,
        ts: ts.to_vec(),
        ys: sol.ys.contiguous()?,
        noise: opts.noise,
        reverse,
        walk_back,
        stats: stats.clone(),
    }));
    let ys = match flat_params(&sources)? {
        None => y0.apply_op1(op)?,
        Some(theta) => y0.apply_op2(&theta, op)?,
    };
    Ok(SdeAdjointSolution { ys, stats })
}

/// The reverse solve's options, checked.
fn reverse_options(opts: &SdeOptions, adj: &SdeAdjointOptions) -> Result<SdeOptions> {
    let default = match opts.method {
        SdeMethod::Heun | SdeMethod::Midpoint => opts.method,
        _ => SdeMethod::Heun,
    };
    let method = adj.method.unwrap_or(default);
    if !matches!(method, SdeMethod::Heun | SdeMethod::Midpoint) {
        return Err(SolverError::InvalidOptions(format!(
            "the SDE adjoint's reverse solve runs heun or midpoint, got `{method}`"
        ))
        .into());
    }
    let reverse = SdeOptions {
        method,
        dt: adj.dt.unwrap_or(opts.dt),
        adaptive: adj.adaptive.or(opts.adaptive),
        // The augmented increment mixes ΔW into every component itself.
        noise: Noise::Diagonal,
        max_steps: opts.max_steps,
        check_finite: opts.check_finite,
    };
    reverse.validate()?;
    Ok(reverse)
}

struct Inner<F, B> {
    sde: F,
    bm: B,
    params: Vec<Var>,
    ts: Vec<f64>,
    ys: Tensor,
    noise: Noise,
    reverse: SdeOptions,
    /// For reversible Heun: the carried state at the last time and the step, to walk the
    /// steps back instead of solving the adjoint SDE.
    walk_back: Option<(ReversibleHeunState, f64)>,
    stats: SdeAdjointStats,
}

/// The drift and the diffusion at `(t, y)`, checked against the state's and the diffusion's
/// shapes.
fn eval_terms<F: SdeField + ?Sized>(
    sde: &F,
    t: f64,
    y: &Tensor,
    diffusion: &Shape,
) -> Result<(Tensor, Tensor)> {
    let f = sde.drift(t, y)?;
    let g = sde.diffusion(t, y)?;
    for (what, out, want) in [("drift", &f, y.shape()), ("diffusion", &g, diffusion)] {
        if out.shape() != want {
            return Err(SolverError::OutputMismatch(format!(
                "the {what} has shape {:?}, expected {:?} (at t = {t})",
                out.dims(),
                want.dims()
            ))
            .into());
        }
    }
    Ok((f, g))
}

/// The terms at a leaf `ŷ`, with their graph.
struct Terms {
    var: Var,
    mu: Tensor,
    sigma: Tensor,
}

/// The augmented increment `[D, −aᵀ∂D/∂y, −aᵀ∂D/∂θ]` of `D = f h + g · ΔW` on the flat
/// state `[y, a, g_θ]`.
struct Augmented<'a, F> {
    sde: &'a F,
    params: &'a [Var],
    shape: &'a Shape,
    diffusion: Shape,
    noise: Noise,
    n: usize,
}

impl<F: ParamSdeField> SdeIncrement for Augmented<'_, F> {
    fn increment(&self, t: f64, aug: &Tensor, h: f64, dw: &Tensor) -> Result<Tensor> {
        let n = self.n;
        let y = aug.narrow(0, 0, n)?.reshape(self.shape)?;
        let a = aug.narrow(0, n, n)?.reshape(self.shape)?;
        let y_var = Var::from_tensor(&y)?;
        let (f, g) = eval_terms(self.sde, t, y_var.as_tensor(), &self.diffusion)?;
        let d = (f.affine(h, 0.0)? + self.noise.product(&g, dw, self.shape)?)?;
        // One backward pass from a root whose gradient with respect to `d` is −a.
        let grads = d.apply_op2(&a, VjpSeed)?.backward()?;
        let vjp = |v: &Tensor| flat_grad(&grads, v);
        let mut parts = Vec::with_capacity(2 + self.params.len());
        parts.push(d.detach().flatten_all()?);
        parts.push(vjp(y_var.as_tensor())?);
        for p in self.params {
            parts.push(vjp(p.as_tensor())?);
        }
        concat_flat(&parts)
    }
}

impl<F: ParamSdeField, B: BrownianPath> Inner<F, B> {
    /// `dL/dy0` and `dL/dθ` (flat).
    fn backward(&self, grad_ys: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let g = grad_ys.detach();
        if let Some((last, dt)) = &self.walk_back {
            return self.reversible_backward(&g, last, *dt);
        }
        let ts = &self.ts;
        let last = ts.len() - 1;
        let shape = Shape::from(self.ys.dims()[1..].to_vec());
        let n = shape.elem_count();
        let p: usize = self.params.iter().map(|v| v.elem_count()).sum();
        let aug = Augmented {
            sde: &self.sde,
            params: &self.params,
            shape: &shape,
            diffusion: self.noise.diffusion_shape(&shape, self.bm.shape())?,
            noise: self.noise,
            n,
        };
        let mut a = g.get(last)?;
        let mut g_theta = Tensor::zeros(p, self.ys.dtype(), self.ys.device())?;
        let mut stats = SdeStats::default();
        for i in (1..=last).rev() {
            let mut parts = vec![self.ys.get(i)?.flatten_all()?, a.flatten_all()?];
            if p > 0 {
                parts.push(g_theta.clone());
            }
            let aug0 = concat_flat(&parts)?;
            let sol = sdeint_increments(&aug, &aug0, &[ts[i], ts[i - 1]], &self.bm, &self.reverse)?;
            stats += sol.stats;
            let end = sol.last()?;
            a = end.narrow(0, n, n)?.reshape(&shape)?;
            if p > 0 {
                g_theta = end.narrow(0, 2 * n, p)?;
            }
            // The output at t_(i-1) adds its own gradient; y is re-anchored to the stored
            // forward value at the start of the next interval.
            a = (a + g.get(i - 1)?)?;
        }
        self.stats.lock().1 = stats;
        Ok((a.detach(), (p > 0).then_some(g_theta.detach())))
    }

    /// The drift and diffusion at `(t, ŷ)` from a fresh leaf, with their graph.
    fn terms(&self, t: f64, y_hat: &Tensor, diffusion: &Shape) -> Result<Terms> {
        let var = Var::from_tensor(y_hat)?;
        let (mu, sigma) = eval_terms(&self.sde, t, var.as_tensor(), diffusion)?;
        Ok(Terms { var, mu, sigma })
    }

    /// `cμᵀ ∂μ/∂(ŷ, θ) + cσᵀ ∂σ/∂(ŷ, θ)`: the gradients to `ŷ` and, flat, to the parameters.
    fn terms_vjp(
        &self,
        terms: &Terms,
        c_mu: &Tensor,
        c_sigma: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let root = ((&terms.mu * c_mu)?.sum_all()? + (&terms.sigma * c_sigma)?.sum_all()?)?;
        let grads = root.backward()?;
        let grad = |v: &Tensor| flat_grad(&grads, v);
        let g_y = grad(terms.var.as_tensor())?.reshape(terms.mu.shape())?;
        let mut parts = Vec::with_capacity(self.params.len());
        for p in &self.params {
            parts.push(grad(p.as_tensor())?);
        }
        let g_theta = if parts.is_empty() {
            Tensor::zeros(0, terms.mu.dtype(), terms.mu.device())?
        } else {
            concat_flat(&parts)?
        };
        Ok((g_y, g_theta))
    }

    /// Reversible Heun's steps walked back from the carried state at the last time: each
    /// step's inverse reconstructs `(y, ŷ)` before it, and autograd on the terms at `ŷ`
    /// carries the adjoint of `(y, ŷ, μ, σ)` back across it. One evaluation of each term per
    /// step (and one at the end); the gradient of the discrete solve, up to round-off.
    fn reversible_backward(
        &self,
        g: &Tensor,
        last: &ReversibleHeunState,
        dt: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let ts = &self.ts;
        let n_t = ts.len();
        let shape = last.y.shape().clone();
        let diffusion = self.noise.diffusion_shape(&shape, self.bm.shape())?;
        let p: usize = self.params.iter().map(|v| v.elem_count()).sum();
        let grids = step_times(ts, dt)?;
        let mut y = last.y.clone();
        let mut y_hat = last.y_hat.clone();
        let mut terms = self.terms(ts[n_t - 1], &y_hat, &diffusion)?;
        let mut a_y = g.get(n_t - 1)?;
        let mut a_hat = a_y.zeros_like()?;
        let mut a_mu = a_y.zeros_like()?;
        let mut a_sigma = terms.sigma.zeros_like()?.detach();
        let mut g_theta = Tensor::zeros(p, last.y.dtype(), last.y.device())?;
        let mut evals = 1;
        let mut steps = 0;
        for (i, grid) in grids.iter().enumerate().rev() {
            for k in (1..grid.len()).rev() {
                let (t0, t1) = (grid[k - 1], grid[k]);
                let h = t1 - t0;
                let dw = self.bm.increment(t0, t1)?;
                // The step's outputs (y₁, ŷ₁, μ₁, σ₁): μ₁ and σ₁ also enter y₁.
                let c_mu = (&a_mu + a_y.affine(0.5 * h, 0.0)?)?;
                let c_sigma = (&a_sigma
                    + self
                        .noise
                        .product_vjp(&a_y.affine(0.5, 0.0)?, &dw, &shape)?)?;
                let (g_hat, g_p) = self.terms_vjp(&terms, &c_mu, &c_sigma)?;
                if p > 0 {
                    g_theta = (g_theta + g_p)?;
                }
                let a_hat1 = (&a_hat + g_hat)?;
                // The inverse step: ŷ from ŷ₁ and the terms there, then y with the terms at ŷ.
                let (mu1, sigma1) = (terms.mu.detach(), terms.sigma.detach());
                let y_hat0 = ((y.affine(2.0, 0.0)? - &y_hat)?
                    - (mu1.affine(h, 0.0)? + self.noise.product(&sigma1, &dw, &shape)?)?)?;
                let terms0 = self.terms(t0, &y_hat0, &diffusion)?;
                evals += 1;
                steps += 1;
                let drift = (terms0.mu.detach() + &mu1)?.affine(0.5 * h, 0.0)?;
                let noise = self
                    .noise
                    .product(&(terms0.sigma.detach() + &sigma1)?, &dw, &shape)?
                    .affine(0.5, 0.0)?;
                let y0 = ((&y - drift)? - noise)?;
                // ŷ₁ = 2y − ŷ + μh + σΔW, y₁ = y + (μ + μ₁)h/2 + (σ + σ₁)ΔW/2.
                a_mu = (a_y.affine(0.5 * h, 0.0)? + a_hat1.affine(h, 0.0)?)?;
                a_sigma =
                    self.noise
                        .product_vjp(&(a_y.affine(0.5, 0.0)? + &a_hat1)?, &dw, &shape)?;
                a_y = (&a_y + a_hat1.affine(2.0, 0.0)?)?;
                a_hat = a_hat1.neg()?;
                y = y0;
                y_hat = y_hat0;
                terms = terms0;
            }
            a_y = (a_y + g.get(i)?)?;
        }
        // At the start ŷ = y = y0, and μ, σ are the terms there.
        let (g_hat, g_p) = self.terms_vjp(&terms, &a_mu, &a_sigma)?;
        if p > 0 {
            g_theta = (g_theta + g_p)?;
        }
        let gy0 = ((a_y + a_hat)? + g_hat)?;
        self.stats.lock().1 = SdeStats {
            drift_evals: evals,
            diffusion_evals: evals,
            steps,
            rejected_steps: 0,
            host_reads: 0,
        };
        Ok((gy0.detach(), (p > 0).then_some(g_theta.detach())))
    }
}

impl<F, B> Precomputed for Inner<F, B>
where
    F: ParamSdeField + Send + Sync + 'static,
    B: BrownianPath + Send + Sync + 'static,
{
    const NAME: &'static str = "sdeint-adjoint";
    fn solution(&self) -> &Tensor {
        &self.ys
    }
    fn gradients(
        &self,
        grad: &Tensor,
        _: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let (gy0, gtheta) = self.backward(grad)?;
        Ok((gy0, gtheta, None))
    }
}

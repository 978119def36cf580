//! A continuous normalizing flow (Chen et al. 2018, §4): a density `p(x)` defined by pushing a
//! base density through an ODE, with the log-density change given by the instantaneous change
//! of variables
//!
//! `dz/dt = f(z, t)`,  `d log p(z(t))/dt = −tr(∂f/∂z)`  (eq. 8),
//!
//! so `log p(x) = log p₀(z(t₀)) − ∫_{t₀}^{t₁} tr(∂f/∂z) dt` for `z(t₁) = x`.
//!
//! The field is the paper's (eq. 10) with time-dependent weights from a hypernetwork, as in
//! torchdiffeq's `examples/cnf.py`: `f(z, t) = (1/M) Σₘ uₘ tanh(wₘᵀz + bₘ)` with
//! `(W, U, b) = hyper(t)` and the gate `U ← U ⊙ σ(G)`. Its trace has a closed form,
//! `tr(∂f/∂z) = (1/M) Σₘ (1 − tanh²(wₘᵀz + bₘ)) uₘᵀwₘ`, exact and one pass over the width: no
//! Jacobian, no second-order autograd (which Candle does not have). The state the solver sees
//! is `[z, Δ]` of shape `[B, D + 1]`, the last column integrating `−tr`.

use crate::layers::{linear, vars_of, BlockStats, Gradient, Linear, OdeBlock};
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;
use node_adjoint::ParamVectorField;
use node_solvers::{SolveOptions, VectorField};

/// Sizes and times of a [`Cnf`]. The defaults are those of torchdiffeq's `examples/cnf.py`.
#[derive(Clone, Debug, PartialEq)]
pub struct CnfConfig {
    /// Dimension `D` of the data.
    pub dim: usize,
    /// Number `M` of hidden units of the field (its width).
    pub width: usize,
    /// Hidden size of the hypernetwork `t ↦ (W, U, G, b)`.
    pub hidden: usize,
    /// End time `t₁` of the flow (it starts at 0): data live at `t₁`, the base density at 0.
    pub t1: f64,
    /// Standard deviation σ of the base density `N(0, σ²I)`.
    pub base_std: f64,
}

impl Default for CnfConfig {
    fn default() -> Self {
        Self {
            dim: 2,
            width: 64,
            hidden: 32,
            t1: 10.0,
            base_std: 0.1f64.sqrt(),
        }
    }
}

impl CnfConfig {
    /// Checks that every size is positive and the times and σ are finite and positive.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("dim", self.dim),
            ("width", self.width),
            ("hidden", self.hidden),
        ] {
            if v == 0 {
                candle_core::bail!("CNF: {name} must be at least 1");
            }
        }
        check_time_and_base("CNF", self.t1, self.base_std)
    }
}

/// A flow's end time `t1` and base σ must be finite and positive; `model` names the flow in
/// the error.
pub(crate) fn check_time_and_base(model: &str, t1: f64, base_std: f64) -> Result<()> {
    if !(t1.is_finite() && t1 > 0.0) {
        candle_core::bail!("{model}: t1 must be finite and positive, got {t1}");
    }
    if !(base_std.is_finite() && base_std > 0.0) {
        candle_core::bail!("{model}: base_std must be finite and positive, got {base_std}");
    }
    Ok(())
}

/// The CNF's vector field on the augmented state `[z, Δ]`: `[f(z, t), −tr(∂f/∂z)]`.
#[derive(Clone, Debug)]
pub struct CnfField {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    dim: usize,
    width: usize,
    params: Vec<Var>,
}

impl CnfField {
    /// A field for `dim`-dimensional data with `width` hidden units and a hypernetwork of
    /// `hidden` units (`fc1`, `fc2`, `fc3` under `vb`). Its parameters are `vb`'s `Var`s: build
    /// it from a `VarMap`-backed `VarBuilder` to train it.
    ///
    /// # Errors
    /// Those of `vb`.
    pub fn new(dim: usize, width: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let fc1 = linear(1, hidden, vb.pp("fc1"))?;
        let fc2 = linear(hidden, hidden, vb.pp("fc2"))?;
        let fc3 = linear(hidden, 3 * width * dim + width, vb.pp("fc3"))?;
        let params = vars_of(&[&fc1, &fc2, &fc3])?;
        Ok(Self {
            fc1,
            fc2,
            fc3,
            dim,
            width,
            params,
        })
    }

    /// The field's weights at time `t`: `W` `[M, D]`, the gated `U` `[M, D]` and `b` `[M]`.
    ///
    /// # Errors
    /// Candle's.
    pub fn weights(&self, t: f64, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        let (m, d) = (self.width, self.dim);
        let t = Tensor::new(&[[t]], dev)?.to_dtype(dtype)?;
        let h = node_kernels::tanh(&self.fc1.forward(&t)?)?;
        let h = node_kernels::tanh(&self.fc2.forward(&h)?)?;
        let p = self.fc3.forward(&h)?.flatten_all()?;
        let w = p.narrow(0, 0, m * d)?.reshape((m, d))?;
        let u = p.narrow(0, m * d, m * d)?.reshape((m, d))?;
        let g = p.narrow(0, 2 * m * d, m * d)?.reshape((m, d))?;
        let b = p.narrow(0, 3 * m * d, m)?;
        let u = (u * node_kernels::sigmoid(&g)?)?;
        Ok((w, u, b))
    }

    /// `f(z, t)` and `tr(∂f/∂z)` for a batch of points.
    ///
    /// # Shapes
    /// `z: [B, D]` → `([B, D], [B])`.
    ///
    /// # Errors
    /// `z` of another shape; Candle's.
    pub fn dynamics(&self, t: f64, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let (dz, tr, _) = self.parts(t, z, false)?;
        Ok((dz, tr))
    }

    /// `f(z, t)`, `tr(∂f/∂z)`, and the integrands of the kinetic and Jacobian regularizers
    /// (Finlay et al. 2020): `‖f(z, t)‖²` and `‖∂f/∂z‖²_F`, for a batch of points. The
    /// Frobenius norm is exact, in closed form (no Hutchinson estimate, no second-order
    /// autograd): with `sₘ = 1 − tanh²(wₘᵀz + bₘ)`, the Jacobian is `(1/M) Σₘ sₘ uₘ wₘᵀ`, one
    /// `[B, M] × [M, D²]` product, when `D² ≤ M`; otherwise `‖∂f/∂z‖²_F = (1/M²) Σₘₙ sₘ sₙ
    /// (uₘ·uₙ)(wₘ·wₙ)`, one `[B, M] × [M, M]` product.
    ///
    /// # Shapes
    /// `z: [B, D]` → `([B, D], [B], [B], [B])`.
    ///
    /// # Errors
    /// `z` of another shape; Candle's.
    pub fn dynamics_regularized(
        &self,
        t: f64,
        z: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let (dz, tr, frob) = self.parts(t, z, true)?;
        let kinetic = dz.sqr()?.sum(1)?;
        let frob = frob.expect("asked for");
        Ok((dz, tr, kinetic, frob))
    }

    /// `f`, the trace and, when asked for, the squared Frobenius norm of the Jacobian.
    fn parts(
        &self,
        t: f64,
        z: &Tensor,
        frobenius: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        if z.rank() != 2 || z.dim(1)? != self.dim {
            candle_core::bail!(
                "CNF: points must be [batch, {}], got {:?}",
                self.dim,
                z.dims()
            );
        }
        let (w, u, b) = self.weights(t, z.dtype(), z.device())?;
        let (m, d) = (self.width, self.dim);
        let inv_m = 1.0 / m as f64;
        // h = tanh(z Wᵀ + b): [B, M].
        let h = node_kernels::tanh(&node_kernels::linear(z, &w, Some(&b))?)?;
        let dz = (h.matmul(&u)? * inv_m)?;
        // ∂f_i/∂z_j = (1/M) Σₘ u_{m,i} (1 − h_m²) w_{m,j}, so the trace is
        // (1/M) Σₘ (1 − h_m²) (uₘ · wₘ).
        let uw = (&u * &w)?.sum(1)?.unsqueeze(1)?;
        let slope = h.sqr()?.affine(-1.0, 1.0)?;
        let tr = (slope.matmul(&uw)?.squeeze(1)? * inv_m)?;
        let frob = if !frobenius {
            None
        } else if d * d <= m {
            // The Jacobian itself, [B, D²]: ∂f_i/∂z_j = (1/M) Σₘ sₘ u_{m,i} w_{m,j}, one
            // [B, M] × [M, D²] product (cheaper than the Gram form below when D² ≤ M).
            let outer = u
                .unsqueeze(2)?
                .broadcast_mul(&w.unsqueeze(1)?)?
                .reshape((m, d * d))?;
            let jac = (slope.matmul(&outer)? * inv_m)?;
            Some(jac.sqr()?.sum(1)?)
        } else {
            // Σ_ij (∂f_i/∂z_j)² = (1/M²) sᵀ ((U Uᵀ) ⊙ (W Wᵀ)) s per point: [B, M] × [M, M].
            let gram = (u.matmul(&u.t()?)? * w.matmul(&w.t()?)?)?;
            let q = (slope.matmul(&gram)? * &slope)?.sum(1)?;
            Some((q * (inv_m * inv_m))?)
        };
        Ok((dz, tr, frob))
    }

    /// The data dimension `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

impl VectorField for CnfField {
    /// `[z, Δ] ↦ [f(z, t), −tr(∂f/∂z)]` on a state `[B, D + 1]`; on a state `[B, D + 3]`,
    /// `[z, Δ, E, J] ↦ [f, −tr(∂f/∂z), ‖f‖², ‖∂f/∂z‖²_F]`, the last two integrating the
    /// regularizers of [`Cnf::log_prob_regularized`].
    fn eval(&self, t: f64, s: &Tensor) -> Result<Tensor> {
        let d = self.dim;
        let cols = if s.rank() == 2 { s.dim(1)? } else { 0 };
        let z = || s.narrow(1, 0, d);
        if cols == d + 1 {
            let (dz, tr) = self.dynamics(t, &z()?)?;
            Tensor::cat(&[dz, tr.neg()?.unsqueeze(1)?], 1)
        } else if cols == d + 3 {
            let (dz, tr, kinetic, frob) = self.dynamics_regularized(t, &z()?)?;
            let rates = Tensor::stack(&[tr.neg()?, kinetic, frob], 1)?;
            Tensor::cat(&[dz, rates], 1)
        } else {
            candle_core::bail!(
                "CNF: the augmented state must be [batch, {}] (or [batch, {}] with the \
                 regularizers), got {:?}",
                d + 1,
                d + 3,
                s.dims()
            )
        }
    }
}

impl ParamVectorField for CnfField {
    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// The result of [`Cnf::log_prob_regularized`]: per point, `log p(x)` and the two RNODE
/// regularizers, with the solve's counts.
#[derive(Clone, Debug)]
pub struct RegularizedLogProb {
    /// `log p(x)`, `[B]`.
    pub log_p: Tensor,
    /// The kinetic energy `∫₀^{t₁} ‖f‖² dt`, `[B]`.
    pub kinetic: Tensor,
    /// `∫₀^{t₁} ‖∂f/∂z‖²_F dt`, `[B]`.
    pub jacobian: Tensor,
    /// The solve's counts.
    pub stats: BlockStats,
}

impl RegularizedLogProb {
    /// From a flow's state `[z, Δ, E, J]` at the base (`t = 0`, solved down from `t₁`).
    pub(crate) fn at_base(s0: &Tensor, dim: usize, std: f64, stats: BlockStats) -> Result<Self> {
        let log_p = log_prob_at_base(s0, dim, std)?;
        // The solve runs from t₁ down to 0: its integrals are ∫_{t₁}^{0} = −∫₀^{t₁}.
        let kinetic = s0.narrow(1, dim + 1, 1)?.squeeze(1)?.neg()?;
        let jacobian = s0.narrow(1, dim + 2, 1)?.squeeze(1)?.neg()?;
        Ok(Self {
            log_p,
            kinetic,
            jacobian,
            stats,
        })
    }
}

/// `log p(x)` from a flow's state `[z, Δ, …]` at the base (`t = 0`, solved down from `t₁`):
/// `log N(z; 0, σ²I) − Δ`, since `Δ(0) = ∫_{t₁}^{0} −tr dt = ∫₀^{t₁} tr dt`.
pub(crate) fn log_prob_at_base(s0: &Tensor, dim: usize, std: f64) -> Result<Tensor> {
    let delta = s0.narrow(1, dim, 1)?.squeeze(1)?;
    gaussian_log_prob(&s0.narrow(1, 0, dim)?, std)? - delta
}

/// A continuous normalizing flow from `N(0, σ²I)` at `t = 0` to the data at `t = t₁`.
///
/// # Example
/// One maximum-likelihood step by the adjoint, then samples:
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{Optimizer, VarBuilder, VarMap};
/// use node_adjoint::AdjointOptions;
/// use node_models::cnf::{two_circles, Cnf, CnfConfig};
/// use node_models::{Adam, AdamConfig, Gradient, Rng};
/// use node_solvers::SolveOptions;
/// # fn main() -> candle_core::Result<()> {
/// let (dev, varmap) = (Device::Cpu, VarMap::new());
/// let cfg = CnfConfig { width: 16, ..CnfConfig::default() };
/// let opts = SolveOptions::default().tolerances(1e-4, 1e-4);
/// let gradient = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-4, 1e-4));
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let cnf = Cnf::new(&cfg, opts, gradient, vb)?;
/// let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), AdamConfig::default())?;
///
/// let x = two_circles(64, 0.06, &mut Rng::new(0), DType::F32, &dev)?;
/// let nll = cnf.log_prob(&x)?.mean_all()?.neg()?; // −mean log p(x)
/// opt.backward_step(&nll)?;
///
/// let z = Rng::new(1).normal_tensor(&[8, 2], 0.0, cfg.base_std, DType::F32, &dev)?;
/// let (samples, log_p) = cnf.sample_from(&z)?;
/// assert_eq!((samples.dims(), log_p.dims()), (&[8, 2][..], &[8][..]));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Cnf {
    block: OdeBlock<CnfField>,
    config: CnfConfig,
}

impl Cnf {
    /// A flow of the given sizes, solved with `opts` (torchdiffeq's example uses dopri5 at
    /// `rtol = atol = 1e-5`) and differentiated by `gradient`.
    ///
    /// # Errors
    /// An invalid `config` ([`CnfConfig::validate`]) or invalid `opts`; those of `vb`.
    pub fn new(
        config: &CnfConfig,
        opts: SolveOptions,
        gradient: Gradient,
        vb: VarBuilder,
    ) -> Result<Self> {
        config.validate()?;
        opts.validate()?;
        let field = CnfField::new(config.dim, config.width, config.hidden, vb)?;
        Ok(Self {
            block: OdeBlock::new(field, config.t1, opts, gradient),
            config: config.clone(),
        })
    }

    /// The sizes and times.
    pub fn config(&self) -> &CnfConfig {
        &self.config
    }

    /// The vector field.
    pub fn field(&self) -> &CnfField {
        &self.block.field
    }

    /// `log N(z; 0, σ²I)` per point.
    ///
    /// # Shapes
    /// `z: [B, D]` → `[B]`.
    ///
    /// # Errors
    /// Candle's.
    pub fn base_log_prob(&self, z: &Tensor) -> Result<Tensor> {
        gaussian_log_prob(z, self.config.base_std)
    }

    /// `log p(x)` per point, by solving the flow backwards from `x` at `t₁` to 0.
    ///
    /// # Shapes
    /// `x: [B, D]` → `[B]`.
    ///
    /// # Errors
    /// `x` of another shape; the solver's typed errors.
    pub fn log_prob(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.log_prob_with_stats(x)?.0)
    }

    /// [`Cnf::log_prob`] with the solve's counts.
    ///
    /// # Errors
    /// As [`Cnf::log_prob`].
    pub fn log_prob_with_stats(&self, x: &Tensor) -> Result<(Tensor, BlockStats)> {
        let (s0, stats) = self.solve(x, self.config.t1, 0.0, 1)?;
        Ok((
            log_prob_at_base(&s0, self.config.dim, self.config.base_std)?,
            stats,
        ))
    }

    /// `log p(x)` per point, with the regularizers of RNODE (Finlay et al. 2020, "How to
    /// train your neural ODE") integrated along the same solve: the kinetic energy
    /// `∫₀^{t₁} ‖f(z(t), t)‖² dt` and the Jacobian's `∫₀^{t₁} ‖∂f/∂z‖²_F dt` per point (the
    /// paper's definitions; its code scales the first by `1/(2D)` and estimates the second,
    /// divided by `D`, with Hutchinson's trick). Adding `λ_K·mean(kinetic) +
    /// λ_J·mean(jacobian)` to the loss favours straight, well-conditioned trajectories, which
    /// an adaptive solver follows in fewer steps. The two integrals ride in the solver's state
    /// (`[B, D + 3]`), so every [`Gradient`] mode differentiates them, and the error control
    /// watches them too.
    ///
    /// # Shapes
    /// `x: [B, D]` → each of `log_p`, `kinetic`, `jacobian`: `[B]`.
    ///
    /// # Errors
    /// As [`Cnf::log_prob`].
    pub fn log_prob_regularized(&self, x: &Tensor) -> Result<RegularizedLogProb> {
        let (s0, stats) = self.solve(x, self.config.t1, 0.0, 3)?;
        RegularizedLogProb::at_base(&s0, self.config.dim, self.config.base_std, stats)
    }

    /// Pushes base points `z` (at `t = 0`) through the flow: the samples `x = z(t₁)` and their
    /// `log p(x)`. With `z` drawn from `N(0, σ²I)` this samples the model.
    ///
    /// # Shapes
    /// `z: [B, D]` → `([B, D], [B])`.
    ///
    /// # Errors
    /// `z` of another shape; the solver's typed errors.
    pub fn sample_from(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let (s1, _) = self.solve(z, 0.0, self.config.t1, 1)?;
        let d = self.config.dim;
        // Δ(t₁) = −∫_0^{t₁} tr dt.
        let lp = (self.base_log_prob(z)? + s1.narrow(1, d, 1)?.squeeze(1)?)?;
        Ok((s1.narrow(1, 0, d)?, lp))
    }

    /// Solves from `x` at `from` to `to` with `extra` integrals (starting at 0) beside it.
    fn solve(&self, x: &Tensor, from: f64, to: f64, extra: usize) -> Result<(Tensor, BlockStats)> {
        let s = augment(x, self.config.dim, extra, "CNF")?;
        self.block.solve_between(&s, from, to)
    }
}

/// `log N(z; 0, σ²I)` per point: `z: [B, D]` → `[B]`.
pub(crate) fn gaussian_log_prob(z: &Tensor, std: f64) -> Result<Tensor> {
    let d = z.dim(1)? as f64;
    let norm = -0.5 * d * (2.0 * std::f64::consts::PI * std * std).ln();
    z.sqr()?.sum(1)?.affine(-0.5 / (std * std), norm)
}

/// The points `x: [B, D]` with `extra` columns of zeros beside them (the integrals a flow's
/// solve carries); `model` names the flow in the error for points of another shape.
pub(crate) fn augment(x: &Tensor, dim: usize, extra: usize, model: &str) -> Result<Tensor> {
    if x.rank() != 2 || x.dim(1)? != dim || x.dim(0)? == 0 {
        candle_core::bail!(
            "{model}: points must be [batch ≥ 1, {dim}], got {:?}",
            x.dims()
        );
    }
    let zeros = Tensor::zeros((x.dim(0)?, extra), x.dtype(), x.device())?;
    Tensor::cat(&[x, &zeros], 1)
}

/// `n` points of scikit-learn's `make_circles(noise, factor = 0.5)`, the target of torchdiffeq's
/// CNF example: half on the unit circle, half on the circle of radius 0.5, at evenly spaced
/// angles, each with `N(0, noise²)` added to both coordinates; in random order.
///
/// # Shapes
/// Result `[n, 2]`.
///
/// # Errors
/// Candle's.
pub fn two_circles(
    n: usize,
    noise: f64,
    rng: &mut Rng,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let outer = n / 2;
    let inner = n - outer;
    let mut pts = Vec::with_capacity(2 * n);
    for (count, radius) in [(outer, 1.0), (inner, 0.5)] {
        for k in 0..count {
            let a = 2.0 * std::f64::consts::PI * k as f64 / count as f64;
            pts.push([radius * a.cos(), radius * a.sin()]);
        }
    }
    rng.shuffle(&mut pts);
    let mut flat = Vec::with_capacity(2 * n);
    for [x, y] in pts {
        flat.push(x + noise * rng.normal());
        flat.push(y + noise * rng.normal());
    }
    Tensor::from_vec(flat, (n, 2), dev)?.to_dtype(dtype)
}

//! The latent SDE of Li, Wong, Chen & Duvenaud (2020), *Scalable gradients for stochastic
//! differential equations*, as torchsde's `examples/latent_sde.py` builds it: a posterior SDE
//! `dy = f_φ(t, y) dt + σ dW`, `y(0) ~ q(y0)`, fitted to a few noisy observations of one time
//! series against the prior, an Ornstein–Uhlenbeck process `dy = θ(μ − y) dt + σ dW` with
//! `y(0) ~ N(μ, σ²/2θ)`, its stationary law. The evidence lower bound subtracts from the
//! observations' log-likelihood the KL divergence between the two path measures,
//! `KL(q(y0) ‖ p(y0)) + E ∫ ½ |u|² dt` with `u = (f_φ − h) / σ` (Girsanov), whose integral the
//! solve carries as a second component of the state.
//!
//! The drift network reads `(sin t, cos t, y)` (a positional encoding of time, as the
//! example's) through two tanh layers; its last layer starts at zero (Glow's trick), so the
//! untrained posterior drifts nowhere.

use crate::layers::{linear, vars_of, Linear};
use candle_core::{DType, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;
use node_adjoint::{sdeint_adjoint, ParamSdeField, SdeAdjointOptions, SdeAdjointStats};
use node_solvers::{
    sdeint, BrownianPath, DetachedSde, Noise, SdeAdaptive, SdeField, SdeMethod, SdeOptions,
    SdeStats, SolverError, VirtualBrownianTree,
};

/// The latent SDE's settings. The defaults are torchsde's example's.
#[derive(Clone, Debug)]
pub struct LatentSdeConfig {
    /// Width of the drift network's two hidden layers (200).
    pub hidden: usize,
    /// The prior's mean reversion θ (1).
    pub theta: f64,
    /// The prior's mean μ (0).
    pub mu: f64,
    /// The shared diffusion σ (0.5).
    pub sigma: f64,
    /// The SDE method. The noise is additive, so Itô and Stratonovich agree, and the
    /// methods for additive noise ([`SdeMethod::Shark`], strong order 3/2, and its kin)
    /// apply, on a Brownian tree with Lévy area; the adjoint needs a Stratonovich method
    /// (the default, the midpoint method, or those).
    pub method: SdeMethod,
    /// The largest step (0.01); with adaptive steps the first one.
    pub dt: f64,
    /// Adaptive steps under this error control (over the state and the KL integral), or
    /// fixed ones (`None`, the default). The Brownian tree then resolves down to `dt_min`
    /// (at least a millionth of the span).
    pub adaptive: Option<SdeAdaptive>,
}

impl Default for LatentSdeConfig {
    fn default() -> Self {
        Self {
            hidden: 200,
            theta: 1.0,
            mu: 0.0,
            sigma: 0.5,
            method: SdeMethod::Midpoint,
            dt: 1e-2,
            adaptive: None,
        }
    }
}

/// How the solve is differentiated.
#[derive(Clone, Debug)]
pub enum SdeGradient {
    /// Backprop through the solver's operations: the exact gradient of the discrete solve,
    /// memory growing with the steps.
    Backprop,
    /// The stochastic adjoint ([`node_adjoint::sdeint_adjoint`]): memory independent of the
    /// steps, the gradient up to the reverse solve's error.
    Adjoint(SdeAdjointOptions),
}

impl SdeGradient {
    /// Solves `sde` from `y0` at `ts` along `bm` with `opts`, differentiated as `self`
    /// says: the states at `ts`, the forward solve's counts, and for the adjoint the handle
    /// that holds the backward counts once `backward()` has run.
    ///
    /// # Errors
    /// The solver's typed errors.
    pub fn solve<F, B>(
        &self,
        sde: &F,
        y0: &Tensor,
        ts: &[f64],
        bm: &B,
        opts: &SdeOptions,
    ) -> Result<(Tensor, SdeStats, Option<SdeAdjointStats>)>
    where
        F: ParamSdeField + Clone + Send + Sync + 'static,
        B: BrownianPath + Clone + Send + Sync + 'static,
    {
        Ok(match self {
            SdeGradient::Backprop => {
                let sol = sdeint(sde, y0, ts, bm, opts)?;
                (sol.ys, sol.stats, None)
            }
            SdeGradient::Adjoint(adj) => {
                let sol = sdeint_adjoint(sde, y0, ts, bm, opts, adj)?;
                let forward = sol.stats.forward();
                (sol.ys, forward, Some(sol.stats))
            }
        })
    }
}

/// The posterior's drift and diffusion on the augmented state `[y, ∫½u²]` (`[B, 2]`): drift
/// `[f_φ(t, y), ½((f_φ − h)/σ)²]`, diffusion `[σ, 0]` against one Brownian motion per sample
/// (general noise, `W` of shape `[B, 1]`).
#[derive(Clone, Debug)]
pub struct PosteriorSde {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    theta: f64,
    mu: f64,
    sigma: f64,
    params: Vec<Var>,
}

impl PosteriorSde {
    /// The posterior drift `f_φ(t, y)` on `y` of shape `[B, 1]`.
    ///
    /// # Errors
    /// Candle errors (a `y` that is not `[B, 1]`).
    pub fn posterior_drift(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        let b = y.dim(0)?;
        let enc = Tensor::new(&[t.sin(), t.cos()], y.device())?
            .to_dtype(y.dtype())?
            .reshape((1, 2))?
            .broadcast_as((b, 2))?;
        let x = Tensor::cat(&[&enc, y], 1)?;
        let h = node_kernels::tanh(&self.fc1.forward(&x)?)?;
        let h = node_kernels::tanh(&self.fc2.forward(&h)?)?;
        self.fc3.forward(&h)
    }

    /// The prior drift `h(y) = θ(μ − y)`.
    ///
    /// # Errors
    /// Candle errors.
    pub fn prior_drift(&self, y: &Tensor) -> Result<Tensor> {
        y.affine(-self.theta, self.theta * self.mu)
    }
}

impl SdeField for PosteriorSde {
    fn drift(&self, t: f64, aug: &Tensor) -> Result<Tensor> {
        let y = aug.narrow(1, 0, 1)?;
        let f = self.posterior_drift(t, &y)?;
        let u = (&f - self.prior_drift(&y)?)?.affine(1.0 / self.sigma, 0.0)?;
        Tensor::cat(&[f, u.sqr()?.affine(0.5, 0.0)?], 1)
    }

    fn diffusion(&self, _t: f64, aug: &Tensor) -> Result<Tensor> {
        let b = aug.dim(0)?;
        let g = Tensor::new(&[self.sigma, 0.0], aug.device())?.to_dtype(aug.dtype())?;
        g.reshape((1, 2, 1))?.broadcast_as((b, 2, 1))?.contiguous()
    }

    fn additive_noise(&self) -> bool {
        true
    }
}

impl ParamSdeField for PosteriorSde {
    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// The prior's terms on `y` (`[B, 1]`): `θ(μ − y)` and `σ`, diagonal noise.
struct PriorSde<'a>(&'a PosteriorSde);

impl SdeField for PriorSde<'_> {
    fn drift(&self, _t: f64, y: &Tensor) -> Result<Tensor> {
        self.0.prior_drift(y)
    }
    fn diffusion(&self, _t: f64, y: &Tensor) -> Result<Tensor> {
        y.ones_like()?.affine(self.0.sigma, 0.0)
    }
    fn additive_noise(&self) -> bool {
        true
    }
}

/// What [`LatentSde::forward`] returns.
#[derive(Clone, Debug)]
pub struct LatentSdeOutput {
    /// The posterior samples at the times, `[T, B]`.
    pub ys: Tensor,
    /// `KL(q(y0) ‖ p(y0)) + mean over the samples of ∫ ½|u|² dt`: a scalar tensor.
    pub kl: Tensor,
    /// The forward solve's counts.
    pub forward: SdeStats,
    /// The reverse solve's counts once `backward()` has run (the adjoint), else `None`.
    pub adjoint: Option<SdeAdjointStats>,
}

/// The latent SDE: the posterior's drift network and initial distribution `q(y0)`, the
/// fixed prior.
///
/// # Example
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use node_models::latent_sde::{LatentSde, LatentSdeConfig, SdeGradient};
/// # fn main() -> candle_core::Result<()> {
/// let varmap = VarMap::new();
/// let cfg = LatentSdeConfig { hidden: 16, ..Default::default() };
/// let model = LatentSde::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
/// model.init()?;
/// let eps = Tensor::zeros((8, 1), DType::F32, &Device::Cpu)?;
/// let out = model.forward(&[0.0, 0.5, 1.0], &eps, 7, &SdeGradient::Backprop)?;
/// assert_eq!(out.ys.dims(), [3, 8]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LatentSde {
    cfg: LatentSdeConfig,
    sde: PosteriorSde,
    qy0_mean: Tensor,
    qy0_logvar: Tensor,
}

impl LatentSde {
    /// The model, parameters under `vb`: `net.fc1` (`3 → hidden`), `net.fc2`, `net.fc3`
    /// (`hidden → 1`), `qy0.mean` and `qy0.logvar` (`[1]` each). Call [`LatentSde::init`]
    /// after a generic initialisation.
    ///
    /// # Errors
    /// [`SolverError::InvalidOptions`] for a σ or θ that is not positive and finite, a
    /// zero width or a bad step; those of `vb`.
    pub fn new(cfg: LatentSdeConfig, vb: VarBuilder) -> Result<Self> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(cfg.sigma) || !positive(cfg.theta) || !cfg.mu.is_finite() || cfg.hidden == 0 {
            return Err(SolverError::InvalidOptions(format!(
                "the latent SDE needs σ > 0, θ > 0, a finite μ and hidden > 0, got σ = {}, θ = {}, μ = {}, hidden = {}",
                cfg.sigma, cfg.theta, cfg.mu, cfg.hidden
            ))
            .into());
        }
        SdeOptions {
            method: cfg.method,
            dt: cfg.dt,
            adaptive: cfg.adaptive,
            noise: Noise::General,
            ..SdeOptions::default()
        }
        .validate()?;
        let net = vb.pp("net");
        let fc1 = linear(3, cfg.hidden, net.pp("fc1"))?;
        let fc2 = linear(cfg.hidden, cfg.hidden, net.pp("fc2"))?;
        let fc3 = linear(cfg.hidden, 1, net.pp("fc3"))?;
        let params = vars_of(&[&fc1, &fc2, &fc3])?;
        let q = vb.pp("qy0");
        let qy0_mean = q.get_with_hints(1, "mean", candle_nn::Init::Const(cfg.mu))?;
        let logvar = Self::prior_logvar(&cfg);
        let qy0_logvar = q.get_with_hints(1, "logvar", candle_nn::Init::Const(logvar))?;
        Ok(Self {
            sde: PosteriorSde {
                fc1,
                fc2,
                fc3,
                theta: cfg.theta,
                mu: cfg.mu,
                sigma: cfg.sigma,
                params,
            },
            cfg,
            qy0_mean,
            qy0_logvar,
        })
    }

    fn prior_logvar(cfg: &LatentSdeConfig) -> f64 {
        (cfg.sigma * cfg.sigma / (2.0 * cfg.theta)).ln()
    }

    /// The example's initialisation, after a generic one: the drift network's last layer at
    /// zero, `q(y0) = p(y0)`.
    ///
    /// # Errors
    /// Candle errors writing the variables.
    pub fn init(&self) -> Result<()> {
        for t in self.sde.fc3.tensors() {
            Var::from_tensor(&t)?.set(&t.zeros_like()?)?;
        }
        let set = |t: &Tensor, v: f64| Var::from_tensor(t)?.set(&t.ones_like()?.affine(v, 0.0)?);
        set(&self.qy0_mean, self.cfg.mu)?;
        set(&self.qy0_logvar, Self::prior_logvar(&self.cfg))
    }

    /// The settings.
    pub fn config(&self) -> &LatentSdeConfig {
        &self.cfg
    }

    /// The posterior's terms.
    pub fn posterior(&self) -> &PosteriorSde {
        &self.sde
    }

    fn options(&self) -> SdeOptions {
        SdeOptions {
            method: self.cfg.method,
            dt: self.cfg.dt,
            adaptive: self.cfg.adaptive,
            max_steps: usize::MAX,
            ..SdeOptions::default()
        }
    }

    /// A Brownian motion over `ts` for `b` samples drawn from `seed`: `shape` per sample.
    fn brownian(
        &self,
        ts: &[f64],
        shape: (usize, usize),
        seed: u64,
        dtype: DType,
        dev: &candle_core::Device,
    ) -> Result<VirtualBrownianTree> {
        let (lo, hi) = span(ts, "the latent SDE")?;
        let span = hi - lo;
        let tol = match &self.cfg.adaptive {
            None => self.cfg.dt / 2.0,
            Some(a) => a.dt_min.max(1e-6 * span),
        }
        .min(span);
        let bm = VirtualBrownianTree::new(lo, hi, tol, shape, seed, dtype, dev)?;
        // The methods for additive noise take the steps' Lévy areas.
        Ok(if self.cfg.method.needs_levy_area() {
            bm.with_levy_area()
        } else {
            bm
        })
    }

    /// The augmented initial state `[y0, 0]` with `y0 = mean + eps · exp(logvar / 2)`, and
    /// the Brownian motion over `ts` drawn from `bm_seed`.
    fn start(
        &self,
        ts: &[f64],
        eps: &Tensor,
        bm_seed: u64,
        mean: &Tensor,
        logvar: &Tensor,
    ) -> Result<(Tensor, VirtualBrownianTree)> {
        let b = check_eps(eps)?;
        let (dtype, dev) = (eps.dtype(), eps.device());
        let y0 = eps
            .broadcast_mul(&logvar.affine(0.5, 0.0)?.exp()?)?
            .broadcast_add(mean)?;
        let aug0 = Tensor::cat(&[y0, Tensor::zeros((b, 1), dtype, dev)?], 1)?;
        Ok((aug0, self.brownian(ts, (b, 1), bm_seed, dtype, dev)?))
    }

    /// Posterior samples at `ts` from `y0 = mean + eps · std` of `q(y0)` (`eps`: `[B, 1]`)
    /// along a Brownian motion drawn from `bm_seed`, with the KL term, differentiated as
    /// `gradient` says.
    ///
    /// # Errors
    /// `ts` with fewer than two times, not increasing; an `eps` that is not `[B, 1]`; the
    /// solver's typed errors.
    pub fn forward(
        &self,
        ts: &[f64],
        eps: &Tensor,
        bm_seed: u64,
        gradient: &SdeGradient,
    ) -> Result<LatentSdeOutput> {
        let (aug0, bm) = self.start(ts, eps, bm_seed, &self.qy0_mean, &self.qy0_logvar)?;
        let opts = self.options().noise(Noise::General);
        let (aug, forward, adjoint) = gradient.solve(&self.sde, &aug0, ts, &bm, &opts)?;
        let ys = aug.narrow(2, 0, 1)?.squeeze(2)?;
        let path_kl = aug.get(ts.len() - 1)?.narrow(1, 1, 1)?.mean_all()?;
        let kl = (self.initial_kl()? + path_kl)?;
        Ok(LatentSdeOutput {
            ys,
            kl,
            forward,
            adjoint,
        })
    }

    /// `KL(q(y0) ‖ p(y0))` of the two normals, a scalar tensor.
    ///
    /// # Errors
    /// Candle errors.
    pub fn initial_kl(&self) -> Result<Tensor> {
        // ln(σp/σq) + (σq² + (μq − μp)²) / (2σp²) − ½, with ln σ = logvar / 2.
        let p_logvar = Self::prior_logvar(&self.cfg);
        let p_var = p_logvar.exp();
        let q_var = self.qy0_logvar.exp()?;
        let dm2 = self.qy0_mean.affine(1.0, -self.cfg.mu)?.sqr()?;
        let ratio = (q_var + dm2)?.affine(0.5 / p_var, -0.5)?;
        (self.qy0_logvar.affine(-0.5, 0.5 * p_logvar)? + ratio)?.sum_all()
    }

    /// Posterior samples at `ts`, without a graph (memory does not grow with the steps):
    /// `[T, B]`.
    ///
    /// # Errors
    /// As [`LatentSde::forward`].
    pub fn sample_posterior(&self, ts: &[f64], eps: &Tensor, bm_seed: u64) -> Result<Tensor> {
        let (mean, logvar) = (self.qy0_mean.detach(), self.qy0_logvar.detach());
        let (aug0, bm) = self.start(ts, &eps.detach(), bm_seed, &mean, &logvar)?;
        let opts = self.options().noise(Noise::General);
        let sol = sdeint(&DetachedSde(&self.sde), &aug0, ts, &bm, &opts)?;
        sol.ys.narrow(2, 0, 1)?.squeeze(2)
    }

    /// Prior samples at `ts` from `y0 = μ + eps · σ/√(2θ)` (`eps`: `[B, 1]`): `[T, B]`.
    ///
    /// # Errors
    /// As [`LatentSde::forward`].
    pub fn sample_prior(&self, ts: &[f64], eps: &Tensor, bm_seed: u64) -> Result<Tensor> {
        let b = check_eps(eps)?;
        let p_std = (0.5 * Self::prior_logvar(&self.cfg)).exp();
        let y0 = eps.detach().affine(p_std, self.cfg.mu)?;
        let bm = self.brownian(ts, (b, 1), bm_seed, eps.dtype(), eps.device())?;
        let sol = sdeint(&PriorSde(&self.sde), &y0, ts, &bm, &self.options())?;
        sol.ys.squeeze(2)
    }
}

fn check_eps(eps: &Tensor) -> Result<usize> {
    match eps.dims() {
        [b, 1] if *b > 0 => Ok(*b),
        d => Err(SolverError::InvalidOptions(format!(
            "the latent SDE's noise eps must be [B, 1] with B > 0, got {d:?}"
        ))
        .into()),
    }
}

/// The first and last of `ts`, which `model` needs at least two of, increasing and finite.
pub(crate) fn span(ts: &[f64], model: &str) -> Result<(f64, f64)> {
    if ts.len() < 2 || !ts.windows(2).all(|w| w[0] < w[1]) || !ts.iter().all(|t| t.is_finite()) {
        return Err(SolverError::InvalidTimes(format!(
            "{model} needs at least two increasing, finite times, got {ts:?}"
        ))
        .into());
    }
    Ok((ts[0], ts[ts.len() - 1]))
}

/// The mean over the samples of the summed Laplace log-likelihood of the observations
/// `ys` (`[T]`) under the samples `zs` (`[T, B]`) with scale `scale`:
/// `mean_b Σ_t (−ln 2s − |y_t − z_tb| / s)`.
///
/// # Errors
/// Shapes that do not match.
pub fn laplace_log_likelihood(zs: &Tensor, ys: &Tensor, scale: f64) -> Result<Tensor> {
    let t = zs.dim(0)?;
    let dev = zs.broadcast_sub(&ys.reshape((t, 1))?)?.abs()?;
    let per = dev.affine(-1.0 / scale, -(2.0 * scale).ln())?;
    per.sum(0)?.mean_all()
}

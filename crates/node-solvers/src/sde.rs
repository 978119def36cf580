//! `sdeint`: stochastic differential equations `dy = f(t, y) dt + g(t, y) dW`, driven by a
//! [`BrownianPath`], with fixed steps (torchsde's `sdeint`, diffrax's `diffeqsolve` with an
//! SDE's terms).
//!
//! The method decides how the equation is read, as in diffrax: [`SdeMethod::EulerMaruyama`]
//! and [`SdeMethod::ItoMilstein`] solve it as an Itô equation; [`SdeMethod::Heun`],
//! [`SdeMethod::Midpoint`] and [`SdeMethod::StratonovichMilstein`] as a Stratonovich one.
//! With additive noise (`g` independent of `y`) the two readings agree.
//!
//! The solve is built from Candle tensor ops on the state, so for a fixed Brownian path it
//! is a differentiable function of `y0` and of any parameters of `f` and `g`: gradients flow
//! through it with `backward()`.

use crate::brownian::BrownianPath;
use crate::error::SolverError;
use crate::solve::check_times;
use candle_core::{DType, Result, Shape, Tensor};
use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

/// The two terms of an SDE `dy = f(t, y) dt + g(t, y) dW`: the drift `f` and the diffusion
/// `g`. A pair of closures `(f, g)`, each `Fn(f64, &Tensor) -> Result<Tensor>`, is one.
///
/// # Shapes
/// For a state of shape `S`: the drift has shape `S`; the diffusion `S` for
/// [`Noise::Diagonal`] and `[...S, m]` for [`Noise::General`] (see there). Same dtype and
/// device as the state.
///
/// # Errors
/// Whatever the implementation returns is passed through by the solver.
pub trait SdeField {
    /// The drift `f(t, y)`.
    fn drift(&self, t: f64, y: &Tensor) -> Result<Tensor>;
    /// The diffusion `g(t, y)`.
    fn diffusion(&self, t: f64, y: &Tensor) -> Result<Tensor>;
}

impl<F, G> SdeField for (F, G)
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
    G: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn drift(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        (self.0)(t, y)
    }
    fn diffusion(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        (self.1)(t, y)
    }
}

/// How the diffusion multiplies the Brownian increment (torchsde's `noise_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Noise {
    /// Every component has a Brownian motion of its own: `W` and `g` have the state's shape
    /// `S` and `dy_i = f_i dt + g_i dW_i`. The Milstein methods further assume that `g_i`
    /// depends on `y_i` only (not on the other components), as torchsde's diagonal noise.
    #[default]
    Diagonal,
    /// `m` Brownian motions mix into every component: `g` has shape `[...S, m]` and
    /// `dy = f dt + g · dW`, contracted over the last axis. `W` has shape `[m]` (one set of
    /// `m` motions for the whole state) or `[S[0], m]` (one set per row of the leading,
    /// batch, dimension).
    General,
}

/// A fixed-step SDE method. The strong orders below are those of the error
/// `E|y_N − y(T)|` along one Brownian path; the tests measure them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SdeMethod {
    /// Euler–Maruyama, Itô: `y₁ = y + f h + g ΔW`. One drift and one diffusion evaluation
    /// per step; strong order 1/2 (1 for additive noise).
    #[default]
    EulerMaruyama,
    /// Milstein, Itô, derivative-free (Kloeden & Platen 1992, (11.1.5)), diagonal noise:
    /// `y₁ = y + f h + g ΔW + (g(t, ȳ) − g) (ΔW² − h) / (2√h)`, `ȳ = y + f h + g √h`.
    /// Strong order 1; one drift and two diffusion evaluations per step.
    ItoMilstein,
    /// Milstein, Stratonovich, derivative-free, diagonal noise:
    /// `y₁ = y + f h + g ΔW + (g(t, y + g√h) − g(t, y − g√h)) ΔW² / (4√h)`. Strong order 1;
    /// one drift and three diffusion evaluations per step. (The one-sided difference of
    /// [`SdeMethod::ItoMilstein`] would leave an error of mean `O(h^{3/2})` per step, times
    /// `ΔW²` whose mean is not zero: order 1/2.)
    StratonovichMilstein,
    /// Stochastic Heun, Stratonovich: Euler–Maruyama's `ỹ`, then
    /// `y₁ = y + (f + f(t₁, ỹ)) h/2 + (g + g(t₁, ỹ)) ΔW/2`. Strong order 1 for diagonal
    /// (commutative) and additive noise, 1/2 for general noise; two drift and two diffusion
    /// evaluations per step.
    Heun,
    /// Stochastic midpoint, Stratonovich: `ỹ = y + f h/2 + g ΔW/2` at `t + h/2`, then
    /// `y₁ = y + f(t + h/2, ỹ) h + g(t + h/2, ỹ) ΔW`. Strong order 1 for diagonal
    /// (commutative) and additive noise, 1/2 for general noise.
    Midpoint,
}

/// Itô or Stratonovich: how a method reads the equation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Calculus {
    /// The Itô integral (the increment's left end).
    Ito,
    /// The Stratonovich integral (the midpoint rule; the chain rule holds).
    Stratonovich,
}

impl SdeMethod {
    /// Every method.
    pub const ALL: [SdeMethod; 5] = [
        SdeMethod::EulerMaruyama,
        SdeMethod::ItoMilstein,
        SdeMethod::StratonovichMilstein,
        SdeMethod::Heun,
        SdeMethod::Midpoint,
    ];

    /// The method's name, as [`FromStr`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            SdeMethod::EulerMaruyama => "euler_maruyama",
            SdeMethod::ItoMilstein => "ito_milstein",
            SdeMethod::StratonovichMilstein => "stratonovich_milstein",
            SdeMethod::Heun => "heun",
            SdeMethod::Midpoint => "midpoint",
        }
    }

    /// How the method reads the equation.
    pub fn calculus(self) -> Calculus {
        match self {
            SdeMethod::EulerMaruyama | SdeMethod::ItoMilstein => Calculus::Ito,
            SdeMethod::StratonovichMilstein | SdeMethod::Heun | SdeMethod::Midpoint => {
                Calculus::Stratonovich
            }
        }
    }

    /// The strong order for diagonal noise that is not additive.
    pub fn strong_order(self) -> f64 {
        match self {
            SdeMethod::EulerMaruyama => 0.5,
            _ => 1.0,
        }
    }

    /// Whether the method handles [`Noise::General`] (the Milstein methods need diagonal
    /// noise).
    pub fn supports(self, noise: Noise) -> bool {
        noise == Noise::Diagonal
            || !matches!(
                self,
                SdeMethod::ItoMilstein | SdeMethod::StratonovichMilstein
            )
    }
}

impl fmt::Display for SdeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SdeMethod {
    type Err = SolverError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        let alias = match key.as_str() {
            "euler" | "em" => Some(SdeMethod::EulerMaruyama),
            "milstein" => Some(SdeMethod::ItoMilstein),
            _ => None,
        };
        alias
            .or_else(|| SdeMethod::ALL.into_iter().find(|m| m.name() == key))
            .ok_or_else(|| {
                let names: Vec<&str> = SdeMethod::ALL.iter().map(|m| m.name()).collect();
                SolverError::InvalidOptions(format!(
                    "unknown SDE method `{s}` (expected one of: {})",
                    names.join(", ")
                ))
            })
    }
}

/// Options of [`sdeint`]. Build with `SdeOptions::default()` and the builder methods.
///
/// Defaults: Euler–Maruyama, steps of at most `1e-3` (torchsde's default), diagonal noise,
/// at most 1 000 000 steps, outputs checked for NaN and infinity.
#[derive(Clone, Debug)]
pub struct SdeOptions {
    /// The method.
    pub method: SdeMethod,
    /// The largest step. Each interval between two output times is cut into the fewest equal
    /// steps no longer than this, so every output time is a step's end.
    pub dt: f64,
    /// How the diffusion multiplies the Brownian increment.
    pub noise: Noise,
    /// The most steps the whole solve may take.
    pub max_steps: usize,
    /// Whether the outputs are checked for NaN and infinity at the end (one read back to the
    /// host, [`SolverError::NonFinite`] on failure).
    pub check_finite: bool,
}

impl Default for SdeOptions {
    fn default() -> Self {
        Self {
            method: SdeMethod::EulerMaruyama,
            dt: 1e-3,
            noise: Noise::Diagonal,
            max_steps: 1_000_000,
            check_finite: true,
        }
    }
}

impl SdeOptions {
    /// Sets the method.
    pub fn method(mut self, method: SdeMethod) -> Self {
        self.method = method;
        self
    }
    /// Sets the largest step.
    pub fn dt(mut self, dt: f64) -> Self {
        self.dt = dt;
        self
    }
    /// Sets the noise type.
    pub fn noise(mut self, noise: Noise) -> Self {
        self.noise = noise;
        self
    }
    /// Sets the most steps.
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }
    /// Sets whether the outputs are checked for NaN and infinity.
    pub fn check_finite(mut self, check: bool) -> Self {
        self.check_finite = check;
        self
    }

    /// Checks the options.
    ///
    /// # Errors
    /// [`SolverError::InvalidOptions`] for a step that is not finite and positive, a zero
    /// step limit, or a method that does not handle the noise type.
    pub fn validate(&self) -> Result<()> {
        if !(self.dt.is_finite() && self.dt > 0.0) {
            return Err(SolverError::InvalidOptions(format!(
                "the SDE step dt must be finite and > 0, got {}",
                self.dt
            ))
            .into());
        }
        if self.max_steps == 0 {
            return Err(SolverError::InvalidOptions("max_steps must be at least 1".into()).into());
        }
        if !self.method.supports(self.noise) {
            return Err(SolverError::InvalidOptions(format!(
                "`{}` needs diagonal noise; for {:?} noise use euler_maruyama (Itô), heun or \
                 midpoint (Stratonovich)",
                self.method, self.noise
            ))
            .into());
        }
        Ok(())
    }
}

/// Counts of an SDE solve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SdeStats {
    /// Evaluations of the drift.
    pub drift_evals: usize,
    /// Evaluations of the diffusion.
    pub diffusion_evals: usize,
    /// Steps taken.
    pub steps: usize,
    /// Reads of device values back to the host: one to check the outputs, none per step.
    pub host_reads: usize,
}

/// The result of [`sdeint`].
#[derive(Clone, Debug)]
pub struct SdeSolution {
    /// The output times, as given.
    pub ts: Vec<f64>,
    /// The states at `ts`, stacked: shape `[ts.len(), ...y0.shape]`.
    pub ys: Tensor,
    /// Evaluation and step counts.
    pub stats: SdeStats,
}

impl SdeSolution {
    /// The state at the last output time.
    pub fn last(&self) -> Result<Tensor> {
        self.ys.get(self.ts.len() - 1)
    }
}

/// Solves the SDE `dy = f(t, y) dt + g(t, y) dW`, `y(ts[0]) = y0`, along the Brownian path
/// `bm`, returning the states at every time of `ts`.
///
/// `ts` is strictly increasing or strictly decreasing (a reverse-time solve takes the
/// path's increments backwards) and lies in the path's span. Each interval between output
/// times is cut into equal steps of at most `opts.dt`. Outputs are step ends, never
/// interpolated (an SDE's solution between two steps is not their interpolation).
///
/// # Shapes
/// - `y0`: any shape `S`, float dtype, any device; `bm` of the same dtype and device.
/// - [`Noise::Diagonal`]: `bm.shape() = S`, `g(t, y)` of shape `S`.
/// - [`Noise::General`]: `bm.shape() = [m]` or `[S[0], m]`, `g(t, y)` of shape `[...S, m]`.
/// - `f(t, y)`: shape `S`. Result `ys`: `[ts.len(), ...S]`, `ys[0] = y0`.
///
/// # Errors
/// [`SolverError`] for invalid options or times, times outside the path's span, a path or
/// field output of the wrong shape, dtype or device, too many steps, and a non-finite
/// output; errors of `f`, `g` and the path are passed through.
///
/// # Example
/// Geometric Brownian motion `dy = μ y dt + σ y dW` (Itô), whose solution along the path is
/// `y0 exp((μ − σ²/2) t + σ W(t))`:
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use node_solvers::{sdeint, BrownianPath, SdeMethod, SdeOptions, VirtualBrownianTree};
/// # fn main() -> candle_core::Result<()> {
/// let (mu, sigma) = (0.5, 0.8);
/// let sde = (
///     move |_t: f64, y: &Tensor| y.affine(mu, 0.0),
///     move |_t: f64, y: &Tensor| y.affine(sigma, 0.0),
/// );
/// let y0 = Tensor::ones(1000, DType::F64, &Device::Cpu)?;
/// let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-6, 1000, 0, DType::F64, &Device::Cpu)?;
/// let opts = SdeOptions::default().method(SdeMethod::ItoMilstein).dt(1.0 / 256.0);
/// let y1 = sdeint(&sde, &y0, &[0.0, 1.0], &bm, &opts)?.last()?;
/// let exact = (bm.increment(0.0, 1.0)?.affine(sigma, mu - sigma * sigma / 2.0))?.exp()?;
/// let err = (y1 - exact)?.abs()?.mean_all()?.to_scalar::<f64>()?;
/// assert!(err < 0.01);
/// # Ok(())
/// # }
/// ```
pub fn sdeint<F, B>(
    sde: &F,
    y0: &Tensor,
    ts: &[f64],
    bm: &B,
    opts: &SdeOptions,
) -> Result<SdeSolution>
where
    F: SdeField + ?Sized,
    B: BrownianPath + ?Sized,
{
    opts.validate()?;
    check_times(ts)?;
    if !y0.dtype().is_float() {
        return Err(SolverError::InvalidOptions(format!(
            "the state must have a float dtype, got {:?}",
            y0.dtype()
        ))
        .into());
    }
    let (lo, hi) = bm.span();
    let (first, last) = (ts[0], ts[ts.len() - 1]);
    if first.min(last) < lo || first.max(last) > hi {
        return Err(SolverError::InvalidTimes(format!(
            "the solve runs from {first} to {last}, the Brownian motion is defined on [{lo}, {hi}]"
        ))
        .into());
    }
    let ev = SdeEvaluator::new(sde, y0, bm.shape(), opts.noise)?;
    // The steps of each interval, all counted before any is taken.
    let counts: Vec<usize> = ts
        .windows(2)
        .map(|w| {
            let span = (w[1] - w[0]).abs();
            ((span / opts.dt) * (1.0 - 1e-12)).ceil().max(1.0) as usize
        })
        .collect();
    let total: usize = counts.iter().sum();
    if total > opts.max_steps {
        return Err(SolverError::MaxStepsExceeded {
            t: first,
            steps: total,
        }
        .into());
    }
    let mut out = Vec::with_capacity(ts.len());
    out.push(y0.clone());
    let mut y = y0.clone();
    for (w, &n) in ts.windows(2).zip(&counts) {
        let (a, b) = (w[0], w[1]);
        let mut t = a;
        for k in 1..=n {
            let t1 = if k == n {
                b
            } else {
                a + (b - a) * (k as f64 / n as f64)
            };
            let dw = bm.increment(t, t1)?;
            if dw.dtype() != y0.dtype() || !dw.device().same_device(y0.device()) {
                return Err(SolverError::InvalidOptions(format!(
                    "the Brownian motion is {:?} on {:?}, the state {:?} on {:?}",
                    dw.dtype(),
                    dw.device(),
                    y0.dtype(),
                    y0.device()
                ))
                .into());
            }
            y = step(&ev, opts.method, t, t1, &y, &dw)?;
            t = t1;
        }
        out.push(y.clone());
    }
    let ys = Tensor::stack(&out, 0)?;
    let mut host_reads = 0;
    if opts.check_finite && ts.len() > 1 {
        host_reads += 1;
        // x − x is 0 for finite x and NaN otherwise; summing cannot overflow.
        let z = ys
            .sub(&ys)?
            .flatten_from(1)?
            .sum(1)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        if let Some(i) = z.iter().position(|v| !v.is_finite()) {
            return Err(SolverError::NonFinite { t: ts[i] }.into());
        }
    }
    Ok(SdeSolution {
        ts: ts.to_vec(),
        ys,
        stats: SdeStats {
            drift_evals: ev.drift_evals.get(),
            diffusion_evals: ev.diffusion_evals.get(),
            steps: total,
            host_reads,
        },
    })
}

/// One step from `(t, y)` to `t1` with the increment `dw = W(t1) − W(t)`.
fn step<F: SdeField + ?Sized>(
    ev: &SdeEvaluator<'_, F>,
    method: SdeMethod,
    t: f64,
    t1: f64,
    y: &Tensor,
    dw: &Tensor,
) -> Result<Tensor> {
    let h = t1 - t;
    match method {
        SdeMethod::EulerMaruyama => {
            let f = ev.drift(t, y)?;
            let g = ev.diffusion(t, y)?;
            (y + f.affine(h, 0.0)?)? + ev.times(&g, dw)?
        }
        SdeMethod::ItoMilstein => {
            // Diagonal noise only (checked by the options): g ΔW is elementwise.
            let f = ev.drift(t, y)?;
            let g = ev.diffusion(t, y)?;
            let fh = f.affine(h, 0.0)?;
            // A reverse step (h < 0) has the same √|h| and ΔW² − |h|.
            let sq = h.abs().sqrt();
            let y_bar = ((y + &fh)? + g.affine(sq, 0.0)?)?;
            let g_bar = ev.diffusion(t, &y_bar)?;
            let corr = dw.sqr()?.affine(1.0, -h.abs())?;
            let milstein = ((g_bar - &g)? * corr)?.affine(0.5 / sq, 0.0)?;
            ((y + fh)? + (g * dw)?)? + milstein
        }
        SdeMethod::StratonovichMilstein => {
            let f = ev.drift(t, y)?;
            let g = ev.diffusion(t, y)?;
            let sq = h.abs().sqrt();
            let g_sq = g.affine(sq, 0.0)?;
            let g_plus = ev.diffusion(t, &(y + &g_sq)?)?;
            let g_minus = ev.diffusion(t, &(y - g_sq)?)?;
            // (g(y + g√h) − g(y − g√h)) / (2√h) = g g' + O(h), then ½ g g' ΔW².
            let milstein = ((g_plus - g_minus)? * dw.sqr()?)?.affine(0.25 / sq, 0.0)?;
            ((y + f.affine(h, 0.0)?)? + (g * dw)?)? + milstein
        }
        SdeMethod::Heun => {
            let f = ev.drift(t, y)?;
            let g = ev.diffusion(t, y)?;
            let y_tilde = ((y + f.affine(h, 0.0)?)? + ev.times(&g, dw)?)?;
            let f1 = ev.drift(t1, &y_tilde)?;
            let g1 = ev.diffusion(t1, &y_tilde)?;
            let drift = (f + f1)?.affine(0.5 * h, 0.0)?;
            let noise = ev.times(&(g + g1)?, dw)?.affine(0.5, 0.0)?;
            (y + drift)? + noise
        }
        SdeMethod::Midpoint => {
            let tm = t + 0.5 * h;
            let f = ev.drift(t, y)?;
            let g = ev.diffusion(t, y)?;
            let y_mid = ((y + f.affine(0.5 * h, 0.0)?)? + ev.times(&g, dw)?.affine(0.5, 0.0)?)?;
            let fm = ev.drift(tm, &y_mid)?;
            let gm = ev.diffusion(tm, &y_mid)?;
            (y + fm.affine(h, 0.0)?)? + ev.times(&gm, dw)?
        }
    }
}

/// Evaluates the terms, checks what they return and counts the evaluations.
struct SdeEvaluator<'a, F: ?Sized> {
    sde: &'a F,
    state: Shape,
    /// The diffusion's shape.
    diffusion: Shape,
    noise: Noise,
    /// For general noise: `(rows, per_row, m)`, the shapes of the batched product
    /// `g [rows, per_row, m] · dW [rows, m, 1]`.
    product: (usize, usize, usize),
    drift_evals: Cell<usize>,
    diffusion_evals: Cell<usize>,
}

impl<'a, F: SdeField + ?Sized> SdeEvaluator<'a, F> {
    fn new(sde: &'a F, y0: &Tensor, w: &Shape, noise: Noise) -> Result<Self> {
        let state = y0.shape().clone();
        let n = state.elem_count();
        let (diffusion, product) = match noise {
            Noise::Diagonal => {
                if w != &state {
                    return Err(SolverError::InvalidOptions(format!(
                        "diagonal noise needs a Brownian motion of the state's shape {:?}, got {:?}",
                        state.dims(),
                        w.dims()
                    ))
                    .into());
                }
                (state.clone(), (0, 0, 0))
            }
            Noise::General => {
                let rows = match w.dims() {
                    [_] => 1,
                    [b, _] if state.rank() >= 1 && state.dims()[0] == *b => *b,
                    _ => {
                        return Err(SolverError::InvalidOptions(format!(
                            "general noise needs a Brownian motion of shape [m] or [{}, m] for a \
                             state of shape {:?}, got {:?}",
                            state.dims().first().copied().unwrap_or(1),
                            state.dims(),
                            w.dims()
                        ))
                        .into())
                    }
                };
                let m = w.dims()[w.rank() - 1];
                let mut dims = state.dims().to_vec();
                dims.push(m);
                (Shape::from(dims), (rows, n / rows.max(1), m))
            }
        };
        Ok(Self {
            sde,
            state,
            diffusion,
            noise,
            product,
            drift_evals: Cell::new(0),
            diffusion_evals: Cell::new(0),
        })
    }

    fn check(&self, what: &str, out: &Tensor, want: &Shape, y: &Tensor, t: f64) -> Result<()> {
        if out.shape() != want {
            return Err(SolverError::OutputMismatch(format!(
                "the {what} has shape {:?}, expected {:?} for a state of shape {:?} (at t = {t})",
                out.dims(),
                want.dims(),
                self.state.dims()
            ))
            .into());
        }
        if out.dtype() != y.dtype() || !out.device().same_device(y.device()) {
            return Err(SolverError::OutputMismatch(format!(
                "the {what} is {:?} on {:?}, the state {:?} on {:?} (at t = {t})",
                out.dtype(),
                out.device(),
                y.dtype(),
                y.device()
            ))
            .into());
        }
        Ok(())
    }

    fn drift(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        let f = self.sde.drift(t, y)?;
        self.drift_evals.set(self.drift_evals.get() + 1);
        self.check("drift", &f, &self.state, y, t)?;
        Ok(f)
    }

    fn diffusion(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        let g = self.sde.diffusion(t, y)?;
        self.diffusion_evals.set(self.diffusion_evals.get() + 1);
        self.check("diffusion", &g, &self.diffusion, y, t)?;
        Ok(g)
    }

    /// `g · dW`: elementwise for diagonal noise, contracted over `m` for general noise.
    fn times(&self, g: &Tensor, dw: &Tensor) -> Result<Tensor> {
        match self.noise {
            Noise::Diagonal => g * dw,
            Noise::General => {
                let (rows, per_row, m) = self.product;
                g.reshape((rows, per_row, m))?
                    .matmul(&dw.reshape((rows, m, 1))?)?
                    .reshape(self.state.clone())
            }
        }
    }
}

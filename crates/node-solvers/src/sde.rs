//! `sdeint`: stochastic differential equations `dy = f(t, y) dt + g(t, y) dW`, driven by a
//! [`BrownianPath`], with fixed or adaptive steps (torchsde's `sdeint`, diffrax's
//! `diffeqsolve` with an SDE's terms).
//!
//! The method decides how the equation is read, as in diffrax: [`SdeMethod::EulerMaruyama`]
//! and [`SdeMethod::ItoMilstein`] solve it as an Itô equation; [`SdeMethod::Heun`],
//! [`SdeMethod::Midpoint`], [`SdeMethod::StratonovichMilstein`] and
//! [`SdeMethod::ReversibleHeun`] as a Stratonovich one.
//! With additive noise (`g` independent of `y`) the two readings agree, and
//! [`SdeMethod::Shark`], [`SdeMethod::Sra1`] (strong order 3/2) and [`SdeMethod::Sea`] use
//! the steps' space-time Lévy areas ([`crate::LevyIncrement`]) as well as their increments;
//! [`SdeMethod::GeneralShark`] takes them for any noise.
//!
//! The solve is built from Candle tensor ops on the state, so for a fixed Brownian path it
//! is a differentiable function of `y0` and of any parameters of `f` and `g`: gradients flow
//! through it with `backward()`.

use crate::brownian::BrownianPath;
use crate::error::SolverError;
use crate::method::{find_named, names_of};
use crate::options::ErrorNorm;
use crate::rk::read_to_host;
use crate::solve::{
    accepts, check_resolvable, check_times, error_scale, finite_rows, for_norm, scaled_norm_sq,
    steps_over, Controller, PreparedAtol,
};
use candle_core::{Result, Shape, Tensor};
use std::cell::{Cell, RefCell};
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
    /// Whether the noise is additive: `g` depends on `t` (and on parameters) but not on
    /// `y`. The methods for additive noise ([`SdeMethod::Sea`], [`SdeMethod::Sra1`],
    /// [`SdeMethod::Shark`]) need it: they evaluate `g` at one state per time and reuse it.
    /// The solver takes `true` as a promise and does not check it. Default `false`;
    /// [`Additive`] says `true`.
    fn additive_noise(&self) -> bool {
        false
    }
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

/// The terms of `sde` with their outputs detached: a solve of them builds no graph, so its
/// memory does not grow with the steps (sampling a trained model; the forward solve of an
/// adjoint).
#[derive(Clone, Copy, Debug)]
pub struct Detached<'a, F: ?Sized>(pub &'a F);

impl<F: SdeField + ?Sized> SdeField for Detached<'_, F> {
    fn drift(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        Ok(self.0.drift(t, y)?.detach())
    }
    fn diffusion(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        Ok(self.0.diffusion(t, y)?.detach())
    }
    fn additive_noise(&self) -> bool {
        self.0.additive_noise()
    }
}

/// An SDE with additive noise, `dy = f(t, y) dt + g(t) dW`: a drift
/// `Fn(f64, &Tensor) -> Result<Tensor>` and a diffusion `Fn(f64) -> Result<Tensor>` that
/// cannot see the state, so [`SdeField::additive_noise`] holds by construction. Any method
/// solves it; [`SdeMethod::Shark`], [`SdeMethod::Sra1`] and [`SdeMethod::Sea`] only such.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use node_solvers::{
///     sdeint, AdditiveSde, SdeMethod, SdeOptions, VirtualBrownianTree,
/// };
/// # fn main() -> candle_core::Result<()> {
/// let dev = Device::Cpu;
/// let sigma = Tensor::full(0.5f64, 100, &dev)?;
/// // A double-well potential with noise: dy = (y − y³) dt + 0.5 dW.
/// let sde = AdditiveSde::new(
///     |_t: f64, y: &Tensor| y - (y.sqr()? * y)?,
///     move |_t: f64| Ok(sigma.clone()),
/// );
/// let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-6, 100, 0, DType::F64, &dev)?.with_levy_area();
/// let y0 = Tensor::zeros(100, DType::F64, &dev)?;
/// let opts = SdeOptions::default().method(SdeMethod::Shark).dt(0.05);
/// let y1 = sdeint(&sde, &y0, &[0.0, 1.0], &bm, &opts)?.last()?;
/// assert_eq!(y1.dims(), [100]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Additive<F, G> {
    /// The drift `f(t, y)`.
    pub drift: F,
    /// The diffusion `g(t)`.
    pub diffusion: G,
}

impl<F, G> Additive<F, G>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
    G: Fn(f64) -> Result<Tensor>,
{
    /// The SDE `dy = drift(t, y) dt + diffusion(t) dW`.
    pub fn new(drift: F, diffusion: G) -> Self {
        Self { drift, diffusion }
    }
}

impl<F, G> SdeField for Additive<F, G>
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
    G: Fn(f64) -> Result<Tensor>,
{
    fn drift(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        (self.drift)(t, y)
    }
    fn diffusion(&self, t: f64, _y: &Tensor) -> Result<Tensor> {
        (self.diffusion)(t)
    }
    fn additive_noise(&self) -> bool {
        true
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

impl Noise {
    /// The diffusion's shape for a state of shape `state` driven by a path of shape `w`:
    /// `state` for diagonal noise, `[...state, m]` for general noise.
    ///
    /// # Errors
    /// [`SolverError::InvalidOptions`] when the path's shape does not fit the state (see
    /// [`Noise`]).
    pub fn diffusion_shape(self, state: &Shape, w: &Shape) -> Result<Shape> {
        match self {
            Noise::Diagonal => {
                if w != state {
                    return Err(SolverError::InvalidOptions(format!(
                        "diagonal noise needs a Brownian motion of the state's shape {:?}, got {:?}",
                        state.dims(),
                        w.dims()
                    ))
                    .into());
                }
                Ok(state.clone())
            }
            Noise::General => {
                let fits = match w.dims() {
                    [_] => true,
                    [b, _] => state.rank() >= 1 && state.dims()[0] == *b,
                    _ => false,
                };
                if !fits {
                    return Err(SolverError::InvalidOptions(format!(
                        "general noise needs a Brownian motion of shape [m] or [{}, m] for a \
                         state of shape {:?}, got {:?}",
                        state.dims().first().copied().unwrap_or(1),
                        state.dims(),
                        w.dims()
                    ))
                    .into());
                }
                let mut dims = state.dims().to_vec();
                dims.push(w.dims()[w.rank() - 1]);
                Ok(Shape::from(dims))
            }
        }
    }

    /// `g · ΔW` for a state of shape `state`: elementwise for diagonal noise; for general
    /// noise `g` (`[...state, m]`) contracted with `ΔW` (`[m]` or `[state[0], m]`) over `m`.
    pub fn product(self, g: &Tensor, dw: &Tensor, state: &Shape) -> Result<Tensor> {
        match self {
            Noise::Diagonal => g * dw,
            Noise::General => {
                let m = dw.dims()[dw.rank() - 1];
                let rows = if dw.rank() == 2 { dw.dims()[0] } else { 1 };
                let per_row = state.elem_count() / rows.max(1);
                g.reshape((rows, per_row, m))?
                    .matmul(&dw.reshape((rows, m, 1))?)?
                    .reshape(state.clone())
            }
        }
    }
}

impl Noise {
    /// The vector–Jacobian product of [`Noise::product`] with respect to `g`: for a
    /// cotangent `c` of the state's shape, `∂(c · (g · ΔW))/∂g`, of the diffusion's shape
    /// (`c ⊙ ΔW` for diagonal noise, the outer products `c ΔWᵀ` row by row for general).
    pub fn product_vjp(self, c: &Tensor, dw: &Tensor, state: &Shape) -> Result<Tensor> {
        match self {
            Noise::Diagonal => c * dw,
            Noise::General => {
                let m = dw.dims()[dw.rank() - 1];
                let rows = if dw.rank() == 2 { dw.dims()[0] } else { 1 };
                let per_row = state.elem_count() / rows.max(1);
                let mut dims = state.dims().to_vec();
                dims.push(m);
                c.reshape((rows, per_row, 1))?
                    .broadcast_mul(&dw.reshape((rows, 1, m))?)?
                    .reshape(dims)
            }
        }
    }
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
    /// Reversible Heun, Stratonovich (Kidger, Foster, Li & Lyons 2021, *Efficient and
    /// accurate gradients for neural SDEs*; diffrax's `ReversibleHeun`). It carries a second
    /// state `ŷ` and the terms there, `μ = f(t, ŷ)` and `σ = g(t, ŷ)`:
    /// `ŷ₁ = 2y − ŷ + μ h + σ ΔW`, then `μ₁, σ₁` at `(t₁, ŷ₁)`, and
    /// `y₁ = y + (μ + μ₁) h/2 + (σ + σ₁) ΔW/2`. One drift and one diffusion evaluation per
    /// step (one more at the start); the step inverts in closed form, so
    /// `node_adjoint::sdeint_adjoint` walks it back for the discrete solve's exact gradient.
    /// Strong order 1 for diagonal (commutative) and additive noise, 1/2 for general noise.
    /// Its region of linear stability is a segment of the imaginary axis: on contracting
    /// dynamics `y` and `ŷ` drift apart (on `dy = λy dt`, by about 4% a step at
    /// `λh = −0.1`), so keep `|λh|` small there.
    ReversibleHeun,
    /// Shifted Euler for additive noise (Foster, dos Reis & Strange 2023, (5.8); diffrax's
    /// `SEA`): `y₁ = y + f(t, y + g (ΔW/2 + H)) h + g ΔW`, with `H` the step's space-time
    /// Lévy area. One drift evaluation per step; strong order 1, with a smaller error than
    /// Euler–Maruyama's. Needs additive noise ([`SdeField::additive_noise`]) and a path
    /// with Lévy area ([`crate::VirtualBrownianTree::with_levy_area`]).
    Sea,
    /// Rößler's SRA1 (2010) for additive noise: two drift evaluations per step, strong order
    /// 3/2, and an embedded error estimate ([`SdeErrorEstimate::Embedded`]). Needs additive
    /// noise and Lévy area, as [`SdeMethod::Sea`].
    Sra1,
    /// ShARK (Foster, dos Reis & Strange 2023; diffrax's `ShARK`) for additive noise:
    /// `z₀ = y + g H`, `z₁ = y + ⅚ f(t, z₀) h + g (⅚ ΔW + H)`,
    /// `y₁ = y + (0.4 f(t, z₀) + 0.6 f(t + ⅚h, z₁)) h + g ΔW`. Two drift evaluations per
    /// step, strong order 3/2, and an embedded error estimate; the method diffrax
    /// recommends for additive noise. Needs additive noise and Lévy area, as
    /// [`SdeMethod::Sea`].
    ///
    /// For these three methods a diffusion that varies in time adds
    /// `(g(t₁) − g(t)) (ΔW/2 − H)` to the step (its integral against the path, exact for a
    /// `g` linear over the step); `g` is evaluated at each step end once, so a step costs
    /// one diffusion evaluation.
    Shark,
    /// ShARK for any noise (Foster, dos Reis & Strange 2023, (6.1); diffrax's
    /// `GeneralShARK`), Stratonovich, with the step's space-time Lévy area `H`:
    /// `g₀ = g(t, y)`; `z₁ = y + g₀ H`, `f₁, g₁` at `(t, z₁)`;
    /// `z₂ = y + ⅚ f₁ h + ⅚ g₁ ΔW + g₀ H`, `f₂, g₂` at `(t + ⅚h, z₂)`;
    /// `y₁ = y + (0.4 f₁ + 0.6 f₂) h + (0.4 g₁ + 0.6 g₂) ΔW + 1.2 (g₁ − g₂) H`.
    /// Two drift and three diffusion evaluations per step. Strong order 1 for commutative
    /// (diagonal) noise, 1/2 for general noise, 3/2 for additive noise (where it is
    /// [`SdeMethod::Shark`]); for general noise diffrax finds it as accurate as three Heun
    /// steps. Needs a path with Lévy area, not additive noise.
    GeneralShark,
}

/// What a reversible Heun solve ([`SdeMethod::ReversibleHeun`]) carries at its last time:
/// enough to walk its steps back.
#[derive(Clone, Debug)]
pub struct ReversibleHeunState {
    /// The solution `y`.
    pub y: Tensor,
    /// The second state `ŷ`.
    pub y_hat: Tensor,
    /// `f(t, ŷ)`.
    pub drift: Tensor,
    /// `g(t, ŷ)`.
    pub diffusion: Tensor,
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
    pub const ALL: [SdeMethod; 10] = [
        SdeMethod::EulerMaruyama,
        SdeMethod::ItoMilstein,
        SdeMethod::StratonovichMilstein,
        SdeMethod::Heun,
        SdeMethod::Midpoint,
        SdeMethod::ReversibleHeun,
        SdeMethod::Sea,
        SdeMethod::Sra1,
        SdeMethod::Shark,
        SdeMethod::GeneralShark,
    ];

    /// The method's name, as [`FromStr`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            SdeMethod::EulerMaruyama => "euler_maruyama",
            SdeMethod::ItoMilstein => "ito_milstein",
            SdeMethod::StratonovichMilstein => "stratonovich_milstein",
            SdeMethod::Heun => "heun",
            SdeMethod::Midpoint => "midpoint",
            SdeMethod::ReversibleHeun => "reversible_heun",
            SdeMethod::Sea => "sea",
            SdeMethod::Sra1 => "sra1",
            SdeMethod::Shark => "shark",
            SdeMethod::GeneralShark => "general_shark",
        }
    }

    /// How the method reads the equation. The methods for additive noise, where the two
    /// readings agree, say Stratonovich (as diffrax's).
    pub fn calculus(self) -> Calculus {
        match self {
            SdeMethod::EulerMaruyama | SdeMethod::ItoMilstein => Calculus::Ito,
            SdeMethod::StratonovichMilstein
            | SdeMethod::Heun
            | SdeMethod::Midpoint
            | SdeMethod::ReversibleHeun
            | SdeMethod::Sea
            | SdeMethod::Sra1
            | SdeMethod::Shark
            | SdeMethod::GeneralShark => Calculus::Stratonovich,
        }
    }

    /// The strong order for diagonal noise that is not additive; for the methods that need
    /// additive noise ([`SdeMethod::needs_additive_noise`]), for additive noise.
    pub fn strong_order(self) -> f64 {
        match self {
            SdeMethod::EulerMaruyama => 0.5,
            SdeMethod::Sra1 | SdeMethod::Shark => 1.5,
            _ => 1.0,
        }
    }

    /// Whether the method needs additive noise ([`SdeMethod::Sea`], [`SdeMethod::Sra1`],
    /// [`SdeMethod::Shark`]).
    pub fn needs_additive_noise(self) -> bool {
        matches!(self, SdeMethod::Sea | SdeMethod::Sra1 | SdeMethod::Shark)
    }

    /// Whether the method takes the steps' space-time Lévy areas, so that its path must
    /// give them ([`crate::VirtualBrownianTree::with_levy_area`]): the methods for additive
    /// noise and [`SdeMethod::GeneralShark`].
    pub fn needs_levy_area(self) -> bool {
        self.needs_additive_noise() || self == SdeMethod::GeneralShark
    }

    /// Whether the method has an embedded error estimate ([`SdeErrorEstimate::Embedded`]).
    pub fn has_embedded_estimate(self) -> bool {
        matches!(
            self,
            SdeMethod::Heun | SdeMethod::Midpoint | SdeMethod::Sra1 | SdeMethod::Shark
        )
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
        let aliases = [
            ("euler", SdeMethod::EulerMaruyama),
            ("em", SdeMethod::EulerMaruyama),
            ("milstein", SdeMethod::ItoMilstein),
        ];
        find_named(s, &SdeMethod::ALL, SdeMethod::name, &aliases).ok_or_else(|| {
            SolverError::InvalidOptions(format!(
                "unknown SDE method `{s}` (expected one of: {})",
                names_of(&SdeMethod::ALL, SdeMethod::name)
            ))
        })
    }
}

/// Error control of an adaptive SDE solve ([`SdeOptions::adaptive`]), torchsde's
/// `adaptive=True`.
///
/// By default ([`SdeErrorEstimate::StepDoubling`]) each step is taken once whole and once
/// as two halves along the same Brownian path (the path's value at the midpoint is asked
/// for). Their difference, scaled elementwise by `atol + rtol · max(|y_whole|, |y_halves|)`,
/// has an RMS over the whole state, the error ratio `ε`: the step is accepted when `ε ≤ 1`,
/// keeping the two halves. The next step is `h · clamp(0.9 ε^(−1/(p + ½)), 0.2, 1.4)` (`p`
/// the method's strong order: the step's local error is `O(h^(p + ½))`); after an accepted
/// step it does not shrink, after a rejected one it does not grow. A step never crosses an
/// output time: the one that would is cut to end there. [`SdeErrorEstimate::Embedded`]
/// compares the step with the Euler–Maruyama step inside it instead.
///
/// Rejecting a step and retrying it along the same path does not bias the solution when
/// the path is a Brownian bridge queried at any time, as [`crate::VirtualBrownianTree`] is
/// (Gaines & Lyons 1997): the solution converges to the one along that path as the
/// tolerances fall. Keep `dt_min` at or above the tree's tolerance, below which its
/// increments are no longer independent.
///
/// One step size for the whole tensor: a batch of paths steps together, at the pace of its
/// roughest path. Each attempt costs three steps' evaluations by step doubling, one step's
/// with the embedded estimate, and one read of the error ratio back to the host.
///
/// # Example
/// Geometric Brownian motion (Stratonovich) to a tolerance of 1e-4, against its solution
/// along the path, `y0 exp(μ t + σ W(t))`:
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use node_solvers::{sdeint, SdeAdaptive, SdeMethod, SdeOptions, VirtualBrownianTree};
/// # fn main() -> candle_core::Result<()> {
/// let (mu, sigma) = (0.4, 0.9);
/// let sde = (
///     move |_t: f64, y: &Tensor| y.affine(mu, 0.0),
///     move |_t: f64, y: &Tensor| y.affine(sigma, 0.0),
/// );
/// let y0 = Tensor::ones(200, DType::F64, &Device::Cpu)?;
/// let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, 200, 0, DType::F64, &Device::Cpu)?;
/// let opts = SdeOptions::default()
///     .method(SdeMethod::Heun)
///     .dt(0.01)
///     .adaptive(SdeAdaptive::new(1e-4, 1e-4).dt_min(1e-7));
/// let sol = sdeint(&sde, &y0, &[0.0, 1.0], &bm, &opts)?;
/// let exact = bm.value(1.0)?.affine(sigma, mu)?.exp()?;
/// let err = (sol.last()? - exact)?.abs()?.mean_all()?.to_scalar::<f64>()?;
/// assert!(err < 1e-2);
/// assert!(sol.stats.steps > 0 && sol.stats.host_reads > sol.stats.steps);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SdeAdaptive {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// The smallest step: a step rejected at this size is [`SolverError::StepSizeTooSmall`]
    /// (torchsde accepts it with a warning). Default `1e-5`, torchsde's.
    pub dt_min: f64,
    /// The largest step. Default: none.
    pub dt_max: f64,
    /// How a step's error is estimated. Default: step doubling.
    pub estimate: SdeErrorEstimate,
}

/// How an adaptive SDE solve estimates a step's error ([`SdeAdaptive::estimate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SdeErrorEstimate {
    /// The step taken whole and as two halves (torchsde's): any method, three steps'
    /// evaluations per attempt, and the halves kept.
    #[default]
    StepDoubling,
    /// The Euler–Maruyama step inside [`SdeMethod::Heun`] and [`SdeMethod::Midpoint`]
    /// (diffrax's): no evaluation beyond the step's own, but it estimates the error of the
    /// lower-order step, `O(h)` for multiplicative noise (`O(h^{3/2})` for additive noise),
    /// so it asks for smaller steps than step doubling at the same tolerances. The
    /// controller's exponent is then `−1`. Heun's estimate sees only the step's two ends:
    /// noise that is large only between them goes unseen, so bound `dt_max` below the
    /// narrowest such feature.
    ///
    /// [`SdeMethod::Shark`] and [`SdeMethod::Sra1`] carry their own, the drift stages'
    /// combination of their tableaus (diffrax's `b_error`), `O(h^{3/2})`; the exponent is then
    /// `−2/3`.
    Embedded,
}

impl SdeAdaptive {
    /// Tolerances `rtol` and `atol`, steps of at least `1e-5` and of any length.
    pub fn new(rtol: f64, atol: f64) -> Self {
        Self {
            rtol,
            atol,
            dt_min: 1e-5,
            dt_max: f64::INFINITY,
            estimate: SdeErrorEstimate::StepDoubling,
        }
    }
    /// Sets the smallest step.
    pub fn dt_min(mut self, dt_min: f64) -> Self {
        self.dt_min = dt_min;
        self
    }
    /// Sets the largest step.
    pub fn dt_max(mut self, dt_max: f64) -> Self {
        self.dt_max = dt_max;
        self
    }
    /// Sets how a step's error is estimated.
    pub fn estimate(mut self, estimate: SdeErrorEstimate) -> Self {
        self.estimate = estimate;
        self
    }

    /// Checks the tolerances and step bounds.
    ///
    /// # Errors
    /// [`SolverError::InvalidTolerance`] for a tolerance that is not finite and positive;
    /// [`SolverError::InvalidOptions`] for step bounds that are not `0 ≤ dt_min ≤ dt_max`,
    /// with `dt_max > 0`.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("rtol", self.rtol), ("atol", self.atol)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(SolverError::InvalidTolerance { name, value }.into());
            }
        }
        if !(self.dt_min.is_finite()
            && self.dt_min >= 0.0
            && self.dt_max > 0.0
            && self.dt_min <= self.dt_max)
        {
            return Err(SolverError::InvalidOptions(format!(
                "adaptive SDE steps need 0 <= dt_min <= dt_max and dt_max > 0, got dt_min = {} \
                 and dt_max = {}",
                self.dt_min, self.dt_max
            ))
            .into());
        }
        Ok(())
    }
}

/// The controller's safety factor, and the most a step shrinks or grows at once (torchsde's).
const SDE_SAFETY: f64 = 0.9;
const SDE_MIN_FACTOR: f64 = 0.2;
const SDE_MAX_FACTOR: f64 = 1.4;

/// Options of [`sdeint`]. Build with `SdeOptions::default()` and the builder methods.
///
/// Defaults: Euler–Maruyama, fixed steps of at most `1e-3` (torchsde's default), diagonal
/// noise, at most 1 000 000 steps, outputs checked for NaN and infinity.
#[derive(Clone, Debug)]
pub struct SdeOptions {
    /// The method.
    pub method: SdeMethod,
    /// With fixed steps, the largest step: each interval between two output times is cut
    /// into the fewest equal steps no longer than this, so every output time is a step's
    /// end. With adaptive steps, the first step.
    pub dt: f64,
    /// Adaptive steps under this error control; `None` (the default) for fixed steps.
    pub adaptive: Option<SdeAdaptive>,
    /// How the diffusion multiplies the Brownian increment.
    pub noise: Noise,
    /// The most steps the whole solve may take, accepted and rejected together.
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
            adaptive: None,
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
    /// Takes adaptive steps under this error control (the first one of `dt`).
    pub fn adaptive(mut self, adaptive: SdeAdaptive) -> Self {
        self.adaptive = Some(adaptive);
        self
    }
    /// Sets the noise type.
    pub fn noise(mut self, noise: Noise) -> Self {
        self.noise = noise;
        self
    }
    /// Sets the most steps (accepted and rejected together).
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
    /// step limit, a method that does not handle the noise type, or adaptive steps with
    /// reversible Heun or a first step outside their bounds; the errors of
    /// [`SdeAdaptive::validate`].
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
        if let Some(a) = &self.adaptive {
            a.validate()?;
            if self.method == SdeMethod::ReversibleHeun {
                return Err(SolverError::InvalidOptions(
                    "reversible_heun takes fixed steps (walking them back needs their sizes): \
                     use heun or midpoint for adaptive steps"
                        .into(),
                )
                .into());
            }
            if a.estimate == SdeErrorEstimate::Embedded && !self.method.has_embedded_estimate() {
                return Err(SolverError::InvalidOptions(format!(
                    "an embedded error estimate needs heun, midpoint, sra1 or shark, got \
                     `{}`: use step doubling",
                    self.method
                ))
                .into());
            }
            if self.dt < a.dt_min || self.dt > a.dt_max {
                return Err(SolverError::InvalidOptions(format!(
                    "the first adaptive step dt = {} is outside [dt_min, dt_max] = [{}, {}]",
                    self.dt, a.dt_min, a.dt_max
                ))
                .into());
            }
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
    /// Steps taken (accepted).
    pub steps: usize,
    /// Adaptive steps rejected.
    pub rejected_steps: usize,
    /// Reads of device values back to the host: one to check the outputs, and with adaptive
    /// steps one per attempted step (its error ratio).
    pub host_reads: usize,
}

impl std::ops::AddAssign for SdeStats {
    fn add_assign(&mut self, o: Self) {
        self.drift_evals += o.drift_evals;
        self.diffusion_evals += o.diffusion_evals;
        self.steps += o.steps;
        self.rejected_steps += o.rejected_steps;
        self.host_reads += o.host_reads;
    }
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
    /// For [`SdeMethod::ReversibleHeun`], the carried state at the last output time.
    pub reversible: Option<ReversibleHeunState>,
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
/// path's increments backwards) and lies in the path's span. With fixed steps each interval
/// between output times is cut into equal steps of at most `opts.dt`; with adaptive steps
/// ([`SdeOptions::adaptive`]) their sizes follow an error estimate. Either way outputs are
/// step ends, never interpolated (an SDE's solution between two steps is not their
/// interpolation).
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
/// output; a method for additive noise ([`SdeMethod::needs_additive_noise`]) on terms that
/// do not promise it ([`SdeField::additive_noise`]), or one that takes Lévy areas
/// ([`SdeMethod::needs_levy_area`]) on a path without them; errors of `f`, `g` and the path
/// are passed through.
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
    if let Some(a) = &opts.adaptive {
        // As `odeint`: a half-precision state resolves no finer rtol than its epsilon.
        check_resolvable(y0.dtype(), a.rtol)?;
    }
    let ev = SdeEvaluator::new(sde, y0, bm.shape(), opts.noise)?;
    if opts.method == SdeMethod::ReversibleHeun {
        return reversible_heun(&ev, y0, ts, bm, opts);
    }
    if opts.method.needs_additive_noise() && !sde.additive_noise() {
        return Err(SolverError::InvalidOptions(format!(
            "`{}` needs additive noise (a diffusion that does not depend on the state): build \
             the SDE with `AdditiveSde::new(drift, |t| g(t))`, or have `SdeField::additive_noise` \
             return true",
            opts.method
        ))
        .into());
    }
    let (ys, counts) = drive(y0, ts, bm, opts, |t, t1, y, inc| {
        step(&ev, opts.method, t, t1, y, inc)
    })?;
    Ok(SdeSolution {
        ts: ts.to_vec(),
        ys,
        stats: ev.stats(counts),
        reversible: None,
    })
}

/// [`sdeint`] with [`SdeMethod::ReversibleHeun`]: the step carries `(ŷ, μ, σ)` beside `y`.
fn reversible_heun<F, B>(
    ev: &SdeEvaluator<'_, F>,
    y0: &Tensor,
    ts: &[f64],
    bm: &B,
    opts: &SdeOptions,
) -> Result<SdeSolution>
where
    F: SdeField + ?Sized,
    B: BrownianPath + ?Sized,
{
    // `(ŷ, μ, σ)`, from one step to the next; at the start `ŷ = y0` and the terms there.
    let mut carry: Option<(Tensor, Tensor, Tensor)> = None;
    let (ys, counts) = drive(y0, ts, bm, opts, |t, t1, y, inc| {
        let dw = &inc.dw;
        let (y_hat, mu, sigma) = match carry.take() {
            Some(c) => c,
            None => (y.clone(), ev.drift(t, y)?, ev.diffusion(t, y)?),
        };
        let h = t1 - t;
        let y_hat1 =
            ((y.affine(2.0, 0.0)? - y_hat)? + (mu.affine(h, 0.0)? + ev.times(&sigma, dw)?)?)?;
        let mu1 = ev.drift(t1, &y_hat1)?;
        let sigma1 = ev.diffusion(t1, &y_hat1)?;
        let drift = (&mu + &mu1)?.affine(0.5 * h, 0.0)?;
        let noise = ev.times(&(&sigma + &sigma1)?, dw)?.affine(0.5, 0.0)?;
        let y1 = ((y + drift)? + noise)?;
        carry = Some((y_hat1, mu1, sigma1));
        Ok((y1, None))
    })?;
    let reversible = match carry {
        Some((y_hat, drift, diffusion)) => Some(ReversibleHeunState {
            y: ys.get(ts.len() - 1)?,
            y_hat,
            drift,
            diffusion,
        }),
        // No step (one output time): the state at t0, its terms not evaluated.
        None => None,
    };
    Ok(SdeSolution {
        ts: ts.to_vec(),
        ys,
        stats: ev.stats(counts),
        reversible,
    })
}

/// The step ends of a solve over `ts` with steps of at most `dt`, interval by interval (each
/// interval's ends included): exactly the times [`sdeint`] steps to.
///
/// # Errors
/// Invalid times or step; [`SolverError::MaxStepsExceeded`] for more steps than
/// [`SdeOptions`]'s default `max_steps`, as [`sdeint`] refuses them.
pub fn step_times(ts: &[f64], dt: f64) -> Result<Vec<Vec<f64>>> {
    check_times(ts)?;
    let opts = SdeOptions::default().dt(dt);
    opts.validate()?;
    fixed_step_counts(ts, &opts)?;
    Ok(ts
        .windows(2)
        .map(|w| {
            let n = interval_steps(w[0], w[1], dt);
            (0..=n)
                .map(|k| {
                    if k == 0 {
                        w[0]
                    } else {
                        step_end(w[0], w[1], k, n)
                    }
                })
                .collect()
        })
        .collect())
}

/// An SDE given by its increment over a step, `D(t, y, h, ΔW) = f(t, y) h + g(t, y) · ΔW`:
/// the form that [`sdeint_increments`] solves. It is what an SDE adjoint's augmented system
/// provides: its noise mixes the path's `ΔW` into every component through vector–Jacobian
/// products, so it has no diffusion matrix to return, only the product.
pub trait SdeIncrement {
    /// `f(t, y) h + g(t, y) · ΔW`, of `y`'s shape, dtype and device. `ΔW` has the path's
    /// shape; `h` and `ΔW` are negative on a reverse-time step.
    fn increment(&self, t: f64, y: &Tensor, h: f64, dw: &Tensor) -> Result<Tensor>;
}

/// [`sdeint`] for an SDE in increment form ([`SdeIncrement`]): the methods that only need
/// `f h + g · ΔW` (Euler–Maruyama, Heun and the midpoint method; the Milstein methods need
/// the diffusion itself). The path's shape is the increment's business, not checked here.
/// Each evaluation of the increment counts as one drift and one diffusion evaluation.
///
/// # Errors
/// As [`sdeint`]; a Milstein method is [`SolverError::InvalidOptions`].
pub fn sdeint_increments<F, B>(
    sde: &F,
    y0: &Tensor,
    ts: &[f64],
    bm: &B,
    opts: &SdeOptions,
) -> Result<SdeSolution>
where
    F: SdeIncrement + ?Sized,
    B: BrownianPath + ?Sized,
{
    opts.validate()?;
    if matches!(
        opts.method,
        SdeMethod::ItoMilstein | SdeMethod::StratonovichMilstein | SdeMethod::ReversibleHeun
    ) || opts.method.needs_levy_area()
    {
        return Err(SolverError::InvalidOptions(format!(
            "`{}` needs the drift and the diffusion apart, not only the increment (and the \
             path's Levy area): use euler_maruyama, heun or midpoint",
            opts.method
        ))
        .into());
    }
    let evals = Cell::new(0);
    let (ys, counts) = drive(y0, ts, bm, opts, |t, t1, y, path| {
        let inc = |tk: f64, yk: &Tensor| -> Result<Tensor> {
            let d = sde.increment(tk, yk, t1 - t, &path.dw)?;
            evals.set(evals.get() + 1);
            if d.shape() != yk.shape() || d.dtype() != yk.dtype() {
                return Err(SolverError::OutputMismatch(format!(
                    "the increment is {:?} {:?}, the state {:?} {:?} (at t = {tk})",
                    d.dtype(),
                    d.dims(),
                    yk.dtype(),
                    yk.dims()
                ))
                .into());
            }
            Ok(d)
        };
        increment_step(opts.method, &inc, t, t1, y)
    })?;
    Ok(SdeSolution {
        ts: ts.to_vec(),
        ys,
        stats: SdeStats {
            drift_evals: evals.get(),
            diffusion_evals: evals.get(),
            steps: counts.steps,
            rejected_steps: counts.rejected,
            host_reads: counts.host_reads,
        },
        reversible: None,
    })
}

/// What [`drive`] counts.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    steps: usize,
    rejected: usize,
    host_reads: usize,
}

/// The solve's loop, for any step: checks the times against the path, takes fixed or
/// adaptive steps over each interval, stacks the outputs and checks them.
fn drive<B, S>(
    y0: &Tensor,
    ts: &[f64],
    bm: &B,
    opts: &SdeOptions,
    mut step: S,
) -> Result<(Tensor, Counts)>
where
    B: BrownianPath + ?Sized,
    S: FnMut(f64, f64, &Tensor, &PathStep) -> Result<(Tensor, Option<Tensor>)>,
{
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
    let levy = opts.method.needs_levy_area();
    let increment = |t: f64, t1: f64| -> Result<PathStep> {
        let (dw, area) = if levy {
            let l = bm.levy_increment(t, t1)?;
            (l.dw, Some(l.area))
        } else {
            (bm.increment(t, t1)?, None)
        };
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
        Ok(PathStep { dw, area })
    };
    let (out, mut counts) = match &opts.adaptive {
        None => fixed_steps(y0, ts, opts, &increment, &mut step)?,
        Some(a) => adaptive_steps(y0, ts, opts, a, &increment, &mut step)?,
    };
    let ys = Tensor::stack(&out, 0)?;
    if opts.check_finite && ts.len() > 1 {
        counts.host_reads += 1;
        let z = read_to_host(&finite_rows(&ys)?)?;
        if let Some(i) = z.iter().position(|v| !v.is_finite()) {
            return Err(SolverError::NonFinite { t: ts[i] }.into());
        }
    }
    Ok((ys, counts))
}

/// What a step takes of the path: the increment `ΔW` and, for the methods for additive
/// noise, the space-time Lévy area.
struct PathStep {
    dw: Tensor,
    area: Option<Tensor>,
}

/// The path's increment from the first time to the second, checked.
type Increment<'a> = dyn Fn(f64, f64) -> Result<PathStep> + 'a;

/// A step from `(t, y)` to `t1` along the path: the new state and, for the methods with an
/// embedded estimate, the lower-order step's.
type Step<'a> = dyn FnMut(f64, f64, &Tensor, &PathStep) -> Result<(Tensor, Option<Tensor>)> + 'a;

/// The steps of each interval between output times, each cut into the fewest equal steps
/// of at most `opts.dt`; more than `opts.max_steps` in all is refused.
fn fixed_step_counts(ts: &[f64], opts: &SdeOptions) -> Result<Vec<usize>> {
    let counts: Vec<usize> = ts
        .windows(2)
        .map(|w| interval_steps(w[0], w[1], opts.dt))
        .collect();
    // Saturating: a tiny step over a long span needs more steps than a usize holds.
    let total = counts.iter().fold(0usize, |a, &c| a.saturating_add(c));
    if total > opts.max_steps {
        return Err(SolverError::MaxStepsExceeded {
            t: ts[0],
            steps: total,
        }
        .into());
    }
    Ok(counts)
}

/// Fixed steps: each interval cut into the fewest equal steps of at most `opts.dt`, all
/// counted before the first is taken. Returns the outputs.
fn fixed_steps(
    y0: &Tensor,
    ts: &[f64],
    opts: &SdeOptions,
    increment: &Increment<'_>,
    step: &mut Step<'_>,
) -> Result<(Vec<Tensor>, Counts)> {
    let counts = fixed_step_counts(ts, opts)?;
    let mut out = Vec::with_capacity(ts.len());
    out.push(y0.clone());
    let mut y = y0.clone();
    for (w, &n) in ts.windows(2).zip(&counts) {
        let (a, b) = (w[0], w[1]);
        let mut t = a;
        for k in 1..=n {
            let t1 = step_end(a, b, k, n);
            y = step(t, t1, &y, &increment(t, t1)?)?.0;
            t = t1;
        }
        out.push(y.clone());
    }
    Ok((
        out,
        Counts {
            steps: counts.iter().sum(),
            ..Counts::default()
        },
    ))
}

/// Adaptive steps (see [`SdeAdaptive`]). Returns the outputs.
fn adaptive_steps(
    y0: &Tensor,
    ts: &[f64],
    opts: &SdeOptions,
    a: &SdeAdaptive,
    increment: &Increment<'_>,
    step: &mut Step<'_>,
) -> Result<(Vec<Tensor>, Counts)> {
    let k_exp = match a.estimate {
        SdeErrorEstimate::StepDoubling => opts.method.strong_order() + 0.5,
        SdeErrorEstimate::Embedded if opts.method.needs_additive_noise() => 1.5,
        SdeErrorEstimate::Embedded => 1.0,
    };
    let control = Controller::integral(k_exp, SDE_SAFETY, SDE_MIN_FACTOR, SDE_MAX_FACTOR);
    let mut counts = Counts::default();
    let mut out = Vec::with_capacity(ts.len());
    out.push(y0.clone());
    let mut y = y0.clone();
    let mut h = opts.dt;
    for w in ts.windows(2) {
        let (mut t, b) = (w[0], w[1]);
        let dir = if b > t { 1.0 } else { -1.0 };
        while t != b {
            if counts.steps + counts.rejected >= opts.max_steps {
                return Err(SolverError::MaxStepsExceeded {
                    t,
                    steps: counts.steps + counts.rejected,
                }
                .into());
            }
            // A step that would reach past the output time, or stop just short of it, ends
            // there.
            let left = (b - t).abs();
            let cut = h >= 0.99 * left;
            let (h_try, t1) = if cut { (left, b) } else { (h, t + dir * h) };
            let (y1, lower) = match a.estimate {
                SdeErrorEstimate::StepDoubling => {
                    let tm = t + 0.5 * (t1 - t);
                    let (p1, p2) = (increment(t, tm)?, increment(tm, t1)?);
                    let p = match p1.area {
                        // The area of the whole is not that of the halves; the path gives it.
                        Some(_) => increment(t, t1)?,
                        None => PathStep {
                            dw: (&p1.dw + &p2.dw)?,
                            area: None,
                        },
                    };
                    let whole = step(t, t1, &y, &p)?.0;
                    let mid = step(t, tm, &y, &p1)?.0;
                    (step(tm, t1, &mid, &p2)?.0, whole)
                }
                SdeErrorEstimate::Embedded => match step(t, t1, &y, &increment(t, t1)?)? {
                    (y1, Some(lower)) => (y1, lower),
                    (_, None) => {
                        return Err(SolverError::InvalidOptions(format!(
                            "`{}` has no embedded error estimate",
                            opts.method
                        ))
                        .into())
                    }
                },
            };
            counts.host_reads += 1;
            let ratio = error_ratio(&lower, &y1, a)?;
            if accepts(ratio) {
                counts.steps += 1;
                y = y1;
                t = t1;
                // A step cut short at an output time does not shorten the next one.
                let grown = h_try * control.grow(ratio, ratio);
                h = if cut { grown.max(h) } else { grown };
            } else {
                counts.rejected += 1;
                h = control.retry(t, dir, h_try, ratio, h_try <= a.dt_min, a.dt_min)?;
            }
            h = h.min(a.dt_max);
        }
        out.push(y.clone());
    }
    Ok((out, counts))
}

/// The RMS of `(lower − y1) / (atol + rtol · max(|lower|, |y1|))`, read back to the host
/// (NaN when either is not finite): `lower` the whole step's result when steps are doubled,
/// the embedded step's otherwise.
fn error_ratio(lower: &Tensor, y1: &Tensor, a: &SdeAdaptive) -> Result<f64> {
    // The ODE solvers' scale and norm (0 for a state without components), the difference
    // taken in the norm's dtype.
    let (lower, y1) = (for_norm(&lower.detach())?, for_norm(&y1.detach())?);
    let scale = error_scale(&lower, Some(&y1), a.rtol, &PreparedAtol::Scalar(a.atol))?;
    let ms = scaled_norm_sq(&(lower - y1)?, &scale, ErrorNorm::Rms)?;
    Ok(read_to_host(&ms)?[0].sqrt())
}

/// The number of equal steps of at most `dt` from `a` to `b`.
fn interval_steps(a: f64, b: f64, dt: f64) -> usize {
    steps_over((b - a).abs(), dt)
}

/// The end of step `k` of `n` from `a` to `b`; the same times, rounded alike, whichever way
/// the interval is walked (`k/n` of the way from the interval's lower end).
fn step_end(a: f64, b: f64, k: usize, n: usize) -> f64 {
    if k == n {
        return b;
    }
    let (lo, hi, j) = if a <= b { (a, b, k) } else { (b, a, n - k) };
    lo + (hi - lo) * (j as f64 / n as f64)
}

/// One step from `(t, y)` to `t1` with the increment `W(t1) − W(t)` (and its area).
fn step<F: SdeField + ?Sized>(
    ev: &SdeEvaluator<'_, F>,
    method: SdeMethod,
    t: f64,
    t1: f64,
    y: &Tensor,
    path: &PathStep,
) -> Result<(Tensor, Option<Tensor>)> {
    let h = t1 - t;
    let dw = &path.dw;
    let area = || -> Result<&Tensor> {
        path.area.as_ref().ok_or_else(|| {
            SolverError::InvalidOptions(format!("`{method}` needs the path's Levy area")).into()
        })
    };
    match method {
        SdeMethod::Sea => additive_step(ev, &SEA, t, t1, y, dw, area()?),
        SdeMethod::Sra1 => additive_step(ev, &SRA1, t, t1, y, dw, area()?),
        SdeMethod::Shark => additive_step(ev, &SHARK, t, t1, y, dw, area()?),
        SdeMethod::GeneralShark => general_shark_step(ev, t, t1, y, dw, area()?),
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
            Ok(((((y + fh)? + (g * dw)?)? + milstein)?, None))
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
            Ok(((((y + f.affine(h, 0.0)?)? + (g * dw)?)? + milstein)?, None))
        }
        SdeMethod::EulerMaruyama
        | SdeMethod::Heun
        | SdeMethod::Midpoint
        // Solved by `reversible_heun`, never here.
        | SdeMethod::ReversibleHeun => {
            let inc = |tk: f64, yk: &Tensor| -> Result<Tensor> {
                let f = ev.drift(tk, yk)?;
                let g = ev.diffusion(tk, yk)?;
                f.affine(h, 0.0)? + ev.times(&g, dw)?
            };
            increment_step(method, &inc, t, t1, y)
        }
    }
}

/// A stochastic Runge–Kutta method for additive noise (diffrax's `AdditiveCoeffs`):
/// stages `z_j = y + h Σ a_ji f_i + g (w_j ΔW + l_j H)`, `f_j = f(t + c_j h, z_j)`, the
/// step `y + h Σ b_j f_j + g ΔW` and, where there is one, the error estimate
/// `h Σ e_j f_j`.
struct AdditiveTableau {
    c: &'static [f64],
    a: &'static [&'static [f64]],
    b: &'static [f64],
    e: Option<&'static [f64]>,
    w: &'static [f64],
    l: &'static [f64],
}

const SEA: AdditiveTableau = AdditiveTableau {
    c: &[0.0],
    a: &[&[]],
    b: &[1.0],
    e: None,
    w: &[0.5],
    l: &[1.0],
};

const SRA1: AdditiveTableau = AdditiveTableau {
    c: &[0.0, 0.75],
    a: &[&[], &[0.75]],
    b: &[1.0 / 3.0, 2.0 / 3.0],
    e: Some(&[-2.0 / 3.0, 2.0 / 3.0]),
    w: &[0.0, 0.75],
    l: &[0.0, 1.5],
};

const SHARK: AdditiveTableau = AdditiveTableau {
    c: &[0.0, 5.0 / 6.0],
    a: &[&[], &[5.0 / 6.0]],
    b: &[0.4, 0.6],
    e: Some(&[-0.6, 0.6]),
    w: &[0.0, 5.0 / 6.0],
    l: &[1.0, 1.0],
};

/// One step of an [`AdditiveTableau`], with the correction `(g(t₁) − g(t)) (ΔW/2 − H)` for a
/// diffusion that varies in time. Returns the step and, with an error estimate, the step
/// minus the estimate.
fn additive_step<F: SdeField + ?Sized>(
    ev: &SdeEvaluator<'_, F>,
    tab: &AdditiveTableau,
    t: f64,
    t1: f64,
    y: &Tensor,
    dw: &Tensor,
    area: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let h = t1 - t;
    let g0 = ev.additive_diffusion(t, y)?;
    let g1 = ev.additive_diffusion(t1, y)?;
    let gw = ev.times(&g0, dw)?;
    let gl = ev.times(&g0, area)?;
    let mut fs: Vec<Tensor> = Vec::with_capacity(tab.b.len());
    for j in 0..tab.b.len() {
        let mut z = y.clone();
        for (f, &a) in fs.iter().zip(tab.a[j]) {
            if a != 0.0 {
                z = (z + f.affine(a * h, 0.0)?)?;
            }
        }
        if tab.w[j] != 0.0 {
            z = (z + gw.affine(tab.w[j], 0.0)?)?;
        }
        if tab.l[j] != 0.0 {
            z = (z + gl.affine(tab.l[j], 0.0)?)?;
        }
        fs.push(ev.drift(t + tab.c[j] * h, &z)?);
    }
    let combine = |coef: &[f64]| -> Result<Tensor> {
        let mut sum = fs[0].affine(coef[0] * h, 0.0)?;
        for (f, &c) in fs.iter().zip(coef).skip(1) {
            sum = (sum + f.affine(c * h, 0.0)?)?;
        }
        Ok(sum)
    };
    let varying = ev.times(&(g1 - g0)?, &(dw.affine(0.5, 0.0)? - area)?)?;
    let y1 = (((y + combine(tab.b)?)? + gw)? + varying)?;
    let lower = match tab.e {
        Some(e) => Some((&y1 - combine(e)?)?),
        None => None,
    };
    Ok((y1, lower))
}

/// One step of [`SdeMethod::GeneralShark`] (diffrax's `GeneralShARK` tableau).
fn general_shark_step<F: SdeField + ?Sized>(
    ev: &SdeEvaluator<'_, F>,
    t: f64,
    t1: f64,
    y: &Tensor,
    dw: &Tensor,
    area: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let h = t1 - t;
    let g0h = ev.times(&ev.diffusion(t, y)?, area)?;
    let z1 = (y + &g0h)?;
    let (f1, g1) = (ev.drift(t, &z1)?, ev.diffusion(t, &z1)?);
    let z2 = (((y + f1.affine(5.0 / 6.0 * h, 0.0)?)?
        + ev.times(&g1, dw)?.affine(5.0 / 6.0, 0.0)?)?
        + g0h)?;
    let t2 = t + 5.0 / 6.0 * h;
    let (f2, g2) = (ev.drift(t2, &z2)?, ev.diffusion(t2, &z2)?);
    let drift = (f1.affine(0.4 * h, 0.0)? + f2.affine(0.6 * h, 0.0)?)?;
    let noise = ev.times(&(g1.affine(0.4, 0.0)? + g2.affine(0.6, 0.0)?)?, dw)?;
    let area_term = ev.times(&(g1 - g2)?.affine(1.2, 0.0)?, area)?;
    Ok(((((y + drift)? + noise)? + area_term)?, None))
}

/// One step of a method that needs only the increment `D(t, y) = f(t, y) h + g(t, y) · ΔW`
/// of the step: Euler–Maruyama `y + D(t, y)`; Heun `y + (D(t, y) + D(t₁, ỹ)) / 2` with
/// `ỹ = y + D(t, y)`; the midpoint method `y + D(t + h/2, y + D(t, y)/2)`. Heun and the
/// midpoint method also return the Euler–Maruyama step `y + D(t, y)` inside them.
fn increment_step(
    method: SdeMethod,
    inc: &dyn Fn(f64, &Tensor) -> Result<Tensor>,
    t: f64,
    t1: f64,
    y: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let d0 = inc(t, y)?;
    match method {
        SdeMethod::Heun => {
            let y_tilde = (y + &d0)?;
            let d1 = inc(t1, &y_tilde)?;
            Ok(((y + (d0 + d1)?.affine(0.5, 0.0)?)?, Some(y_tilde)))
        }
        SdeMethod::Midpoint => {
            let y_mid = (y + d0.affine(0.5, 0.0)?)?;
            let y1 = (y + inc(0.5 * (t + t1), &y_mid)?)?;
            Ok((y1, Some((y + d0)?)))
        }
        _ => Ok(((y + d0)?, None)),
    }
}

/// Evaluates the terms, checks what they return and counts the evaluations.
struct SdeEvaluator<'a, F: ?Sized> {
    sde: &'a F,
    state: Shape,
    /// The diffusion's shape.
    diffusion: Shape,
    noise: Noise,
    drift_evals: Cell<usize>,
    diffusion_evals: Cell<usize>,
    /// With additive noise, `g` at the last two times it was evaluated at.
    additive: RefCell<Vec<(f64, Tensor)>>,
}

impl<'a, F: SdeField + ?Sized> SdeEvaluator<'a, F> {
    fn new(sde: &'a F, y0: &Tensor, w: &Shape, noise: Noise) -> Result<Self> {
        Ok(Self {
            sde,
            state: y0.shape().clone(),
            diffusion: noise.diffusion_shape(y0.shape(), w)?,
            noise,
            drift_evals: Cell::new(0),
            diffusion_evals: Cell::new(0),
            additive: RefCell::new(Vec::new()),
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

    fn stats(&self, counts: Counts) -> SdeStats {
        SdeStats {
            drift_evals: self.drift_evals.get(),
            diffusion_evals: self.diffusion_evals.get(),
            steps: counts.steps,
            rejected_steps: counts.rejected,
            host_reads: counts.host_reads,
        }
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

    /// `g(t)` for additive noise: evaluated at `y` once per time, then reused (the end of a
    /// step is the start of the next, and a rejected step's start is the retry's).
    fn additive_diffusion(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        if let Some((_, g)) = self.additive.borrow().iter().find(|(s, _)| *s == t) {
            return Ok(g.clone());
        }
        let g = self.diffusion(t, y)?;
        let mut cache = self.additive.borrow_mut();
        if cache.len() == 2 {
            cache.remove(0);
        }
        cache.push((t, g.clone()));
        Ok(g)
    }

    /// `g · dW`: elementwise for diagonal noise, contracted over `m` for general noise.
    fn times(&self, g: &Tensor, dw: &Tensor) -> Result<Tensor> {
        self.noise.product(g, dw, &self.state)
    }
}

//! An SDE trained as a GAN (Kidger, Foster, Li, Oberhauser & Lyons 2021, *Neural SDEs as
//! Infinite-Dimensional GANs*), as torchsde's `examples/sde_gan.py` builds it, with the
//! improvements of Kidger, Foster, Li & Lyons 2021, *Efficient and Accurate Gradients for
//! Neural SDEs*: reversible Heun and Lipschitz control by clipping.
//!
//! - The generator ([`Generator`]) maps initial noise `V ~ N(0, I)` through an MLP `ζ` to
//!   `x(0) = ζ(V)`, solves the Stratonovich SDE `dx = μ(t, x) dt + σ(t, x) ∘ dW` with general
//!   noise (`W` has its own, smaller, dimension), and reads out `y = α x + β` at the
//!   observation times.
//! - The discriminator ([`Discriminator`]) is a neural CDE driven by the linear
//!   interpolation of `(t, y)`: `h(0) = ξ(t₀, y(t₀))`, `dh = f(t, h) d(t, y)(t)`, and scores
//!   the path by `m · h(T)`.
//! - Training is a Wasserstein GAN: the loss `D(generated) − D(real)` is minimised by the
//!   discriminator and maximised by the generator. The discriminator's Lipschitz constant
//!   is held by LipSwish activations and by clipping every weight of its linear layers to
//!   `±1 / out_features` after each step ([`Discriminator::clip_weights`]).
//!
//! Gradients reach the generator through the discriminator's CDE: the interpolated path is
//! built from the generated samples by tensor operations, and every [`Gradient`] mode of
//! [`crate::cde::cdeint`] delivers the path's gradient. The generator's solve is
//! differentiated by backprop or by the adjoint ([`SdeGradient`]); with reversible Heun the
//! adjoint walks the steps back for backprop's exact gradient in memory that does not grow
//! with the steps.
//!
//! [`ou_dataset`] makes the example's data: paths of a time-dependent Ornstein–Uhlenbeck
//! process. [`marginal_w1`] compares generated and real samples time by time.

use crate::cde::{cdeint, fill_missing, CdeVectorField, ControlPath, Interpolation};
use crate::latent_sde::{span, SdeGradient};
use crate::layers::{linear, vars_of, Activation, BlockStats, Gradient, Linear, Mlp};
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;
use node_adjoint::{ParamSdeField, SdeAdjointStats};
use node_solvers::{
    sdeint, DetachedSde, Method, Noise, SdeField, SdeMethod, SdeOptions, SdeStats, SolveOptions,
    SolverError, VirtualBrownianTree,
};

/// Sizes and solver settings of an [`SdeGan`]. The defaults are torchsde's example's.
#[derive(Clone, Debug, PartialEq)]
pub struct SdeGanConfig {
    /// Channels of the data, time not counted (1).
    pub data: usize,
    /// Dimension of the initial noise `V` (5).
    pub initial_noise: usize,
    /// Dimension of the generator's Brownian motion (3).
    pub noise: usize,
    /// Hidden state of the generator's SDE and of the discriminator's CDE (16).
    pub hidden: usize,
    /// Width of every MLP's hidden layers (16).
    pub width: usize,
    /// Hidden layers of every MLP (1).
    pub depth: usize,
    /// The generator's SDE method (reversible Heun); with [`SdeGradient::Adjoint`] a
    /// Stratonovich one. [`SdeMethod::GeneralShark`] draws its paths from a tree with Lévy
    /// area.
    pub method: SdeMethod,
    /// The generator's step (1.0, one step between the example's observations).
    pub dt: f64,
    /// The discriminator's CDE method with fixed steps (midpoint).
    pub cde_method: Method,
    /// The discriminator's step (1.0).
    pub cde_dt: f64,
}

impl Default for SdeGanConfig {
    fn default() -> Self {
        Self {
            data: 1,
            initial_noise: 5,
            noise: 3,
            hidden: 16,
            width: 16,
            depth: 1,
            method: SdeMethod::ReversibleHeun,
            dt: 1.0,
            cde_method: Method::Midpoint,
            cde_dt: 1.0,
        }
    }
}

impl SdeGanConfig {
    /// Checks the sizes and the solvers' settings.
    ///
    /// # Errors
    /// [`SolverError::InvalidOptions`] for a size of zero, a step that is not positive and
    /// finite, or an implicit or adaptive CDE method.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            self.data,
            self.initial_noise,
            self.noise,
            self.hidden,
            self.width,
        ];
        if sizes.contains(&0) {
            return Err(SolverError::InvalidOptions(format!(
                "the SDE-GAN needs positive sizes, got data {}, initial noise {}, noise {}, hidden {}, width {}",
                self.data, self.initial_noise, self.noise, self.hidden, self.width
            ))
            .into());
        }
        SdeOptions::default()
            .method(self.method)
            .dt(self.dt)
            .noise(Noise::General)
            .validate()?;
        if self.cde_method.is_implicit() || self.cde_method.is_adaptive() {
            return Err(SolverError::InvalidOptions(format!(
                "the discriminator's CDE takes fixed explicit steps, got `{}`",
                self.cde_method
            ))
            .into());
        }
        self.cde_options().validate()
    }

    fn cde_options(&self) -> SolveOptions {
        SolveOptions::default()
            .method(self.cde_method)
            .step_size(self.cde_dt)
    }
}

/// torchsde's SDE-GAN MLP: `in → width` (LipSwish) `→ … → out`, `depth` hidden layers, an
/// optional final `tanh`.
fn gan_mlp(
    inputs: usize,
    outputs: usize,
    cfg: &SdeGanConfig,
    tanh: bool,
    vb: VarBuilder,
) -> Result<Mlp> {
    let (w, d) = (cfg.width, cfg.depth);
    Mlp::new(inputs, outputs, w, d, Activation::LipSwish, tanh, vb)
}

/// `[t, x]` for `x: [B, n]`: time as a first column.
fn with_time(t: f64, x: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    let t = Tensor::new(&[t], x.device())?
        .to_dtype(x.dtype())?
        .reshape((1, 1))?
        .broadcast_as((b, 1))?;
    Tensor::cat(&[&t, x], 1)
}

/// The generator's terms on `x: [B, hidden]`: drift `μ(t, x)` (`[B, hidden]`) and diffusion
/// `σ(t, x)` (`[B, hidden, noise]`), MLPs of `[t, x]` with a final `tanh`.
#[derive(Clone, Debug)]
pub struct GeneratorSde {
    drift: Mlp,
    diffusion: Mlp,
    hidden: usize,
    noise: usize,
    params: Vec<Var>,
}

impl SdeField for GeneratorSde {
    fn drift(&self, t: f64, x: &Tensor) -> Result<Tensor> {
        self.drift.forward(&with_time(t, x)?)
    }

    fn diffusion(&self, t: f64, x: &Tensor) -> Result<Tensor> {
        let g = self.diffusion.forward(&with_time(t, x)?)?;
        g.reshape((x.dim(0)?, self.hidden, self.noise))
    }
}

impl ParamSdeField for GeneratorSde {
    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// What [`Generator::forward`] returns.
#[derive(Clone, Debug)]
pub struct GeneratorOutput {
    /// The samples with time as channel 0: `[B, T, 1 + data]`.
    pub ys: Tensor,
    /// The forward solve's counts.
    pub forward: SdeStats,
    /// The backward counts once `backward()` has run (the adjoint), else `None`.
    pub adjoint: Option<SdeAdjointStats>,
}

/// The generator: initial MLP `ζ`, the SDE's terms, linear readout.
#[derive(Clone, Debug)]
pub struct Generator {
    cfg: SdeGanConfig,
    initial: Mlp,
    sde: GeneratorSde,
    readout: Linear,
}

impl Generator {
    fn new(cfg: &SdeGanConfig, vb: VarBuilder) -> Result<Self> {
        let initial = gan_mlp(cfg.initial_noise, cfg.hidden, cfg, false, vb.pp("initial"))?;
        let (i, h) = (1 + cfg.hidden, cfg.hidden);
        let drift = gan_mlp(i, h, cfg, true, vb.pp("drift"))?;
        let diffusion = gan_mlp(i, h * cfg.noise, cfg, true, vb.pp("diffusion"))?;
        let params = [drift.vars()?, diffusion.vars()?].concat();
        let readout = linear(cfg.hidden, cfg.data, vb.pp("readout"))?;
        Ok(Self {
            cfg: cfg.clone(),
            initial,
            sde: GeneratorSde {
                drift,
                diffusion,
                hidden: cfg.hidden,
                noise: cfg.noise,
                params,
            },
            readout,
        })
    }

    /// The SDE's terms.
    pub fn sde(&self) -> &GeneratorSde {
        &self.sde
    }

    /// The Brownian motion over `ts` for `b` samples, drawn from `seed`.
    fn brownian(&self, ts: &[f64], b: usize, seed: u64, x: &Tensor) -> Result<VirtualBrownianTree> {
        let (lo, hi) = span(ts, "the SDE-GAN")?;
        let tol = (self.cfg.dt / 2.0).min(hi - lo);
        let bm = VirtualBrownianTree::new(
            lo,
            hi,
            tol,
            (b, self.cfg.noise),
            seed,
            x.dtype(),
            x.device(),
        )?;
        // GeneralShARK takes the steps' Lévy areas.
        Ok(if self.cfg.method.needs_levy_area() {
            bm.with_levy_area()
        } else {
            bm
        })
    }

    fn options(&self) -> SdeOptions {
        SdeOptions::default()
            .method(self.cfg.method)
            .dt(self.cfg.dt)
            .noise(Noise::General)
            .max_steps(usize::MAX)
    }

    /// Samples at `ts` from the initial noise `v` (`[B, initial_noise]`) along a Brownian
    /// motion drawn from `bm_seed`, differentiated as `gradient` says: `[B, T, 1 + data]`,
    /// time in channel 0.
    ///
    /// # Errors
    /// `ts` with fewer than two times or not increasing; a `v` of another width; the
    /// solver's typed errors.
    pub fn forward(
        &self,
        ts: &[f64],
        v: &Tensor,
        bm_seed: u64,
        gradient: &SdeGradient,
    ) -> Result<GeneratorOutput> {
        let b = self.check_noise(v)?;
        let x0 = self.initial.forward(v)?;
        let bm = self.brownian(ts, b, bm_seed, &x0)?;
        let (xs, forward, adjoint) = gradient.solve(&self.sde, &x0, ts, &bm, &self.options())?;
        let ys = self.read_out(ts, &xs)?;
        Ok(GeneratorOutput {
            ys,
            forward,
            adjoint,
        })
    }

    /// [`Generator::forward`] without a graph (memory does not grow with the steps).
    ///
    /// # Errors
    /// As [`Generator::forward`].
    pub fn sample(&self, ts: &[f64], v: &Tensor, bm_seed: u64) -> Result<Tensor> {
        let b = self.check_noise(v)?;
        let x0 = self.initial.forward(&v.detach())?.detach();
        let bm = self.brownian(ts, b, bm_seed, &x0)?;
        let sol = sdeint(&DetachedSde(&self.sde), &x0, ts, &bm, &self.options())?;
        self.read_out(ts, &sol.ys)?.detach().contiguous()
    }

    /// `[t, readout(x)]` for the states `xs: [T, B, hidden]`: `[B, T, 1 + data]`.
    fn read_out(&self, ts: &[f64], xs: &Tensor) -> Result<Tensor> {
        let (t, b, h) = xs.dims3()?;
        let ys = self.readout.forward(&xs.reshape((t * b, h))?)?;
        let ys = ys.reshape((t, b, self.cfg.data))?.transpose(0, 1)?;
        let times = Tensor::new(ts, xs.device())?
            .to_dtype(xs.dtype())?
            .reshape((1, t, 1))?
            .broadcast_as((b, t, 1))?;
        Tensor::cat(&[&times, &ys], 2)?.contiguous()
    }

    fn check_noise(&self, v: &Tensor) -> Result<usize> {
        match v.dims() {
            [b, n] if *b > 0 && *n == self.cfg.initial_noise => Ok(*b),
            d => Err(SolverError::InvalidOptions(format!(
                "the generator's initial noise must be [B, {}] with B > 0, got {d:?}",
                self.cfg.initial_noise
            ))
            .into()),
        }
    }
}

/// The discriminator's CDE field: an MLP of `[t, h]` with a final `tanh`, reshaped to
/// `[B, hidden, 1 + data]`.
#[derive(Clone, Debug)]
pub struct DiscriminatorField {
    mlp: Mlp,
    hidden: usize,
    channels: usize,
    params: Vec<Var>,
}

impl CdeVectorField for DiscriminatorField {
    fn eval(&self, t: f64, h: &Tensor) -> Result<Tensor> {
        let f = self.mlp.forward(&with_time(t, h)?)?;
        f.reshape((h.dim(0)?, self.hidden, self.channels))
    }

    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// The discriminator: initial MLP `ξ`, the CDE's field, linear readout.
#[derive(Clone, Debug)]
pub struct Discriminator {
    cfg: SdeGanConfig,
    initial: Mlp,
    field: DiscriminatorField,
    readout: Linear,
}

impl Discriminator {
    fn new(cfg: &SdeGanConfig, vb: VarBuilder) -> Result<Self> {
        let channels = 1 + cfg.data;
        let initial = gan_mlp(channels, cfg.hidden, cfg, false, vb.pp("initial"))?;
        let mlp = gan_mlp(
            1 + cfg.hidden,
            cfg.hidden * channels,
            cfg,
            true,
            vb.pp("field"),
        )?;
        let params = mlp.vars()?;
        let readout = linear(cfg.hidden, 1, vb.pp("readout"))?;
        Ok(Self {
            cfg: cfg.clone(),
            initial,
            field: DiscriminatorField {
                mlp,
                hidden: cfg.hidden,
                channels,
                params,
            },
            readout,
        })
    }

    /// One score per path of `ys` (`[B, T, 1 + data]`, time in channel 0, observed at the
    /// knots `ts`), `[B]`, the CDE differentiated as `gradient` says. Gradients reach `ys`
    /// when it is in a graph.
    ///
    /// # Errors
    /// A `ys` of another shape, knots that do not increase; the solver's typed errors.
    pub fn scores(
        &self,
        ys: &Tensor,
        ts: &[f64],
        gradient: &Gradient,
    ) -> Result<(Tensor, BlockStats)> {
        match ys.dims() {
            [b, t, c] if *b > 0 && *t == ts.len() && *c == 1 + self.cfg.data => {}
            d => {
                return Err(SolverError::InvalidOptions(format!(
                    "the discriminator takes paths [B, {}, {}] (time in channel 0), got {d:?}",
                    ts.len(),
                    1 + self.cfg.data
                ))
                .into())
            }
        }
        let (lo, hi) = span(ts, "the SDE-GAN")?;
        let path = ControlPath::new(ys, ts, Interpolation::Linear)?;
        let h0 = self.initial.forward(&ys.narrow(1, 0, 1)?.squeeze(1)?)?;
        let (hs, stats) = cdeint(
            &self.field,
            &path,
            &h0,
            &[lo, hi],
            &self.cfg.cde_options(),
            gradient,
        )?;
        let score = self.readout.forward(&hs.get(1)?)?;
        Ok((score.squeeze(1)?, stats))
    }

    /// Every linear layer: the initial MLP's, the field's, the readout.
    pub fn linear_layers(&self) -> Vec<&Linear> {
        let mlps = [&self.initial, &self.field.mlp];
        mlps.iter()
            .flat_map(|m| m.layers())
            .chain(std::iter::once(&self.readout))
            .collect()
    }

    /// Clips every weight of every linear layer to `±1 / out_features` (torchsde's example:
    /// with the 1-Lipschitz LipSwish this bounds the discriminator's Lipschitz constant).
    /// Biases are left alone.
    ///
    /// # Errors
    /// Candle errors writing the variables.
    pub fn clip_weights(&self) -> Result<()> {
        for layer in self.linear_layers() {
            let w = &layer.tensors()[0];
            let lim = 1.0 / w.dim(0)? as f64;
            Var::from_tensor(w)?.set(&w.clamp(-lim, lim)?)?;
        }
        Ok(())
    }
}

/// Generator and discriminator, parameters under `generator.*` and `discriminator.*`.
///
/// # Example
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use node_models::sde_gan::{SdeGan, SdeGanConfig};
/// use node_models::{Gradient, SdeGradient};
/// # fn main() -> candle_core::Result<()> {
/// let varmap = VarMap::new();
/// let gan = SdeGan::new(SdeGanConfig::default(), VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
/// let ts: Vec<f64> = (0..8).map(|i| i as f64).collect();
/// let v = Tensor::randn(0f32, 1.0, (4, 5), &Device::Cpu)?;
/// let fake = gan.generator().forward(&ts, &v, 7, &SdeGradient::Backprop)?;
/// assert_eq!(fake.ys.dims(), [4, 8, 2]);
/// let (scores, _) = gan.discriminator().scores(&fake.ys, &ts, &Gradient::Backprop)?;
/// assert_eq!(scores.dims(), [4]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SdeGan {
    cfg: SdeGanConfig,
    generator: Generator,
    discriminator: Discriminator,
}

impl SdeGan {
    /// Both networks, parameters under `vb`: `generator.{initial, drift, diffusion}.layerK`,
    /// `generator.readout`, `discriminator.{initial, field}.layerK`,
    /// `discriminator.readout`.
    ///
    /// # Errors
    /// [`SdeGanConfig::validate`]'s; those of `vb`.
    pub fn new(cfg: SdeGanConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let generator = Generator::new(&cfg, vb.pp("generator"))?;
        let discriminator = Discriminator::new(&cfg, vb.pp("discriminator"))?;
        Ok(Self {
            cfg,
            generator,
            discriminator,
        })
    }

    /// The settings.
    pub fn config(&self) -> &SdeGanConfig {
        &self.cfg
    }

    /// The generator.
    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    /// The discriminator.
    pub fn discriminator(&self) -> &Discriminator {
        &self.discriminator
    }

    /// The generator's variables: `ζ`, the SDE's terms, the readout.
    ///
    /// # Errors
    /// Candle errors.
    pub fn generator_vars(&self) -> Result<Vec<Var>> {
        let g = &self.generator;
        Ok([
            g.initial.vars()?,
            g.sde.params.clone(),
            vars_of(&[&g.readout])?,
        ]
        .concat())
    }

    /// Turns the gradients of the loss `D(generated) − D(real)` into the GAN's: the
    /// generator's are negated, so that one optimizer step descends the loss for the
    /// discriminator and ascends it for the generator (torchsde's example does the same).
    ///
    /// # Errors
    /// Candle errors.
    pub fn flip_generator_grads(&self, grads: &mut candle_core::backprop::GradStore) -> Result<()> {
        for var in self.generator_vars()? {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), g.neg()?);
            }
        }
        Ok(())
    }

    /// The discriminator's variables: `ξ`, the CDE's field, the readout.
    ///
    /// # Errors
    /// Candle errors.
    pub fn discriminator_vars(&self) -> Result<Vec<Var>> {
        vars_of(&self.discriminator.linear_layers())
    }

    /// Stochastic weight averaging: moves every variable of `self` to the running mean of
    /// the `count` models it has averaged and `current`'s, `avg + (cur − avg) / (count + 1)`
    /// (so `count = 0` copies `current`). Both networks are averaged, as torchsde's example
    /// does.
    ///
    /// # Errors
    /// Models of other sizes; Candle errors.
    pub fn average_in(&self, current: &SdeGan, count: usize) -> Result<()> {
        if self.cfg != current.cfg {
            candle_core::bail!("SdeGan::average_in: models of other settings");
        }
        let pairs = [
            (self.generator_vars()?, current.generator_vars()?),
            (self.discriminator_vars()?, current.discriminator_vars()?),
        ];
        let w = 1.0 / (count + 1) as f64;
        for (avg, cur) in pairs {
            for (a, c) in avg.iter().zip(&cur) {
                let (a_t, c_t) = (a.as_tensor(), c.as_tensor());
                a.set(&(a_t + ((c_t - a_t)? * w)?)?)?;
            }
        }
        Ok(())
    }

    /// The example's initialisation after a generic one: the generator's initial MLP scaled
    /// by `initial_scale` (torchsde: 3) and its SDE's terms by `sde_scale` (0.5), so that the
    /// untrained samples spread about as the data does.
    ///
    /// # Errors
    /// Candle errors writing the variables.
    pub fn init(&self, initial_scale: f64, sde_scale: f64) -> Result<()> {
        let scale = |vars: Vec<Var>, s: f64| -> Result<()> {
            for v in vars {
                v.set(&v.as_tensor().affine(s, 0.0)?)?;
            }
            Ok(())
        };
        scale(self.generator.initial.vars()?, initial_scale)?;
        scale(self.generator.sde.params.clone(), sde_scale)
    }
}

/// torchsde's example's data: `n` paths at the times `0, 1, …, t_size − 1` of the
/// time-dependent Ornstein–Uhlenbeck process `dy = (μt − θy) dt + σ (2t / t_size) dW`
/// with `μ = 0.02`, `θ = 0.1`, `σ = 0.4` and `y(0)` uniform on `[−1, 1]` (Euler–Maruyama,
/// which is exact in law up to `O(dt)` for this additive noise, with steps of 0.01), then
/// normalised by the mean and standard deviation at time 0. A fraction `drop` of the
/// values is then hidden and filled back by linear interpolation along each path
/// ([`fill_missing`]), as torchsde's example does to show irregular data. Returns the
/// times and the paths `[n, t_size, 2]`, time in channel 0.
///
/// # Errors
/// `n < 2`, `t_size < 2`, `drop` outside `[0, 1)`; the solver's errors.
pub fn ou_dataset(
    n: usize,
    t_size: usize,
    drop: f64,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> Result<(Vec<f64>, Tensor)> {
    if n < 2 || t_size < 2 || !(0.0..1.0).contains(&drop) {
        return Err(SolverError::InvalidOptions(format!(
            "the OU dataset needs n ≥ 2, t_size ≥ 2 and drop in [0, 1), got {n}, {t_size}, {drop}"
        ))
        .into());
    }
    let (mu, theta, sigma) = (0.02, 0.1, 0.4);
    let size = t_size as f64;
    let ts: Vec<f64> = (0..t_size).map(|i| i as f64).collect();
    let mut rng = Rng::new(seed);
    let y0 = rng.uniform_tensor(&[n, 1], -1.0, 1.0, DType::F64, &Device::Cpu)?;
    let drift = move |t: f64, y: &Tensor| y.affine(-theta, mu * t);
    let diffusion = move |t: f64, y: &Tensor| y.ones_like()?.affine(sigma * 2.0 * t / size, 0.0);
    let dt = 0.01;
    let bm = VirtualBrownianTree::new(
        0.0,
        size - 1.0,
        dt / 2.0,
        (n, 1),
        rng.next_u64(),
        DType::F64,
        &Device::Cpu,
    )?;
    let opts = SdeOptions::default()
        .method(SdeMethod::EulerMaruyama)
        .dt(dt)
        .max_steps(usize::MAX);
    let ys = sdeint(&(drift, diffusion), &y0, &ts, &bm, &opts)?.ys; // [T, n, 1]
    let mut v = ys.squeeze(2)?.t()?.contiguous()?.to_vec2::<f64>()?; // [n, T]
    let first: Vec<f64> = v.iter().map(|p| p[0]).collect();
    let mean = first.iter().sum::<f64>() / n as f64;
    let var = first.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    let mut flat = Vec::with_capacity(n * t_size * 2);
    for path in v.iter_mut() {
        for (i, y) in path.iter_mut().enumerate() {
            *y = (*y - mean) / std;
            let hidden = drop > 0.0 && rng.uniform() < drop;
            flat.extend([ts[i], if hidden { f64::NAN } else { *y }]);
        }
    }
    let x = Tensor::from_vec(flat, (n, t_size, 2), &Device::Cpu)?;
    let x = if drop > 0.0 {
        fill_missing(&x, &ts)?
    } else {
        x
    };
    Ok((ts, x.to_dtype(dtype)?.to_device(dev)?))
}

/// The 1-Wasserstein distance between the marginals of two sets of paths at each time:
/// `a: [A, T]` and `b: [B, T]` give `T` distances, each `∫ |F_a − F_b|` of the two empirical
/// distribution functions.
///
/// # Errors
/// Shapes that are not `[_, T]` with the same `T`, or an empty set.
pub fn marginal_w1(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let (na, ta) = a.dims2()?;
    let (nb, tb) = b.dims2()?;
    if ta != tb || na == 0 || nb == 0 {
        candle_core::bail!(
            "marginal_w1: paths [A, T] and [B, T], got {:?} and {:?}",
            a.dims(),
            b.dims()
        );
    }
    let columns = |x: &Tensor| -> Result<Vec<Vec<f64>>> {
        let mut cols = x
            .t()?
            .contiguous()?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        for c in &mut cols {
            c.sort_by(f64::total_cmp);
        }
        Ok(cols)
    };
    let (ca, cb) = (columns(a)?, columns(b)?);
    Ok(ca.iter().zip(&cb).map(|(x, y)| w1_sorted(x, y)).collect())
}

/// `∫ |F_x − F_y|` for sorted samples `x` and `y`.
fn w1_sorted(x: &[f64], y: &[f64]) -> f64 {
    let (nx, ny) = (x.len() as f64, y.len() as f64);
    let (mut i, mut j) = (0, 0);
    let mut last = x[0].min(y[0]);
    let mut dist = 0.0;
    while i < x.len() || j < y.len() {
        let next = match (x.get(i), y.get(j)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => unreachable!("the loop runs while one is left"),
        };
        dist += (i as f64 / nx - j as f64 / ny).abs() * (next - last);
        last = next;
        while x.get(i).is_some_and(|&a| a <= next) {
            i += 1;
        }
        while y.get(j).is_some_and(|&b| b <= next) {
            j += 1;
        }
    }
    dist
}

#[cfg(test)]
mod tests {
    use super::w1_sorted;

    #[test]
    fn w1_of_shifts_and_of_point_masses() {
        // A shift by c moves every quantile by c.
        let x: Vec<f64> = (0..100).map(|i| i as f64 / 10.0).collect();
        let y: Vec<f64> = x.iter().map(|v| v + 0.25).collect();
        assert!((w1_sorted(&x, &y) - 0.25).abs() < 1e-12);
        assert!((w1_sorted(&y, &x) - 0.25).abs() < 1e-12);
        // Half the mass moved from 0 to 2: distance 1.
        assert!((w1_sorted(&[0.0, 0.0], &[0.0, 2.0]) - 1.0).abs() < 1e-12);
        // Different sizes: {0, 1} against {0.5}: ½·½ + ½·½.
        assert!((w1_sorted(&[0.0, 1.0], &[0.5]) - 0.5).abs() < 1e-12);
        assert_eq!(w1_sorted(&x, &x), 0.0);
    }
}

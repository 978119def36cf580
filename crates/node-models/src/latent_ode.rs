//! The latent ODE for irregular time series (Chen et al. 2018, §5), as torchdiffeq's
//! `examples/latent_ode.py` builds it: a recognition RNN reads the observations backwards in
//! time and gives `q(z₀ | x) = N(μ, diag(σ²))`; a sample `z₀ = μ + σ ⊙ ε` is solved forward
//! through `dz/dt = f(z)` (an ELU MLP) to every observation time; a ReLU MLP decodes each
//! `z(tᵢ)` to an observation. Training minimises the negative ELBO
//!
//! `−Σᵢ log N(xᵢ; dec(z(tᵢ)), s²) + KL(q(z₀ | x) ‖ N(0, I))`, averaged over the batch.
//!
//! The recognition network may instead be an ODE-RNN (Rubanova, Chen & Duvenaud, *Latent
//! ODEs for Irregularly-Sampled Time Series*, NeurIPS 2019; [`Encoder::OdeRnn`]): between
//! observations its hidden state follows an ODE of its own, so the time between observations
//! shapes the encoding.

use crate::layers::{linear, vars_of, Gradient, Linear};
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;
use node_adjoint::ParamVectorField;
use node_solvers::{Method, SolveOptions, VectorField};

/// Sizes of a [`LatentOde`]; the defaults are those of torchdiffeq's example.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentOdeConfig {
    /// Dimension of an observation.
    pub obs: usize,
    /// Dimension of the latent state `z`.
    pub latent: usize,
    /// Hidden units of the latent dynamics and of the decoder.
    pub hidden: usize,
    /// Hidden units of the recognition RNN.
    pub rnn_hidden: usize,
    /// Whether the recognition RNN also reads, with each observation, the time to the next
    /// observed point of its sequence (for the last observed point, to the grid's last
    /// time). The example's RNN reads observations
    /// only (`false`), which is enough when every sequence is observed on the same grid; with
    /// irregular observations (a mask) it cannot tell a gap from a neighbour otherwise.
    pub time_input: bool,
    /// The recognition network.
    pub encoder: Encoder,
}

impl Default for LatentOdeConfig {
    fn default() -> Self {
        Self {
            obs: 2,
            latent: 4,
            hidden: 20,
            rnn_hidden: 25,
            time_input: false,
            encoder: Encoder::Rnn,
        }
    }
}

/// The recognition network of a [`LatentOde`]: both read the observations from the last to
/// the first with the cell `h ← tanh(i2h([xᵢ, h]))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Encoder {
    /// torchdiffeq's example: the RNN alone; `h` is the same from one observation to the
    /// next, whatever the time between them.
    Rnn,
    /// An ODE-RNN (Rubanova et al. 2019): from one observation time back to the previous
    /// one, `h` follows `dh/dt = f_h(h)` (an MLP `rnn_hidden → hidden → rnn_hidden` with
    /// `tanh`, under `rec.ode`), solved by `method` in equal steps of at most the grid's span
    /// divided by `steps`, differentiated as the model's [`Gradient`] says; the cell then
    /// reads the observation. Time passes at the points a mask leaves out too. Rubanova et
    /// al.'s choice, `Method::Euler` with `steps = 50`, is [`Encoder::ODE_RNN`]. (Their cell
    /// is a GRU; this one keeps the RNN's, so the two encoders differ by the ODE alone.)
    OdeRnn {
        /// The fixed-step method of the hidden state's solves.
        method: Method,
        /// Steps over the whole grid: each solve takes steps of at most `span / steps`.
        steps: usize,
    },
}

impl Encoder {
    /// Rubanova et al.'s ODE-RNN solver: Euler, steps of at most a fiftieth of the span.
    pub const ODE_RNN: Self = Self::OdeRnn {
        method: Method::Euler,
        steps: 50,
    };
}

/// The ODE-RNN's hidden dynamics `f_h(h) = fc2(tanh(fc1(h)))` (autonomous).
#[derive(Clone, Debug)]
pub struct HiddenOdeFunc {
    fc1: Linear,
    fc2: Linear,
    params: Vec<Var>,
}

impl HiddenOdeFunc {
    /// `dim → hidden → dim`, parameters under `vb` (`fc1`, `fc2`).
    ///
    /// # Errors
    /// Those of `vb`.
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let fc1 = linear(dim, hidden, vb.pp("fc1"))?;
        let fc2 = linear(hidden, dim, vb.pp("fc2"))?;
        let params = vars_of(&[&fc1, &fc2])?;
        Ok(Self { fc1, fc2, params })
    }
}

impl VectorField for HiddenOdeFunc {
    fn eval(&self, _t: f64, h: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&node_kernels::tanh(&self.fc1.forward(h)?)?)
    }
}

impl ParamVectorField for HiddenOdeFunc {
    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// The latent dynamics `f(z) = fc3(elu(fc2(elu(fc1(z)))))` (autonomous, as in the example).
#[derive(Clone, Debug)]
pub struct LatentOdeFunc {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    params: Vec<Var>,
}

impl LatentOdeFunc {
    /// `latent → hidden → hidden → latent`, parameters under `vb` (`fc1`, `fc2`, `fc3`).
    ///
    /// # Errors
    /// Those of `vb`.
    pub fn new(latent: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let fc1 = linear(latent, hidden, vb.pp("fc1"))?;
        let fc2 = linear(hidden, hidden, vb.pp("fc2"))?;
        let fc3 = linear(hidden, latent, vb.pp("fc3"))?;
        let params = vars_of(&[&fc1, &fc2, &fc3])?;
        Ok(Self {
            fc1,
            fc2,
            fc3,
            params,
        })
    }
}

impl VectorField for LatentOdeFunc {
    fn eval(&self, _t: f64, z: &Tensor) -> Result<Tensor> {
        let h = node_kernels::elu(&self.fc1.forward(z)?, 1.0)?;
        let h = node_kernels::elu(&self.fc2.forward(&h)?, 1.0)?;
        self.fc3.forward(&h)
    }
}

impl ParamVectorField for LatentOdeFunc {
    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// What one evaluation of the negative ELBO gives.
#[derive(Clone, Debug)]
pub struct ElboParts {
    /// The loss: mean over the batch of `−log p(x | z₀) + KL`.
    pub loss: Tensor,
    /// `log p(x | z₀)` per sequence, `[B]`.
    pub log_px: Tensor,
    /// `KL(q(z₀ | x) ‖ N(0, I))` per sequence, `[B]`.
    pub kl: Tensor,
    /// Evaluations of the dynamics in the forward solve.
    pub nfe_forward: usize,
    /// For the adjoint, its statistics (the backward counts fill in after `backward()`).
    pub adjoint: Option<node_adjoint::AdjointStats>,
    /// The ODE-RNN encoder's solves ([`Encoder::OdeRnn`]; empty for [`Encoder::Rnn`]).
    pub encoder: EncoderStats,
}

/// Counts of the ODE-RNN encoder's solves in one pass.
#[derive(Clone, Debug, Default)]
pub struct EncoderStats {
    /// Evaluations of `f_h` in the forward solves.
    pub nfe_forward: usize,
    /// For the adjoint, checkpointing and reversible backprop, each solve's statistics (their
    /// backward counts fill in after `backward()`).
    pub adjoint: Vec<node_adjoint::AdjointStats>,
}

impl EncoderStats {
    /// Evaluations of `f_h` in the backward pass (0 for backprop).
    pub fn nfe_backward(&self) -> usize {
        self.adjoint.iter().map(|a| a.backward().nfe).sum()
    }
}

/// Encoder, latent dynamics and decoder of a latent ODE.
///
/// # Example
/// One training step on a few spirals, then a forecast past the observed times:
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{Optimizer, VarBuilder, VarMap};
/// use node_models::latent_ode::{spirals, LatentOde, LatentOdeConfig};
/// use node_models::{Adam, AdamConfig, Gradient, Rng};
/// use node_solvers::SolveOptions;
/// # fn main() -> candle_core::Result<()> {
/// let (dev, varmap) = (Device::Cpu, VarMap::new());
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let opts = SolveOptions::default().tolerances(1e-5, 1e-6);
/// let model = LatentOde::new(&LatentOdeConfig::default(), opts, Gradient::Backprop, vb)?;
/// let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), AdamConfig::default())?;
///
/// let mut rng = Rng::new(0);
/// let data = spirals(16, 100, 20, 0.3, &mut rng, DType::F32, &dev)?;
/// let eps = rng.normal_tensor(&[16, 4], 0.0, 1.0, DType::F32, &dev)?;
/// let parts = model.elbo(&data.observed, &data.ts, None, &eps, 0.3)?;
/// opt.backward_step(&parts.loss)?;
///
/// let (mean, _) = model.encode(&data.observed, &data.ts, None)?;
/// let (forecast, _, _) = model.decode(&mean, &[0.0, 1.0, 2.0, 3.0])?;
/// assert_eq!(forecast.dims(), &[16, 4, 2]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LatentOde {
    i2h: Linear,
    h2o: Linear,
    /// The ODE-RNN's hidden dynamics ([`Encoder::OdeRnn`]).
    rec_ode: Option<HiddenOdeFunc>,
    func: LatentOdeFunc,
    dec1: Linear,
    dec2: Linear,
    config: LatentOdeConfig,
    opts: SolveOptions,
    gradient: Gradient,
}

impl LatentOde {
    /// A latent ODE of the given sizes, its parameters under `vb` (`rec.i2h`, `rec.h2o`, with
    /// an ODE-RNN `rec.ode.fc1..2`, `func.fc1..3`, `dec.fc1`, `dec.fc2`), solved with `opts`
    /// (the example uses torchdiffeq's defaults, dopri5 at rtol 1e-7 and atol 1e-9) and
    /// differentiated by `gradient`.
    ///
    /// # Errors
    /// A size of zero, invalid `opts`, an ODE-RNN with an adaptive or implicit method or 0
    /// steps; those of `vb`.
    pub fn new(
        config: &LatentOdeConfig,
        opts: SolveOptions,
        gradient: Gradient,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = config;
        if [c.obs, c.latent, c.hidden, c.rnn_hidden].contains(&0) {
            candle_core::bail!("latent ODE: every size must be at least 1, got {c:?}");
        }
        opts.validate()?;
        let rec = vb.pp("rec");
        let rec_ode = match c.encoder {
            Encoder::Rnn => None,
            Encoder::OdeRnn { method, steps } => {
                if method.is_implicit() || steps == 0 {
                    candle_core::bail!(
                        "latent ODE: the ODE-RNN takes an explicit method and at least one \
                         step, got {method:?} with {steps}"
                    );
                }
                Some(HiddenOdeFunc::new(c.rnn_hidden, c.hidden, rec.pp("ode"))?)
            }
        };
        let dec = vb.pp("dec");
        Ok(Self {
            i2h: linear(
                c.obs + usize::from(c.time_input) + c.rnn_hidden,
                c.rnn_hidden,
                rec.pp("i2h"),
            )?,
            h2o: linear(c.rnn_hidden, 2 * c.latent, rec.pp("h2o"))?,
            rec_ode,
            func: LatentOdeFunc::new(c.latent, c.hidden, vb.pp("func"))?,
            dec1: linear(c.latent, c.hidden, dec.pp("fc1"))?,
            dec2: linear(c.hidden, c.obs, dec.pp("fc2"))?,
            config: c.clone(),
            opts,
            gradient,
        })
    }

    /// The sizes.
    pub fn config(&self) -> &LatentOdeConfig {
        &self.config
    }

    /// The latent dynamics.
    pub fn func(&self) -> &LatentOdeFunc {
        &self.func
    }

    /// Checks `x: [B, T, obs]`, `T` times and a `[B, T]` mask of `x`'s dtype; returns `(B, T)`.
    fn check_obs(&self, x: &Tensor, ts: &[f64], mask: Option<&Tensor>) -> Result<(usize, usize)> {
        let (b, t) = match x.dims() {
            &[b, t, d] if d == self.config.obs && b > 0 && t > 0 => (b, t),
            dims => candle_core::bail!(
                "latent ODE: observations must be [batch ≥ 1, time ≥ 1, {}], got {dims:?}",
                self.config.obs
            ),
        };
        if ts.len() != t {
            candle_core::bail!(
                "latent ODE: {} times for {t} observations per sequence",
                ts.len()
            );
        }
        if let Some(m) = mask {
            if m.dims() != [b, t] || m.dtype() != x.dtype() {
                candle_core::bail!(
                    "latent ODE: the mask must be [{b}, {t}] of {:?}, got {:?} of {:?}",
                    x.dtype(),
                    m.dims(),
                    m.dtype()
                );
            }
        }
        Ok((b, t))
    }

    /// The posterior `q(z₀ | x)`: its mean and log-variance, from the RNN
    /// `h ← tanh(i2h([xᵢ, h]))` run from the last observation to the first, then `h2o(h)`.
    /// With a `mask` (1 observed, 0 not), the RNN skips the points that are not observed:
    /// `h` passes them unchanged, so sequences observed at different times share one grid
    /// `ts`. With [`LatentOdeConfig::time_input`], the RNN reads `[xᵢ, Δᵢ, h]`, `Δᵢ` the time
    /// from `tᵢ` to the sequence's next observed time. With [`Encoder::OdeRnn`], `h` is
    /// solved from each time of the grid back to the one before it first.
    ///
    /// # Shapes
    /// `x: [B, T, obs]`, `ts`: `T` times, `mask: [B, T]` → `([B, latent], [B, latent])`.
    ///
    /// # Errors
    /// Shapes that do not match; the ODE-RNN's solver errors; Candle's.
    pub fn encode(
        &self,
        x: &Tensor,
        ts: &[f64],
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t) = self.check_obs(x, ts, mask)?;
        let (mean, logvar, _) = self.encode_checked(x, ts, mask, b, t)?;
        Ok((mean, logvar))
    }

    /// [`LatentOde::encode`] of inputs already checked, `(b, t)` from [`Self::check_obs`],
    /// with the counts of the ODE-RNN's solves.
    fn encode_checked(
        &self,
        x: &Tensor,
        ts: &[f64],
        mask: Option<&Tensor>,
        b: usize,
        t: usize,
    ) -> Result<(Tensor, Tensor, EncoderStats)> {
        let (dtype, dev) = (x.dtype(), x.device());
        let mut h = Tensor::zeros((b, self.config.rnn_hidden), dtype, dev)?;
        let mut stats = EncoderStats::default();
        // The time of each sequence's next observed point, for the gap input.
        let mut t_next = Tensor::full(ts[t - 1], (b, 1), dev)?.to_dtype(dtype)?;
        for i in (0..t).rev() {
            if let (Some(f), Encoder::OdeRnn { method, steps }) =
                (&self.rec_ode, self.config.encoder)
            {
                if i + 1 < t {
                    let max_step = (ts[t - 1] - ts[0]).abs() / steps as f64;
                    let n = ((ts[i + 1] - ts[i]).abs() / max_step * (1.0 - 1e-12)).ceil();
                    let opts = SolveOptions::default()
                        .method(method)
                        .fixed_steps((n as usize).max(1));
                    let (hs, s) = self.gradient.solve(f, &h, &[ts[i + 1], ts[i]], &opts)?;
                    h = hs.get(1)?;
                    stats.nfe_forward += s.nfe_forward;
                    stats.adjoint.extend(s.adjoint);
                }
            }
            let xi = x.narrow(1, i, 1)?.squeeze(1)?;
            let input = if self.config.time_input {
                let gap = t_next.affine(1.0, -ts[i])?;
                Tensor::cat(&[&xi, &gap, &h], 1)?
            } else {
                Tensor::cat(&[&xi, &h], 1)?
            };
            let h_new = node_kernels::tanh(&self.i2h.forward(&input)?)?;
            match mask {
                None => {
                    h = h_new;
                    if self.config.time_input {
                        t_next = t_next.ones_like()?.affine(ts[i], 0.0)?;
                    }
                }
                Some(m) => {
                    // m·new + (1 − m)·old, per sequence.
                    let mi = m.narrow(1, i, 1)?;
                    let keep = mi.affine(-1.0, 1.0)?;
                    h = (h_new.broadcast_mul(&mi)? + h.broadcast_mul(&keep)?)?;
                    if self.config.time_input {
                        t_next = ((&mi * ts[i])? + (&keep * &t_next)?)?;
                    }
                }
            }
        }
        let out = self.h2o.forward(&h)?;
        let l = self.config.latent;
        Ok((out.narrow(1, 0, l)?, out.narrow(1, l, l)?, stats))
    }

    /// Solves the latent dynamics from `z0` to every time of `ts` (increasing or decreasing,
    /// `ts[0]` the time of `z0`) and decodes each state; with the forward NFE and, for the
    /// adjoint, its statistics.
    ///
    /// # Shapes
    /// `z0: [B, latent]` → `[B, ts.len(), obs]`.
    ///
    /// # Errors
    /// `z0` of another shape; the solver's typed errors.
    pub fn decode(
        &self,
        z0: &Tensor,
        ts: &[f64],
    ) -> Result<(Tensor, usize, Option<node_adjoint::AdjointStats>)> {
        if z0.rank() != 2 || z0.dim(1)? != self.config.latent {
            candle_core::bail!(
                "latent ODE: z0 must be [batch, {}], got {:?}",
                self.config.latent,
                z0.dims()
            );
        }
        let (zs, stats) = self.gradient.solve(&self.func, z0, ts, &self.opts)?;
        let (nfe, adjoint) = (stats.nfe_forward, stats.adjoint);
        // [T, B, latent] → [B, T, latent] → the decoder on every state.
        let zs = zs.transpose(0, 1)?.contiguous()?;
        let (b, t, l) = zs.dims3()?;
        let h = node_kernels::relu(&self.dec1.forward(&zs.reshape((b * t, l))?)?)?;
        let x = self.dec2.forward(&h)?.reshape((b, t, self.config.obs))?;
        Ok((x, nfe, adjoint))
    }

    /// The forecast at `future` times: the observations' posterior mean of `z₀` decoded at
    /// them (without the reparameterisation noise; with it, [`Self::encode`] and
    /// [`Self::decode`] do the same). The future is solved from `ts[0]`, so it must lie on
    /// one side of it, in order (times between the observations are interpolation).
    ///
    /// # Shapes
    /// `x: [B, T, obs]`, `ts`: `T` times, `mask: [B, T]`, `future`: `F ≥ 1` times →
    /// `[B, F, obs]`.
    ///
    /// # Errors
    /// Shapes that do not match; `future` empty or not monotone away from `ts[0]`; the
    /// solver's typed errors.
    pub fn forecast(
        &self,
        x: &Tensor,
        ts: &[f64],
        mask: Option<&Tensor>,
        future: &[f64],
    ) -> Result<Tensor> {
        if future.is_empty() {
            candle_core::bail!("latent ODE: no forecast times");
        }
        let (mean, _) = self.encode(x, ts, mask)?;
        let times: Vec<f64> = std::iter::once(ts[0])
            .chain(future.iter().copied())
            .collect();
        let (pred, _, _) = self.decode(&mean, &times)?;
        pred.narrow(1, 1, future.len())
    }

    /// The negative ELBO of observations `x` at times `ts`, with the reparameterisation noise
    /// `eps ~ N(0, I)` given (so that a step is reproducible) and observation noise `noise_std`.
    /// With a `mask` (1 observed, 0 not), only the observed points are encoded and enter the
    /// likelihood: irregularly observed sequences on one time grid.
    ///
    /// # Shapes
    /// `x: [B, T, obs]`, `ts`: `T` times, `mask: [B, T]`, `eps: [B, latent]`.
    ///
    /// # Errors
    /// Shapes that do not match; `noise_std` not positive; the solver's typed errors.
    pub fn elbo(
        &self,
        x: &Tensor,
        ts: &[f64],
        mask: Option<&Tensor>,
        eps: &Tensor,
        noise_std: f64,
    ) -> Result<ElboParts> {
        let (b, t) = self.check_obs(x, ts, mask)?;
        if eps.dims() != [b, self.config.latent] {
            candle_core::bail!(
                "latent ODE: eps must be [{b}, {}], got {:?}",
                self.config.latent,
                eps.dims()
            );
        }
        if !(noise_std.is_finite() && noise_std > 0.0) {
            candle_core::bail!("latent ODE: noise_std must be positive, got {noise_std}");
        }
        let (mean, logvar, encoder) = self.encode_checked(x, ts, mask, b, t)?;
        let z0 = (&mean + (eps * (&logvar * 0.5)?.exp()?)?)?;
        let (pred, nfe_forward, adjoint) = self.decode(&z0, ts)?;
        // log N(x; pred, s²) = −½ (log 2π + 2 log s + (x − pred)² / s²), summed over the
        // observed times and the coordinates.
        let var = noise_std * noise_std;
        let norm = -0.5 * (2.0 * std::f64::consts::PI * var).ln();
        let per_point = (x - &pred)?.sqr()?.affine(-0.5 / var, norm)?.sum(2)?;
        let log_px = match mask {
            None => per_point.sum(1)?,
            Some(m) => (per_point * m)?.sum(1)?,
        };
        // KL(N(μ, σ²) ‖ N(0, 1)) = ½ (σ² + μ² − 1 − log σ²), summed over the latent.
        let kl = ((logvar.exp()? + mean.sqr()?)? - &logvar)?
            .affine(0.5, -0.5)?
            .sum(1)?;
        let loss = (&kl - &log_px)?.mean_all()?;
        Ok(ElboParts {
            loss,
            log_px,
            kl,
            nfe_forward,
            adjoint,
            encoder,
        })
    }
}

/// The example's data: `n` noisy pieces of two spirals, each `nsample` points long, and their
/// times. The clockwise spiral `r = a + 50b / (stop + 1 − t)` is centred at (−5, 0), the
/// counter-clockwise `r = a + b t` at (5, 0), both over `ntotal` times from 0 to `stop`; each
/// sequence picks one (with probability ½), a start uniform in `[nsample, ntotal − nsample)`,
/// and adds `N(0, noise²)`. The times are the first `nsample` of the grid, whichever the start.
/// The example's defaults: `a = 0`, `b = 0.3`, `stop = 6π`, `ntotal = 500` (its `__main__`
/// sets 1000 but does not pass it on), `nsample = 100`, noise 0.3.
///
/// # Shapes
/// `observed` and `clean`: `[n, nsample, 2]`; `ts`: `nsample` times.
///
/// # Errors
/// `ntotal < 2 · nsample + 1`; Candle's.
pub fn spirals(
    n: usize,
    ntotal: usize,
    nsample: usize,
    noise: f64,
    rng: &mut Rng,
    dtype: DType,
    dev: &Device,
) -> Result<Spirals> {
    if nsample == 0 || ntotal < 2 * nsample + 1 {
        candle_core::bail!(
            "spirals: need 0 < nsample and ntotal > 2·nsample, got ntotal {ntotal}, nsample {nsample}"
        );
    }
    let (a, b, stop) = (0.0, 0.3, 6.0 * std::f64::consts::PI);
    let grid: Vec<f64> = (0..ntotal)
        .map(|i| stop * i as f64 / (ntotal - 1) as f64)
        .collect();
    let cw = |t: f64| {
        let z = stop + 1.0 - t;
        let r = a + b * 50.0 / z;
        [r * z.cos() - 5.0, r * z.sin()]
    };
    let cc = |t: f64| {
        let r = a + b * t;
        [r * t.cos() + 5.0, r * t.sin()]
    };
    let mut observed = Vec::with_capacity(n * nsample * 2);
    let mut clean = Vec::with_capacity(n * nsample * 2);
    for _ in 0..n {
        let start = nsample + rng.below(ntotal - 2 * nsample);
        let counter_clockwise = rng.uniform() > 0.5;
        for &t in &grid[start..start + nsample] {
            let [x, y] = if counter_clockwise { cc(t) } else { cw(t) };
            clean.extend([x, y]);
            observed.push(x + noise * rng.normal());
            observed.push(y + noise * rng.normal());
        }
    }
    let tensor = |v: Vec<f64>| Tensor::from_vec(v, (n, nsample, 2), dev)?.to_dtype(dtype);
    Ok(Spirals {
        observed: tensor(observed)?,
        clean: tensor(clean)?,
        ts: grid[..nsample].to_vec(),
    })
}

/// Sequences from [`spirals`].
#[derive(Clone, Debug)]
pub struct Spirals {
    /// The noisy observations, `[n, nsample, 2]`.
    pub observed: Tensor,
    /// The same points without noise, `[n, nsample, 2]`.
    pub clean: Tensor,
    /// The observation times (the same for every sequence).
    pub ts: Vec<f64>,
}

//! The paper's baseline for irregular time series (Chen et al. 2018, §5.1, Table 2): a
//! recurrent network that reads a sequence's observations in time order and, after each,
//! predicts the next one,
//!
//! `hᵢ = tanh(i2h([xᵢ, Δᵢ, hᵢ₋₁]))`, `x̂ᵢ₊₁ = h2o(hᵢ)`,
//!
//! trained to minimise the negative Gaussian log-likelihood of the next observations. `Δᵢ`,
//! the time to the next observation, is read only when [`RnnConfig::time_input`] is set (the
//! paper's second version of the baseline). It forecasts by feeding its own predictions back.
//!
//! The sequences share one time grid `ts`; a `[B, T]` mask (1 observed, 0 not) gives each
//! its own observed points, as for [`crate::latent_ode::LatentOde`]. Where a point is not
//! observed the state passes unchanged, and the "next observation" of a point is the next
//! one its sequence observes.

use crate::layers::{linear, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Sizes of an [`Rnn`]; the defaults are the paper's (25 hidden units).
#[derive(Clone, Debug, PartialEq)]
pub struct RnnConfig {
    /// Dimension of an observation.
    pub obs: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Whether each input also carries the time to the next observation.
    pub time_input: bool,
}

impl Default for RnnConfig {
    fn default() -> Self {
        Self {
            obs: 2,
            hidden: 25,
            time_input: false,
        }
    }
}

/// The recurrent baseline: a `tanh` cell and a linear read-out.
///
/// # Example
/// One training step on a few spirals, then a forecast of the next four grid times:
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{Optimizer, VarBuilder, VarMap};
/// use node_models::latent_ode::spirals;
/// use node_models::rnn::{Rnn, RnnConfig};
/// use node_models::{Adam, AdamConfig, Rng};
/// # fn main() -> candle_core::Result<()> {
/// let (dev, varmap) = (Device::Cpu, VarMap::new());
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let config = RnnConfig { time_input: true, ..Default::default() };
/// let model = Rnn::new(&config, vb)?;
/// let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), AdamConfig::default())?;
///
/// let data = spirals(16, 100, 24, 0.3, &mut Rng::new(0), DType::F32, &dev)?;
/// let (x, ts) = (data.observed.narrow(1, 0, 20)?, &data.ts[..20]);
/// opt.backward_step(&model.loss(&x, ts, None, 0.3)?)?;
///
/// let forecast = model.forecast(&x, ts, None, &data.ts[20..])?;
/// assert_eq!(forecast.dims(), &[16, 4, 2]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Rnn {
    i2h: Linear,
    h2o: Linear,
    config: RnnConfig,
}

/// What reading the observations gives: per grid point, the prediction of the sequence's
/// next observation, that observation and whether the pair counts; and the last state.
struct Read {
    /// `[B, T, obs]`.
    pred: Tensor,
    /// `[B, T, obs]`.
    target: Tensor,
    /// `[B, T]`: 1 where the point is observed and an observation follows it.
    weight: Tensor,
    /// `[B, hidden]`, after the last observation.
    h: Tensor,
}

impl Rnn {
    /// An RNN of the given sizes, its parameters under `vb` (`i2h`, `h2o`).
    ///
    /// # Errors
    /// A size of zero; those of `vb`.
    pub fn new(config: &RnnConfig, vb: VarBuilder) -> Result<Self> {
        let c = config;
        if c.obs == 0 || c.hidden == 0 {
            candle_core::bail!("RNN: every size must be at least 1, got {c:?}");
        }
        Ok(Self {
            i2h: linear(
                c.obs + usize::from(c.time_input) + c.hidden,
                c.hidden,
                vb.pp("i2h"),
            )?,
            h2o: linear(c.hidden, c.obs, vb.pp("h2o"))?,
            config: c.clone(),
        })
    }

    /// The sizes.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// Checks `x: [B, T, obs]`, `T` increasing times and a `[B, T]` mask of `x`'s dtype.
    fn check(&self, x: &Tensor, ts: &[f64], mask: Option<&Tensor>) -> Result<(usize, usize)> {
        let (b, t) = match x.dims() {
            &[b, t, d] if d == self.config.obs && b > 0 && t > 0 => (b, t),
            dims => candle_core::bail!(
                "RNN: observations must be [batch ≥ 1, time ≥ 1, {}], got {dims:?}",
                self.config.obs
            ),
        };
        if ts.len() != t {
            candle_core::bail!("RNN: {} times for {t} observations per sequence", ts.len());
        }
        if !increasing(ts) {
            candle_core::bail!("RNN: the times must be finite and increasing");
        }
        if let Some(m) = mask {
            if m.dims() != [b, t] || m.dtype() != x.dtype() {
                candle_core::bail!(
                    "RNN: the mask must be [{b}, {t}] of {:?}, got {:?} of {:?}",
                    x.dtype(),
                    m.dims(),
                    m.dtype()
                );
            }
        }
        Ok((b, t))
    }

    /// One step of the cell: the new state from input `x: [B, obs]`, gap `[B, 1]` and `h`.
    fn cell(&self, x: &Tensor, gap: &Tensor, h: &Tensor) -> Result<Tensor> {
        let input = if self.config.time_input {
            Tensor::cat(&[x, gap, h], 1)?
        } else {
            Tensor::cat(&[x, h], 1)?
        };
        node_kernels::tanh(&self.i2h.forward(&input)?)
    }

    /// Reads checked observations; the last observed point of a sequence is followed by
    /// `t_after` (its gap input, and the time a forecast starts at).
    fn read(
        &self,
        x: &Tensor,
        ts: &[f64],
        mask: Option<&Tensor>,
        (b, t): (usize, usize),
        t_after: f64,
    ) -> Result<Read> {
        let (dtype, dev) = (x.dtype(), x.device());
        let ones = Tensor::ones((b, t), dtype, dev)?;
        let mask = mask.unwrap_or(&ones);
        // Backwards: for every point, the sequence's next observation (value and time) and
        // whether there is one: n ← m·(point) + (1 − m)·n, from the end.
        let mut next_x = Tensor::zeros((b, self.config.obs), dtype, dev)?;
        let mut next_t = Tensor::full(t_after, (b, 1), dev)?.to_dtype(dtype)?;
        let mut has_next = Tensor::zeros((b, 1), dtype, dev)?;
        let mut after = Vec::with_capacity(t);
        for i in (0..t).rev() {
            after.push((next_x.clone(), next_t.clone(), has_next.clone()));
            let m = mask.narrow(1, i, 1)?;
            let keep = m.affine(-1.0, 1.0)?;
            let xi = x.narrow(1, i, 1)?.squeeze(1)?;
            next_x = (xi.broadcast_mul(&m)? + next_x.broadcast_mul(&keep)?)?;
            next_t = ((&m * ts[i])? + (&keep * &next_t)?)?;
            has_next = (&m + (&keep * &has_next)?)?;
        }
        after.reverse();
        // Forwards: the state after each point (unchanged where it is not observed).
        let mut h = Tensor::zeros((b, self.config.hidden), dtype, dev)?;
        let mut states = Vec::with_capacity(t);
        let (mut targets, mut weights) = (Vec::with_capacity(t), Vec::with_capacity(t));
        for (i, (nx, nt, has)) in after.into_iter().enumerate() {
            let m = mask.narrow(1, i, 1)?;
            let xi = x.narrow(1, i, 1)?.squeeze(1)?;
            let h_new = self.cell(&xi, &nt.affine(1.0, -ts[i])?, &h)?;
            h = (h_new.broadcast_mul(&m)? + h.broadcast_mul(&m.affine(-1.0, 1.0)?)?)?;
            states.push(h.clone());
            targets.push(nx);
            weights.push((m * has)?);
        }
        let states = Tensor::stack(&states, 1)?;
        let pred = self
            .h2o
            .forward(&states.reshape((b * t, self.config.hidden))?)?
            .reshape((b, t, self.config.obs))?;
        Ok(Read {
            pred,
            target: Tensor::stack(&targets, 1)?,
            weight: Tensor::cat(&weights, 1)?,
            h,
        })
    }

    /// The negative log-likelihood of every observation but each sequence's first under
    /// `N(x̂, noise_std² I)`, `x̂` predicted from the observations before it; summed over a
    /// sequence's points and averaged over the batch (the scale of the latent ODE's ELBO).
    ///
    /// # Shapes
    /// `x: [B, T, obs]`, `ts`: `T` increasing times, `mask: [B, T]` → a scalar.
    ///
    /// # Errors
    /// Shapes that do not match; times not increasing; `noise_std` not positive.
    pub fn loss(
        &self,
        x: &Tensor,
        ts: &[f64],
        mask: Option<&Tensor>,
        noise_std: f64,
    ) -> Result<Tensor> {
        let bt = self.check(x, ts, mask)?;
        if !(noise_std.is_finite() && noise_std > 0.0) {
            candle_core::bail!("RNN: noise_std must be positive, got {noise_std}");
        }
        // Any time after the last: the state after the last observation predicts nothing.
        let r = self.read(x, ts, mask, bt, ts[ts.len() - 1] + 1.0)?;
        let var = noise_std * noise_std;
        let norm = -0.5 * (2.0 * std::f64::consts::PI * var).ln();
        // log N(x; x̂, s²) summed over the coordinates, [B, T].
        let log_p = (r.target - r.pred)?
            .sqr()?
            .affine(-0.5 / var, norm)?
            .sum(2)?;
        (log_p * r.weight)?.sum(1)?.mean_all()?.neg()
    }

    /// The forecast at `future` times after the observations: the prediction after the last
    /// observation is the first point, and each predicted point is read as the next input.
    ///
    /// # Shapes
    /// `x: [B, T, obs]`, `ts`: `T` increasing times, `mask: [B, T]`, `future`: `F ≥ 1`
    /// increasing times after `ts` → `[B, F, obs]`.
    ///
    /// # Errors
    /// Shapes that do not match; times not increasing, or `future` not after `ts`.
    pub fn forecast(
        &self,
        x: &Tensor,
        ts: &[f64],
        mask: Option<&Tensor>,
        future: &[f64],
    ) -> Result<Tensor> {
        let bt = self.check(x, ts, mask)?;
        if future.is_empty() || !increasing(future) || future[0] <= ts[ts.len() - 1] {
            candle_core::bail!(
                "RNN: forecast times must be at least one, increasing and after the observations"
            );
        }
        let r = self.read(x, ts, mask, bt, future[0])?;
        let mut h = r.h;
        let mut y = self.h2o.forward(&h)?;
        let mut out = vec![y.clone()];
        for k in 1..future.len() {
            let gap = Tensor::full(future[k] - future[k - 1], (bt.0, 1), x.device())?
                .to_dtype(x.dtype())?;
            h = self.cell(&y, &gap, &h)?;
            y = self.h2o.forward(&h)?;
            out.push(y.clone());
        }
        Tensor::stack(&out, 1)
    }
}

/// Finite and strictly increasing.
fn increasing(ts: &[f64]) -> bool {
    ts.iter().all(|t| t.is_finite()) && ts.windows(2).all(|w| w[0] < w[1])
}

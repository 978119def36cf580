//! Neural controlled differential equations (Kidger, Morrill, Foster & Lyons, *Neural
//! Controlled Differential Equations for Irregular Time Series*, NeurIPS 2020): the continuous
//! analogue of an RNN,
//!
//! `z(t) = z(t₀) + ∫_{t₀}^{t} f_θ(s, z(s)) dX(s)`,
//!
//! where `X` is a path through a time series' observations and `f_θ(t, z)` is a matrix, hidden
//! × channels. With `X` differentiable the integral is the ODE `dz/dt = f_θ(t, z) · dX/dt`,
//! solved by any [`node_solvers`] method and differentiated by any [`Gradient`] mode.
//!
//! - [`ControlPath`]: the path `X` through observations `x: [B, T, C]` at knots `t₀ < … <
//!   t_{T−1}` ([`Interpolation`]: linear, Hermite cubic with backward differences, natural
//!   cubic spline), as torchcde and diffrax build it, on tensors of any device.
//! - [`CdeVectorField`]: `f_θ`; [`CdeMlp`] is torchcde's and diffrax's MLP with its final
//!   `tanh`.
//! - [`cdeint`]: solves the CDE to given times.
//! - [`NeuralCde`]: `z₀ = ζ(X(t₀))`, the CDE, a linear readout of `z`: the paper's classifier.
//!
//! Irregular sampling needs nothing special: put time in a channel of `x` (then the knots only
//! order the observations, and may be `0, 1, …`). Missing values (NaN) are filled first by
//! [`fill_missing`].

use crate::layers::{linear, Activation, BlockStats, Gradient, Linear, Mlp};
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;
use node_adjoint::{ParamVectorField, TensorParam, WithParams};
use node_solvers::{SolveOptions, VectorField};
use std::sync::Arc;

/// How a [`ControlPath`] joins the observations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// Straight lines between the knots: `dX/dt` is constant on each interval and jumps at
    /// the knots, so an adaptive solve steps to them ([`cdeint`] adds them to the solve's
    /// `jump_ts`). On `[tᵢ, tᵢ₊₁]` it depends on `xᵢ` and `xᵢ₊₁` only.
    Linear,
    /// torchcde's Hermite cubic with backward differences (its recommended default): on
    /// `[tᵢ, tᵢ₊₁]` the cubic through `xᵢ` and `xᵢ₊₁` whose slopes there are the backward
    /// differences `(xᵢ − xᵢ₋₁)/Δᵢ₋₁` and `(xᵢ₊₁ − xᵢ)/Δᵢ` (the first interval starts with the
    /// second's slope). Continuously differentiable, and, like [`Interpolation::Linear`],
    /// causal: up to `tᵢ₊₁` it depends on the observations up to `tᵢ₊₁` only.
    Hermite,
    /// The natural cubic spline (zero second derivative at both ends), twice continuously
    /// differentiable; every piece depends on every observation.
    Natural,
}

impl Interpolation {
    /// Every kind, in declaration order.
    pub const ALL: [Interpolation; 3] = [
        Interpolation::Linear,
        Interpolation::Hermite,
        Interpolation::Natural,
    ];

    /// The name the command-line tools use: `linear`, `hermite`, `natural`.
    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Linear => "linear",
            Interpolation::Hermite => "hermite",
            Interpolation::Natural => "natural",
        }
    }
}

/// A piecewise cubic path `X: [t₀, t_{T−1}] → R^C` per sequence of a batch, through given
/// observations: on `[tᵢ, tᵢ₊₁]`, `X(t) = aᵢ + bᵢ s + cᵢ s² + dᵢ s³` with `s = t − tᵢ`.
///
/// The coefficients are tensors of the observations' dtype and device, each
/// `[T − 1, B, C]`, built from the observations by tensor operations: gradients reach `x`
/// through them, with every [`Gradient`] mode of [`cdeint`] (see [`Controlled`]). Locating
/// `t` among the knots is host work: evaluating the path reads nothing back from the device.
#[derive(Clone, Debug)]
pub struct ControlPath {
    knots: Arc<[f64]>,
    kind: Interpolation,
    a: Tensor,
    b: Tensor,
    /// `None` for [`Interpolation::Linear`].
    cubic: Option<(Tensor, Tensor)>,
}

/// `values` as a `[len, 1, 1]` tensor, to scale each interval's `[B, C]` slice by its own
/// number.
fn per_interval(values: &[f64], dtype: DType, dev: &Device) -> Result<Tensor> {
    Tensor::from_slice(values, (values.len(), 1, 1), dev)?.to_dtype(dtype)
}

impl ControlPath {
    /// The path through `x` at `knots`, joined as `kind` says.
    ///
    /// # Shapes
    /// `x: [B, T, C]` with `T = knots.len() ≥ 2`.
    ///
    /// # Errors
    /// Another rank or length; knots not finite or not strictly increasing; `x` not a float
    /// dtype or holding NaN or infinity (one read back to the host; NaN marks missing values
    /// for [`fill_missing`]).
    pub fn new(x: &Tensor, knots: &[f64], kind: Interpolation) -> Result<Self> {
        let t = match x.dims() {
            &[b, t, c] if b > 0 && c > 0 => t,
            dims => candle_core::bail!(
                "control path: observations must be [batch ≥ 1, time, channels ≥ 1], got {dims:?}"
            ),
        };
        check_knots(knots, t)?;
        if !x.dtype().is_float() {
            candle_core::bail!(
                "control path: observations must be floats, got {:?}",
                x.dtype()
            );
        }
        // 0·x is 0 where x is finite and NaN elsewhere; its sum cannot overflow.
        let bad = x
            .affine(0.0, 0.0)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if !bad.is_finite() {
            candle_core::bail!(
                "control path: the observations hold NaN or infinity (missing values? fill them \
                 with cde::fill_missing first)"
            );
        }
        let (dtype, dev) = (x.dtype(), x.device());
        // Interval-major, so that one interval's coefficients are a contiguous [B, C] slice.
        let xs = x.transpose(0, 1)?.contiguous()?;
        let n = t - 1;
        let dt: Vec<f64> = knots.windows(2).map(|w| w[1] - w[0]).collect();
        let inv_dt: Vec<f64> = dt.iter().map(|d| 1.0 / d).collect();
        let a = xs.narrow(0, 0, n)?;
        // Each interval's slope (xᵢ₊₁ − xᵢ)/Δᵢ: [T − 1, B, C].
        let slope =
            (xs.narrow(0, 1, n)? - &a)?.broadcast_mul(&per_interval(&inv_dt, dtype, dev)?)?;
        let (b_coef, cubic) = match kind {
            Interpolation::Linear => (slope, None),
            Interpolation::Hermite => {
                // Slopes at the interval's ends: the previous interval's (the first
                // interval's own for the first) and its own. With δ their difference, the
                // cubic is b = m₋, c = 2δ/Δ, d = −δ/Δ².
                let prev = if n == 1 {
                    slope.clone()
                } else {
                    Tensor::cat(&[&slope.narrow(0, 0, 1)?, &slope.narrow(0, 0, n - 1)?], 0)?
                };
                let delta = (&slope - &prev)?;
                let c2: Vec<f64> = inv_dt.iter().map(|i| 2.0 * i).collect();
                let d3: Vec<f64> = inv_dt.iter().map(|i| -i * i).collect();
                let c_coef = delta.broadcast_mul(&per_interval(&c2, dtype, dev)?)?;
                let d_coef = delta.broadcast_mul(&per_interval(&d3, dtype, dev)?)?;
                (prev, Some((c_coef, d_coef)))
            }
            Interpolation::Natural => {
                let m = natural_second_derivatives(&slope, &dt)?;
                // On [tᵢ, tᵢ₊₁], with Mᵢ the second derivatives at the knots:
                // b = mᵢ − Δᵢ(2Mᵢ + Mᵢ₊₁)/6, c = Mᵢ/2, d = (Mᵢ₊₁ − Mᵢ)/(6Δᵢ).
                let m_lo = m.narrow(0, 0, n)?;
                let m_hi = m.narrow(0, 1, n)?;
                let sixth_dt: Vec<f64> = dt.iter().map(|d| d / 6.0).collect();
                let inv_6dt: Vec<f64> = inv_dt.iter().map(|i| i / 6.0).collect();
                let b_coef = (&slope
                    - (m_lo.affine(2.0, 0.0)? + &m_hi)?
                        .broadcast_mul(&per_interval(&sixth_dt, dtype, dev)?)?)?;
                let c_coef = m_lo.affine(0.5, 0.0)?;
                let d_coef =
                    (&m_hi - &m_lo)?.broadcast_mul(&per_interval(&inv_6dt, dtype, dev)?)?;
                (b_coef, Some((c_coef, d_coef)))
            }
        };
        Ok(Self {
            knots: knots.into(),
            kind,
            a: a.contiguous()?,
            b: b_coef.contiguous()?,
            cubic: match cubic {
                Some((c, d)) => Some((c.contiguous()?, d.contiguous()?)),
                None => None,
            },
        })
    }

    /// The interpolation.
    pub fn interpolation(&self) -> Interpolation {
        self.kind
    }

    /// The knots `t₀ < … < t_{T−1}`.
    pub fn knots(&self) -> &[f64] {
        &self.knots
    }

    /// `(t₀, t_{T−1})`: where the path is defined (outside, its end pieces extend it).
    pub fn interval(&self) -> (f64, f64) {
        (self.knots[0], self.knots[self.knots.len() - 1])
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.a.dims()[1]
    }

    /// Channels `C`.
    pub fn channels(&self) -> usize {
        self.a.dims()[2]
    }

    /// The same path with `f` applied to each coefficient tensor.
    fn map_coefficients(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            knots: self.knots.clone(),
            kind: self.kind,
            a: f(&self.a)?,
            b: f(&self.b)?,
            cubic: match &self.cubic {
                Some((c, d)) => Some((f(c)?, f(d)?)),
                None => None,
            },
        })
    }

    /// The same path with its coefficients cut from the graph (no gradient to the
    /// observations).
    pub fn detach(&self) -> Self {
        self.map_coefficients(|t| Ok(t.detach()))
            .expect("detaching cannot fail")
    }

    /// The paths of the sequences `indices` (a `u32` or `i64` tensor `[K]`), in that order: a
    /// minibatch of a path built once for a whole dataset.
    ///
    /// # Errors
    /// Candle's (indices out of range, another dtype or rank).
    pub fn select(&self, indices: &Tensor) -> Result<Self> {
        self.map_coefficients(|t| t.index_select(indices, 1))
    }

    /// The interval holding `t` (the right one at a knot; the end ones outside) and `t`'s
    /// offset in it.
    fn locate(&self, t: f64) -> (usize, f64) {
        let n = self.knots.len() - 1;
        let i = self
            .knots
            .partition_point(|&k| k <= t)
            .saturating_sub(1)
            .min(n - 1);
        (i, t - self.knots[i])
    }

    /// `X(t)` for every sequence; at a knot, the observation there.
    ///
    /// # Shapes
    /// `[B, C]`.
    ///
    /// # Errors
    /// Candle's.
    pub fn evaluate(&self, t: f64) -> Result<Tensor> {
        let (i, s) = self.locate(t);
        let piece = |x: &Tensor| x.get(i);
        let a = piece(&self.a)?;
        let lin = (piece(&self.b)?.affine(s, 0.0)? + a)?;
        match &self.cubic {
            None => Ok(lin),
            Some((c, d)) => {
                let cubic = (piece(c)?.affine(s * s, 0.0)? + piece(d)?.affine(s * s * s, 0.0)?)?;
                lin + cubic
            }
        }
    }

    /// `dX/dt(t)` for every sequence; at an inner knot of a linear path, the slope of the
    /// interval that starts there.
    ///
    /// # Shapes
    /// `[B, C]`.
    ///
    /// # Errors
    /// Candle's.
    pub fn derivative(&self, t: f64) -> Result<Tensor> {
        let (i, s) = self.locate(t);
        let b = self.b.get(i)?;
        match &self.cubic {
            None => Ok(b),
            Some((c, d)) => {
                let rest =
                    (c.get(i)?.affine(2.0 * s, 0.0)? + d.get(i)?.affine(3.0 * s * s, 0.0)?)?;
                b + rest
            }
        }
    }
}

/// Knots: as many as the observations, at least two, finite, strictly increasing.
fn check_knots(knots: &[f64], t: usize) -> Result<()> {
    if knots.len() != t {
        candle_core::bail!(
            "control path: {} knots for {t} observations per sequence",
            knots.len()
        );
    }
    if t < 2 {
        candle_core::bail!("control path: needs at least two observations per sequence, got {t}");
    }
    if let Some(i) = knots.iter().position(|k| !k.is_finite()) {
        candle_core::bail!("control path: knot {i} is {}", knots[i]);
    }
    if let Some(i) = knots.windows(2).position(|w| w[1] <= w[0]) {
        candle_core::bail!(
            "control path: the knots must increase strictly, got {} then {} at {i}",
            knots[i],
            knots[i + 1]
        );
    }
    Ok(())
}

/// The natural spline's second derivatives at the knots, `[T, B, C]`, from the intervals'
/// slopes `m: [T − 1, B, C]` and widths `dt`: `M₀ = M_{T−1} = 0` and, inside,
/// `Δᵢ₋₁ Mᵢ₋₁ + 2(Δᵢ₋₁ + Δᵢ) Mᵢ + Δᵢ Mᵢ₊₁ = 6 (mᵢ − mᵢ₋₁)`, solved by the Thomas algorithm
/// (the matrix depends on the knots only: its elimination factors are host numbers, the
/// right-hand sides tensors).
fn natural_second_derivatives(m: &Tensor, dt: &[f64]) -> Result<Tensor> {
    let n = dt.len();
    let zero = m.get(0)?.zeros_like()?;
    if n == 1 {
        return Tensor::stack(&[&zero, &zero], 0);
    }
    let inner = n - 1;
    let rhs = (m.narrow(0, 1, inner)? - m.narrow(0, 0, inner)?)?.affine(6.0, 0.0)?;
    // Row j (knot j + 1): sub dt[j], diagonal 2(dt[j] + dt[j+1]), super dt[j+1].
    let mut sup_elim = Vec::with_capacity(inner);
    let mut d_elim: Vec<Tensor> = Vec::with_capacity(inner);
    for j in 0..inner {
        let diag = 2.0 * (dt[j] + dt[j + 1]);
        let r = rhs.get(j)?;
        let (denom, d) = if j == 0 {
            (diag, r)
        } else {
            let sub = dt[j];
            let denom = diag - sub * sup_elim[j - 1];
            (denom, (r - d_elim[j - 1].affine(sub, 0.0)?)?)
        };
        sup_elim.push(dt[j + 1] / denom);
        d_elim.push(d.affine(1.0 / denom, 0.0)?);
    }
    let mut second = vec![zero.clone(); n + 1];
    second[inner] = d_elim[inner - 1].clone();
    for j in (0..inner - 1).rev() {
        second[j + 1] = (&d_elim[j] - second[j + 2].affine(sup_elim[j], 0.0)?)?;
    }
    Tensor::stack(&second, 0)
}

/// `x` with its missing values (NaN) filled in, per sequence and channel: linearly in the
/// knots' time between the observed neighbours, and with the nearest observed value before
/// the first observation and after the last. Host work, for preprocessing a dataset once.
///
/// torchcde instead interpolates each channel through its own observed points; filling then
/// interpolating gives the same path for [`Interpolation::Linear`], and a smooth path through
/// the same points for the cubic ones.
///
/// # Shapes
/// `x: [B, T, C]`, `knots`: `T` → `[B, T, C]`, `x`'s dtype and device.
///
/// # Errors
/// Bad knots or shape; a sequence with a channel observed nowhere; infinity in `x`.
pub fn fill_missing(x: &Tensor, knots: &[f64]) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    check_knots(knots, t)?;
    let mut v = x.to_dtype(DType::F64)?.to_vec3::<f64>()?;
    for (bi, seq) in v.iter_mut().enumerate() {
        for ci in 0..c {
            let mut series: Vec<f64> = seq.iter().map(|p| p[ci]).collect();
            fill_series(&mut series, knots).map_err(|what| {
                candle_core::Error::Msg(format!(
                    "fill_missing: sequence {bi}, channel {ci}: {what}"
                ))
            })?;
            for (p, value) in seq.iter_mut().zip(series) {
                p[ci] = value;
            }
        }
    }
    let flat: Vec<f64> = v.into_iter().flatten().flatten().collect();
    Tensor::from_vec(flat, (b, t, c), x.device())?.to_dtype(x.dtype())
}

/// [`fill_missing`] on one series.
fn fill_series(y: &mut [f64], knots: &[f64]) -> std::result::Result<(), String> {
    let seen: Vec<usize> = (0..y.len()).filter(|&i| !y[i].is_nan()).collect();
    let (Some(&first), Some(&last)) = (seen.first(), seen.last()) else {
        return Err("no observed value".into());
    };
    if let Some(&i) = seen.iter().find(|&&i| y[i].is_infinite()) {
        return Err(format!("point {i} is infinite"));
    }
    let (head, tail) = (y[first], y[last]);
    y[..first].fill(head);
    y[last + 1..].fill(tail);
    for w in seen.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        let (ylo, yhi) = (y[lo], y[hi]);
        for i in lo + 1..hi {
            let f = (knots[i] - knots[lo]) / (knots[hi] - knots[lo]);
            y[i] = ylo + f * (yhi - ylo);
        }
    }
    Ok(())
}

/// The matrix-valued field `f_θ(t, z)` of a CDE: for `z: [B, H]`, a `[B, H, C]` tensor, the
/// linear map from the path's `C` channels to `z`'s `H`.
///
/// `params` are the `Var`s it uses, in a stable order (as
/// [`ParamVectorField::params`]). A closure with its parameters,
/// `node_adjoint::with_params(|t, z| …, vars)`, is one.
pub trait CdeVectorField: Clone + Send + Sync + 'static {
    /// `f_θ(t, z)`.
    ///
    /// # Shapes
    /// `z: [B, H]` → `[B, H, C]`.
    fn eval(&self, t: f64, z: &Tensor) -> Result<Tensor>;

    /// The trained parameters θ.
    fn params(&self) -> Vec<Var>;

    /// Where each parameter's gradient goes, as [`ParamVectorField::param_sources`] (the
    /// default, the parameters themselves, unless the field has
    /// [`node_adjoint::TensorParam`]s).
    fn param_sources(&self) -> Vec<Tensor> {
        self.params()
            .iter()
            .map(|p| p.as_tensor().clone())
            .collect()
    }
}

impl<F> CdeVectorField for WithParams<F>
where
    F: Fn(f64, &Tensor) -> Result<Tensor> + Clone + Send + Sync + 'static,
{
    fn eval(&self, t: f64, z: &Tensor) -> Result<Tensor> {
        VectorField::eval(self, t, z)
    }

    fn params(&self) -> Vec<Var> {
        ParamVectorField::params(self)
    }

    fn param_sources(&self) -> Vec<Tensor> {
        ParamVectorField::param_sources(self)
    }
}

/// The CDE as an ODE: `dz/dt = f_θ(t, z) · dX/dt(t)`, the vector field [`cdeint`] solves.
///
/// A path whose coefficients are in a graph (observations that are themselves computed, and
/// need a gradient) enters as [`node_adjoint::TensorParam`]s: the field computes with leaf
/// copies of the coefficients `dX/dt` uses, and names the coefficients as their sources. So
/// every gradient mode of [`Gradient::solve`] (and `node_adjoint`'s solves) delivers the
/// observations' gradients, and the backward passes inside a solve do not run through the
/// path's construction. Plain backprop through [`node_solvers::odeint`] stops at the copies;
/// use [`Gradient::Backprop`] (or [`node_adjoint::odeint_direct`]). A path of plain data
/// adds no parameters.
#[derive(Clone, Debug)]
pub struct Controlled<G> {
    field: G,
    path: Arc<ControlPath>,
    /// The coefficients `dX/dt` uses (`b`, then `c` and `d` for a cubic path) as parameters,
    /// when the path is in a graph; empty otherwise.
    coefficients: Vec<TensorParam>,
}

impl<G: CdeVectorField> Controlled<G> {
    /// `field` driven by `path`.
    ///
    /// # Errors
    /// Copying a path in a graph.
    pub fn new(field: G, path: ControlPath) -> Result<Self> {
        let mut used = vec![&path.b];
        if let Some((c, d)) = &path.cubic {
            used.extend([c, d]);
        }
        if !used.iter().any(|t| t.track_op()) {
            return Ok(Self {
                field,
                path: Arc::new(path),
                coefficients: Vec::new(),
            });
        }
        let coefficients = used
            .into_iter()
            .map(TensorParam::new)
            .collect::<Result<Vec<_>>>()?;
        let copy = |i: usize| coefficients[i].as_tensor().clone();
        let path = ControlPath {
            knots: path.knots.clone(),
            kind: path.kind,
            a: path.a.detach(),
            b: copy(0),
            cubic: path.cubic.as_ref().map(|_| (copy(1), copy(2))),
        };
        Ok(Self {
            field,
            path: Arc::new(path),
            coefficients,
        })
    }

    /// The path.
    pub fn path(&self) -> &ControlPath {
        &self.path
    }
}

impl<G: CdeVectorField> VectorField for Controlled<G> {
    fn eval(&self, t: f64, z: &Tensor) -> Result<Tensor> {
        let f = self.field.eval(t, z)?;
        let (b, h) = z.dims2()?;
        let c = self.path.channels();
        if f.dims() != [b, h, c] {
            candle_core::bail!(
                "CDE: the field must give [batch, hidden, channels] = [{b}, {h}, {c}] for z of \
                 shape {:?}, got {:?}",
                z.dims(),
                f.dims()
            );
        }
        let dx = self.path.derivative(t)?;
        node_kernels::batched_matvec(&f, &dx)
    }
}

impl<G: CdeVectorField> ParamVectorField for Controlled<G> {
    fn params(&self) -> Vec<Var> {
        let coefficients = self.coefficients.iter().map(|c| c.var().clone());
        self.field
            .params()
            .into_iter()
            .chain(coefficients)
            .collect()
    }

    fn param_sources(&self) -> Vec<Tensor> {
        let coefficients = self.coefficients.iter().map(|c| c.source().clone());
        self.field
            .param_sources()
            .into_iter()
            .chain(coefficients)
            .collect()
    }
}

/// Solves `z(t) = z(ts[0]) + ∫ f_θ(s, z(s)) dX(s)` from `z0` to every time of `ts`,
/// differentiated as `gradient` says; returns the states `[ts.len(), B, H]` and the solve's
/// counts. `ts` may go either way and reach outside the path's interval (its end pieces
/// extend it).
///
/// An adaptive solve steps to every inner knot of the path, where the field stops being
/// smooth in `t`: a linear path's knots join `opts.jump_ts` (`dX/dt` jumps there), a cubic
/// path's join `opts.step_ts` (a derivative of `dX/dt` jumps). A step across a knot has a
/// low-order error there, which the controller meets with rejected and shortened steps. On a
/// CDE with a closed form and uneven knots (as in this crate's tests, dopri5, rtol 1e-8 to
/// 1e-12, atol a hundredth of it) the cubic paths' solves were 4 to 400 times more accurate
/// for it, and Hermite's took 15 to 31% fewer evaluations; on the 100-point spirals of
/// [`spiral_directions`] at rtol 1e-5, 626 evaluations instead of 2546. At loose tolerances with many knots the knots can cost more than they save (the
/// same spirals at rtol 1e-3: 602 instead of 386): there, solve [`Controlled::new`]`(field,
/// path)` with [`Gradient::solve`] yourself.
///
/// Every gradient mode delivers gradients to the observations when they are in a graph (see
/// [`Controlled`]); a path of plain data costs nothing more.
///
/// # Shapes
/// `z0: [B, H]`, the path's batch `B` → `[ts.len(), B, H]`.
///
/// # Errors
/// `z0` not `[path's batch, H]`; the field's shape errors; the solver's typed errors.
pub fn cdeint<G: CdeVectorField>(
    field: &G,
    path: &ControlPath,
    z0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
    gradient: &Gradient,
) -> Result<(Tensor, BlockStats)> {
    match z0.dims() {
        &[b, h] if b == path.batch() && h > 0 => {}
        dims => candle_core::bail!(
            "CDE: z0 must be [{}, hidden ≥ 1] (the path's batch), got {dims:?}",
            path.batch()
        ),
    }
    let inner = &path.knots[1..path.knots.len() - 1];
    let mut opts = opts.clone();
    let join = |old: &[f64]| -> Vec<f64> { old.iter().chain(inner).copied().collect() };
    if path.kind == Interpolation::Linear {
        opts.jump_ts = join(&opts.jump_ts).into();
    } else {
        opts.step_ts = join(&opts.step_ts).into();
    }
    let f = Controlled::new(field.clone(), path.clone())?;
    gradient.solve(&f, z0, ts, &opts)
}

/// torchcde's and diffrax's CDE field: an MLP `H → width → … → H·C` with an activation
/// between the layers (torchcde's example: ReLU; diffrax's: softplus) and a final `tanh`
/// (which keeps `f_θ` bounded; Kidger et al. find training better with it), reshaped to
/// `[B, H, C]`. Autonomous: `t` enters through the path's time channel.
#[derive(Clone, Debug)]
pub struct CdeMlp {
    mlp: Mlp,
    hidden: usize,
    channels: usize,
    params: Vec<Var>,
}

impl CdeMlp {
    /// `depth` hidden layers of `width` (`depth = 0`: one linear map) with `activation`
    /// after each, parameters under `vb` (`layer0`, `layer1`, …).
    ///
    /// # Errors
    /// A size of zero (but `depth`); those of `vb`.
    pub fn new(
        hidden: usize,
        channels: usize,
        width: usize,
        depth: usize,
        activation: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        if hidden == 0 || channels == 0 || (depth > 0 && width == 0) {
            candle_core::bail!(
                "CDE field: hidden, channels and width must be at least 1, got {hidden}, \
                 {channels}, {width}"
            );
        }
        let mlp = Mlp::new(
            hidden,
            hidden * channels,
            width,
            depth,
            activation,
            true,
            vb,
        )?;
        let params = mlp.vars()?;
        Ok(Self {
            mlp,
            hidden,
            channels,
            params,
        })
    }
}

impl CdeVectorField for CdeMlp {
    fn eval(&self, _t: f64, z: &Tensor) -> Result<Tensor> {
        self.mlp
            .forward(z)?
            .reshape((z.dim(0)?, self.hidden, self.channels))
    }

    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// Sizes of a [`NeuralCde`]; the defaults are torchcde's classification example: hidden
/// state 8, one hidden layer of 128 in the field with ReLU, one output, Hermite cubic paths.
#[derive(Clone, Debug, PartialEq)]
pub struct NeuralCdeConfig {
    /// Channels `C` of the observations (time among them, if it is one).
    pub channels: usize,
    /// Dimension `H` of the hidden state `z`.
    pub hidden: usize,
    /// Width of the field's hidden layers.
    pub width: usize,
    /// Hidden layers of the field.
    pub depth: usize,
    /// The activation after each hidden layer of the field. ReLU (the default, torchcde's)
    /// makes the field only Lipschitz; [`Activation::Softplus`] (diffrax's) is smooth, so
    /// adaptive solves and the gradients of backprop through them converge faster.
    pub activation: Activation,
    /// Outputs of the readout (1 for binary classification: a logit).
    pub outputs: usize,
    /// How [`NeuralCde::path`] joins the observations.
    pub interpolation: Interpolation,
}

impl Default for NeuralCdeConfig {
    fn default() -> Self {
        Self {
            channels: 3,
            hidden: 8,
            width: 128,
            depth: 1,
            activation: Activation::Relu,
            outputs: 1,
            interpolation: Interpolation::Hermite,
        }
    }
}

/// The neural CDE classifier (torchcde's and diffrax's examples): `z(t₀) = ζ(X(t₀))` (a
/// linear map: the initial state must depend on the first observation, or the CDE could not
/// tell paths apart that differ by a translation), the CDE over the path's interval, then a
/// linear readout `ℓ(z(t_{T−1}))`.
///
/// # Example
/// One training step on the spirals of [`spiral_directions`], then the test accuracy:
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{Optimizer, VarBuilder, VarMap};
/// use node_models::cde::{binary_cross_entropy_with_logits, spiral_directions, NeuralCde, NeuralCdeConfig};
/// use node_models::{Adam, AdamConfig, Gradient, Rng};
/// use node_solvers::SolveOptions;
/// # fn main() -> candle_core::Result<()> {
/// let (dev, varmap) = (Device::Cpu, VarMap::new());
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let opts = SolveOptions::default().tolerances(1e-3, 1e-5);
/// let model = NeuralCde::new(&NeuralCdeConfig::default(), opts, Gradient::Backprop, vb)?;
/// let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), AdamConfig::default())?;
///
/// let data = spiral_directions(16, 50, 0.01, 0.0, &mut Rng::new(0), DType::F32, &dev)?;
/// let path = model.path(&data.x, &data.knots)?;
/// let (logits, _) = model.forward(&path)?;
/// let loss = binary_cross_entropy_with_logits(&logits.squeeze(1)?, &data.labels)?;
/// opt.backward_step(&loss)?;
/// assert_eq!(logits.dims(), &[16, 1]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct NeuralCde {
    initial: Linear,
    field: CdeMlp,
    readout: Linear,
    config: NeuralCdeConfig,
    opts: SolveOptions,
    gradient: Gradient,
}

impl NeuralCde {
    /// A neural CDE of the given sizes, its parameters under `vb` (`initial`, `field.layer0…`,
    /// `readout`), solved with `opts` and differentiated by `gradient`.
    ///
    /// # Errors
    /// A size of zero; invalid `opts`; those of `vb`.
    pub fn new(
        config: &NeuralCdeConfig,
        opts: SolveOptions,
        gradient: Gradient,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = config;
        if [c.channels, c.hidden, c.outputs].contains(&0) {
            candle_core::bail!(
                "neural CDE: channels, hidden and outputs must be at least 1, got {c:?}"
            );
        }
        opts.validate()?;
        Ok(Self {
            initial: linear(c.channels, c.hidden, vb.pp("initial"))?,
            field: CdeMlp::new(
                c.hidden,
                c.channels,
                c.width,
                c.depth,
                c.activation,
                vb.pp("field"),
            )?,
            readout: linear(c.hidden, c.outputs, vb.pp("readout"))?,
            config: c.clone(),
            opts,
            gradient,
        })
    }

    /// The sizes.
    pub fn config(&self) -> &NeuralCdeConfig {
        &self.config
    }

    /// The field `f_θ`.
    pub fn field(&self) -> &CdeMlp {
        &self.field
    }

    /// The path through `x` at `knots`, joined as the config says.
    ///
    /// # Shapes
    /// `x: [B, T, channels]`, `knots`: `T`.
    ///
    /// # Errors
    /// Those of [`ControlPath::new`]; another number of channels.
    pub fn path(&self, x: &Tensor, knots: &[f64]) -> Result<ControlPath> {
        let path = ControlPath::new(x, knots, self.config.interpolation)?;
        self.check_path(&path)?;
        Ok(path)
    }

    fn check_path(&self, path: &ControlPath) -> Result<()> {
        if path.channels() != self.config.channels {
            candle_core::bail!(
                "neural CDE: the path has {} channels, the model {}",
                path.channels(),
                self.config.channels
            );
        }
        Ok(())
    }

    /// The readout at the end of the path, with the solve's counts.
    ///
    /// # Shapes
    /// A path of batch `B` → `[B, outputs]`.
    ///
    /// # Errors
    /// A path of another number of channels; the solver's typed errors.
    pub fn forward(&self, path: &ControlPath) -> Result<(Tensor, BlockStats)> {
        let (t0, t1) = path.interval();
        let (out, stats) = self.forward_at(path, &[t0, t1])?;
        Ok((out.get(1)?, stats))
    }

    /// The readout at each of `times` (from `times[0]`, where `z = ζ(X(times[0]))`), for
    /// outputs along the sequence, with the solve's counts.
    ///
    /// # Shapes
    /// A path of batch `B` → `[times.len(), B, outputs]`.
    ///
    /// # Errors
    /// A path of another number of channels; no times; the solver's typed errors.
    pub fn forward_at(&self, path: &ControlPath, times: &[f64]) -> Result<(Tensor, BlockStats)> {
        self.check_path(path)?;
        let Some(&t0) = times.first() else {
            candle_core::bail!("neural CDE: no output times");
        };
        let z0 = self.initial.forward(&path.evaluate(t0)?)?;
        let (zs, stats) = cdeint(&self.field, path, &z0, times, &self.opts, &self.gradient)?;
        let (t, b, h) = zs.dims3()?;
        let out =
            self.readout
                .forward(&zs.reshape((t * b, h))?)?
                .reshape((t, b, self.config.outputs))?;
        Ok((out, stats))
    }
}

/// The mean binary cross-entropy of `logits` against `targets` (1 or 0, or probabilities):
/// `mean(max(x, 0) − x y + log(1 + e^{−|x|}))`, which never takes the log of a rounded-off
/// sigmoid.
///
/// # Shapes
/// `logits`, `targets`: one shape → a scalar.
///
/// # Errors
/// Shapes or dtypes that differ.
pub fn binary_cross_entropy_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.dims() != targets.dims() || logits.dtype() != targets.dtype() {
        candle_core::bail!(
            "binary cross-entropy: logits {:?} of {:?} against targets {:?} of {:?}",
            logits.dims(),
            logits.dtype(),
            targets.dims(),
            targets.dtype()
        );
    }
    let soft = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    ((logits.relu()? - (logits * targets)?)? + soft)?.mean_all()
}

/// Spirals to classify by direction, as in torchcde's and diffrax's neural CDE examples.
#[derive(Clone, Debug)]
pub struct SpiralDirections {
    /// `[n, length, 3]`: time, then the two coordinates (NaN where missing).
    pub x: Tensor,
    /// The observation times, `length` of them: the knots of the paths.
    pub knots: Vec<f64>,
    /// `[n]`: 1 for a clockwise spiral, 0 for an anticlockwise one.
    pub labels: Tensor,
}

/// `n` spirals of `length` points over `t ∈ [0, 4π]`: `(cos(t + φ), sin(t + φ)) / (1 + t/2)`
/// from a uniform phase `φ`, the first coordinate negated for half of them (clockwise, label
/// 1), plus Gaussian noise of standard deviation `noise`; in random order. With `missing > 0`
/// that fraction of each spiral's points (rounded down; never the whole spiral) has its two
/// coordinates NaN, time kept: irregular sampling, for [`fill_missing`].
///
/// # Shapes
/// See [`SpiralDirections`].
///
/// # Errors
/// `n` or `length < 2`; `noise` negative or `missing` outside `[0, 1)`.
pub fn spiral_directions(
    n: usize,
    length: usize,
    noise: f64,
    missing: f64,
    rng: &mut Rng,
    dtype: DType,
    dev: &Device,
) -> Result<SpiralDirections> {
    if n == 0 || length < 2 {
        candle_core::bail!("spirals: need n ≥ 1 and length ≥ 2, got {n} and {length}");
    }
    if !(noise >= 0.0 && noise.is_finite() && (0.0..1.0).contains(&missing)) {
        candle_core::bail!(
            "spirals: need noise ≥ 0 and missing in [0, 1), got {noise} and {missing}"
        );
    }
    let tmax = 4.0 * std::f64::consts::PI;
    let knots: Vec<f64> = (0..length)
        .map(|i| tmax * i as f64 / (length - 1) as f64)
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let drop = ((missing * length as f64).floor() as usize).min(length - 1);
    let mut x = Vec::with_capacity(n * length * 3);
    let mut labels = Vec::with_capacity(n);
    for &k in &order {
        let clockwise = k < n / 2;
        let phase = 2.0 * std::f64::consts::PI * rng.uniform();
        let mut points: Vec<usize> = (0..length).collect();
        rng.shuffle(&mut points);
        let mut gone = vec![false; length];
        for &p in &points[..drop] {
            gone[p] = true;
        }
        for (i, &t) in knots.iter().enumerate() {
            let r = 1.0 / (1.0 + 0.5 * t);
            let mut px = (t + phase).cos() * r;
            if clockwise {
                px = -px;
            }
            let py = (t + phase).sin() * r;
            let (px, py) = (px + noise * rng.normal(), py + noise * rng.normal());
            if gone[i] {
                x.extend([t, f64::NAN, f64::NAN]);
            } else {
                x.extend([t, px, py]);
            }
        }
        labels.push(if clockwise { 1.0 } else { 0.0 });
    }
    Ok(SpiralDirections {
        x: Tensor::from_vec(x, (n, length, 3), dev)?.to_dtype(dtype)?,
        knots,
        labels: Tensor::from_vec(labels, n, dev)?.to_dtype(dtype)?,
    })
}

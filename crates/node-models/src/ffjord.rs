//! FFJORD (Grathwohl et al. 2019): a continuous normalizing flow whose field is any MLP, with
//! the trace of its Jacobian computed by forward-mode Jacobian–vector products.
//!
//! The paper's flow ([`crate::cnf`]) has a field whose trace has a closed form. A free-form
//! field has none, and FFJORD takes it from Jacobian–vector products instead:
//!
//! - exactly, as `Σᵢ eᵢᵀ (∂f/∂z) eᵢ`, from `D` products (cheap for the 2-D toy densities);
//! - or by Hutchinson's estimator `εᵀ (∂f/∂z) ε` with one noise vector `ε` per point
//!   (Rademacher or Gaussian, `E[εεᵀ] = I`), held fixed along the solve: one product whatever
//!   `D`, unbiased, so the log-likelihood is unbiased too.
//!
//! FFJORD's code takes `εᵀ ∂f/∂z` by reverse-mode autograd inside the field, so that its
//! adjoint differentiates an autograd graph: second-order autograd, which Candle does not have.
//! Here the products are carried forward through the layers beside the values (`(∂f/∂z) v` is
//! the layers' linear maps applied to `v`, scaled by the activations' slopes), in ordinary
//! tensor operations. The adjoint's vector–Jacobian products then need first-order autograd
//! only, and every [`Gradient`] mode works.
//!
//! The layers are FFJORD's `ConcatSquashLinear`: `(x Wᵀ + b) ⊙ σ(t w_g + b_g) + t w_b`.

use crate::cnf::{
    augment, check_time_and_base, gaussian_log_prob, log_prob_at_base, RegularizedLogProb,
};
use crate::layers::{linear, BlockStats, Gradient};
use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;
use node_adjoint::{odeint_independent_adjoint, ParamBatchField, ParamVectorField};
use node_solvers::{
    differentiable_start, odeint_independent, BatchField, SolveOptions, SolverError, VectorField,
};

pub use crate::layers::Activation;

/// Sizes and times of an [`Ffjord`] flow. The defaults are FFJORD's for its 2-D toy densities:
/// three hidden layers of 64, `tanh`, `t₁ = 0.5`, a standard normal base.
#[derive(Clone, Debug, PartialEq)]
pub struct FfjordConfig {
    /// Dimension `D` of the data.
    pub dim: usize,
    /// Widths of the hidden layers (at least one).
    pub hidden: Vec<usize>,
    /// The activation between layers.
    pub activation: Activation,
    /// End time `t₁` of the flow (it starts at 0): data live at `t₁`, the base density at 0.
    pub t1: f64,
    /// Learn the end time (FFJORD's `train_T`): `t₁ · exp(s)` with a parameter `s` named
    /// `log_t1_scale`, 0 at the start (see [`Ffjord::learn_t1`]).
    pub train_t1: bool,
    /// Standard deviation σ of the base density `N(0, σ²I)`.
    pub base_std: f64,
}

impl Default for FfjordConfig {
    fn default() -> Self {
        Self {
            dim: 2,
            hidden: vec![64, 64, 64],
            activation: Activation::Tanh,
            t1: 0.5,
            train_t1: false,
            base_std: 1.0,
        }
    }
}

impl FfjordConfig {
    /// Checks that there is a hidden layer, every size is positive, and the time and σ are
    /// finite and positive.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            candle_core::bail!("FFJORD: dim must be at least 1");
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            candle_core::bail!(
                "FFJORD: hidden must list at least one layer, each of at least 1 unit, got {:?}",
                self.hidden
            );
        }
        check_time_and_base("FFJORD", self.t1, self.base_std)
    }
}

/// The noise of Hutchinson's trace estimator: any distribution with `E[εεᵀ] = I` gives an
/// unbiased estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noise {
    /// `±1` with equal probability: the smallest variance among such distributions
    /// (`2 Σ_{i≠j} J_ij²` per point, no diagonal term).
    Rademacher,
    /// `N(0, I)`.
    Gaussian,
}

impl Noise {
    /// One noise vector per point: `[batch, dim]`.
    ///
    /// # Errors
    /// Candle's.
    pub fn sample(
        self,
        batch: usize,
        dim: usize,
        rng: &mut Rng,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let n = batch * dim;
        let v: Vec<f64> = match self {
            Noise::Rademacher => (0..n)
                .map(|_| if rng.next_u64() >> 63 == 0 { -1.0 } else { 1.0 })
                .collect(),
            Noise::Gaussian => (0..n).map(|_| rng.normal()).collect(),
        };
        Tensor::from_vec(v, (batch, dim), dev)?.to_dtype(dtype)
    }
}

/// How the trace `tr(∂f/∂z)` is taken along a solve.
#[derive(Clone, Debug)]
pub enum Trace {
    /// Exactly, from `D` Jacobian–vector products.
    Exact,
    /// Hutchinson's estimate `εᵀ (∂f/∂z) ε` with this noise, `[B, D]` (one row per point, the
    /// same for the whole solve; draw it with [`Noise::sample`]).
    Hutchinson(Tensor),
}

/// A vector field `f(z, t)` on points `[B, D]` that gives its Jacobian–vector products:
/// what an [`Ffjord`] flow needs of its field. [`FfjordField`] is FFJORD's; implement this for
/// your own architecture (any layers whose tangents you can carry forward: a linear map sends
/// `v` to `Wv`, an element-wise activation scales it by its slope) and build the flow with
/// [`Ffjord::with_field`]. The trace, Hutchinson's estimator, the regularizers and every
/// gradient mode come with it.
pub trait JvpField: Clone + Send + Sync + 'static {
    /// The data dimension `D`.
    fn dim(&self) -> usize;

    /// `f(z, t)` and the products `(∂f/∂z) vₖ` of `K` tangents per point, differentiable in
    /// `z`, `v` and the parameters by ordinary (first-order) autograd.
    ///
    /// # Shapes
    /// `z: [B, D]`, `v: [K, B, D]` → `([B, D], [K, B, D])`.
    ///
    /// # Errors
    /// The implementation's.
    fn jvp(&self, t: f64, z: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)>;

    /// [`JvpField::jvp`] with each point at its own time, `t: [B]` (the per-sample solves of
    /// [`Ffjord::log_prob_independent`]). The default is an error: a field implements it to
    /// take part in them.
    ///
    /// # Shapes
    /// `t: [B]`, `z: [B, D]`, `v: [K, B, D]` → `([B, D], [K, B, D])`.
    ///
    /// # Errors
    /// The default always; an implementation's own.
    fn jvp_batch(&self, t: &Tensor, z: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let _ = (t, z, v);
        candle_core::bail!(
            "FFJORD: this field has no form with a time per point (JvpField::jvp_batch)"
        )
    }

    /// The trainable parameters, for the adjoint's parameter gradients.
    fn params(&self) -> Vec<Var>;

    /// `f(z, t)` and `tr(∂f/∂z)`, exact or estimated as `trace` says.
    ///
    /// # Shapes
    /// `z: [B, D]` → `([B, D], [B])`.
    ///
    /// # Errors
    /// `z` or the noise of another shape; Candle's.
    fn dynamics(&self, t: f64, z: &Tensor, trace: &Trace) -> Result<(Tensor, Tensor)> {
        let (f, tr, _) = parts(self, t, z, trace, false)?;
        Ok((f, tr))
    }

    /// `f(z, t)`, `tr(∂f/∂z)`, and the integrands of RNODE's regularizers (Finlay et al. 2020):
    /// `‖f‖²` and `‖∂f/∂z‖²_F`. With [`Trace::Exact`] the Frobenius norm is exact (the sum of
    /// the `D` products' squares); with [`Trace::Hutchinson`] it is the unbiased `‖(∂f/∂z)ε‖²`
    /// from the same product as the trace, as in RNODE's code.
    ///
    /// # Shapes
    /// `z: [B, D]` → `([B, D], [B], [B], [B])`.
    ///
    /// # Errors
    /// As [`JvpField::dynamics`].
    fn dynamics_regularized(
        &self,
        t: f64,
        z: &Tensor,
        trace: &Trace,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let (f, tr, frob) = parts(self, t, z, trace, true)?;
        let kinetic = f.sqr()?.sum(1)?;
        Ok((f, tr, kinetic, frob.expect("asked for")))
    }
}

/// `f`, the trace and, when asked for, the squared Frobenius norm of the Jacobian.
fn parts<F: JvpField>(
    field: &F,
    t: f64,
    z: &Tensor,
    trace: &Trace,
    frobenius: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    parts_with(field.dim(), z, trace, frobenius, &|v| field.jvp(t, z, v))
}

/// [`parts`] from a field's products `v ↦ (f, (∂f/∂z) v)` at the points `z`.
fn parts_with(
    d: usize,
    z: &Tensor,
    trace: &Trace,
    frobenius: bool,
    products: &dyn Fn(&Tensor) -> Result<(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    if z.rank() != 2 || z.dim(1)? != d {
        candle_core::bail!("FFJORD: points must be [batch, {d}], got {:?}", z.dims());
    }
    let b = z.dim(0)?;
    let jvp = |v: &Tensor| -> Result<(Tensor, Tensor)> {
        let (f, jv) = products(v)?;
        let k = v.dim(0)?;
        if f.dims() != [b, d] || jv.dims() != [k, b, d] {
            candle_core::bail!(
                "FFJORD: the field's jvp must give [{b}, {d}] and [{k}, {b}, {d}] for \
                 points {:?}, got {:?} and {:?}",
                z.dims(),
                f.dims(),
                jv.dims()
            );
        }
        Ok((f, jv))
    };
    let (f, jv, tr) = match trace {
        Trace::Exact => {
            // The basis vectors as D tangents per point; tr = Σᵢ ((∂f/∂z) eᵢ)ᵢ.
            let eye = Tensor::eye(d, z.dtype(), z.device())?.unsqueeze(1)?;
            let (f, jv) = jvp(&eye.broadcast_as((d, b, d))?)?;
            let tr = jv.broadcast_mul(&eye)?.sum(2)?.sum(0)?;
            (f, jv, tr)
        }
        Trace::Hutchinson(eps) => {
            if eps.dims() != [b, d] {
                candle_core::bail!(
                    "FFJORD: the Hutchinson noise must be [{b}, {d}] for points {:?}, got {:?}",
                    z.dims(),
                    eps.dims()
                );
            }
            let eps = eps.to_dtype(z.dtype())?;
            let (f, jv) = jvp(&eps.unsqueeze(0)?)?;
            let tr = (jv.squeeze(0)? * eps)?.sum(1)?;
            (f, jv, tr)
        }
    };
    let frob = if frobenius {
        Some(jv.sqr()?.sum(2)?.sum(0)?)
    } else {
        None
    };
    Ok((f, tr, frob))
}

/// One `ConcatSquashLinear` layer: `(x Wᵀ + b) ⊙ σ(t w_g + b_g) + t w_b`.
#[derive(Clone, Debug)]
struct ConcatSquash {
    weight: Tensor,
    bias: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor,
    shift: Tensor,
}

impl ConcatSquash {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let [weight, bias] = two(linear(in_dim, out_dim, vb.pp("linear"))?.tensors())?;
        let [gate_weight, gate_bias] = two(linear(1, out_dim, vb.pp("hyper_gate"))?.tensors())?;
        let shift = vb.pp("hyper_bias").get_with_hints(
            (out_dim, 1),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        Ok(Self {
            weight,
            bias,
            gate_weight,
            gate_bias,
            shift,
        })
    }

    /// The layer at time `t` as an affine map: the gated weight `[out, in]` and bias `[out]`.
    fn at(&self, t: f64) -> Result<(Tensor, Tensor)> {
        let gate = node_kernels::sigmoid(
            &(self.gate_weight.squeeze(1)?.affine(t, 0.0)? + &self.gate_bias)?,
        )?;
        let weight = self.weight.broadcast_mul(&gate.unsqueeze(1)?)?;
        let bias = ((&self.bias * &gate)? + self.shift.squeeze(1)?.affine(t, 0.0)?)?;
        Ok((weight, bias))
    }

    /// The layer at each point's time `t: [B]`: `(x Wᵀ + b) ⊙ gate + shift` with the gate and
    /// the shift `[B, out]`.
    fn gates(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = t.reshape((t.elem_count(), 1))?;
        let gate = node_kernels::sigmoid(
            &t.broadcast_mul(&self.gate_weight.t()?)?
                .broadcast_add(&self.gate_bias)?,
        )?;
        let shift = t.broadcast_mul(&self.shift.t()?)?;
        Ok((gate, shift))
    }

    fn tensors(&self) -> [&Tensor; 5] {
        [
            &self.weight,
            &self.bias,
            &self.gate_weight,
            &self.gate_bias,
            &self.shift,
        ]
    }
}

/// The weight and the bias of a layer built with a bias.
fn two(v: Vec<Tensor>) -> Result<[Tensor; 2]> {
    v.try_into()
        .map_err(|_| candle_core::Error::Msg("a linear layer without a bias".into()))
}

/// FFJORD's free-form field `f(z, t)`: `ConcatSquash` layers `D → hidden… → D` with an
/// activation between them, and its Jacobian–vector products.
#[derive(Clone, Debug)]
pub struct FfjordField {
    layers: Vec<ConcatSquash>,
    config: FfjordConfig,
    params: Vec<Var>,
}

impl FfjordField {
    /// A field for `config.dim`-dimensional data with `config.hidden` layers (`layer{i}`
    /// under `vb`, each with `linear`, `hyper_gate` and `hyper_bias`, as FFJORD names them).
    /// Its parameters are `vb`'s `Var`s: build it from a `VarMap`-backed `VarBuilder` to
    /// train it.
    ///
    /// # Errors
    /// An invalid `config`; those of `vb`.
    pub fn new(config: &FfjordConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let mut sizes = vec![config.dim];
        sizes.extend(&config.hidden);
        sizes.push(config.dim);
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| ConcatSquash::new(w[0], w[1], vb.pp(format!("layer{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let params = layers
            .iter()
            .flat_map(|l| l.tensors())
            .map(Var::from_tensor)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            config: config.clone(),
            params,
        })
    }

    /// The sizes and times it was built with.
    pub fn config(&self) -> &FfjordConfig {
        &self.config
    }

    /// `f(z, t)` for a batch of points.
    ///
    /// # Shapes
    /// `z: [B, D]` → `[B, D]`.
    ///
    /// # Errors
    /// `z` of another shape; Candle's.
    pub fn forward(&self, t: f64, z: &Tensor) -> Result<Tensor> {
        self.check(z)?;
        let last = self.layers.len() - 1;
        let mut x = z.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let (w, b) = layer.at(t)?;
            x = node_kernels::linear(&x, &w, Some(&b))?;
            if i < last {
                x = self.config.activation.value_and_slope(&x)?.0;
            }
        }
        Ok(x)
    }
}

impl JvpField for FfjordField {
    fn dim(&self) -> usize {
        self.config.dim
    }

    /// `f(z, t)` and the products in one forward pass (forward-mode differentiation: each
    /// layer maps the tangents by its linear part and scales them by its activation's slope).
    ///
    /// # Errors
    /// `z` or `v` of another shape; Candle's.
    fn jvp(&self, t: f64, z: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check(z)?;
        let b = z.dim(0)?;
        let k = self.tangents(z, v)?;
        let last = self.layers.len() - 1;
        let (mut x, mut dx) = (z.clone(), v.reshape((k * b, self.config.dim))?);
        for (i, layer) in self.layers.iter().enumerate() {
            let (w, bias) = layer.at(t)?;
            let a = node_kernels::linear(&x, &w, Some(&bias))?;
            let da = node_kernels::linear(&dx, &w, None)?;
            if i == last {
                (x, dx) = (a, da);
            } else {
                let out = a.dim(1)?;
                let (h, slope) = self.config.activation.value_and_slope(&a)?;
                dx = da
                    .reshape((k, b, out))?
                    .broadcast_mul(&slope)?
                    .reshape((k * b, out))?;
                x = h;
            }
        }
        Ok((x, dx.reshape((k, b, self.config.dim))?))
    }

    /// [`JvpField::jvp`] with a time per point: each layer `(x Wᵀ + b) ⊙ σ(t w_g + b_g) + t w_b`
    /// with the gate and shift per point (the same map, rounded in another order).
    fn jvp_batch(&self, t: &Tensor, z: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check(z)?;
        let b = z.dim(0)?;
        if t.dims() != [b] {
            candle_core::bail!(
                "FFJORD: times must be [{b}] for points {:?}, got {:?}",
                z.dims(),
                t.dims()
            );
        }
        let k = self.tangents(z, v)?;
        let last = self.layers.len() - 1;
        let (mut x, mut dx) = (z.clone(), v.reshape((k * b, self.config.dim))?);
        for (i, layer) in self.layers.iter().enumerate() {
            let (gate, shift) = layer.gates(t)?;
            let out = gate.dim(1)?;
            let a = (node_kernels::linear(&x, &layer.weight, Some(&layer.bias))? * &gate)?;
            let a = (a + shift)?;
            let da = node_kernels::linear(&dx, &layer.weight, None)?
                .reshape((k, b, out))?
                .broadcast_mul(&gate)?;
            if i == last {
                (x, dx) = (a, da.reshape((k * b, out))?);
            } else {
                let (h, slope) = self.config.activation.value_and_slope(&a)?;
                dx = da.broadcast_mul(&slope)?.reshape((k * b, out))?;
                x = h;
            }
        }
        Ok((x, dx.reshape((k, b, self.config.dim))?))
    }

    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

impl FfjordField {
    /// The number `K` of tangents `v: [K, B, D]` for the points `z: [B, D]`.
    fn tangents(&self, z: &Tensor, v: &Tensor) -> Result<usize> {
        let b = z.dim(0)?;
        match v.dims() {
            &[k, vb, vd] if vb == b && vd == self.config.dim && k > 0 => Ok(k),
            other => candle_core::bail!(
                "FFJORD: tangents must be [K ≥ 1, {b}, {}] for points {:?}, got {other:?}",
                self.config.dim,
                z.dims()
            ),
        }
    }

    fn check(&self, z: &Tensor) -> Result<()> {
        if z.rank() != 2 || z.dim(1)? != self.config.dim {
            candle_core::bail!(
                "FFJORD: points must be [batch, {}], got {:?}",
                self.config.dim,
                z.dims()
            );
        }
        Ok(())
    }
}

/// The field the solver sees for one solve: `[z, Δ] ↦ [f, −tr]`, or with the regularizers
/// `[z, Δ, E, J] ↦ [f, −tr, ‖f‖², ‖∂f/∂z‖²_F]`. The Hutchinson noise is part of it, so that
/// the forward solve and the adjoint's reverse solve use the same `ε`.
#[derive(Clone)]
struct Augmented<F> {
    field: F,
    trace: Trace,
    regularized: bool,
}

impl<F: JvpField> VectorField for Augmented<F> {
    fn eval(&self, t: f64, s: &Tensor) -> Result<Tensor> {
        let d = self.field.dim();
        let cols = d + if self.regularized { 3 } else { 1 };
        if s.rank() != 2 || s.dim(1)? != cols {
            candle_core::bail!(
                "FFJORD: the augmented state must be [batch, {cols}], got {:?}",
                s.dims()
            );
        }
        let z = s.narrow(1, 0, d)?;
        if self.regularized {
            let (f, tr, kinetic, frob) = self.field.dynamics_regularized(t, &z, &self.trace)?;
            let rates = Tensor::stack(&[tr.neg()?, kinetic, frob], 1)?;
            Tensor::cat(&[f, rates], 1)
        } else {
            let (f, tr) = self.field.dynamics(t, &z, &self.trace)?;
            Tensor::cat(&[f, tr.neg()?.unsqueeze(1)?], 1)
        }
    }
}

impl<F: JvpField> ParamVectorField for Augmented<F> {
    fn params(&self) -> Vec<Var> {
        self.field.params()
    }
}

/// [`Augmented`] with a time per point, for the per-sample solves: `[z, Δ] ↦ [f, −tr]`.
#[derive(Clone)]
struct AugmentedBatch<F> {
    field: F,
    trace: Trace,
}

impl<F: JvpField> BatchField for AugmentedBatch<F> {
    fn eval(&self, t: &Tensor, s: &Tensor) -> Result<Tensor> {
        let d = self.field.dim();
        if s.rank() != 2 || s.dim(1)? != d + 1 {
            candle_core::bail!(
                "FFJORD: the augmented state must be [batch, {}], got {:?}",
                d + 1,
                s.dims()
            );
        }
        let z = s.narrow(1, 0, d)?;
        let (f, tr, _) = parts_with(d, &z, &self.trace, false, &|v| {
            self.field.jvp_batch(t, &z, v)
        })?;
        Tensor::cat(&[f, tr.neg()?.unsqueeze(1)?], 1)
    }
}

impl<F: JvpField> ParamBatchField for AugmentedBatch<F> {
    fn params(&self) -> Vec<Var> {
        self.field.params()
    }
}

/// An FFJORD flow from `N(0, σ²I)` at `t = 0` to the data at `t = t₁`.
///
/// # Example
/// One maximum-likelihood step with Hutchinson's estimator, by the adjoint, then samples:
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{Optimizer, VarBuilder, VarMap};
/// use node_adjoint::AdjointOptions;
/// use node_models::cnf::two_circles;
/// use node_models::ffjord::{Ffjord, FfjordConfig, Noise, Trace};
/// use node_models::{init, Adam, AdamConfig, Gradient, Rng};
/// use node_solvers::SolveOptions;
/// # fn main() -> candle_core::Result<()> {
/// let (dev, varmap) = (Device::Cpu, VarMap::new());
/// let cfg = FfjordConfig { hidden: vec![16, 16], ..FfjordConfig::default() };
/// let opts = SolveOptions::default().tolerances(1e-4, 1e-4);
/// let gradient = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-4, 1e-4));
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let flow = Ffjord::new(&cfg, opts, gradient, vb)?;
/// let mut rng = Rng::new(0);
/// init::pytorch_default(&varmap, &mut rng)?;
/// let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), AdamConfig::default())?;
///
/// let x = two_circles(64, 0.06, &mut rng, DType::F32, &dev)?;
/// let eps = Noise::Rademacher.sample(64, 2, &mut rng, DType::F32, &dev)?;
/// let (log_p, _stats) = flow.log_prob_with(&x, &Trace::Hutchinson(eps))?;
/// opt.backward_step(&log_p.mean_all()?.neg()?)?;
///
/// let z = rng.normal_tensor(&[8, 2], 0.0, cfg.base_std, DType::F32, &dev)?;
/// let (samples, log_p) = flow.sample_from(&z)?; // exact log p
/// assert_eq!((samples.dims(), log_p.dims()), (&[8, 2][..], &[8][..]));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Ffjord<F = FfjordField> {
    field: F,
    t1: f64,
    /// `s` of a learned end time `t₁ · exp(s)`.
    log_t1_scale: Option<Var>,
    base_std: f64,
    opts: SolveOptions,
    gradient: Gradient,
}

impl Ffjord<FfjordField> {
    /// A flow of the given sizes, solved with `opts` (FFJORD uses dopri5 at `rtol = atol =
    /// 1e-5`) and differentiated by `gradient`.
    ///
    /// # Errors
    /// An invalid `config` ([`FfjordConfig::validate`]) or invalid `opts`; those of `vb`.
    pub fn new(
        config: &FfjordConfig,
        opts: SolveOptions,
        gradient: Gradient,
        vb: VarBuilder,
    ) -> Result<Self> {
        let field = FfjordField::new(config, vb.clone())?;
        let flow = Self::with_field(field, config.t1, config.base_std, opts, gradient)?;
        if config.train_t1 {
            flow.learn_t1(vb)
        } else {
            Ok(flow)
        }
    }

    /// The sizes and times.
    pub fn config(&self) -> &FfjordConfig {
        self.field.config()
    }
}

impl<F: JvpField> Ffjord<F> {
    /// A flow with your own field from `N(0, base_std² I)` at 0 to the data at `t1`.
    ///
    /// # Errors
    /// `t1` or `base_std` not finite and positive; invalid `opts`.
    pub fn with_field(
        field: F,
        t1: f64,
        base_std: f64,
        opts: SolveOptions,
        gradient: Gradient,
    ) -> Result<Self> {
        opts.validate()?;
        check_time_and_base("FFJORD", t1, base_std)?;
        Ok(Self {
            field,
            t1,
            log_t1_scale: None,
            base_std,
            opts,
            gradient,
        })
    }

    /// Learns the end time, as FFJORD's `train_T`: it becomes `t₁ · exp(s)` with a scalar
    /// parameter `s` named `log_t1_scale` under `vb` (0 when created, and 0 after
    /// [`crate::init::pytorch_default`], so the flow starts at `t₁`). `log p(x)` gets its
    /// gradient to `s`, in every gradient mode, through [`node_solvers::differentiable_start`]:
    /// the solve toward the base starts at the learned time. Sampling uses its current value.
    ///
    /// # Errors
    /// Those of `vb`.
    pub fn learn_t1(mut self, vb: VarBuilder) -> Result<Self> {
        let s = vb.get_with_hints((), "log_t1_scale", candle_nn::Init::Const(0.0))?;
        self.log_t1_scale = Some(Var::from_tensor(&s)?);
        Ok(self)
    }

    /// The vector field.
    pub fn field(&self) -> &F {
        &self.field
    }

    /// The end time `t₁`: its current value when it is learned.
    ///
    /// # Errors
    /// Candle's, reading a learned time.
    pub fn t1(&self) -> Result<f64> {
        match self.end_time()? {
            Some(t) => t.to_dtype(DType::F64)?.to_scalar::<f64>(),
            None => Ok(self.t1),
        }
    }

    /// A learned end time `t₁ · exp(s)` as a tensor `[]`, differentiable in `s`.
    fn end_time(&self) -> Result<Option<Tensor>> {
        self.log_t1_scale
            .as_ref()
            .map(|s| s.as_tensor().exp()?.affine(self.t1, 0.0))
            .transpose()
    }

    /// The base density's standard deviation σ.
    pub fn base_std(&self) -> f64 {
        self.base_std
    }

    /// `log N(z; 0, σ²I)` per point.
    ///
    /// # Shapes
    /// `z: [B, D]` → `[B]`.
    ///
    /// # Errors
    /// Candle's.
    pub fn base_log_prob(&self, z: &Tensor) -> Result<Tensor> {
        gaussian_log_prob(z, self.base_std)
    }

    /// `log p(x)` per point with the exact trace, by solving the flow backwards from `x` at
    /// `t₁` to 0.
    ///
    /// # Shapes
    /// `x: [B, D]` → `[B]`.
    ///
    /// # Errors
    /// `x` of another shape; the solver's typed errors.
    pub fn log_prob(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.log_prob_with(x, &Trace::Exact)?.0)
    }

    /// `log p(x)` per point with the trace taken as `trace` says (with Hutchinson's estimator
    /// an unbiased estimate of it), and the solve's counts.
    ///
    /// # Shapes
    /// `x: [B, D]`, the noise `[B, D]` → `[B]`.
    ///
    /// # Errors
    /// As [`Ffjord::log_prob`], and a noise of another shape.
    pub fn log_prob_with(&self, x: &Tensor, trace: &Trace) -> Result<(Tensor, BlockStats)> {
        let (s0, stats) = self.solve(x, trace, false, true)?;
        Ok((
            log_prob_at_base(&s0, self.field.dim(), self.base_std)?,
            stats,
        ))
    }

    /// `log p(x)` per point as [`Ffjord::log_prob_with`], each point solved as a problem of
    /// its own ([`node_solvers::odeint_independent`]: its own steps and error control), so
    /// that its value does not depend on the other points of the batch (with one solve for
    /// the batch it does: the steps follow the error over every point). Differentiated by
    /// backprop through the steps ([`Gradient::Backprop`]) or by the adjoint
    /// ([`Gradient::Adjoint`], [`node_adjoint::odeint_independent_adjoint`]; its method,
    /// tolerances, step size and step limit apply). The field must implement
    /// [`JvpField::jvp_batch`] ([`FfjordField`] does).
    ///
    /// # Shapes
    /// `x: [B, D]`, the noise `[B, D]` → `[B]`.
    ///
    /// # Errors
    /// As [`Ffjord::log_prob_with`]; a learned end time, another gradient mode, an implicit
    /// or fixed-step method ([`SolverError::InvalidOptions`]).
    pub fn log_prob_independent(&self, x: &Tensor, trace: &Trace) -> Result<(Tensor, BlockStats)> {
        if self.log_t1_scale.is_some() {
            return Err(SolverError::InvalidOptions(
                "FFJORD: per-point solves take a fixed end time, not a learned one".into(),
            )
            .into());
        }
        let s = augment(x, self.field.dim(), 1, "FFJORD")?;
        let field = AugmentedBatch {
            field: self.field.clone(),
            trace: trace.clone(),
        };
        let ts = [vec![self.t1, 0.0]];
        let (ys, stats) = match &self.gradient {
            Gradient::Backprop => {
                let sol = odeint_independent(&field, &s, &ts, &self.opts)?;
                let stats = BlockStats {
                    nfe_forward: sol.nfe,
                    explicit_nfe_forward: 0,
                    adjoint: None,
                };
                (sol.ys, stats)
            }
            Gradient::Adjoint(a) => {
                let reverse = a.reverse_solve_options(&self.opts, self.t1);
                let sol = odeint_independent_adjoint(&field, &s, &ts, &self.opts, &reverse)?;
                let stats = BlockStats {
                    nfe_forward: sol.stats.forward().nfe,
                    explicit_nfe_forward: 0,
                    adjoint: Some(sol.stats),
                };
                (sol.ys, stats)
            }
            other => {
                return Err(SolverError::InvalidOptions(format!(
                    "FFJORD: per-point solves are differentiated by backprop or the adjoint, not {other:?}"
                ))
                .into())
            }
        };
        Ok((
            log_prob_at_base(&ys.get(1)?, self.field.dim(), self.base_std)?,
            stats,
        ))
    }

    /// `log p(x)` per point with RNODE's regularizers integrated along the same solve, as
    /// [`crate::cnf::Cnf::log_prob_regularized`]; the Frobenius norm is exact with
    /// [`Trace::Exact`] and estimated from the same product as the trace with
    /// [`Trace::Hutchinson`].
    ///
    /// # Shapes
    /// `x: [B, D]` → each of `log_p`, `kinetic`, `jacobian`: `[B]`.
    ///
    /// # Errors
    /// As [`Ffjord::log_prob_with`].
    pub fn log_prob_regularized(&self, x: &Tensor, trace: &Trace) -> Result<RegularizedLogProb> {
        let (s0, stats) = self.solve(x, trace, true, true)?;
        RegularizedLogProb::at_base(&s0, self.field.dim(), self.base_std, stats)
    }

    /// Pushes base points `z` (at `t = 0`) through the flow: the samples `x = z(t₁)` and their
    /// exact `log p(x)`.
    ///
    /// # Shapes
    /// `z: [B, D]` → `([B, D], [B])`.
    ///
    /// # Errors
    /// `z` of another shape; the solver's typed errors.
    pub fn sample_from(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let (s1, _) = self.solve(z, &Trace::Exact, false, false)?;
        let d = self.field.dim();
        let log_p = (self.base_log_prob(z)? + s1.narrow(1, d, 1)?.squeeze(1)?)?;
        Ok((s1.narrow(1, 0, d)?, log_p))
    }

    /// Solves from `x` at `t₁` down to 0 (`toward_base`) or from 0 up to `t₁`, with the
    /// integrals beside it.
    fn solve(
        &self,
        x: &Tensor,
        trace: &Trace,
        regularized: bool,
        toward_base: bool,
    ) -> Result<(Tensor, BlockStats)> {
        let s = augment(
            x,
            self.field.dim(),
            if regularized { 3 } else { 1 },
            "FFJORD",
        )?;
        let field = Augmented {
            field: self.field.clone(),
            trace: trace.clone(),
            regularized,
        };
        let (s, ts) = match (self.end_time()?, toward_base) {
            (None, true) => (s, [self.t1, 0.0]),
            (None, false) => (s, [0.0, self.t1]),
            (Some(t1), true) => {
                let (t1, s) = differentiable_start(&field, &t1.to_dtype(DType::F64)?, &s)?;
                (s, [t1, 0.0])
            }
            (Some(t1), false) => (s, [0.0, t1.to_dtype(DType::F64)?.to_scalar::<f64>()?]),
        };
        let (ys, stats) = self.gradient.solve(&field, &s, &ts, &self.opts)?;
        Ok((ys.get(1)?, stats))
    }
}

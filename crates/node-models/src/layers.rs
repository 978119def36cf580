//! Building blocks of the paper's MNIST models, reusable in any Candle network: an ODE block
//! around any parameterised vector field, the time-concatenating convolution, the ODE-Net
//! vector field, and the residual block it replaces.

use crate::galerkin::{Basis, GalerkinConv2d};
use candle_core::{Result, Tensor, Var};
use candle_nn::{Module, VarBuilder};
use node_adjoint::{
    has_tensor_params, odeint_adjoint, odeint_checkpointed, odeint_direct,
    odeint_reversible_adjoint, AdjointOptions, AdjointStats, CheckpointOptions, ParamVectorField,
    ReversibleOptions,
};
use node_solvers::{odeint, SolveOptions, VectorField};

/// Group normalization over `[B, C, *]` with per-channel scale and shift, on
/// [`node_kernels::group_norm()`] (one fused kernel forward and backward on the CPU).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `groups` groups over the channels of `weight` and `bias` (both `[C]`).
    ///
    /// # Errors
    /// `C` not divisible by `groups`, or `weight` and `bias` of different shapes.
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let c = weight.elem_count();
        if groups == 0 || !c.is_multiple_of(groups) || bias.dims() != weight.dims() {
            candle_core::bail!(
                "GroupNorm: weight {:?} and bias {:?} do not make {groups} groups",
                weight.dims(),
                bias.dims()
            );
        }
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }
}

impl GroupNorm {
    /// `relu(self.forward(x))` as one fused op ([`node_kernels::group_norm_relu`]).
    ///
    /// # Errors
    /// As [`Module::forward`]: shape and dtype mismatches.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        node_kernels::group_norm_relu(x, self.groups, &self.weight, &self.bias, self.eps)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        node_kernels::group_norm(x, self.groups, &self.weight, &self.bias, self.eps)
    }
}

/// `GroupNorm(norm_groups(dim), dim)`, ε = 1e-5: torchdiffeq's `norm`
/// (`GroupNorm(min(32, dim), dim)`) wherever that is defined.
pub fn norm(dim: usize, vb: VarBuilder) -> Result<GroupNorm> {
    let w = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
    let b = vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?;
    GroupNorm::new(w, b, norm_groups(dim), 1e-5)
}

/// The groups of [`norm`] over `dim` channels: the most, up to 32, that divide them. That is
/// torchdiffeq's `min(32, dim)` when `dim` is at most 32 or a multiple of 32; for the other
/// channel counts, where `GroupNorm(32, dim)` is not defined (an augmented ODE-Net's `64 + k`),
/// groups of equal size. 0 for 0 channels.
pub fn norm_groups(dim: usize) -> usize {
    (1..=dim.min(32))
        .rev()
        .find(|g| dim.is_multiple_of(*g))
        .unwrap_or(0)
}

/// A 2-D convolution (square kernel, optional bias) on [`node_kernels::conv2d`]: on the CPU
/// matrix products over blocks of whole images (hundreds of rows each), forward and backward.
///
/// # Shapes
/// `x: [B, cin, H, W]` → `[B, cout, H', W']`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    /// A convolution with the given `[cout, cin, k, k]` weight and `[cout]` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>, padding: usize, stride: usize) -> Self {
        Self {
            weight,
            bias,
            padding,
            stride,
        }
    }

    /// The weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => {
                node_kernels::conv2d_bias(x, &self.weight, b, self.padding, self.stride, 1, 1)
            }
            None => node_kernels::conv2d(x, &self.weight, self.padding, self.stride, 1, 1),
        }
    }
}

/// The activation between the layers of an MLP ([`Mlp`], [`crate::FfjordField`],
/// [`crate::cde::CdeMlp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `tanh`, slope `1 − tanh²`.
    Tanh,
    /// `ln(1 + eˣ)`, slope `σ(x)`.
    Softplus,
    /// `max(x, 0)`, slope 1 above 0 and 0 below. Not differentiable at 0: a field built
    /// with it is only Lipschitz, which slows an adaptive solver's convergence and that of
    /// gradient checks by finite differences.
    Relu,
    /// LipSwish, `0.909 · x · σ(x)` (Chen et al. 2019, *Residual Flows*): SiLU scaled to
    /// Lipschitz constant 1, smooth. The SDE-GAN's activation ([`crate::sde_gan`]), where it
    /// helps bound the discriminator's Lipschitz constant.
    LipSwish,
}

/// LipSwish's scale: `1 / max |d(x σ(x))/dx| ≈ 1 / 1.0998`.
const LIPSWISH: f64 = 0.909;

impl Activation {
    /// The activation of `a`.
    ///
    /// # Errors
    /// Candle's.
    pub fn apply(self, a: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Tanh => node_kernels::tanh(a),
            Activation::Softplus => node_kernels::softplus(a),
            Activation::Relu => node_kernels::relu(a),
            Activation::LipSwish => (a * node_kernels::sigmoid(a)?)?.affine(LIPSWISH, 0.0),
        }
    }

    /// The activation and its slope at `a`.
    pub(crate) fn value_and_slope(self, a: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            Activation::Tanh => {
                let h = node_kernels::tanh(a)?;
                let slope = h.sqr()?.affine(-1.0, 1.0)?;
                Ok((h, slope))
            }
            Activation::Softplus => Ok((node_kernels::softplus(a)?, node_kernels::sigmoid(a)?)),
            Activation::Relu => Ok((node_kernels::relu(a)?, a.gt(0.0)?.to_dtype(a.dtype())?)),
            Activation::LipSwish => {
                // d(xσ)/dx = σ + xσ(1 − σ) = σ(1 + x(1 − σ)).
                let s = node_kernels::sigmoid(a)?;
                let value = (a * &s)?.affine(LIPSWISH, 0.0)?;
                let slope = (&s * (a * s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
                Ok((value, slope.affine(LIPSWISH, 0.0)?))
            }
        }
    }
}

/// A fully connected layer, `x · Wᵀ + b`, on [`node_kernels::linear()`] (direct kernels for
/// small products, forward and backward).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a `[out, in]` weight and an optional `[out]` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight and, if there is one, the bias.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut v = vec![self.weight.clone()];
        v.extend(self.bias.clone());
        v
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        node_kernels::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// A fully connected network `in → width → … → width → out`: `depth` hidden layers with
/// `activation` after each, and a final `tanh` or none. The CDE field ([`crate::cde::CdeMlp`])
/// and the SDE-GAN's networks ([`crate::sde_gan`]) are built on it.
#[derive(Clone, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    activation: Activation,
    tanh: bool,
}

impl Mlp {
    /// The network, parameters under `vb` (`layer0`, `layer1`, …).
    ///
    /// # Errors
    /// Those of `vb`.
    pub fn new(
        inputs: usize,
        outputs: usize,
        width: usize,
        depth: usize,
        activation: Activation,
        tanh: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut dims = vec![inputs];
        dims.extend(std::iter::repeat_n(width, depth));
        dims.push(outputs);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], vb.pp(format!("layer{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            activation,
            tanh,
        })
    }

    /// The layers, first to last.
    pub fn layers(&self) -> &[Linear] {
        &self.layers
    }

    /// The `Var`s of the layers' weights and biases, in order.
    ///
    /// # Errors
    /// Candle errors.
    pub fn vars(&self) -> Result<Vec<Var>> {
        vars_of(&self.layers.iter().collect::<Vec<_>>())
    }
}

impl Mlp {
    /// A scalar network's output `y` (`[B, 1]`) at `x` (`[B, inputs]`) and its gradient
    /// `∂y/∂x` (`[B, inputs]`), by the chain rule in tensor ops: autograd differentiates the
    /// gradient again (a Hamiltonian network's field, [`crate::hnn`]).
    ///
    /// # Errors
    /// A network with more than one output or a final `tanh`; Candle errors.
    pub fn value_and_input_gradient(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (h, g) = self.chain(x)?;
        Ok((self.layers[self.layers.len() - 1].forward(&h)?, g))
    }

    /// [`Mlp::value_and_input_gradient`]'s gradient alone (the top layer is not applied).
    ///
    /// # Errors
    /// As [`Mlp::value_and_input_gradient`].
    pub fn input_gradient(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.chain(x)?.1)
    }

    /// The last hidden layer's activations and `∂y/∂x`.
    fn chain(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let last = self.layers.len() - 1;
        let top = &self.layers[last].weight;
        if self.tanh || top.dim(0)? != 1 {
            candle_core::bail!(
                "an input gradient needs one output and no final tanh, got {} outputs{}",
                top.dim(0)?,
                if self.tanh { " and a tanh" } else { "" }
            );
        }
        let mut slopes = Vec::with_capacity(last);
        let mut h = x.clone();
        for layer in &self.layers[..last] {
            let (v, slope) = self.activation.value_and_slope(&layer.forward(&h)?)?;
            slopes.push(slope);
            h = v;
        }
        // ∂y/∂h_(last−1) is the top weight's row; back through each layer: the slope, then
        // the weight (`g · W`, as a `linear` with `Wᵀ`).
        let mut g = top.broadcast_as((x.dim(0)?, top.dim(1)?))?;
        for i in (0..last).rev() {
            let w_t = self.layers[i].weight.t()?;
            g = node_kernels::linear(&(g * &slopes[i])?, &w_t, None)?;
        }
        Ok((h, g))
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let last = self.layers.len() - 1;
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = self.activation.apply(&h)?;
            } else if self.tanh {
                h = node_kernels::tanh(&h)?;
            }
        }
        Ok(h)
    }
}

/// The `Var`s of `layers`' weights and biases, in order: the parameter list of a
/// [`ParamVectorField`] built from them (Candle `Var`s built from `VarMap` tensors share their
/// storage).
pub(crate) fn vars_of(layers: &[&Linear]) -> Result<Vec<Var>> {
    layers
        .iter()
        .flat_map(|l| l.tensors())
        .map(|t| Var::from_tensor(&t))
        .collect()
}

/// `in_dim → out_dim` with a bias, the parameters named and initialised as
/// `candle_nn::linear` does (`weight`, `bias`).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bound = 1.0 / (in_dim as f64).sqrt();
    let b = vb.get_with_hints(
        out_dim,
        "bias",
        candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Linear::new(w, Some(b)))
}

/// A 2-D convolution with a square kernel, initialised as PyTorch's `Conv2d`.
pub fn conv2d(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let bound = 1.0 / ((cin * k * k) as f64).sqrt();
    let init = candle_nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let w = vb.get_with_hints((cout, cin, k, k), "weight", init)?;
    let b = if bias {
        Some(vb.get_with_hints(cout, "bias", init)?)
    } else {
        None
    };
    Ok(Conv2d::new(w, b, padding, stride))
}

/// A convolution that sees the time as an extra input channel: `conv([t·1, x])`.
///
/// # Shapes
/// `x: [B, cin, H, W]` → `[B, cout, H', W']`.
#[derive(Clone, Debug)]
pub struct ConcatConv2d {
    conv: Conv2d,
}

impl ConcatConv2d {
    /// A `(cin + 1) → cout` convolution with bias.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv: conv2d(cin + 1, cout, k, stride, padding, true, vb)?,
        })
    }

    /// Applies the convolution at time `t`, on [`node_kernels::conv2d_time`]: the time channel
    /// is written while the input is unfolded, not concatenated to it.
    pub fn forward(&self, t: f64, x: &Tensor) -> Result<Tensor> {
        let c = &self.conv;
        node_kernels::conv2d_time(x, t, &c.weight, c.bias.as_ref(), c.padding, c.stride, 1)
    }

    /// The weight and bias.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut v = vec![self.conv.weight().clone()];
        v.extend(self.conv.bias().cloned());
        v
    }
}

/// A pre-activation residual block without bias (torchdiffeq's `ResBlock`):
/// `x + conv(relu(norm(conv(relu(norm(x))))))`.
#[derive(Clone, Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
}

impl ResBlock {
    /// A `dim`-channel block.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: norm(dim, vb.pp("norm1"))?,
            conv1: conv2d(dim, dim, 3, 1, 1, false, vb.pp("conv1"))?,
            norm2: norm(dim, vb.pp("norm2"))?,
            conv2: conv2d(dim, dim, 3, 1, 1, false, vb.pp("conv2"))?,
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out = self.conv1.forward(&self.norm1.forward_relu(x)?)?;
        let out = self.conv2.forward(&self.norm2.forward_relu(&out)?)?;
        out + x
    }
}

/// How the ODE-Net field's convolutions depend on the depth `t`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum TimeDependence {
    /// The paper's: `t` as an extra input channel ([`ConcatConv2d`]).
    #[default]
    Concat,
    /// Kernels and biases expanded on a basis of functions of `t` ([`GalerkinConv2d`],
    /// Massaroli et al. 2020): `K` times the convolutions' parameters for `K` functions.
    Galerkin(Basis),
}

#[derive(Clone, Debug)]
enum TimeConv {
    Concat(ConcatConv2d),
    Galerkin(GalerkinConv2d),
}

impl TimeConv {
    fn new(dim: usize, time: TimeDependence, vb: VarBuilder) -> Result<Self> {
        Ok(match time {
            TimeDependence::Concat => TimeConv::Concat(ConcatConv2d::new(dim, dim, 3, 1, 1, vb)?),
            TimeDependence::Galerkin(basis) => {
                TimeConv::Galerkin(GalerkinConv2d::new(dim, dim, 3, 1, 1, basis, vb)?)
            }
        })
    }

    fn forward(&self, t: f64, x: &Tensor) -> Result<Tensor> {
        match self {
            TimeConv::Concat(c) => c.forward(t, x),
            TimeConv::Galerkin(c) => c.forward(t, x),
        }
    }

    fn tensors(&self) -> Vec<Tensor> {
        match self {
            TimeConv::Concat(c) => c.tensors(),
            TimeConv::Galerkin(c) => c.tensors(),
        }
    }
}

/// The ODE-Net vector field: `GN – ReLU – Conv(t) – GN – ReLU – Conv(t) – GN`, the
/// convolutions 3×3 and depth-dependent as [`TimeDependence`] says (the paper's
/// [`ConcatConv2d`] by default).
#[derive(Clone, Debug)]
pub struct OdeFunc {
    norm1: GroupNorm,
    conv1: TimeConv,
    norm2: GroupNorm,
    conv2: TimeConv,
    norm3: GroupNorm,
    time: TimeDependence,
    params: Vec<Var>,
}

impl OdeFunc {
    /// A `dim`-channel field with the paper's [`ConcatConv2d`]s. Train it from a
    /// `VarMap`-backed `VarBuilder`: its parameters are the map's `Var`s.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_time(dim, TimeDependence::Concat, vb)
    }

    /// A `dim`-channel field whose convolutions depend on `t` as `time` says.
    ///
    /// # Errors
    /// A basis [`GalerkinConv2d::new`] refuses; those of `vb`.
    pub fn with_time(dim: usize, time: TimeDependence, vb: VarBuilder) -> Result<Self> {
        let mut params = vec![];
        let mut norm_p = |name: &str| -> Result<GroupNorm> {
            let vb = vb.pp(name);
            let w = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
            let b = vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?;
            params.push(w.clone());
            params.push(b.clone());
            GroupNorm::new(w, b, norm_groups(dim), 1e-5)
        };
        let norm1 = norm_p("norm1")?;
        let norm2 = norm_p("norm2")?;
        let norm3 = norm_p("norm3")?;
        let conv1 = TimeConv::new(dim, time, vb.pp("conv1"))?;
        let conv2 = TimeConv::new(dim, time, vb.pp("conv2"))?;
        params.extend(conv1.tensors());
        params.extend(conv2.tensors());
        let params = params
            .iter()
            .map(Var::from_tensor)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
            norm3,
            time,
            params,
        })
    }

    /// How the convolutions depend on `t`.
    pub fn time_dependence(&self) -> TimeDependence {
        self.time
    }
}

impl VectorField for OdeFunc {
    fn eval(&self, t: f64, x: &Tensor) -> Result<Tensor> {
        let out = self.norm1.forward_relu(x)?;
        let out = self.conv1.forward(t, &out)?;
        let out = self.norm2.forward_relu(&out)?;
        let out = self.conv2.forward(t, &out)?;
        self.norm3.forward(&out)
    }
}

impl ParamVectorField for OdeFunc {
    fn params(&self) -> Vec<Var> {
        self.params.clone()
    }
}

/// How an ODE solve in a model ([`OdeBlock`], the latent ODE, the CNF) is differentiated.
#[derive(Clone, Debug)]
pub enum Gradient {
    /// The adjoint method: constant memory in the number of steps; the gradient of the
    /// continuous problem, from a reverse-time solve.
    Adjoint(AdjointOptions),
    /// Backprop through the solver's operations (RK-Net when the solver has fixed steps):
    /// the exact gradient of the discrete solve, holding the graph of every step. For a field
    /// with [`node_adjoint::TensorParam`]s, as the op [`node_adjoint::odeint_direct`], which
    /// hands their gradients to their sources.
    Backprop,
    /// Checkpointed backprop ([`node_adjoint::odeint_checkpointed`]): backprop's exact
    /// gradient with memory bounded by the stored states and one replayed stretch of steps,
    /// for about one more forward pass.
    Checkpoint(CheckpointOptions),
    /// Reversible backprop ([`node_adjoint::odeint_reversible_adjoint`]): the solver's
    /// method made algebraically reversible, its steps walked back for backprop's exact
    /// gradient (of that reversible solve) with memory that does not grow with the steps;
    /// about twice the forward evaluations. Explicit methods only.
    Reversible(ReversibleOptions),
}

impl Gradient {
    /// Solves `dy/dt = f(t, y)` from `y(ts[0]) = y0` with `opts`, differentiated as `self`
    /// says; returns the states at `ts` (`[ts.len(), ...y0.shape]`) and the solve's counts.
    ///
    /// # Errors
    /// The solver's typed errors.
    pub fn solve<F>(
        &self,
        f: &F,
        y0: &Tensor,
        ts: &[f64],
        opts: &SolveOptions,
    ) -> Result<(Tensor, BlockStats)>
    where
        F: ParamVectorField + Clone + Send + Sync + 'static,
    {
        let sol = match self {
            // A field with `TensorParam`s needs backprop as an op to reach their sources.
            Gradient::Backprop if has_tensor_params(f) => odeint_direct(f, y0, ts, opts)?,
            Gradient::Backprop => {
                let sol = odeint(f, y0, ts, opts)?;
                let stats = BlockStats {
                    nfe_forward: sol.stats.nfe,
                    explicit_nfe_forward: sol.stats.explicit_nfe,
                    adjoint: None,
                };
                return Ok((sol.ys, stats));
            }
            Gradient::Adjoint(a) => odeint_adjoint(f, y0, ts, opts, a)?,
            Gradient::Checkpoint(c) => odeint_checkpointed(f, y0, ts, opts, c)?,
            Gradient::Reversible(r) => odeint_reversible_adjoint(f, y0, ts, opts, r)?,
        };
        let forward = sol.stats.forward();
        let stats = BlockStats {
            nfe_forward: forward.nfe,
            explicit_nfe_forward: forward.explicit_nfe,
            adjoint: Some(sol.stats),
        };
        Ok((sol.ys, stats))
    }
}

/// Evaluation counts of one forward pass of an [`OdeBlock`].
#[derive(Clone, Debug, Default)]
pub struct BlockStats {
    /// Evaluations of the field in the forward solve (of its implicit part, for a split field:
    /// [`node_solvers::SolverStats::nfe`]).
    pub nfe_forward: usize,
    /// Evaluations of a split field's explicit part in the forward solve (0 for a field that
    /// is not split).
    pub explicit_nfe_forward: usize,
    /// For the adjoint, checkpointing and reversible backprop, a handle whose backward counts
    /// fill in after
    /// `backward()`.
    pub adjoint: Option<AdjointStats>,
}

impl BlockStats {
    /// Evaluations in the backward pass: the adjoint's reverse solve, or checkpointing's
    /// replayed steps (0 for backprop, whose backward runs through the forward graph instead).
    pub fn nfe_backward(&self) -> usize {
        self.adjoint.as_ref().map_or(0, |a| a.backward().nfe)
    }
}

/// `x ↦ y(t1)` for `dy/dt = f(t, y)`, `y(0) = x`: an ODE in place of a stack of layers.
#[derive(Clone, Debug)]
pub struct OdeBlock<F> {
    /// The vector field.
    pub field: F,
    /// End time (start is 0).
    pub t1: f64,
    /// Solver options.
    pub opts: SolveOptions,
    /// Gradient mode.
    pub gradient: Gradient,
    /// Channels of zeros added to the input along dimension 1 before the solve and kept in the
    /// output: an augmented neural ODE (Dupont, Doucet & Teh 2019; torchdyn's `Augmenter`),
    /// whose field acts on `C + augment` channels. 0 (the default): none.
    pub augment: usize,
}

impl<F: ParamVectorField + Clone + Send + Sync + 'static> OdeBlock<F> {
    /// A block integrating `field` over `[0, t1]`.
    pub fn new(field: F, t1: f64, opts: SolveOptions, gradient: Gradient) -> Self {
        Self {
            field,
            t1,
            opts,
            gradient,
            augment: 0,
        }
    }

    /// The block with `k` channels of zeros added to its input ([`OdeBlock::augment`]).
    pub fn augmented(mut self, k: usize) -> Self {
        self.augment = k;
        self
    }

    /// Solves from `x` and returns `y(t1)` with the solve's counts.
    ///
    /// # Shapes
    /// `x`: any shape the field accepts; the result has the same shape.
    ///
    /// # Errors
    /// The solver's typed errors (e.g. too many steps when the dynamics become stiff).
    pub fn forward_with_stats(&self, x: &Tensor) -> Result<(Tensor, BlockStats)> {
        self.solve_between(x, 0.0, self.t1)
    }

    /// The block's initial state for input `x`: `x` itself, or with [`OdeBlock::augment`]
    /// channels of zeros after its own (dimension 1).
    ///
    /// # Errors
    /// `x` of rank below 2 when augmented.
    pub fn augment_input(&self, x: &Tensor) -> Result<Tensor> {
        match self.augment {
            0 => Ok(x.clone()),
            k => {
                if x.rank() < 2 {
                    candle_core::bail!(
                        "OdeBlock: an augmented block pads dimension 1, but the input is {:?}",
                        x.dims()
                    );
                }
                let mut dims = x.dims().to_vec();
                dims[1] = k;
                let zeros = Tensor::zeros(dims, x.dtype(), x.device())?;
                Tensor::cat(&[x, &zeros], 1)
            }
        }
    }

    /// Solves from `y(t_from) = x` (with [`OdeBlock::augment`] channels of zeros after its
    /// own) to `t_to` (either direction) and returns `y(t_to)` with the solve's counts,
    /// differentiated as the block's [`Gradient`] says.
    ///
    /// # Shapes
    /// `x: [B, C, ...]`, any shape the field accepts with `C + augment` channels; the result
    /// is `[B, C + augment, ...]`. Without augmentation, any shape the field accepts.
    ///
    /// # Errors
    /// The solver's typed errors, `t_from == t_to`, and `x` of rank below 2 when augmented.
    pub fn solve_between(
        &self,
        x: &Tensor,
        t_from: f64,
        t_to: f64,
    ) -> Result<(Tensor, BlockStats)> {
        let x = self.augment_input(x)?;
        let (ys, stats) = self
            .gradient
            .solve(&self.field, &x, &[t_from, t_to], &self.opts)?;
        Ok((ys.get(1)?, stats))
    }
}

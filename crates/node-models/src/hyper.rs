//! Hypernetworks for [`node_solvers::hyper`]: the learned correction `g(t, h, y, f(t, y))` of
//! a hypersolver (Poli et al. 2020), for the two kinds of state our models have.
//!
//! | network | state | layers |
//! |---|---|---|
//! | [`HyperConv`] | feature maps `[B, C, H, W]` (the ODE-Net block) | `ConcatConv(2C → hidden, 3×3) – tanh – ConcatConv(hidden → C, 3×3)` on `[y, f]` |
//! | [`HyperMlp`] | vectors `[B, D]` | `Linear(2D + 1 → width) – tanh – … – Linear(width → D)` on `[t, y, f]` |
//!
//! Both see the time (a constant channel, a column) and the field's value at the step's start,
//! as torchdyn's hypernetworks do, and not the step size: a correction is trained for the
//! step size it will be used with. Their last layer is named `out`; zeroing it
//! ([`zero_output`]) starts training from the plain base method.

use crate::layers::{linear, ConcatConv2d, Linear};
use candle_core::{Result, Tensor, D};
use candle_nn::{Module, VarBuilder, VarMap};
use node_solvers::Correction;

/// The convolutional hypernetwork of a feature-map state (the ODE-Net block's `[B, 64, 6,
/// 6]`): `ConcatConv(2C + 1 → hidden, 3×3, pad 1) – tanh – ConcatConv(hidden + 1 → C, 3×3,
/// pad 1)` on `[y, f(t, y)]` stacked along the channels, the time a channel of each
/// convolution (as in the ODE-Net's own field).
#[derive(Clone, Debug)]
pub struct HyperConv {
    hidden: ConcatConv2d,
    out: ConcatConv2d,
}

impl HyperConv {
    /// For a `channels`-channel state, `hidden` channels in between; parameters under `vb`
    /// (`hidden`, `out`).
    ///
    /// # Errors
    /// Those of `vb`.
    pub fn new(channels: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            hidden: ConcatConv2d::new(2 * channels, hidden, 3, 1, 1, vb.pp("hidden"))?,
            out: ConcatConv2d::new(hidden, channels, 3, 1, 1, vb.pp("out"))?,
        })
    }

    /// `g(t, y, f)`.
    ///
    /// # Shapes
    /// `y, fy: [B, C, H, W]` → `[B, C, H, W]`.
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward(&self, t: f64, y: &Tensor, fy: &Tensor) -> Result<Tensor> {
        let x = Tensor::cat(&[y, fy], 1)?;
        let h = self.hidden.forward(t, &x)?.tanh()?;
        self.out.forward(t, &h)
    }
}

impl Correction for HyperConv {
    fn eval(&self, t: f64, _h: f64, y: &Tensor, fy: &Tensor) -> Result<Tensor> {
        self.forward(t, y, fy)
    }
}

/// The fully connected hypernetwork of a vector state: `depth` hidden layers of `width`
/// with `tanh` (`layer0`, `layer1`, …), from `[t, y, f(t, y)]` (`2D + 1` inputs), and a
/// linear output layer (`out`) to `D`.
#[derive(Clone, Debug)]
pub struct HyperMlp {
    hidden: Vec<Linear>,
    out: Linear,
}

impl HyperMlp {
    /// For a `dim`-component state; parameters under `vb`.
    ///
    /// # Errors
    /// `depth` 0; those of `vb`.
    pub fn new(dim: usize, width: usize, depth: usize, vb: VarBuilder) -> Result<Self> {
        if depth == 0 {
            candle_core::bail!("HyperMlp: depth must be at least 1");
        }
        let hidden = (0..depth)
            .map(|i| {
                let inputs = if i == 0 { 2 * dim + 1 } else { width };
                linear(inputs, width, vb.pp(format!("layer{i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            hidden,
            out: linear(width, dim, vb.pp("out"))?,
        })
    }

    /// `g(t, y, f)`.
    ///
    /// # Shapes
    /// `y, fy: [B, D]` → `[B, D]`.
    ///
    /// # Errors
    /// Shape errors.
    pub fn forward(&self, t: f64, y: &Tensor, fy: &Tensor) -> Result<Tensor> {
        let b = y.dim(0)?;
        let time = Tensor::full(t, (b, 1), y.device())?.to_dtype(y.dtype())?;
        let mut h = Tensor::cat(&[&time, y, fy], D::Minus1)?;
        for layer in &self.hidden {
            h = layer.forward(&h)?.tanh()?;
        }
        self.out.forward(&h)
    }
}

impl Correction for HyperMlp {
    fn eval(&self, t: f64, _h: f64, y: &Tensor, fy: &Tensor) -> Result<Tensor> {
        self.forward(t, y, fy)
    }
}

/// Sets the output layer (`out.weight`, `out.bias` under `prefix`, e.g. `"hyper"`, or `""`)
/// of a [`HyperConv`] or [`HyperMlp`] in `varmap` to zero: the hypersolver then starts as
/// its base method, and training moves it from there.
///
/// # Errors
/// No such variables in `varmap`.
pub fn zero_output(varmap: &VarMap, prefix: &str) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .expect("the VarMap's lock is not poisoned");
    for name in ["weight", "bias"] {
        let key = if prefix.is_empty() {
            format!("out.{name}")
        } else {
            format!("{prefix}.out.{name}")
        };
        let var = data
            .get(&key)
            .ok_or_else(|| candle_core::Error::Msg(format!("zero_output: no variable `{key}`")))?;
        var.set(&var.as_tensor().zeros_like()?)?;
    }
    Ok(())
}

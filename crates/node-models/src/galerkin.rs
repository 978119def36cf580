//! Galerkin layers: depth-variant parameters for neural ODEs (Massaroli, Poli, Park,
//! Yamashita & Asama 2020, "Dissecting Neural ODEs"; torchdyn's `GalLinear`). A layer's
//! weight and bias are functions of the depth `t`, expanded on a few basis functions,
//! `W(t) = Σₖ φₖ(t) Wₖ`: the field `f(t, y)` can change along the solve the way a stack of
//! distinct layers does, with a fixed number of parameters however many steps the solver
//! takes.

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// The functions of depth a [`GalerkinLinear`]'s parameters are expanded on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Basis {
    /// `1, cos(2πt/T), sin(2πt/T), …, cos(2πmt/T), sin(2πmt/T)`: `2m + 1` functions of
    /// period `T`.
    Fourier {
        /// The number of harmonics `m`.
        harmonics: usize,
        /// The period `T`.
        period: f64,
    },
    /// Legendre polynomials `P₀ … P_d` of `s = 2(t − t₀)/(t₁ − t₀) − 1`, orthogonal on
    /// `[t₀, t₁]`: `d + 1` functions.
    Legendre {
        /// The degree `d`.
        degree: usize,
        /// `(t₀, t₁)`, the depths the solve covers.
        span: (f64, f64),
    },
}

impl Basis {
    /// The number of functions.
    pub fn functions(&self) -> usize {
        match *self {
            Basis::Fourier { harmonics, .. } => 2 * harmonics + 1,
            Basis::Legendre { degree, .. } => degree + 1,
        }
    }

    fn check(&self) -> Result<()> {
        match *self {
            Basis::Fourier { period, .. } if !(period.is_finite() && period > 0.0) => {
                bail!("Basis::Fourier: the period must be a positive number, got {period}")
            }
            Basis::Legendre { span: (t0, t1), .. }
                if !(t0.is_finite() && t1.is_finite() && t0 != t1) =>
            {
                bail!("Basis::Legendre: the span must be two different finite times, got ({t0}, {t1})")
            }
            _ => Ok(()),
        }
    }

    /// The functions' values at `t`.
    pub fn eval(&self, t: f64) -> Vec<f64> {
        match *self {
            Basis::Fourier { harmonics, period } => {
                let w = 2.0 * std::f64::consts::PI * t / period;
                let mut v = Vec::with_capacity(2 * harmonics + 1);
                v.push(1.0);
                for k in 1..=harmonics {
                    let (s, c) = (k as f64 * w).sin_cos();
                    v.extend([c, s]);
                }
                v
            }
            Basis::Legendre {
                degree,
                span: (t0, t1),
            } => {
                let s = 2.0 * (t - t0) / (t1 - t0) - 1.0;
                // Bonnet's recursion: (k + 1) P_{k+1} = (2k + 1) s P_k − k P_{k−1}.
                let mut v = vec![1.0, s];
                for k in 1..degree {
                    let k = k as f64;
                    let next =
                        ((2.0 * k + 1.0) * s * v[v.len() - 1] - k * v[v.len() - 2]) / (k + 1.0);
                    v.push(next);
                }
                v.truncate(degree + 1);
                v
            }
        }
    }
}

/// A fully connected layer whose weight and bias depend on the depth `t`,
/// `y = x W(t)ᵀ + b(t)` with `W(t) = Σₖ φₖ(t) Wₖ` and `b(t) = Σₖ φₖ(t) bₖ` on a [`Basis`].
///
/// The coefficients are the variables `weight` (`[out, in, K]`) and `bias` (`[out, K]`):
/// the weight initialised uniform in `±1/√(in·K)` (what [`crate::init::pytorch_default`]
/// gives it too), the bias 0.
///
/// # Example
/// A depth-variant field `f(t, y) = tanh(y W(t)ᵀ + b(t))` on a Fourier basis.
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use node_models::galerkin::{Basis, GalerkinLinear};
/// use node_solvers::{odeint, SolveOptions};
///
/// # fn main() -> candle_core::Result<()> {
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let basis = Basis::Fourier { harmonics: 2, period: 1.0 };
/// let layer = GalerkinLinear::new(3, 3, basis, vb.pp("gal"))?;
/// let field = |t: f64, y: &Tensor| layer.forward(t, y)?.tanh();
/// let y0 = Tensor::ones((4, 3), DType::F32, &Device::Cpu)?;
/// let ys = odeint(&field, &y0, &[0.0, 1.0], &SolveOptions::default())?.ys;
/// assert_eq!(ys.dims(), &[2, 4, 3]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct GalerkinLinear {
    weight: Tensor,
    bias: Tensor,
    basis: Basis,
}

impl GalerkinLinear {
    /// The layer `inputs → outputs`, its coefficients under `vb` (`weight`, `bias`).
    ///
    /// # Errors
    /// A Fourier basis whose period is not a positive number, a Legendre basis whose span is
    /// empty or not finite, and those of `vb`.
    pub fn new(inputs: usize, outputs: usize, basis: Basis, vb: VarBuilder) -> Result<Self> {
        basis.check()?;
        let k = basis.functions();
        let bound = 1.0 / ((inputs * k).max(1) as f64).sqrt();
        let weight = vb.get_with_hints(
            (outputs, inputs, k),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let bias = vb.get_with_hints((outputs, k), "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            basis,
        })
    }

    /// The basis.
    pub fn basis(&self) -> Basis {
        self.basis
    }

    /// The coefficients `[out, in, K]` and `[out, K]`.
    pub fn tensors(&self) -> Vec<Tensor> {
        vec![self.weight.clone(), self.bias.clone()]
    }

    /// The weight `W(t)` (`[out, in]`) and bias `b(t)` (`[out]`) at depth `t`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn at(&self, t: f64) -> Result<(Tensor, Tensor)> {
        let phi =
            Tensor::new(self.basis.eval(t), self.weight.device())?.to_dtype(self.weight.dtype())?;
        let w = self.weight.broadcast_mul(&phi)?.sum(2)?;
        let b = self.bias.broadcast_mul(&phi)?.sum(1)?;
        Ok((w, b))
    }

    /// `x W(t)ᵀ + b(t)` for `x` of shape `[batch, in]`.
    ///
    /// # Errors
    /// `x` of another width, and tensor errors.
    pub fn forward(&self, t: f64, x: &Tensor) -> Result<Tensor> {
        let (w, b) = self.at(t)?;
        node_kernels::linear(x, &w, Some(&b))
    }
}

//! Galerkin layers: depth-variant parameters for neural ODEs (Massaroli, Poli, Park,
//! Yamashita & Asama 2020, "Dissecting Neural ODEs"; torchdyn's `GalLinear`). A layer's
//! weight and bias are functions of the depth `t`, expanded on a few basis functions,
//! `W(t) = Σₖ φₖ(t) Wₖ`: the field `f(t, y)` can change along the solve the way a stack of
//! distinct layers does, with a fixed number of parameters however many steps the solver
//! takes. [`GalerkinLinear`] is the fully connected layer, [`GalerkinConv2d`] the
//! convolution (torchdyn's `GalConv2d`; [`crate::OdeFunc::with_time`] builds the ODE-Net's
//! field on it).

use candle_core::{bail, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use std::fmt;
use std::str::FromStr;

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

    /// The functions' values at `t` as a `[K]` tensor of `like`'s dtype, on its device.
    fn eval_like(&self, t: f64, like: &Tensor) -> Result<Tensor> {
        Tensor::new(self.eval(t), like.device())?.to_dtype(like.dtype())
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

/// Parses `fourier:M` (`M` harmonics of period 1) and `legendre:D` (degree `D` on `[0, 1]`),
/// the depths of this crate's ODE blocks; `fourier:M:T` and `legendre:D:T0:T1` give the
/// period or the span. [`Basis`]'s `Display` writes the same form.
impl FromStr for Basis {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let usage = || {
            format!("unknown basis `{s}` (expected fourier:M, fourier:M:PERIOD, legendre:D or legendre:D:T0:T1)")
        };
        let parts: Vec<&str> = s.split(':').map(str::trim).collect();
        let count = |p: &str| p.parse::<usize>().map_err(|_| usage());
        let number = |p: &str| p.parse::<f64>().map_err(|_| usage());
        let basis = match parts.as_slice() {
            [family, m] if family.eq_ignore_ascii_case("fourier") => Basis::Fourier {
                harmonics: count(m)?,
                period: 1.0,
            },
            [family, m, period] if family.eq_ignore_ascii_case("fourier") => Basis::Fourier {
                harmonics: count(m)?,
                period: number(period)?,
            },
            [family, d] if family.eq_ignore_ascii_case("legendre") => Basis::Legendre {
                degree: count(d)?,
                span: (0.0, 1.0),
            },
            [family, d, t0, t1] if family.eq_ignore_ascii_case("legendre") => Basis::Legendre {
                degree: count(d)?,
                span: (number(t0)?, number(t1)?),
            },
            _ => return Err(usage()),
        };
        basis.check().map_err(|e| e.to_string())?;
        Ok(basis)
    }
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Basis::Fourier {
                harmonics,
                period: 1.0,
            } => write!(f, "fourier:{harmonics}"),
            Basis::Fourier { harmonics, period } => write!(f, "fourier:{harmonics}:{period}"),
            Basis::Legendre {
                degree,
                span: (0.0, 1.0),
            } => write!(f, "legendre:{degree}"),
            Basis::Legendre {
                degree,
                span: (t0, t1),
            } => write!(f, "legendre:{degree}:{t0}:{t1}"),
        }
    }
}

/// `Σₖ φₖ coeffs[…, k]`: the coefficients `[…, K]` contracted with the basis values `[K]`, one
/// matrix–vector product.
fn expand(coeffs: &Tensor, phi: &Tensor) -> Result<Tensor> {
    let dims = coeffs.dims();
    let (&k, rest) = dims
        .split_last()
        .expect("coefficients have a basis dimension");
    coeffs
        .reshape((coeffs.elem_count() / k, k))?
        .matmul(&phi.reshape((k, 1))?)?
        .reshape(rest)
}

/// A Galerkin layer's coefficients: the weight `[out, …, K]` (uniform in `±1/√fan_in`, the
/// fan-in counting the `K` functions) and the bias `[out, K]` (0), on a basis.
#[derive(Clone, Debug)]
struct Coefficients {
    weight: Tensor,
    bias: Tensor,
    basis: Basis,
}

impl Coefficients {
    /// `weight` of shape `[outputs, inner…, K]`, `bias` `[outputs, K]`, under `vb`.
    fn new(outputs: usize, inner: &[usize], basis: Basis, vb: VarBuilder) -> Result<Self> {
        basis.check()?;
        let k = basis.functions();
        let bound = 1.0 / ((inner.iter().product::<usize>() * k).max(1) as f64).sqrt();
        let mut shape = vec![outputs];
        shape.extend(inner);
        shape.push(k);
        let weight = vb.get_with_hints(
            shape,
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

    /// The weight and bias at depth `t`.
    fn at(&self, t: f64) -> Result<(Tensor, Tensor)> {
        let phi = self.basis.eval_like(t, &self.weight)?;
        Ok((expand(&self.weight, &phi)?, expand(&self.bias, &phi)?))
    }

    fn tensors(&self) -> Vec<Tensor> {
        vec![self.weight.clone(), self.bias.clone()]
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
    coefficients: Coefficients,
}

impl GalerkinLinear {
    /// The layer `inputs → outputs`, its coefficients under `vb` (`weight`, `bias`).
    ///
    /// # Errors
    /// A Fourier basis whose period is not a positive number, a Legendre basis whose span is
    /// empty or not finite, and those of `vb`.
    pub fn new(inputs: usize, outputs: usize, basis: Basis, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            coefficients: Coefficients::new(outputs, &[inputs], basis, vb)?,
        })
    }

    /// The basis.
    pub fn basis(&self) -> Basis {
        self.coefficients.basis
    }

    /// The coefficients `[out, in, K]` and `[out, K]`.
    pub fn tensors(&self) -> Vec<Tensor> {
        self.coefficients.tensors()
    }

    /// The weight `W(t)` (`[out, in]`) and bias `b(t)` (`[out]`) at depth `t`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn at(&self, t: f64) -> Result<(Tensor, Tensor)> {
        self.coefficients.at(t)
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

/// A 2-D convolution (square kernel) whose kernel and bias depend on the depth `t`,
/// `conv(x, W(t)) + b(t)` with `W(t) = Σₖ φₖ(t) Wₖ` and `b(t) = Σₖ φₖ(t) bₖ` on a [`Basis`]
/// (torchdyn's `GalConv2d`). Each evaluation builds `W(t)` by one matrix–vector product and
/// convolves with [`node_kernels::conv2d_bias`]; gradients reach every coefficient.
///
/// The coefficients are the variables `weight` (`[out, in, k, k, K]`) and `bias`
/// (`[out, K]`): the weight initialised uniform in `±1/√(in·k²·K)` (what
/// [`crate::init::pytorch_default`] gives it too), the bias 0.
///
/// # Shapes
/// `x: [B, in, H, W]` → `[B, out, H', W']`, `H' = (H + 2·padding − k) / stride + 1`.
///
/// # Example
/// A depth-variant convolutional field on Legendre polynomials over `[0, 1]`.
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use node_models::galerkin::{Basis, GalerkinConv2d};
/// use node_solvers::{odeint, SolveOptions};
///
/// # fn main() -> candle_core::Result<()> {
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let basis: Basis = "legendre:2".parse().map_err(candle_core::Error::msg)?;
/// let conv = GalerkinConv2d::new(4, 4, 3, 1, 1, basis, vb.pp("conv"))?;
/// let field = |t: f64, y: &Tensor| conv.forward(t, y)?.tanh();
/// let y0 = Tensor::ones((2, 4, 8, 8), DType::F32, &Device::Cpu)?;
/// let ys = odeint(&field, &y0, &[0.0, 1.0], &SolveOptions::default())?.ys;
/// assert_eq!(ys.dims(), &[2, 2, 4, 8, 8]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct GalerkinConv2d {
    coefficients: Coefficients,
    padding: usize,
    stride: usize,
}

impl GalerkinConv2d {
    /// The convolution `inputs → outputs` channels with a `kernel × kernel` kernel, its
    /// coefficients under `vb` (`weight`, `bias`).
    ///
    /// # Errors
    /// A zero kernel size or stride, the basis errors of [`GalerkinLinear::new`], and those of
    /// `vb`.
    pub fn new(
        inputs: usize,
        outputs: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        basis: Basis,
        vb: VarBuilder,
    ) -> Result<Self> {
        if kernel == 0 || stride == 0 {
            bail!("GalerkinConv2d: the kernel size and the stride must be positive, got {kernel} and {stride}");
        }
        Ok(Self {
            coefficients: Coefficients::new(outputs, &[inputs, kernel, kernel], basis, vb)?,
            padding,
            stride,
        })
    }

    /// The basis.
    pub fn basis(&self) -> Basis {
        self.coefficients.basis
    }

    /// The coefficients `[out, in, k, k, K]` and `[out, K]`.
    pub fn tensors(&self) -> Vec<Tensor> {
        self.coefficients.tensors()
    }

    /// The kernel `W(t)` (`[out, in, k, k]`) and bias `b(t)` (`[out]`) at depth `t`.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn at(&self, t: f64) -> Result<(Tensor, Tensor)> {
        self.coefficients.at(t)
    }

    /// `conv(x, W(t)) + b(t)`.
    ///
    /// # Errors
    /// `x` of another number of channels or smaller than the kernel, and tensor errors.
    pub fn forward(&self, t: f64, x: &Tensor) -> Result<Tensor> {
        let (w, b) = self.at(t)?;
        node_kernels::conv2d_bias(x, &w, &b, self.padding, self.stride, 1, 1)
    }
}

//! Second-order neural ODEs (Norcliffe et al. 2020, "On second order behaviour in augmented
//! neural ODEs"; torchdyn's `order=2`): `x'' = a(t, x, x')`, solved as the first-order system
//! on `z = [x, v]` with `x' = v`, `v' = a(t, x, v)`, by any method and differentiated in any
//! mode. The acceleration network sees the whole state and returns `x`'s shape; position and
//! velocity are the two halves of one dimension of the state.
//!
//! For a separable system whose acceleration depends on `x` alone, the symplectic solvers
//! (`node_solvers::odeint_symplectic`) keep its energy; this wrapper is for accelerations
//! that depend on the velocity too (friction, forcing, a learned field of both).

use candle_core::{bail, Result, Tensor, Var};
use node_adjoint::ParamVectorField;
use node_solvers::VectorField;

/// `x'' = a(t, x, x')` as the field `z' = [v, a(t, z)]` on `z = [x, v]`, `x` and `v` the two
/// halves of the state's dimension `dim`.
///
/// # Example
/// A damped oscillator, `x'' = −4x − 0.2x'`, from `x = 1`, `x' = 0`.
/// ```
/// use candle_core::{Device, Tensor};
/// use node_models::SecondOrder;
/// use node_solvers::{odeint, SolveOptions};
///
/// # fn main() -> candle_core::Result<()> {
/// let accel = |_t: f64, z: &Tensor| -> candle_core::Result<Tensor> {
///     let (x, v) = (z.narrow(1, 0, 1)?, z.narrow(1, 1, 1)?);
///     x.affine(-4.0, 0.0)? - v.affine(0.2, 0.0)?
/// };
/// let field = SecondOrder::new(accel, 1);
/// let dev = Device::Cpu;
/// let z0 = field.state(&Tensor::new(&[[1.0f64]], &dev)?, &Tensor::new(&[[0.0f64]], &dev)?)?;
/// let ys = odeint(&field, &z0, &[0.0, 1.0], &SolveOptions::default())?.ys;
/// let (x, _v) = field.halves(&ys.get(1)?)?;
/// assert!(x.flatten_all()?.to_vec1::<f64>()?[0] < 0.0); // past a quarter period
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SecondOrder<F> {
    accel: F,
    dim: usize,
}

impl<F> SecondOrder<F> {
    /// The system whose acceleration `accel` computes from the whole state (`[x, v]` along
    /// `dim`), returning `x`'s shape.
    pub fn new(accel: F, dim: usize) -> Self {
        Self { accel, dim }
    }

    /// The acceleration's field.
    pub fn accel(&self) -> &F {
        &self.accel
    }

    /// The dimension of the state that holds `[x, v]`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The state `[x, v]` of position `x` and velocity `v` (the same shape).
    ///
    /// # Errors
    /// `x` and `v` of different shapes, or without dimension `dim`.
    pub fn state(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        if x.shape() != v.shape() {
            bail!(
                "SecondOrder: position {:?} and velocity {:?} must have the same shape",
                x.shape(),
                v.shape()
            );
        }
        Tensor::cat(&[x, v], self.dim)
    }

    /// The position and the velocity of a state; for a solution `[T, ...state]`, of each of
    /// its states (`ys.get(i)`).
    ///
    /// # Errors
    /// A state without dimension `dim` or with an odd size there.
    pub fn halves(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        if z.rank() <= self.dim {
            bail!(
                "SecondOrder: a state of shape {:?} has no dimension {} to hold [x, v]",
                z.shape(),
                self.dim
            );
        }
        let n = z.dim(self.dim)?;
        if n % 2 != 0 {
            bail!(
                "SecondOrder: the state's dimension {} holds [x, v], so its size must be even, \
                 got {n} (shape {:?})",
                self.dim,
                z.shape()
            );
        }
        Ok((
            z.narrow(self.dim, 0, n / 2)?,
            z.narrow(self.dim, n / 2, n / 2)?,
        ))
    }
}

impl<F: VectorField> VectorField for SecondOrder<F> {
    fn eval(&self, t: f64, z: &Tensor) -> Result<Tensor> {
        let (x, v) = self.halves(z)?;
        let a = self.accel.eval(t, z)?;
        if a.shape() != x.shape() {
            bail!(
                "SecondOrder: the acceleration must have the position's shape {:?}, got {:?}",
                x.shape(),
                a.shape()
            );
        }
        Tensor::cat(&[v, a], self.dim)
    }
}

impl<F: ParamVectorField> ParamVectorField for SecondOrder<F> {
    fn params(&self) -> Vec<Var> {
        self.accel.params()
    }

    fn param_sources(&self) -> Vec<Tensor> {
        self.accel.param_sources()
    }
}

//! The right-hand side `f(t, y)` of `dy/dt = f(t, y)`.

use crate::options::Jacobian;
use candle_core::{Result, Tensor};

/// A vector field `f(t, y)`: given the time and the state, the state's time derivative.
///
/// Any closure `Fn(f64, &Tensor) -> Result<Tensor>` is a vector field, as any closure is a
/// `candle_nn::Module`. Time is a host `f64`; `y` has the caller's shape, dtype and device.
///
/// # Shapes
/// `eval` must return a tensor of exactly `y`'s shape, dtype and device.
///
/// # Errors
/// Whatever the implementation returns is passed through by the solvers.
pub trait VectorField {
    /// Evaluates `f(t, y)`.
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor>;

    /// The Jacobian `∂f/∂y` at `(t, y)`, for the Newton iterations of the implicit methods
    /// ([`crate::Method::is_implicit`]), or `None` (the default) to let the solver build it
    /// by finite differences, one evaluation of `f` per column.
    ///
    /// `structure` is the solve's [`SolveOptions::jacobian`](crate::SolveOptions::jacobian)
    /// and sets the shape, for a state of `n` components (row `i`, column `j`:
    /// `∂f_i/∂y_j`, in the flattened state's order):
    /// - [`Jacobian::Dense`]: `[n, n]`;
    /// - [`Jacobian::Batched`]: `[B, D, D]`, one block per row of the leading dimension
    ///   (`B` rows of `D = n / B` components);
    /// - [`Jacobian::DensePrefix`]`(len)`: `[len, len]`, the first `len` components;
    /// - [`Jacobian::Blocks`]` { count, size }`: `[count, size, size]`.
    ///
    /// Any float dtype and device; the solver reads it back once per build (the linear
    /// algebra runs on the host). Return `None` for a structure the implementation does not
    /// provide. Only the speed of Newton's convergence depends on it, not the solution's
    /// accuracy; a wrong shape is an error. [`WithJacobian`] attaches one to a closure.
    fn jacobian(&self, t: f64, y: &Tensor, structure: Jacobian) -> Result<Option<Tensor>> {
        let _ = (t, y, structure);
        Ok(None)
    }
}

impl<F> VectorField for F
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        self(t, y)
    }
}

/// A vector field with its Jacobian in closed form (SciPy's `jac`, Julia's `jac`): `field`
/// evaluates `f(t, y)` and `jacobian` evaluates `∂f/∂y(t, y)` in the shape that the solve's
/// [`Jacobian`] option sets (see [`VectorField::jacobian`]). It saves the `n` evaluations of
/// each finite-difference Jacobian, and its rounding.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint, Method, SolveOptions, WithJacobian};
///
/// // y' = −1000 (y − cos t): ∂f/∂y = −1000.
/// let f = WithJacobian::new(
///     |t: f64, y: &Tensor| y.affine(-1000.0, 1000.0 * t.cos()),
///     |_t: f64, _y: &Tensor| Tensor::new(&[[-1000.0f64]], &Device::Cpu),
/// );
/// let y0 = Tensor::new(&[0.0f64], &Device::Cpu)?;
/// let opts = SolveOptions::default().method(Method::Kvaerno5);
/// let sol = odeint(&f, &y0, &[0.0, 1.0], &opts)?;
/// assert_eq!(sol.stats.jacobians, 1);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct WithJacobian<F, J> {
    field: F,
    jacobian: J,
}

impl<F, J> WithJacobian<F, J>
where
    F: VectorField,
    J: Fn(f64, &Tensor) -> Result<Tensor>,
{
    /// `field` with the Jacobian `jacobian`.
    pub fn new(field: F, jacobian: J) -> Self {
        Self { field, jacobian }
    }

    /// The wrapped field.
    pub fn field(&self) -> &F {
        &self.field
    }
}

impl<F, J> VectorField for WithJacobian<F, J>
where
    F: VectorField,
    J: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        self.field.eval(t, y)
    }

    fn jacobian(&self, t: f64, y: &Tensor, _structure: Jacobian) -> Result<Option<Tensor>> {
        (self.jacobian)(t, y).map(Some)
    }
}

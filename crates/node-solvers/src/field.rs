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

    /// The field as a sum `f = f_E + f_I` of a non-stiff part and a stiff one, for the IMEX
    /// methods ([`crate::Method::is_imex`]), which evaluate `f_E` explicitly and solve for
    /// `f_I` by Newton's method (with `f_I`'s own [`VectorField::jacobian`]); `None` (the
    /// default) for a field that is not split. [`Split`] is one that is.
    fn split(&self) -> Option<(&dyn VectorField, &dyn VectorField)> {
        None
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

    /// The wrapped field's split, if it has one: an IMEX method then uses the parts (and the
    /// implicit part's own Jacobian), the others this Jacobian of the whole.
    fn split(&self) -> Option<(&dyn VectorField, &dyn VectorField)> {
        self.field.split()
    }
}

/// A vector field split into a non-stiff part and a stiff one, `f = f_E + f_I`, for the IMEX
/// methods ([`crate::Method::KenCarp3`], [`crate::Method::KenCarp4`],
/// [`crate::Method::KenCarp5`]; diffrax's `MultiTerm` of two terms): each step evaluates
/// `explicit` at its stages and solves for `implicit` by Newton's method, so that only the
/// stiff part's Jacobian is built (give `implicit` its Jacobian in closed form with
/// [`WithJacobian`]), and the step size is limited by the stiffness of neither part.
///
/// They suit a stiff part whose fast modes the explicit part hardly drives: diffusion with a
/// reaction (or a network's output) on a grid, whose fast modes are the grid's shortest
/// waves. Where the explicit part pushes along the fast directions themselves (a state that
/// relaxes quickly to where the two parts balance, `y' = (g(t) − y)/ε + f_E(y)`), each step
/// ends off that balance by the explicit weights' error and the methods lose order: treat
/// the whole field implicitly there. The crate README has the measurements.
///
/// Any other method solves the sum as one field; the implicit ones then build the Jacobian
/// of the sum (in closed form when both parts have one, else by finite differences).
///
/// ```
/// use candle_core::{DType, Device};
/// use node_solvers::problems::Brusselator;
/// use node_solvers::{odeint, Method, SolveOptions, Split, WithJacobian};
///
/// // A reaction (non-stiff, only evaluated) and diffusion on 64 points (stiff: eigenvalues
/// // down to −338; linear, its Jacobian in closed form).
/// let p = Brusselator::new(64);
/// let f = Split::new(
///     p.reaction(),
///     WithJacobian::new(p.diffusion(), p.diffusion_jacobian()),
/// );
/// let y0 = p.initial(DType::F64, &Device::Cpu)?;
/// let opts = SolveOptions::default().method(Method::KenCarp4).tolerances(1e-5, 1e-5);
/// let sol = odeint(&f, &y0, &[0.0, 10.0], &opts)?;
/// assert!(sol.stats.accepted_steps < 60); // dopri5 needs about 1000
/// assert_eq!(sol.stats.jacobians, 1);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Split<E, I> {
    explicit: E,
    implicit: I,
}

impl<E: VectorField, I: VectorField> Split<E, I> {
    /// `explicit + implicit`: the non-stiff part and the stiff one.
    pub fn new(explicit: E, implicit: I) -> Self {
        Self { explicit, implicit }
    }

    /// The non-stiff part, `f_E`.
    pub fn explicit(&self) -> &E {
        &self.explicit
    }

    /// The stiff part, `f_I`.
    pub fn implicit(&self) -> &I {
        &self.implicit
    }
}

impl<E: VectorField, I: VectorField> VectorField for Split<E, I> {
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        self.explicit.eval(t, y)? + self.implicit.eval(t, y)?
    }

    /// The sum of the parts' Jacobians when both have one (for a method that treats the
    /// field as a whole).
    fn jacobian(&self, t: f64, y: &Tensor, structure: Jacobian) -> Result<Option<Tensor>> {
        let Some(ji) = self.implicit.jacobian(t, y, structure)? else {
            return Ok(None);
        };
        match self.explicit.jacobian(t, y, structure)? {
            Some(je) => Ok(Some((je.to_dtype(ji.dtype())? + ji)?)),
            None => Ok(None),
        }
    }

    fn split(&self) -> Option<(&dyn VectorField, &dyn VectorField)> {
        Some((&self.explicit, &self.implicit))
    }
}

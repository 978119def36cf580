//! The right-hand side `f(t, y)` of `dy/dt = f(t, y)`.

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
}

impl<F> VectorField for F
where
    F: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        self(t, y)
    }
}

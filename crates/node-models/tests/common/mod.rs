//! Helpers shared by the model tests (each test binary uses some of them).
#![allow(dead_code)]

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;

/// Checks the gradient of the scalar `loss()` with respect to the entries `entries(len)` of
/// every variable of `varmap` (f64) against central differences with `step`, to
/// `tol · (1 + |fd|)`; returns how many entries were checked.
pub fn check_finite_differences(
    varmap: &VarMap,
    loss: impl Fn() -> candle_core::Result<Tensor>,
    entries: impl Fn(usize) -> Vec<usize>,
    step: f64,
    tol: f64,
) -> Result<usize> {
    let grads = loss()?.backward()?;
    let mut checked = 0;
    for v in node_adjoint::sorted_vars(varmap) {
        // No gradient is a zero one (a bias the loss does not depend on): the finite
        // differences must say so too.
        let g = match grads.get(&v) {
            Some(g) => g.flatten_all()?.to_vec1::<f64>()?,
            None => vec![0.0; v.elem_count()],
        };
        let base = v.flatten_all()?.to_vec1::<f64>()?;
        let set = |v: &Var, w: Vec<f64>| v.set(&Tensor::from_vec(w, v.shape(), v.device())?);
        for k in entries(base.len()) {
            let at = |delta: f64| -> Result<f64> {
                let mut w = base.clone();
                w[k] += delta;
                set(&v, w)?;
                Ok(loss()?.to_scalar::<f64>()?)
            };
            let fd = (at(step)? - at(-step)?) / (2.0 * step);
            set(&v, base.clone())?;
            ensure!(
                (fd - g[k]).abs() <= tol * (1.0 + fd.abs()),
                "entry {k} of {:?}: gradient {} vs finite differences {fd}",
                v.shape(),
                g[k]
            );
            checked += 1;
        }
    }
    Ok(checked)
}

/// The largest absolute entry of `t`, as f64.
pub fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?)
}

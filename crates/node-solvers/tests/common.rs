//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Tensor};

/// The solver error inside `e` (panics when there is none).
pub fn solver_error(e: &candle_core::Error) -> node_solvers::SolverError {
    node_solvers::SolverError::find(e)
        .unwrap_or_else(|| panic!("not a solver error: {e}"))
        .clone()
}

/// max |a - b| as f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    Ok((a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

/// Least-squares slope of log(err) against log(h).
pub fn fitted_slope(hs: &[f64], errs: &[f64]) -> f64 {
    let xs: Vec<f64> = hs.iter().map(|h| h.ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    cov / var
}

/// The largest error of the outputs `ys` at `ts` after the first against Riccati's exact
/// solution from `y0` at `ts[0]`.
pub fn worst_riccati_error(ys: &Tensor, y0: &Tensor, ts: &[f64]) -> anyhow::Result<f64> {
    let mut worst: f64 = 0.0;
    for (i, &t) in ts.iter().enumerate().skip(1) {
        let exact = node_solvers::problems::Riccati.exact(y0, ts[0], t)?;
        worst = worst.max(max_abs_diff(&ys.get(i)?, &exact)?);
    }
    Ok(worst)
}

/// The Brusselator on `n` points from its initial state (f64), and its state at `t = 10` by
/// dopri5 at `rtol = atol = 1e-11`: the reference the stiff methods' solves are held to.
pub fn brusselator_at_10(
    n: usize,
    dev: &candle_core::Device,
) -> anyhow::Result<(node_solvers::problems::Brusselator, Tensor, Tensor)> {
    let b = node_solvers::problems::Brusselator::new(n);
    let y0 = b.initial(DType::F64, dev)?;
    let opts = node_solvers::SolveOptions::default().tolerances(1e-11, 1e-11);
    let end = node_solvers::odeint(&b.field(), &y0, &[0.0, 10.0], &opts)?.last()?;
    Ok((b, y0, end))
}

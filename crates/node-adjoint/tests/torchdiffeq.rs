//! Gradients of `L = Σ z(1)²` for torchdiffeq's `ode_demo` MLP against torchdiffeq's own
//! (`fixtures/torchdiffeq/adjoint_grad_*.npz`, written by the peer script `adjoint_grad.py` with
//! the weights and inputs of `ode_solve.py`).

use anyhow::Result;
use candle_core::{DType, Tensor, Var};
use node_adjoint::{odeint_adjoint, AdjointOptions, ParamVectorField};
use node_solvers::{odeint, Method, SolveOptions};
use std::collections::HashMap;

#[path = "common/mlp.rs"]
mod mlp;
use mlp::Mlp;

fn fixture(name: &str) -> Result<HashMap<String, Tensor>> {
    let path = format!(
        "{}/../../fixtures/torchdiffeq/{name}.npz",
        env!("CARGO_MANIFEST_DIR")
    );
    Ok(Tensor::read_npz(path)?.into_iter().collect())
}

fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    let m = b
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok(d / m)
}

/// Our gradients [z0, w1, b1, w2, b2] and loss, by the adjoint or by backprop.
fn ours(opts: &SolveOptions, adjoint: bool) -> Result<(f64, Vec<Tensor>)> {
    let (f, z0) = Mlp::ode_demo()?;
    let z0 = Var::from_tensor(&z0)?;
    let ys = if adjoint {
        odeint_adjoint(
            &f,
            z0.as_tensor(),
            &[0.0, 1.0],
            opts,
            &AdjointOptions::default(),
        )?
        .ys
    } else {
        odeint(&f, z0.as_tensor(), &[0.0, 1.0], opts)?.ys
    };
    let loss = ys.get(1)?.sqr()?.sum_all()?;
    let g = loss.backward()?;
    let mut out = vec![g.get(&z0).unwrap().clone()];
    for p in f.params() {
        out.push(g.get(&p).unwrap().clone());
    }
    Ok((loss.to_scalar::<f32>()? as f64, out))
}

fn compare(ours: &(f64, Vec<Tensor>), theirs: &str, bound: f64) -> Result<()> {
    let fx = fixture(theirs)?;
    let want_loss = fx["loss"].to_dtype(DType::F64)?.to_scalar::<f64>()?;
    assert!(
        (ours.0 - want_loss).abs() < 1e-5 * want_loss,
        "{theirs}: loss {} vs {want_loss}",
        ours.0
    );
    for (g, k) in ours
        .1
        .iter()
        .zip(["grad_z0", "grad_w1", "grad_b1", "grad_w2", "grad_b2"])
    {
        let r = max_rel(g, &fx[k])?;
        assert!(
            r < bound,
            "{theirs} {k}: relative difference {r:e} (bound {bound:e})"
        );
    }
    Ok(())
}

#[test]
fn dopri5_gradients_are_as_accurate_as_torchdiffeqs() -> Result<()> {
    // The reference is the RK4 (3/8) gradient with 100 steps, accurate to ~h⁴ = 1e-8 (and
    // matched by ours to f32 round-off below). At rtol = atol = 1e-5, our gradients by
    // backprop and by the adjoint are within 2.5e-6..8.9e-5 of it; torchdiffeq's own dopri5
    // gradient is within 4.6e-5..2.4e-3 (its last step overshoots t = 1 and it differentiates
    // the interpolant back; ours is clipped to end on t = 1).
    let reference = fixture("adjoint_grad_direct_rk4_100")?;
    let theirs = fixture("adjoint_grad_direct_dopri5")?;
    let opts = SolveOptions::default().tolerances(1e-5, 1e-5);
    for (mode, adjoint) in [("direct", false), ("adjoint", true)] {
        let (loss, grads) = ours(&opts, adjoint)?;
        let want_loss = reference["loss"].to_dtype(DType::F64)?.to_scalar::<f64>()?;
        assert!(
            (loss - want_loss).abs() < 1e-5 * want_loss,
            "{mode}: loss {loss} vs {want_loss}"
        );
        for (g, k) in grads
            .iter()
            .zip(["grad_z0", "grad_w1", "grad_b1", "grad_w2", "grad_b2"])
        {
            let ours_err = max_rel(g, &reference[k])?;
            let theirs_err = max_rel(&theirs[k], &reference[k])?;
            assert!(
                ours_err < 2e-4,
                "{mode} {k}: {ours_err:e} from the reference"
            );
            assert!(
                ours_err <= theirs_err,
                "{mode} {k}: ours {ours_err:e}, torchdiffeq {theirs_err:e}"
            );
        }
    }
    Ok(())
}

#[test]
fn rk4_gradients_match_torchdiffeq() -> Result<()> {
    // torchdiffeq's `rk4` is the 3/8 rule; 100 fixed steps over [0, 1]: the same
    // discretization, so f32 round-off apart.
    let opts = SolveOptions::default()
        .method(Method::Rk38)
        .fixed_steps(100);
    compare(&ours(&opts, false)?, "adjoint_grad_direct_rk4_100", 1e-4)?;
    compare(&ours(&opts, true)?, "adjoint_grad_adjoint_rk4_100", 1e-4)?;
    Ok(())
}

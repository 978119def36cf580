//! Gradients through a solve with an implicit method: the adjoint (whose reverse solve is
//! implicit too) against central differences, and checkpointing's refusal.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use node_adjoint::{
    odeint_adjoint, odeint_checkpointed, with_params, AdjointOptions, CheckpointOptions,
};
use node_solvers::{odeint, Method, SolveOptions, SolverError};

/// `dy/dt = A y`, `A = [[−1, θ0], [0, −40 θ1]]` (eigenvalues −1 and −40θ1; y0 = (1, 1)), a
/// mildly stiff system, over `[0, 0.2]`. The adjoint integrates `y` backwards too, where
/// the fast mode grows as `e^{40 t}`: that is why this horizon is short (`e^8` turns the
/// 1e-11 tolerance into a 3e-8 error). On a truly stiff problem (Robertson's) the
/// backward solve of `y` blows up, whatever the method: see the crate README.
fn field(theta: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let (y1, y2) = (y.narrow(0, 0, 1)?, y.narrow(0, 1, 1)?);
    let d1 = ((&y2 * theta.narrow(0, 0, 1)?)? - &y1)?;
    let d2 = (&y2 * theta.narrow(0, 1, 1)?.affine(-40.0, 0.0)?)?;
    Tensor::cat(&[d1, d2], 0)
}

/// `L = y1(T) + 2 y2(T)`.
fn loss(y_t: &Tensor) -> candle_core::Result<Tensor> {
    (y_t * Tensor::new(&[1.0f64, 2.0], y_t.device())?)?.sum_all()
}

fn adjoint_case(dev: &Device) -> Result<()> {
    let th0 = [0.5f64, 1.0];
    let y00 = [1.0f64, 1.0];
    let ts = [0.0, 0.2];
    let theta = Var::new(&th0, dev)?;
    let tv = theta.clone();
    let f = with_params(
        move |_t: f64, y: &Tensor| field(tv.as_tensor(), y),
        vec![theta.clone()],
    );
    let y0 = Var::new(&y00, dev)?;
    for m in [Method::Kvaerno3, Method::Kvaerno5] {
        let opts = SolveOptions::default().method(m).tolerances(1e-11, 1e-13);
        let sol = odeint_adjoint(&f, y0.as_tensor(), &ts, &opts, &AdjointOptions::default())?;
        let l = loss(&sol.ys.get(1)?)?;
        let grads = l.backward()?;
        let g_th = grads.get(&theta).expect("θ").to_vec1::<f64>()?;
        let g_y0 = grads.get(&y0).expect("y0").to_vec1::<f64>()?;

        // Central differences of the forward solve, detached.
        let value = |th: &[f64], y0: &[f64]| -> Result<f64> {
            let tt = Tensor::new(th, dev)?;
            let g = move |_t: f64, y: &Tensor| field(&tt, y);
            let sol = odeint(&g, &Tensor::new(y0, dev)?, &ts, &opts)?;
            Ok(loss(&sol.ys.get(1)?)?.to_scalar::<f64>()?)
        };
        let h = 1e-5;
        for i in 0..2 {
            for (name, got, at_th, at_y) in
                [("θ", g_th[i], true, false), ("y0", g_y0[i], false, true)]
            {
                let (mut th_up, mut th_down, mut y_up, mut y_down) = (th0, th0, y00, y00);
                if at_th {
                    th_up[i] += h;
                    th_down[i] -= h;
                }
                if at_y {
                    y_up[i] += h;
                    y_down[i] -= h;
                }
                let fd = (value(&th_up, &y_up)? - value(&th_down, &y_down)?) / (2.0 * h);
                assert!(
                    (got - fd).abs() < 1e-6 * fd.abs().max(1.0),
                    "{m}: dL/d{name}[{i}]: adjoint {got} against {fd}"
                );
            }
        }
    }

    // Checkpointing replays steps under backprop: refused before solving.
    let opts = SolveOptions::default().method(Method::Kvaerno5);
    let err = odeint_checkpointed(
        &f,
        y0.as_tensor(),
        &ts,
        &opts,
        &CheckpointOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::NotDifferentiable { method: "kvaerno5" })
        ),
        "{err}"
    );
    Ok(())
}

candle_core::test_device!(adjoint_case, adjoint_cpu, adjoint_cuda, adjoint_metal);

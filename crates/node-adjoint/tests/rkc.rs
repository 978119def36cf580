//! Gradients through `rkc` solves (the explicit Runge–Kutta–Chebyshev method for diffusion):
//! the adjoint, solved backwards on a short horizon and interpolated from the forward solve,
//! and backprop through the solver, against central differences of a tight dopri5 solve;
//! checkpointing's refusal.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use node_adjoint::{
    odeint_adjoint, odeint_checkpointed, with_params, AdjointOptions, AdjointState,
    CheckpointOptions,
};
use node_solvers::{odeint, Method, SolveOptions, SolverError};

/// Points of the grid on `[0, 1]` (zero at the ends).
const N: usize = 40;

/// Reaction–diffusion `u' = θ0 u_xx + θ1 u (1 − u)`: with θ0 = 0.1 the diffusion's
/// eigenvalues reach `−4 θ0 (N+1)² ≈ −670`, stiff for an explicit method of fixed stages.
fn field(theta: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    let z = Tensor::zeros(1, u.dtype(), u.device())?;
    let p = Tensor::cat(&[&z, u, &z], 0)?;
    let lap = ((p.narrow(0, 0, N)? + p.narrow(0, 2, N)?)? - u.affine(2.0, 0.0)?)?
        .affine(((N + 1) * (N + 1)) as f64, 0.0)?;
    let diffusion = lap.broadcast_mul(&theta.narrow(0, 0, 1)?)?;
    let logistic = (u * u.affine(-1.0, 1.0)?)?.broadcast_mul(&theta.narrow(0, 1, 1)?)?;
    diffusion + logistic
}

fn initial() -> Vec<f64> {
    (1..=N)
        .map(|i| {
            let x = i as f64 / (N + 1) as f64;
            0.5 * (std::f64::consts::PI * x).sin() + 0.2 * (5.0 * std::f64::consts::PI * x).sin()
        })
        .collect()
}

/// `L = Σ w_i u_i(ts[1]) + Σ w_i u_i(ts[2])²`, `w_i = x_i`: two output times, so the reverse
/// solve restarts once.
fn loss(ys: &Tensor) -> candle_core::Result<Tensor> {
    let w: Vec<f64> = (1..=N).map(|i| i as f64 / (N + 1) as f64).collect();
    let w = Tensor::new(w.as_slice(), ys.device())?;
    let a = (ys.get(1)? * &w)?.sum_all()?;
    let b = (ys.get(2)?.sqr()? * &w)?.sum_all()?;
    a + b
}

fn gradients_case(dev: &Device) -> Result<()> {
    let th0 = [0.1f64, 2.0];
    let y00 = initial();
    let theta = Var::new(&th0, dev)?;
    let tv = theta.clone();
    let f = with_params(
        move |_t: f64, u: &Tensor| field(tv.as_tensor(), u),
        vec![theta.clone()],
    );
    let y0 = Var::new(y00.as_slice(), dev)?;

    // The reference: central differences of dopri5 at tight tolerances.
    let value = |th: &[f64], y0: &[f64], ts: &[f64]| -> Result<f64> {
        let tt = Tensor::new(th, dev)?;
        let g = move |_t: f64, u: &Tensor| field(&tt, u);
        let opts = SolveOptions::default().tolerances(1e-12, 1e-12);
        let sol = odeint(&g, &Tensor::new(y0, dev)?, ts, &opts)?;
        Ok(loss(&sol.ys)?.to_scalar::<f64>()?)
    };
    let reference = |ts: &[f64]| -> Result<(Vec<f64>, Vec<f64>)> {
        let h = 1e-6;
        let mut g_th = vec![];
        for i in 0..2 {
            let (mut up, mut down) = (th0, th0);
            up[i] += h;
            down[i] -= h;
            g_th.push((value(&up, &y00, ts)? - value(&down, &y00, ts)?) / (2.0 * h));
        }
        let mut g_y0 = vec![];
        for i in [3, N / 2, N - 5] {
            let (mut up, mut down) = (y00.clone(), y00.clone());
            up[i] += h;
            down[i] -= h;
            g_y0.push((value(&th0, &up, ts)? - value(&th0, &down, ts)?) / (2.0 * h));
        }
        Ok((g_th, g_y0))
    };
    let check = |what: &str, ts: &[f64], ys: &Tensor, bound: f64| -> Result<()> {
        let grads = loss(ys)?.backward()?;
        let g_th = grads.get(&theta).expect("θ").to_vec1::<f64>()?;
        let g_y0 = grads.get(&y0).expect("y0").to_vec1::<f64>()?;
        let (r_th, r_y0) = reference(ts)?;
        for (i, (g, r)) in g_th.iter().zip(&r_th).enumerate() {
            assert!(
                (g - r).abs() < bound * r.abs().max(1.0),
                "{what}: dL/dθ[{i}] {g} against {r}"
            );
        }
        for (k, (i, r)) in [3, N / 2, N - 5].into_iter().zip(&r_y0).enumerate() {
            let g = g_y0[i];
            assert!(
                (g - r).abs() < bound * r.abs().max(1.0),
                "{what}: dL/dy0[{i}] ({k}) {g} against {r}"
            );
        }
        Ok(())
    };

    let opts = SolveOptions::default()
        .method(Method::Rkc)
        .tolerances(1e-9, 1e-9);
    // Interpolated: y read from the forward solve's Hermite interpolant, the adjoint state
    // solved backwards by rkc; the horizon of a real diffusion problem.
    let ts = [0.0, 0.1, 0.3];
    let interpolated = AdjointOptions::default().state(AdjointState::Interpolated);
    let sol = odeint_adjoint(&f, y0.as_tensor(), &ts, &opts, &interpolated)?;
    check("interpolated", &ts, &sol.ys, 2e-6)?;
    // Backprop through the solver: the discrete solve's gradient.
    let sol = odeint(&f, y0.as_tensor(), &ts, &opts)?;
    check("backprop", &ts, &sol.ys, 2e-6)?;
    // Solved backwards, y included: its diffusion grows backwards (e^{670 t} for the top
    // mode), so only a short horizon; the reverse solve at the forward tolerances.
    let short = [0.0, 0.01, 0.02];
    let sol = odeint_adjoint(
        &f,
        y0.as_tensor(),
        &short,
        &opts,
        &AdjointOptions::default(),
    )?;
    check("backsolve", &short, &sol.ys, 2e-6)?;

    // Checkpointing replays steps, which rkc's estimated stages do not allow.
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
            Some(SolverError::InvalidOptions(_))
        ) && err.to_string().contains("rkc"),
        "{err}"
    );
    Ok(())
}

candle_core::test_device!(
    gradients_case,
    gradients_cpu,
    gradients_cuda,
    gradients_metal
);

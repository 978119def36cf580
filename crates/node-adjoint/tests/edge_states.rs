//! Gradients of solves at the edges of what a solve takes: half-precision states, and states
//! without components.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{
    odeint_adjoint, odeint_adjoint_with_times, odeint_checkpointed, odeint_direct, with_params,
    AdjointOptions, AdjointState, CheckpointOptions,
};
use node_solvers::{Method, SolveOptions};

/// `y' = −θ y` on a `[2, 3]` state of ones, `L = Σ_t Σ y(t)` over `t = 0, 0.5, 1`:
/// `dL/dθ = −6 Σ_t t e^{−θt}` at θ = 0.5. In f16 and bf16 every gradient mode lands within a
/// few percent of it (the error norms are measured in f32: in f16 they overflowed, and the
/// solves failed as non-finite at t = 0).
fn half_precision(dev: &Device) -> Result<()> {
    let theta0 = 0.5f64;
    let ts = [0.0, 0.5, 1.0];
    let want: f64 = -6.0 * ts.iter().map(|t| t * (-theta0 * t).exp()).sum::<f64>();
    // ODE-Net's rtol in f16 (1e-3: `‖f / scale‖²` passes f16's largest value, 65504, at the
    // first step), the finest that bf16 resolves; the default atol, 1e-9, is 0 in f16.
    for (dtype, rtol) in [(DType::F16, 1e-3), (DType::BF16, 1e-2)] {
        for method in [Method::Dopri5, Method::Bosh3, Method::Adams] {
            let opts = SolveOptions::default().method(method).rtol(rtol);
            for mode in ["adjoint", "interpolated", "checkpointed", "backprop"] {
                if method == Method::Adams && matches!(mode, "interpolated" | "checkpointed") {
                    continue; // those need a Runge–Kutta method's dense output
                }
                let theta = Var::from_tensor(&Tensor::new(&[theta0], dev)?.to_dtype(dtype)?)?;
                let th = theta.clone();
                let f = with_params(
                    move |_t, y: &Tensor| y.broadcast_mul(th.as_tensor())?.neg(),
                    vec![theta.clone()],
                );
                let y0 = Tensor::ones((2, 3), dtype, dev)?;
                let ys = match mode {
                    "adjoint" => {
                        odeint_adjoint(&f, &y0, &ts, &opts, &AdjointOptions::default())?.ys
                    }
                    "interpolated" => {
                        let adj = AdjointOptions::default().state(AdjointState::Interpolated);
                        odeint_adjoint(&f, &y0, &ts, &opts, &adj)?.ys
                    }
                    "checkpointed" => {
                        odeint_checkpointed(&f, &y0, &ts, &opts, &CheckpointOptions::default())?.ys
                    }
                    _ => odeint_direct(&f, &y0, &ts, &opts)?.ys,
                };
                assert_eq!(ys.dtype(), dtype);
                let grads = ys.to_dtype(DType::F64)?.sum_all()?.backward()?;
                let got = grads
                    .get(theta.as_tensor())
                    .expect("a gradient for θ")
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?[0];
                assert!(
                    (got - want).abs() < 0.03 * want.abs(),
                    "{dtype:?} {method} {mode}: {got} vs {want}"
                );
            }
        }
    }
    Ok(())
}

/// A state without components (an empty batch): every mode solves it and gives zero
/// gradients to the parameters and the times, the adjoint without a reverse solve (it failed
/// with "seminorm length 0", from inside the reverse solve's options).
fn empty_states(dev: &Device) -> Result<()> {
    let theta = Var::from_tensor(&Tensor::new(&[0.5f64], dev)?)?;
    let th = theta.clone();
    let f = with_params(
        move |_t, y: &Tensor| y.broadcast_mul(th.as_tensor())?.neg(),
        vec![theta.clone()],
    );
    let y0 = Tensor::zeros((4, 0), DType::F64, dev)?;
    let opts = SolveOptions::default();
    let ts = Var::from_tensor(&Tensor::new(&[0.0f64, 0.5, 1.0], dev)?)?;
    for mode in ["backprop", "adjoint", "interpolated"] {
        let ys = match mode {
            "backprop" => odeint_direct(&f, &y0, &[0.0, 0.5, 1.0], &opts)?.ys,
            "adjoint" => {
                let adj = AdjointOptions::default();
                odeint_adjoint_with_times(&f, &y0, ts.as_tensor(), &opts, &adj)?.ys
            }
            _ => {
                let adj = AdjointOptions::default().state(AdjointState::Interpolated);
                odeint_adjoint(&f, &y0, &[0.0, 0.5, 1.0], &opts, &adj)?.ys
            }
        };
        assert_eq!(ys.dims(), &[3, 4, 0], "{mode}");
        let grads = ys.sum_all()?.backward()?;
        for (what, v) in [("θ", &theta), ("ts", &ts)] {
            if let Some(g) = grads.get(v.as_tensor()) {
                assert!(
                    g.to_vec1::<f64>()?.iter().all(|&x| x == 0.0),
                    "{mode} {what}"
                );
            }
        }
        if mode == "adjoint" {
            assert!(grads.get(theta.as_tensor()).is_some() && grads.get(ts.as_tensor()).is_some());
        }
    }
    Ok(())
}

candle_core::test_device!(
    half_precision,
    half_precision_cpu,
    half_precision_cuda,
    half_precision_metal
);
candle_core::test_device!(
    empty_states,
    empty_states_cpu,
    empty_states_cuda,
    empty_states_metal
);

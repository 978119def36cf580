//! Steady states (`odeint_steady_state`): where the field vanishes, against closed forms and
//! a fixed-point iteration; a start already at rest; stiff fields with implicit methods;
//! backwards in time to a repeller; f32; per-component tolerances; and the errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use node_solvers::{odeint_steady_state, Method, SolveOptions, SolverError, SteadyStateOptions};

/// `dy/dt = c − y` on a `[2, 3]` batch comes to rest at `c`; the solve stops once
/// `|c − y| ≤ atol + rtol |y|` in RMS, so `y` is within that of `c`.
fn linear_case(dev: &Device) -> Result<()> {
    let c = Tensor::new(&[[1.0f64, -2.0, 0.5], [3.0, 0.0, -1.0]], dev)?;
    let cc = c.clone();
    let f = move |_t: f64, y: &Tensor| &cc - y;
    let y0 = c.zeros_like()?;
    for m in [
        Method::Dopri5,
        Method::Tsit5,
        Method::Kvaerno5,
        Method::Rodas5P,
    ] {
        let opts = SolveOptions::default().method(m).tolerances(1e-8, 1e-10);
        let ss = SteadyStateOptions::new(1e3).tolerances(1e-6, 1e-8);
        let sol = odeint_steady_state(&f, &y0, 0.0, &opts, &ss)?;
        let e = max_abs_diff(&sol.y, &c)?;
        println!("{m}: t = {:.3}, |y − c| = {e:e}, {:?}", sol.t, sol.stats);
        // RMS of (c − y)/(1e-8 + 1e-6 |y|) is 1 at the stop: each entry is within
        // √6 (1e-8 + 3e-6).
        assert!(e < 2.5 * 3.01e-6, "{m}: |y − c| = {e:e}");
        assert!(e > 1e-8, "{m}: stopped later than needed ({e:e})");
        // The solution is c (1 − e^{−t}): the stop comes near t = ln(|c|/tol) ≈ 13.
        assert!(sol.t > 10.0 && sol.t < 17.0, "{m}: t = {}", sol.t);
    }
    // A start at rest is returned as it is, after one evaluation.
    let opts = SolveOptions::default();
    let sol = odeint_steady_state(&f, &c, 0.0, &opts, &SteadyStateOptions::new(1e3))?;
    assert_eq!(sol.t, 0.0);
    assert_eq!(max_abs_diff(&sol.y, &c)?, 0.0);
    assert_eq!((sol.stats.nfe, sol.stats.accepted_steps), (1, 0));
    Ok(())
}

/// An equilibrium model's forward pass: `dy/dt = tanh(W y + b) − y` with a contraction
/// `W` comes to rest at the fixed point `y = tanh(W y + b)`, which iterating the map finds
/// too; a stiff field (rates 1 and 10⁶) with the implicit methods, in few steps; and
/// backwards in time `dy/dt = y − 2` comes to rest at its repeller 2.
fn nonlinear_stiff_and_backward_case(dev: &Device) -> Result<()> {
    let w = Tensor::new(
        &[[0.3f64, -0.2, 0.1], [0.25, 0.1, -0.3], [-0.1, 0.4, 0.2]],
        dev,
    )?;
    let b = Tensor::new(&[0.5f64, -1.0, 0.8], dev)?;
    let (wf, bf) = (w.clone(), b.clone());
    let f =
        move |_t: f64, y: &Tensor| (wf.matmul(&y.unsqueeze(1)?)?.squeeze(1)? + &bf)?.tanh()? - y;
    let mut fixed = b.zeros_like()?;
    for _ in 0..200 {
        fixed = (w.matmul(&fixed.unsqueeze(1)?)?.squeeze(1)? + &b)?.tanh()?;
    }
    let opts = SolveOptions::default().tolerances(1e-9, 1e-11);
    let ss = SteadyStateOptions::new(1e3).tolerances(1e-9, 1e-11);
    let sol = odeint_steady_state(&f, &b.zeros_like()?, 0.0, &opts, &ss)?;
    let e = max_abs_diff(&sol.y, &fixed)?;
    println!(
        "equilibrium: t = {:.2}, error {e:e}, {:?}",
        sol.t, sol.stats
    );
    assert!(e < 1e-8, "equilibrium error {e:e}");

    let rates = Tensor::new(&[1.0f64, 1e6], dev)?;
    let target = Tensor::new(&[2.0f64, -3.0], dev)?;
    let (r, c) = (rates.clone(), target.clone());
    let stiff = move |_t: f64, y: &Tensor| (&c - y)?.mul(&r);
    let y0 = Tensor::new(&[0.0f64, 0.0], dev)?;
    for m in [Method::Kvaerno5, Method::Rodas5P] {
        // L-stable methods let the state settle: the solve's own tolerances serve to stop.
        let opts = SolveOptions::default().method(m).tolerances(1e-8, 1e-10);
        let ss = SteadyStateOptions::new(1e3).tolerances(1e-8, 1e-10);
        let sol = odeint_steady_state(&stiff, &y0, 0.0, &opts, &ss)?;
        let e = max_abs_diff(&sol.y, &target)?;
        println!("stiff {m}: t = {:.2}, error {e:e}, {:?}", sol.t, sol.stats);
        assert!(e < 1e-7, "stiff {m}: error {e:e}");
        assert!(sol.stats.accepted_steps < 200, "stiff {m}: {:?}", sol.stats);
    }

    let repel = |_t: f64, y: &Tensor| y.affine(1.0, -2.0);
    let y0 = Tensor::new(&[5.0f64, -1.0], dev)?;
    let opts = SolveOptions::default();
    let sol = odeint_steady_state(&repel, &y0, 0.0, &opts, &SteadyStateOptions::new(-1e3))?;
    let e = max_abs_diff(&sol.y, &Tensor::new(&[2.0f64, 2.0], dev)?)?;
    // The default stop, 100 times the solve's rtol of 1e-7: |y − 2| ≈ 1e-5 · 2.
    assert!(
        sol.t < -10.0 && e < 1e-4,
        "backwards: t = {}, error {e:e}",
        sol.t
    );
    Ok(())
}

/// f32 states; the default stopping tolerances, 100 times the solve's, per component
/// when the solve's `atol` is.
fn f32_and_atol_case(dev: &Device) -> Result<()> {
    let f = |_t: f64, y: &Tensor| y.affine(-1.0, 1.0);
    let y0 = Tensor::new(&[0.0f32, 3.0], dev)?;
    let opts = SolveOptions::default().tolerances(1e-7, 1e-8);
    let ss = SteadyStateOptions::new(100.0).tolerances(1e-5, 1e-6);
    let sol = odeint_steady_state(&f, &y0, 0.0, &opts, &ss)?;
    assert_eq!(sol.y.dtype(), DType::F32);
    let e = max_abs_diff(&sol.y, &y0.ones_like()?)?;
    assert!(e < 3e-5, "f32: error {e:e}");
    // By default the stop comes at 100 times the solve's tolerances: |1 − y| about 1e-3
    // for a solve at 1e-5.
    let opts = SolveOptions::default().tolerances(1e-5, 1e-6);
    let sol = odeint_steady_state(&f, &y0, 0.0, &opts, &SteadyStateOptions::new(100.0))?;
    let e = max_abs_diff(&sol.y, &y0.ones_like()?)?;
    assert!(e > 3e-4 && e < 3e-3, "f32, default tolerances: error {e:e}");
    // A loose absolute tolerance on the first component only: the stop is set by the
    // second's tight one, so both are close.
    let atol = Tensor::new(&[1e-1f32, 1e-9], dev)?;
    let opts = SolveOptions::default().rtol(1e-8).atol(&atol);
    let sol = odeint_steady_state(&f, &y0, 0.0, &opts, &SteadyStateOptions::new(100.0))?;
    let y = sol.y.to_vec1::<f32>()?;
    assert!((y[1] - 1.0).abs() < 1e-5, "per-component atol: {y:?}");
    Ok(())
}

fn errors_case(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    // A rotation never comes to rest.
    let rotate =
        |_t: f64, y: &Tensor| Tensor::cat(&[y.narrow(0, 1, 1)?, y.narrow(0, 0, 1)?.neg()?], 0);
    let opts = SolveOptions::default();
    let err =
        odeint_steady_state(&rotate, &y0, 0.0, &opts, &SteadyStateOptions::new(20.0)).unwrap_err();
    match SolverError::find(&err) {
        Some(SolverError::NoSteadyState { t, residual }) => {
            assert_eq!(*t, 20.0);
            assert!(*residual > 1e4, "{err}");
        }
        _ => panic!("{err}"),
    }
    let f = |_t: f64, y: &Tensor| y.neg();
    for (t_max, ss) in [
        (f64::INFINITY, SteadyStateOptions::new(f64::INFINITY)),
        (0.0, SteadyStateOptions::new(0.0)),
    ] {
        let err = odeint_steady_state(&f, &y0, 0.0, &opts, &ss).unwrap_err();
        assert!(
            matches!(SolverError::find(&err), Some(SolverError::InvalidTimes(_))),
            "t_max {t_max}: {err}"
        );
    }
    let ss = SteadyStateOptions::new(10.0).tolerances(-1.0, 1e-6);
    let err = odeint_steady_state(&f, &y0, 0.0, &opts, &ss).unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::InvalidTolerance { name: "rtol", .. })
        ),
        "{err}"
    );
    // A field that turns non-finite.
    let nan = |_t: f64, y: &Tensor| y.affine(0.0, f64::NAN);
    let err =
        odeint_steady_state(&nan, &y0, 0.0, &opts, &SteadyStateOptions::new(10.0)).unwrap_err();
    assert!(
        matches!(SolverError::find(&err), Some(SolverError::NonFinite { .. })),
        "{err}"
    );
    Ok(())
}

candle_core::test_device!(linear_case, linear_cpu, linear_cuda, linear_metal);
candle_core::test_device!(
    nonlinear_stiff_and_backward_case,
    nonlinear_stiff_and_backward_cpu,
    nonlinear_stiff_and_backward_cuda,
    nonlinear_stiff_and_backward_metal
);
candle_core::test_device!(
    f32_and_atol_case,
    f32_and_atol_cpu,
    f32_and_atol_cuda,
    f32_and_atol_metal
);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);

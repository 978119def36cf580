//! The implicit methods on stiff problems: Robertson's kinetics against reference values,
//! L-stability, the Jacobian options, reverse time, f32, and their errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::max_abs_diff;
use node_solvers::problems::{Exponential, Robertson};
use node_solvers::{odeint, Jacobian, Method, SolveOptions, SolverError, StepSize};

/// Largest relative error of each component of `y` (a `[3]` or `[B, 3]` state) against
/// `want`.
fn rel_errors(y: &Tensor, want: &[f64; 3]) -> Result<Vec<f64>> {
    let y = y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(y.iter()
        .enumerate()
        .map(|(i, v)| (v - want[i % 3]).abs() / want[i % 3].abs())
        .collect())
}

fn robertson_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?;
    let [(t40, at40), (t5, at5)] = Robertson::REFERENCE;
    // Measured: kvaerno3 5533 evaluations in 850 steps, kvaerno5 3571 in 168; the worst
    // relative errors 2.3e-6 and 2.6e-6 (y2 at t = 40 comes from the cubic Hermite dense
    // output inside a long kvaerno5 step).
    for (m, rtol, bound, most_nfe) in [
        (Method::Kvaerno3, 1e-6, 1e-4, 10_000),
        (Method::Kvaerno5, 1e-8, 1e-5, 10_000),
    ] {
        // y2 stays below 4e-5: its absolute tolerance must be far below that.
        let opts = SolveOptions::default().method(m).tolerances(rtol, 1e-14);
        let sol = odeint(&p.field(), &y0, &[0.0, t40, t5], &opts)?;
        let e40 = rel_errors(&sol.ys.get(1)?, &at40)?;
        let e5 = rel_errors(&sol.ys.get(2)?, &at5)?;
        println!(
            "{m}: {:?}, relative errors {e40:?} at 40, {e5:?} at 1e5",
            sol.stats
        );
        let worst = e40.iter().chain(&e5).fold(0.0f64, |a, &b| a.max(b));
        assert!(worst < bound, "{m}: relative error {worst:e}");
        assert!(sol.stats.nfe < most_nfe, "{m}: {:?}", sol.stats);
    }
    // An explicit method is held to steps of ~1/λ by stability: dopri5 runs out of steps
    // before t = 40 (the stiffness grows with t).
    let opts = SolveOptions::default().max_steps(20_000);
    let err = odeint(&p.field(), &y0, &[0.0, t40], &opts).unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::MaxStepsExceeded { .. })
        ),
        "{err}"
    );
    Ok(())
}

/// L-stability: one step of size 1 on `y' = −10⁸ y` damps the state to nothing, where an
/// explicit step would multiply it by about 10⁸ⁿ.
fn l_stable_case(dev: &Device) -> Result<()> {
    let p = Exponential { rate: -1e8 };
    let y0 = Tensor::new(&[1.0f64, -2.0], dev)?;
    for m in [Method::ImplicitEuler, Method::Kvaerno3, Method::Kvaerno5] {
        let opts = SolveOptions::default().method(m).fixed_steps(1);
        let y1 = odeint(&p.field(), &y0, &[0.0, 1.0], &opts)?.last()?;
        let worst = max_abs_diff(&y1, &y1.zeros_like()?)?;
        assert!(worst < 1e-6, "{m}: |y(1)| = {worst:e}");
    }
    Ok(())
}

/// A stiff linear problem with a slow forcing, `y' = −λ (y − cos t)`, λ = 10⁶: after the
/// transient the solution is `cos t + sin t / λ + O(1/λ²)`. The implicit methods take steps
/// set by the slow part alone; an explicit method would need ~600 000 (dopri5's stability
/// region reaches to about −3.3 on the real axis).
fn stiff_forcing_case(dev: &Device) -> Result<()> {
    let lambda = 1e6;
    let f = move |t: f64, y: &Tensor| y.affine(-lambda, lambda * t.cos());
    let y0 = Tensor::new(&[1.0f64, 0.0, 3.0], dev)?;
    for m in [Method::ImplicitEuler, Method::Kvaerno3, Method::Kvaerno5] {
        let opts = SolveOptions::default().method(m).tolerances(1e-6, 1e-8);
        let sol = odeint(&f, &y0, &[0.0, 2.0], &opts)?;
        let want = 2.0f64.cos() + 2.0f64.sin() / lambda;
        let e = max_abs_diff(&sol.last()?, &sol.last()?.ones_like()?.affine(want, 0.0)?)?;
        assert!(e < 1e-4, "{m}: error {e:e}");
        println!("{m}: {:?}", sol.stats);
        // First-order implicit Euler needs ~5000 steps at this tolerance (measured 5042).
        assert!(sol.stats.accepted_steps < 10_000, "{m}: {:?}", sol.stats);
    }
    Ok(())
}

/// The three Jacobian options give the same solution; the batched one builds its blocks with
/// 3 evaluations per Jacobian whatever the batch, the dense one with 3·B.
fn jacobian_options_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let b = 4;
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?
        .unsqueeze(0)?
        .repeat((b, 1))?;
    let base = SolveOptions::default()
        .method(Method::Kvaerno3)
        .tolerances(1e-6, 1e-14);
    let [(t40, at40), _] = Robertson::REFERENCE;
    let mut sols = vec![];
    for jac in [Jacobian::Dense, Jacobian::Batched] {
        let sol = odeint(&p.field(), &y0, &[0.0, t40], &base.clone().jacobian(jac))?;
        let worst = rel_errors(&sol.last()?, &at40)?
            .into_iter()
            .fold(0.0f64, f64::max);
        assert!(worst < 1e-4, "{jac:?}: relative error {worst:e}");
        println!("{jac:?}: {:?}", sol.stats);
        sols.push(sol);
    }
    assert!(
        sols[1].stats.nfe < sols[0].stats.nfe,
        "batched {:?} against dense {:?}",
        sols[1].stats,
        sols[0].stats
    );
    // An integral the field accumulates, `∫ y2 dt`, as a fourth component: a prefix of 3.
    let f = p.field();
    let g = move |t: f64, y: &Tensor| -> candle_core::Result<Tensor> {
        let d = f(t, &y.narrow(0, 0, 3)?)?;
        Tensor::cat(&[d, y.narrow(0, 1, 1)?], 0)
    };
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0, 0.0], dev)?;
    let with_integral = odeint(
        &g,
        &y0,
        &[0.0, t40],
        &base.clone().jacobian(Jacobian::DensePrefix(3)),
    )?;
    let worst = rel_errors(&with_integral.last()?.narrow(0, 0, 3)?, &at40)?
        .into_iter()
        .fold(0.0f64, f64::max);
    assert!(worst < 1e-4, "prefix: relative error {worst:e}");
    Ok(())
}

/// Reverse time, and f32 states.
fn reverse_and_f32_case(dev: &Device) -> Result<()> {
    let p = Exponential { rate: -50.0 };
    let y1 = Tensor::new(&[1e-3f64, 2e-3], dev)?;
    for m in [Method::Kvaerno3, Method::Kvaerno5] {
        // Backwards the decay is growth: y(0) = y(0.1) e^5.
        let opts = SolveOptions::default().method(m).tolerances(1e-8, 1e-12);
        let sol = odeint(&p.field(), &y1, &[0.1, 0.05, 0.0], &opts)?;
        let e = max_abs_diff(&sol.last()?, &p.exact(&y1, 0.1, 0.0)?)?;
        // |y(0)| = 0.3: the global error is a few times rtol, relative.
        assert!(e < 1e-7, "{m}: reverse-time error {e:e}");
        // In f32 the solve follows the f64 solve with the same options (the global error
        // itself can reach e^5 times the local one backwards).
        let opts = SolveOptions::default().method(m).tolerances(1e-4, 1e-7);
        let sol32 = odeint(&p.field(), &y1.to_dtype(DType::F32)?, &[0.1, 0.0], &opts)?;
        let sol64 = odeint(&p.field(), &y1, &[0.1, 0.0], &opts)?;
        assert_eq!(sol32.ys.dtype(), DType::F32);
        let d = max_abs_diff(&sol32.last()?.to_dtype(DType::F64)?, &sol64.last()?)?;
        assert!(d < 1e-5, "{m}: f32 against f64 {d:e}");
    }
    Ok(())
}

fn errors_case(dev: &Device) -> Result<()> {
    let p = Exponential { rate: -1.0 };
    let y0 = Tensor::new(&[1.0f64, 2.0], dev)?;
    let opts = SolveOptions::default().method(Method::Kvaerno3);
    let find = |e: &candle_core::Error| SolverError::find(e).cloned();
    // A batched Jacobian needs a batch dimension; a prefix must fit the state.
    let scalar = Tensor::new(1.0f64, dev)?;
    for (y, jac) in [
        (&scalar, Jacobian::Batched),
        (&y0, Jacobian::DensePrefix(0)),
        (&y0, Jacobian::DensePrefix(3)),
    ] {
        let err = odeint(&p.field(), y, &[0.0, 1.0], &opts.clone().jacobian(jac)).unwrap_err();
        assert!(
            matches!(find(&err), Some(SolverError::InvalidOptions(_))),
            "{jac:?}: {err}"
        );
    }
    // y' = y² from 1 with h = 2: `z = 1 + 2z²` has no real root, Newton cannot converge.
    let sq = |_t: f64, y: &Tensor| y.sqr();
    let one = Tensor::new(&[1.0f64], dev)?;
    let fixed = SolveOptions::default()
        .method(Method::ImplicitEuler)
        .fixed_steps(1);
    let err = odeint(&sq, &one, &[0.0, 2.0], &fixed).unwrap_err();
    assert!(
        matches!(find(&err), Some(SolverError::NewtonFailed { t, h }) if t == 0.0 && h == 2.0),
        "{err}"
    );
    // Adaptive steps shrink instead, up to the blow-up at t = 1.
    // The first step, clipped to 0.9, has no root either (hγ = 0.39).
    let adaptive = SolveOptions::default()
        .method(Method::Kvaerno3)
        .first_step(2.0);
    let sol = odeint(&sq, &one, &[0.0, 0.9], &adaptive)?;
    // y(0.9) = 10, with a sensitivity to earlier errors that grows as y².
    let e = max_abs_diff(&sol.last()?, &Tensor::new(&[10.0f64], dev)?)?;
    assert!(e < 1e-4, "error {e:e} at 0.9 ({:?})", sol.stats);
    assert!(sol.stats.rejected_steps > 0, "{:?}", sol.stats);
    // Backprop through Newton's host iterations would be wrong: refused.
    let rate = Var::new(&[-1.0f64], dev)?;
    let tracked = |_t: f64, y: &Tensor| y.broadcast_mul(rate.as_tensor());
    let err = odeint(&tracked, &y0, &[0.0, 1.0], &opts).unwrap_err();
    assert!(
        matches!(
            find(&err),
            Some(SolverError::NotDifferentiable { method: "kvaerno3" })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("odeint_adjoint"), "{err}");
    assert!(matches!(opts.step, StepSize::Adaptive));
    Ok(())
}

candle_core::test_device!(
    robertson_case,
    robertson_cpu,
    robertson_cuda,
    robertson_metal
);
candle_core::test_device!(l_stable_case, l_stable_cpu, l_stable_cuda, l_stable_metal);
candle_core::test_device!(
    stiff_forcing_case,
    stiff_forcing_cpu,
    stiff_forcing_cuda,
    stiff_forcing_metal
);
candle_core::test_device!(
    jacobian_options_case,
    jacobian_options_cpu,
    jacobian_options_cuda,
    jacobian_options_metal
);
candle_core::test_device!(
    reverse_and_f32_case,
    reverse_and_f32_cpu,
    reverse_and_f32_cuda,
    reverse_and_f32_metal
);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);

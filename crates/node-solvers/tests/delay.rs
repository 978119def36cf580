//! Delay equations (`ddeint`): against the method of steps' exact piecewise polynomials and
//! exact exponential solutions, the methods' orders with fixed steps (and the order lost when
//! the steps miss the kinks), the kinks stepped to, steps no longer than a delay, jumps of the
//! history, gradients against central differences, and the errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::{fitted_slope, max_abs_diff};
use node_solvers::delay::{breakpoints, ddeint, History};
use node_solvers::{Method, SolveOptions, SolverError};

/// `y'(t) = −y(t − 1)`.
fn lagged_decay(_t: f64, _y: &Tensor, lagged: &[Tensor]) -> candle_core::Result<Tensor> {
    lagged[0].neg()
}

/// The exact solution of `y' = −y(t − 1)` from `y = 1` on `t ≤ 0` (method of steps): the
/// jump problem of [`jump_exact`] started at −1, `Σ_{k ≥ 0, t ≥ k − 1} (−1)^k (t − k + 1)^k / k!`.
fn lagged_decay_exact(t: f64) -> f64 {
    jump_exact(t + 1.0)
}

/// The exact solution of `y' = −y(t − 1)` from `y(0) = 1` after `y = 0` on `t < 0`: the
/// history jumps at 0, so the field jumps at 1. `Σ_{k ≥ 0, t ≥ k} (−1)^k (t − k)^k / k!`.
fn jump_exact(t: f64) -> f64 {
    let mut sum = 0.0;
    let mut factorial = 1.0;
    for k in 0..=(t.floor() as i32) {
        if k > 0 {
            factorial *= k as f64;
        }
        sum += (-1f64).powi(k) * (t - k as f64).powi(k) / factorial;
    }
    sum
}

fn error_against(ys: &Tensor, ts: &[f64], exact: impl Fn(f64) -> f64) -> Result<f64> {
    let ys = ys.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(ys
        .iter()
        .zip(ts)
        .map(|(y, &t)| (y - exact(t)).abs())
        .fold(0.0, f64::max))
}

fn output_times() -> Vec<f64> {
    (0..=20).map(|i| 0.25 * i as f64).collect()
}

fn adaptive_accuracy(dev: &Device) -> Result<()> {
    // Every adaptive method family, on [0, 10] where the solution has kinks of order 1..10
    // at 1, 2, …: within twice the tolerance, and every kink up to the method's order is a
    // step boundary. Without the dense output's defect control, the steps between kinks (a
    // polynomial there, which the methods integrate almost exactly) grow to the delay and
    // the later steps read their dense output far off: dopri8 stayed at 1.0e-7 whatever the
    // tolerance, kencarp5 at 1e-8 was 3.5e-3 off by t = 5 (checked).
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let ts: Vec<f64> = (0..=40).map(|i| 0.25 * i as f64).collect();
    for (method, tol, bound) in [
        (Method::Dopri5, 1e-8, 2e-8),
        (Method::Tsit5, 1e-8, 2e-8),
        (Method::Dopri8, 1e-8, 2e-8),
        (Method::Dopri8, 1e-11, 2e-11),
        (Method::Bosh3, 1e-7, 2e-7),
        (Method::Kvaerno5, 1e-8, 2e-8),
        (Method::KenCarp5, 1e-8, 2e-8),
        (Method::KenCarp4, 1e-8, 2e-8),
        (Method::Kvaerno3, 1e-7, 2e-7),
        (Method::Rodas4, 1e-8, 2e-8),
        (Method::Ros34pw2, 1e-7, 2e-7),
        (Method::Rodas5P, 1e-8, 2e-8),
        // Second order, its own loop without defect control: the global error of a
        // local-error-controlled second-order method (as in tests/adaptive.rs).
        (Method::Rkc, 1e-8, 1e-5),
    ] {
        let opts = SolveOptions::default().method(method).tolerances(tol, tol);
        let (sol, dense) = ddeint(&lagged_decay, &[1.0], History::Constant, &y0, &ts, &opts)?;
        let err = error_against(&sol.ys, &ts, lagged_decay_exact)?;
        assert!(err < bound, "{method}: error {err:e} at tol {tol:e}");
        let steps = dense.step_times();
        let order = if method == Method::Rkc {
            2
        } else {
            method.order()
        };
        for kink in (1..=order.min(4)).map(|k| k as f64) {
            assert!(steps.contains(&kink), "{method}: no step ends at {kink}");
        }
        // Between outputs the dense solution is as accurate.
        let between: Vec<f64> = (0..50).map(|i| 0.1 * i as f64 + 0.037).collect();
        let err = error_against(
            &dense.evaluate_many(&between)?,
            &between,
            lagged_decay_exact,
        )?;
        assert!(err < bound, "{method}: dense error {err:e}");
    }
    Ok(())
}

/// The exact solution of `y' = −y(t − 1)` on `[0, 2]` from `y = cos t` on `t ≤ 0`: not a
/// polynomial, with a kink of `y'` at 0 (`φ'(0) = 0`, `y'(0) = −cos 1`) and of `y''` at 1.
fn cosine_history_exact(t: f64) -> f64 {
    let s1 = 1f64.sin();
    if t <= 1.0 {
        1.0 - (t - 1.0).sin() - s1
    } else {
        (1.0 - s1) * (2.0 - t) + 1f64.cos() - (t - 2.0).cos()
    }
}

fn fixed_step_orders(dev: &Device) -> Result<()> {
    // Steps that divide the delay land on the kink at 1: the method's order. Steps of
    // 1/(n + 1/3) step over it (a kink of y'' inside one step costs that step O(h³)): the
    // order falls to about 3.
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let cos = |t: f64| Tensor::new(&[t.cos()], dev);
    let ts = [0.0, 0.5, 1.5, 2.0];
    let orders = |method: Method, shift: f64| -> Result<(f64, Vec<f64>)> {
        let (mut hs, mut errs) = (vec![], vec![]);
        for n in [4, 8, 16, 32] {
            let h = 1.0 / (n as f64 + shift);
            let opts = SolveOptions::default().method(method).step_size(h);
            let (sol, _) = ddeint(
                &lagged_decay,
                &[1.0],
                History::Function(&cos),
                &y0,
                &ts,
                &opts,
            )?;
            hs.push(h);
            errs.push(error_against(&sol.ys, &ts, cosine_history_exact)?);
        }
        Ok((fitted_slope(&hs, &errs), errs))
    };
    for (method, order) in [
        (Method::Rk4, 4.0),
        (Method::Midpoint, 2.0),
        (Method::Bosh3, 3.0),
    ] {
        let (slope, errs) = orders(method, 0.0)?;
        assert!(
            (slope - order).abs() < 0.25,
            "{method}: fitted order {slope:.2} ({errs:?})"
        );
    }
    let (slope, errs) = orders(Method::Rk4, 1.0 / 3.0)?;
    assert!(
        slope < 3.5,
        "rk4 across the kinks: fitted order {slope:.2} ({errs:?})"
    );
    Ok(())
}

fn exponential_with_two_delays(dev: &Device) -> Result<()> {
    // y_i = e^{λ_i t} solves y' = a y(t − 1) + b y(t − 0.3) when λ = a e^{−λ} + b e^{−0.3 λ}:
    // with that history the solution is smooth, and exact. A vector state, a history function,
    // two delays, f64 and f32.
    let lambdas = [-0.5f64, 0.3, -1.2];
    let b = [0.2f64, -0.4, 0.7];
    let a: Vec<f64> = lambdas
        .iter()
        .zip(&b)
        .map(|(l, b)| (l - b * (-0.3 * l).exp()) * l.exp())
        .collect();
    for (dtype, tol, bound) in [(DType::F64, 1e-9, 1e-8), (DType::F32, 1e-5, 1e-4)] {
        let at = |t: f64| -> candle_core::Result<Tensor> {
            let v: Vec<f64> = lambdas.iter().map(|l| (l * t).exp()).collect();
            Tensor::new(v.as_slice(), dev)?.to_dtype(dtype)
        };
        let av = Tensor::new(a.as_slice(), dev)?.to_dtype(dtype)?;
        let bv = Tensor::new(b.as_slice(), dev)?.to_dtype(dtype)?;
        let f = |_t: f64, _y: &Tensor, lagged: &[Tensor]| -> candle_core::Result<Tensor> {
            lagged[0].mul(&av)? + lagged[1].mul(&bv)?
        };
        let ts = [0.0, 0.7, 2.0, 4.0];
        let opts = SolveOptions::default().tolerances(tol, tol);
        let (sol, _) = ddeint(
            &f,
            &[1.0, 0.3],
            History::Function(&at),
            &at(0.0)?,
            &ts,
            &opts,
        )?;
        let exact = Tensor::stack(&ts.map(|t| at(t).unwrap()), 0)?;
        let err = max_abs_diff(&sol.ys, &exact)?;
        assert!(err < bound, "{dtype:?}: error {err:e}");
        assert_eq!(sol.ys.dtype(), dtype);
    }
    Ok(())
}

fn history_jump(dev: &Device) -> Result<()> {
    // y = 0 before t0 and y(t0) = 1: the field jumps at t0 + 1 (evaluated on both sides of
    // it). From t0 = −2 too, where the evaluation just before the jump, at the float below
    // −1, has its lag `t − 1` round onto −2 itself: it must still read the history, or the
    // last stage of each step ending at the jump is wrong and the step is rejected again and
    // again.
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let zero = |_t: f64| Tensor::new(&[0.0f64], dev);
    for t0 in [0.0, -2.0] {
        let ts: Vec<f64> = output_times().iter().map(|t| t + t0).collect();
        for method in [Method::Dopri5, Method::Tsit5] {
            let opts = SolveOptions::default()
                .method(method)
                .tolerances(1e-9, 1e-9);
            let (sol, dense) = ddeint(
                &lagged_decay,
                &[1.0],
                History::Function(&zero),
                &y0,
                &ts,
                &opts,
            )?;
            let err = error_against(&sol.ys, &ts, |t| jump_exact(t - t0))?;
            assert!(err < 1e-8, "{method} from {t0}: error {err:e}");
            // Shifted in time, the same steps (the wrong side cost 61 rejections: checked).
            let steps = (sol.stats.accepted_steps, sol.stats.rejected_steps);
            assert_eq!(steps, (11, 0), "{method} from {t0}");
            let just_before = dense.evaluate(t0 + 1.0 - 1e-9)?.to_vec1::<f64>()?[0];
            assert!((just_before - 1.0).abs() < 1e-8, "{just_before}");
        }
    }
    Ok(())
}

fn steps_at_most_a_delay(dev: &Device) -> Result<()> {
    // A slow field an ODE solver would cross in a few steps: each step is at most the delay,
    // also with a larger first step asked for.
    let y0 = Tensor::new(&[1.0f64, 2.0], dev)?;
    let f = |_t: f64, _y: &Tensor, lagged: &[Tensor]| lagged[0].affine(-0.01, 0.0);
    for first in [None, Some(1.0)] {
        let mut opts = SolveOptions::default().tolerances(1e-6, 1e-6);
        opts.first_step = first;
        let (sol, dense) = ddeint(&f, &[0.1], History::Constant, &y0, &[0.0, 3.0], &opts)?;
        let longest = dense
            .step_times()
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0.0, f64::max);
        assert!(longest <= 0.1 + 1e-12, "a step of {longest}");
        assert!(sol.stats.accepted_steps >= 30);
    }
    Ok(())
}

fn gradients_against_differences(dev: &Device) -> Result<()> {
    // y' = a y(t − 0.7) − b y on [0, 3] (kinks at 0.7, 1.4, …): d y(3) / d(a, b, y0) by
    // backprop through the adaptive solve against central differences of tight solves, and
    // with rk4 on a grid dividing the delay, where backprop is the exact derivative of the
    // discrete solve.
    let solve = |a: &Tensor, b: &Tensor, y0: &Tensor, opts: &SolveOptions| -> Result<Tensor> {
        let f = |_t: f64, y: &Tensor, lagged: &[Tensor]| -> candle_core::Result<Tensor> {
            lagged[0].broadcast_mul(a)? - y.broadcast_mul(b)?
        };
        let (sol, _) = ddeint(&f, &[0.7], History::Constant, y0, &[0.0, 3.0], opts)?;
        Ok(sol.last()?.sum_all()?)
    };
    let point = [0.8f64, 0.3, 1.1];
    for (opts, eps, bound) in [
        (SolveOptions::default().tolerances(1e-11, 1e-11), 1e-5, 1e-7),
        (
            SolveOptions::default().method(Method::Rk4).step_size(0.07),
            1e-6,
            1e-8,
        ),
    ] {
        let vars: Vec<Var> = point
            .iter()
            .map(|v| Var::new(&[*v], dev))
            .collect::<candle_core::Result<_>>()?;
        let loss = solve(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            &opts,
        )?;
        let grads = loss.backward()?;
        for i in 0..3 {
            let got = grads.get(&vars[i]).unwrap().to_vec1::<f64>()?[0];
            let at = |d: f64| -> Result<f64> {
                let mut p = point;
                p[i] += d;
                let t: Vec<Tensor> = p
                    .iter()
                    .map(|v| Tensor::new(&[*v], dev))
                    .collect::<candle_core::Result<_>>()?;
                Ok(solve(&t[0], &t[1], &t[2], &opts)?.to_scalar::<f64>()?)
            };
            let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
            assert!(
                (got - fd).abs() < bound * fd.abs().max(1.0),
                "{}: d/dp{i} backprop {got} differences {fd}",
                opts.method
            );
        }
    }
    Ok(())
}

fn breakpoint_sets() -> Result<()> {
    let (first, later) = breakpoints(0.0, 10.0, &[1.0], 4);
    assert_eq!((first, later), (vec![1.0], vec![2.0, 3.0, 4.0]));
    // Sums of two delays, merged where they meet (0.5 + 0.5 = 1 is also the first level's 1).
    let (first, later) = breakpoints(1.0, 3.0, &[0.5, 1.0], 3);
    assert_eq!(first, [1.5, 2.0]);
    assert_eq!(later, [2.5]);
    // Nothing inside the span.
    let (first, later) = breakpoints(0.0, 1.0, &[1.0, 2.0], 5);
    assert!(first.is_empty() && later.is_empty());
    // Many delays, many levels: capped.
    let delays: Vec<f64> = (1..=30)
        .map(|i| 0.01 * i as f64 + 1e-3 / i as f64)
        .collect();
    let (first, later) = breakpoints(0.0, 100.0, &delays, 8);
    assert_eq!(
        first.len() + later.len(),
        node_solvers::delay::MAX_BREAKPOINTS
    );
    Ok(())
}

fn errors(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let ts = [0.0, 2.0];
    let opts = SolveOptions::default();
    let invalid_options = |r: candle_core::Result<_>| {
        let e = r.expect_err("an error");
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(_))),
            "{e}"
        );
        e.to_string()
    };
    let none: [f64; 0] = [];
    let msg = invalid_options(ddeint(
        &lagged_decay,
        &none,
        History::Constant,
        &y0,
        &ts,
        &opts,
    ));
    assert!(msg.contains("at least one delay"), "{msg}");
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        invalid_options(ddeint(
            &lagged_decay,
            &[1.0, bad],
            History::Constant,
            &y0,
            &ts,
            &opts,
        ));
    }
    let msg = invalid_options(ddeint(
        &lagged_decay,
        &[1.0],
        History::Constant,
        &y0,
        &ts,
        &opts.clone().method(Method::Adams),
    ));
    assert!(msg.contains("multistep"), "{msg}");
    let msg = invalid_options(ddeint(
        &lagged_decay,
        &[0.5, 1.0],
        History::Constant,
        &y0,
        &ts,
        &opts.clone().method(Method::Rk4).step_size(0.6),
    ));
    assert!(msg.contains("longer than the shortest delay 0.5"), "{msg}");
    // A step of exactly the delay is one.
    ddeint(
        &lagged_decay,
        &[0.5],
        History::Constant,
        &y0,
        &ts,
        &opts.clone().method(Method::Rk4).step_size(0.5),
    )?;
    let mut tight = opts.clone();
    tight.min_step = 0.7;
    invalid_options(ddeint(
        &lagged_decay,
        &[0.5],
        History::Constant,
        &y0,
        &ts,
        &tight,
    ));
    let e = ddeint(
        &lagged_decay,
        &[1.0],
        History::Constant,
        &y0,
        &[2.0, 0.0],
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(SolverError::find(&e), Some(SolverError::InvalidTimes(_))),
        "{e}"
    );
    let wrong_shape = |_t: f64| Tensor::new(&[1.0f64, 2.0], dev);
    let wrong_dtype = |_t: f64| Tensor::new(&[1.0f32], dev);
    for phi in [
        &wrong_shape as &dyn Fn(f64) -> candle_core::Result<Tensor>,
        &wrong_dtype,
    ] {
        let e = ddeint(
            &lagged_decay,
            &[1.0],
            History::Function(phi),
            &y0,
            &ts,
            &opts,
        )
        .unwrap_err();
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidHistory(_))),
            "{e}"
        );
    }
    // A blow-up is caught as in an ODE solve.
    let grow = |_t: f64, y: &Tensor, lagged: &[Tensor]| y.sqr()?.affine(1e3, 0.0)? + &lagged[0];
    let e = ddeint(&grow, &[1.0], History::Constant, &y0, &[0.0, 10.0], &opts).unwrap_err();
    assert!(SolverError::find(&e).is_some(), "{e}");
    // One output time: no step.
    let (sol, dense) = ddeint(&lagged_decay, &[1.0], History::Constant, &y0, &[0.0], &opts)?;
    assert_eq!(sol.ys.dims(), [1, 1]);
    assert_eq!(dense.step_times(), [0.0]);
    Ok(())
}

#[test]
fn breakpoints_are_sums_of_delays() -> Result<()> {
    breakpoint_sets()
}

candle_core::test_device!(
    adaptive_accuracy,
    adaptive_cpu,
    adaptive_cuda,
    adaptive_metal
);
candle_core::test_device!(fixed_step_orders, orders_cpu, orders_cuda, orders_metal);
candle_core::test_device!(
    exponential_with_two_delays,
    exponential_cpu,
    exponential_cuda,
    exponential_metal
);
candle_core::test_device!(history_jump, jump_cpu, jump_cuda, jump_metal);
candle_core::test_device!(
    steps_at_most_a_delay,
    longest_step_cpu,
    longest_step_cuda,
    longest_step_metal
);
candle_core::test_device!(
    gradients_against_differences,
    gradients_cpu,
    gradients_cuda,
    gradients_metal
);
candle_core::test_device!(errors, errors_cpu, errors_cuda, errors_metal);

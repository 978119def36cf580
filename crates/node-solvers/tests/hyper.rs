//! Hypersolvers: the step formula against closed-form residuals, the order a correction
//! adds, gradients through the corrected steps, residual fitting, and the errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::{fitted_slope, max_abs_diff};
use node_solvers::{hyper_residuals, odeint, odeint_hyper, Method, SolveOptions, SolverError};

/// `y' = Λ y`, Λ diagonal.
const LAMBDA: [f64; 3] = [-1.0, -2.5, 0.7];

fn linear(dev: &Device) -> Result<impl Fn(f64, &Tensor) -> candle_core::Result<Tensor>> {
    let l = Tensor::new(&LAMBDA, dev)?;
    Ok(move |_t: f64, y: &Tensor| y.mul(&l))
}

/// The stability polynomial `R(z)` of the base method: one step of it on `y' = λ y` is
/// `R(λh) y`.
fn stability(method: Method, z: f64) -> f64 {
    let order = match method {
        Method::Euler => 1,
        Method::Midpoint => 2,
        Method::Rk4 => 4,
        m => panic!("no stability polynomial for {m}"),
    };
    (0..=order)
        .map(|k| z.powi(k) / (1..=k).product::<i32>() as f64)
        .sum()
}

/// The exact residual of a `method` step of size `h` on `y' = Λ y`:
/// `(e^(λh) − R(λh)) / h^(p+1)` times `y`, component by component.
fn exact_residual(method: Method, h: f64, dev: &Device) -> Result<Tensor> {
    let p = method.order() as i32;
    let r: Vec<f64> = LAMBDA
        .iter()
        .map(|l| ((l * h).exp() - stability(method, l * h)) / h.powi(p + 1))
        .collect();
    Ok(Tensor::new(r.as_slice(), dev)?)
}

fn exact(t: f64, dev: &Device) -> Result<Tensor> {
    let y: Vec<f64> = LAMBDA.iter().map(|l| (l * t).exp()).collect();
    Ok(Tensor::new(y.as_slice(), dev)?)
}

fn exact_correction_makes_steps_exact(dev: &Device) -> Result<()> {
    let f = linear(dev)?;
    let y0 = Tensor::new(&[1.0f64, 1.0, 1.0], dev)?;
    for method in [Method::Euler, Method::Midpoint, Method::Rk4] {
        for (t0, t1) in [(0.0, 2.0), (2.0, 0.0)] {
            let steps = 8;
            let h: f64 = (t1 - t0) / steps as f64;
            let r = exact_residual(method, h, dev)?;
            let g = |_t: f64, h_: f64, y: &Tensor, _fy: &Tensor| {
                assert_eq!(h_, h);
                y.mul(&r)
            };
            let opts = SolveOptions::default().method(method).fixed_steps(steps);
            let ts = [t0, t0 + (t1 - t0) / 2.0, t1];
            let sol = odeint_hyper(&f, &g, &exact(t0, dev)?.mul(&y0)?, &ts, &opts)?;
            for (i, &t) in ts.iter().enumerate() {
                let err = max_abs_diff(&sol.ys.get(i)?, &exact(t, dev)?)?;
                assert!(err < 1e-12, "{method} {t0}→{t1}: error {err:e} at t = {t}");
            }
            // One evaluation per stage per step; the correction is not counted.
            let stages = method.tableau().unwrap().stages();
            assert_eq!(sol.stats.nfe, steps * stages);
            assert_eq!(sol.stats.accepted_steps, steps);
            assert_eq!(
                sol.stats.host_reads, 1,
                "one read: the finite check at the end"
            );
        }
    }
    Ok(())
}

fn zero_correction_is_the_base_method(dev: &Device) -> Result<()> {
    let f = |t: f64, y: &Tensor| y.sin()?.affine(1.0, t.cos());
    let y0 = Tensor::new(&[[0.3f32, -1.2], [2.0, 0.1]], dev)?;
    let zero = |_t: f64, _h: f64, y: &Tensor, _fy: &Tensor| y.zeros_like();
    for method in [Method::Euler, Method::Heun3, Method::Rk4, Method::Dopri5] {
        let opts = SolveOptions::default().method(method).fixed_steps(10);
        let ts = [0.0, 0.3, 1.0];
        let opts = opts.step_grid(
            (0..=10)
                .map(|i| if i == 3 { 0.3 } else { i as f64 / 10.0 })
                .collect::<Vec<_>>(),
        );
        let hyper = odeint_hyper(&f, &zero, &y0, &ts, &opts)?;
        let plain = odeint(&f, &y0, &ts, &opts)?;
        assert_eq!(
            hyper.ys.flatten_all()?.to_vec1::<f32>()?,
            plain.ys.flatten_all()?.to_vec1::<f32>()?,
            "{method}"
        );
        assert_eq!(hyper.ys.dtype(), DType::F32);
    }
    Ok(())
}

/// Euler corrected by the second Taylor term `g = f'(y) f(y) / 2 = Λ² y / 2` is Taylor's
/// method of order 2: the correction's own error `O(h)` leaves a local error `O(h³)`.
fn correction_raises_the_order(dev: &Device) -> Result<()> {
    let f = linear(dev)?;
    let half_l2 = Tensor::new(&LAMBDA.map(|l| l * l / 2.0), dev)?;
    let taylor = |_t: f64, _h: f64, y: &Tensor, _fy: &Tensor| y.mul(&half_l2);
    let zero = |_t: f64, _h: f64, y: &Tensor, _fy: &Tensor| y.zeros_like();
    let y0 = exact(0.0, dev)?;
    let want = exact(1.0, dev)?;
    let counts = [16, 32, 64, 128];
    let hs: Vec<f64> = counts.iter().map(|&n| 1.0 / n as f64).collect();
    let mut errs = (vec![], vec![]);
    for &n in &counts {
        let opts = SolveOptions::default().method(Method::Euler).fixed_steps(n);
        let c = odeint_hyper(&f, &taylor, &y0, &[0.0, 1.0], &opts)?;
        let z = odeint_hyper(&f, &zero, &y0, &[0.0, 1.0], &opts)?;
        errs.0.push(max_abs_diff(&c.last()?, &want)?);
        errs.1.push(max_abs_diff(&z.last()?, &want)?);
    }
    let (corrected, plain) = (fitted_slope(&hs, &errs.0), fitted_slope(&hs, &errs.1));
    assert!((corrected - 2.0).abs() < 0.1, "corrected order {corrected}");
    assert!((plain - 1.0).abs() < 0.1, "Euler's order {plain}");
    Ok(())
}

fn residuals_along_the_exact_solution(dev: &Device) -> Result<()> {
    let f = linear(dev)?;
    for method in [Method::Euler, Method::Midpoint, Method::Rk4] {
        // Unequal steps: each residual is scaled by its own h.
        let ts = [0.0, 0.1, 0.25, 0.3, 0.6];
        let ys = Tensor::stack(
            &ts.iter()
                .map(|&t| exact(t, dev))
                .collect::<Result<Vec<_>>>()?,
            0,
        )?;
        let res = hyper_residuals(&f, method, &ts, &ys)?;
        assert_eq!(res.len(), 4);
        assert_eq!(res.targets.dims(), &[4, 3]);
        for k in 0..4 {
            let h = ts[k + 1] - ts[k];
            assert_eq!(res.hs[k], h);
            let want = exact_residual(method, h, dev)?.mul(&exact(ts[k], dev)?)?;
            let err = max_abs_diff(&res.targets.get(k)?, &want)?;
            // A difference of O(1) states divided by h^(p+1): rounding is amplified as much.
            let p = method.order() as i32;
            let tol = 32.0 * f64::EPSILON * (LAMBDA[2] * ts[k + 1]).exp() / h.powi(p + 1);
            assert!(err <= tol, "{method} step {k}: {err:e} > {tol:e}");
            let fy = max_abs_diff(&res.fys.get(k)?, &f(ts[k], &res.ys.get(k)?)?)?;
            assert_eq!(fy, 0.0);
        }
        // The exact residual fits with zero loss; no correction leaves the mean of R².
        let r_steps: Vec<Tensor> = (0..4)
            .map(|k| exact_residual(method, ts[k + 1] - ts[k], dev))
            .collect::<Result<_>>()?;
        let fitted = |t: f64, _h: f64, y: &Tensor, _fy: &Tensor| {
            let k = ts.iter().position(|&s| s == t).unwrap();
            y.mul(&r_steps[k])
        };
        let loss = res.loss(&fitted)?.to_scalar::<f64>()?;
        let zero = |_t: f64, _h: f64, y: &Tensor, _fy: &Tensor| y.zeros_like();
        let unfitted = res.loss(&zero)?.to_scalar::<f64>()?;
        let mean_sq = res.targets.sqr()?.mean_all()?.to_scalar::<f64>()?;
        assert!(loss < 1e-18 * mean_sq.max(1.0), "{method}: {loss:e}");
        assert!((unfitted - mean_sq).abs() <= 1e-12 * mean_sq, "{method}");
    }
    Ok(())
}

/// `g = θ ⊙ fy` with `θ` a parameter: backprop through the corrected steps against central
/// differences, in `θ` and in `y0`.
fn gradients_through_the_steps(dev: &Device) -> Result<()> {
    let f = |_t: f64, y: &Tensor| y.tanh()?.neg();
    let theta0 = [0.4f64, -0.3];
    let y00 = [0.8f64, -0.5];
    let opts = SolveOptions::default()
        .method(Method::Midpoint)
        .fixed_steps(5);
    let loss = |theta: &Tensor, y0: &Tensor| -> candle_core::Result<Tensor> {
        let g = |_t: f64, _h: f64, _y: &Tensor, fy: &Tensor| fy.mul(theta);
        let sol = odeint_hyper(&f, &g, y0, &[0.0, 1.5], &opts)?;
        sol.last()?.sqr()?.sum_all()
    };
    let theta = Var::new(&theta0, dev)?;
    let y0 = Var::new(&y00, dev)?;
    let grads = loss(theta.as_tensor(), y0.as_tensor())?.backward()?;
    let (gt, gy) = (
        grads.get(&theta).unwrap().to_vec1::<f64>()?,
        grads.get(&y0).unwrap().to_vec1::<f64>()?,
    );
    let eps = 1e-6;
    for i in 0..2 {
        let bump = |v: [f64; 2], d: f64| {
            let mut v = v;
            v[i] += d;
            Tensor::new(&v, dev)
        };
        let fd = |th: Tensor, y: Tensor| -> Result<f64> { Ok(loss(&th, &y)?.to_scalar::<f64>()?) };
        let d_theta = (fd(bump(theta0, eps)?, Tensor::new(&y00, dev)?)?
            - fd(bump(theta0, -eps)?, Tensor::new(&y00, dev)?)?)
            / (2.0 * eps);
        let d_y0 = (fd(Tensor::new(&theta0, dev)?, bump(y00, eps)?)?
            - fd(Tensor::new(&theta0, dev)?, bump(y00, -eps)?)?)
            / (2.0 * eps);
        assert!(
            (gt[i] - d_theta).abs() < 1e-8,
            "θ[{i}]: {} vs {d_theta}",
            gt[i]
        );
        assert!((gy[i] - d_y0).abs() < 1e-8, "y0[{i}]: {} vs {d_y0}", gy[i]);
    }
    Ok(())
}

/// A linear correction `g = a ⊙ y` fitted by gradient descent on the residual loss of Euler
/// on `y' = Λ y` with `h = 0.25` converges to the exact residual, and the fitted hypersolver
/// is then as exact as the reference.
fn fitted_correction(dev: &Device) -> Result<()> {
    let f = linear(dev)?;
    let steps = 8;
    let h = 2.0 / steps as f64;
    let ts: Vec<f64> = (0..=steps).map(|i| i as f64 * h).collect();
    let ys = Tensor::stack(
        &ts.iter()
            .map(|&t| exact(t, dev))
            .collect::<Result<Vec<_>>>()?,
        0,
    )?;
    let res = hyper_residuals(&f, Method::Euler, &ts, &ys)?;
    let a = Var::new(&[0.0f64, 0.0, 0.0], dev)?;
    let g = |_t: f64, _h: f64, y: &Tensor, _fy: &Tensor| y.mul(a.as_tensor());
    // The loss is quadratic in `a` with curvature `2 Σ_k y_kj² / (3K)`, at most 4 here
    // (λ = 0.7): a step of 0.4 contracts every component.
    for _ in 0..3000 {
        let grads = res.loss(&g)?.backward()?;
        let ga = grads.get(&a).unwrap();
        a.set(&(a.as_tensor() - ga.affine(0.4, 0.0)?)?)?;
    }
    let want = exact_residual(Method::Euler, h, dev)?;
    let err = max_abs_diff(a.as_tensor(), &want)?;
    assert!(err < 1e-6, "fitted a is {err:e} off");
    let opts = SolveOptions::default()
        .method(Method::Euler)
        .fixed_steps(steps);
    let fitted = odeint_hyper(&f, &g, &exact(0.0, dev)?, &[0.0, 2.0], &opts)?;
    let plain = odeint(&f, &exact(0.0, dev)?, &[0.0, 2.0], &opts)?;
    let (e_fit, e_plain) = (
        max_abs_diff(&fitted.last()?, &exact(2.0, dev)?)?,
        max_abs_diff(&plain.last()?, &exact(2.0, dev)?)?,
    );
    assert!(
        e_fit < 1e-5 && e_plain > 0.1,
        "{e_fit:e} vs Euler's {e_plain:e}"
    );
    Ok(())
}

fn solver_error<T: std::fmt::Debug>(r: candle_core::Result<T>) -> SolverError {
    let e = r.expect_err("expected an error");
    SolverError::find(&e)
        .unwrap_or_else(|| panic!("not a SolverError: {e}"))
        .clone()
}

fn errors(dev: &Device) -> Result<()> {
    let f = linear(dev)?;
    let y0 = exact(0.0, dev)?;
    let zero = |_t: f64, _h: f64, y: &Tensor, _fy: &Tensor| y.zeros_like();
    let euler = SolveOptions::default().method(Method::Euler).fixed_steps(4);
    let invalid = |r: candle_core::Result<_>, needle: &str| match solver_error(r) {
        SolverError::InvalidOptions(m) => assert!(m.contains(needle), "{m}"),
        e => panic!("expected InvalidOptions ({needle}), got {e}"),
    };
    invalid(
        odeint_hyper(&f, &zero, &y0, &[0.0, 1.0], &SolveOptions::default()),
        "fixed steps",
    );
    invalid(
        odeint_hyper(
            &f,
            &zero,
            &y0,
            &[0.0, 1.0],
            &euler.clone().method(Method::Kvaerno3),
        ),
        "implicit",
    );
    invalid(
        odeint_hyper(
            &f,
            &zero,
            &y0,
            &[0.0, 1.0],
            &euler.clone().method(Method::ExplicitAdams),
        ),
        "multistep",
    );
    invalid(
        odeint_hyper(
            &f,
            &zero,
            &y0,
            &[0.0, 1.0],
            &euler.clone().jump_ts(vec![0.5]),
        ),
        "jumps",
    );
    // 0.3 is inside the second of four steps.
    match solver_error(odeint_hyper(&f, &zero, &y0, &[0.0, 0.3, 1.0], &euler)) {
        SolverError::InvalidTimes(m) => assert!(m.contains("ts[1] = 0.3"), "{m}"),
        e => panic!("expected InvalidTimes, got {e}"),
    }
    let wrong = |_t: f64, _h: f64, y: &Tensor, _fy: &Tensor| y.narrow(0, 0, 2);
    match solver_error(odeint_hyper(&f, &wrong, &y0, &[0.0, 1.0], &euler)) {
        SolverError::OutputMismatch(m) => assert!(m.contains("correction"), "{m}"),
        e => panic!("expected OutputMismatch, got {e}"),
    }
    let f32_out = |_t: f64, _h: f64, y: &Tensor, _fy: &Tensor| y.to_dtype(DType::F32);
    assert!(matches!(
        solver_error(odeint_hyper(&f, &f32_out, &y0, &[0.0, 1.0], &euler)),
        SolverError::OutputMismatch(_)
    ));
    // A correction that blows up: reported at the first output time that is not finite.
    let nan = |t: f64, _h: f64, y: &Tensor, _fy: &Tensor| {
        y.affine(0.0, if t >= 0.5 { f64::NAN } else { 0.0 })
    };
    match solver_error(odeint_hyper(&f, &nan, &y0, &[0.0, 0.5, 0.75, 1.0], &euler)) {
        SolverError::NonFinite { t } => assert_eq!(t, 0.75),
        e => panic!("expected NonFinite, got {e}"),
    }
    // Residuals: too few times, mismatched states, an implicit method.
    let ys = Tensor::stack(&[exact(0.0, dev)?, exact(1.0, dev)?], 0)?;
    assert!(matches!(
        solver_error(hyper_residuals(
            &f,
            Method::Euler,
            &[0.0],
            &ys.narrow(0, 0, 1)?
        )),
        SolverError::InvalidTimes(_)
    ));
    assert!(matches!(
        solver_error(hyper_residuals(&f, Method::Euler, &[0.0, 0.5, 1.0], &ys)),
        SolverError::OutputMismatch(_)
    ));
    match solver_error(hyper_residuals(&f, Method::ImplicitEuler, &[0.0, 1.0], &ys)) {
        SolverError::InvalidOptions(m) => assert!(m.contains("implicit"), "{m}"),
        e => panic!("expected InvalidOptions, got {e}"),
    }
    Ok(())
}

candle_core::test_device!(
    exact_correction_makes_steps_exact,
    exact_correction_makes_steps_exact_cpu,
    exact_correction_makes_steps_exact_cuda,
    exact_correction_makes_steps_exact_metal
);
candle_core::test_device!(
    zero_correction_is_the_base_method,
    zero_correction_is_the_base_method_cpu,
    zero_correction_is_the_base_method_cuda,
    zero_correction_is_the_base_method_metal
);
candle_core::test_device!(
    correction_raises_the_order,
    correction_raises_the_order_cpu,
    correction_raises_the_order_cuda,
    correction_raises_the_order_metal
);
candle_core::test_device!(
    residuals_along_the_exact_solution,
    residuals_along_the_exact_solution_cpu,
    residuals_along_the_exact_solution_cuda,
    residuals_along_the_exact_solution_metal
);
candle_core::test_device!(
    gradients_through_the_steps,
    gradients_through_the_steps_cpu,
    gradients_through_the_steps_cuda,
    gradients_through_the_steps_metal
);
candle_core::test_device!(
    fitted_correction,
    fitted_correction_cpu,
    fitted_correction_cuda,
    fitted_correction_metal
);
candle_core::test_device!(errors, errors_cpu, errors_cuda, errors_metal);

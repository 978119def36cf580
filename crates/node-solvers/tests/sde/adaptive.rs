//! Adaptive SDE steps (`SdeOptions::adaptive`), a module of `tests/sde.rs`: convergence to
//! the solution along the path as the tolerances fall, steps where the noise is, output
//! times hit exactly, reverse time, gradients, counts and errors.

use super::{gbm, gbm_exact, mean_abs, solver_error, EVALS_PER_STEP, MU, SIGMA};
use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_solvers::{
    sdeint, Calculus, SdeAdaptive, SdeErrorEstimate, SdeMethod, SdeOptions, SolverError,
    VirtualBrownianTree,
};
use std::cell::RefCell;

/// As the tolerances fall the error against the exact solution along the path falls, at
/// every output time, and the steps grow in number.
fn converges(dev: &Device) -> Result<()> {
    let n = 200;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, n, 21, DType::F64, dev)?;
    let y0 = Tensor::ones(n, DType::F64, dev)?;
    let ts = [0.0, 0.3, 0.7, 1.0];
    for method in [
        SdeMethod::EulerMaruyama,
        SdeMethod::ItoMilstein,
        SdeMethod::Heun,
        SdeMethod::Midpoint,
    ] {
        let (mut errs, mut steps) = (Vec::new(), Vec::new());
        for tol in [1e-2, 1e-3, 1e-4] {
            let opts = SdeOptions::default()
                .method(method)
                .dt(0.01)
                .adaptive(SdeAdaptive::new(tol, tol).dt_min(1e-7));
            let sol = sdeint(&gbm(), &y0, &ts, &bm, &opts)?;
            let mut err: f64 = 0.0;
            for (i, &t) in ts.iter().enumerate() {
                let exact = gbm_exact(&y0, &bm.value(t)?, t, method.calculus())?;
                err = err.max(mean_abs(&sol.ys.get(i)?, &exact)?);
            }
            errs.push(err);
            steps.push(sol.stats.steps);
        }
        eprintln!("{method}: errors {errs:?}, steps {steps:?}");
        assert!(errs[2] < errs[0] / 3.0, "{method}: errors {errs:?}");
        assert!(
            steps[0] < steps[1] && steps[1] < steps[2],
            "{method}: {steps:?}"
        );
    }
    Ok(())
}

/// A diffusion that is large only around `t = 0.55`: the adaptive solve takes its steps
/// there, and is more accurate than fixed steps for the same evaluations (each attempt
/// costs three steps).
fn steps_follow_the_noise(dev: &Device) -> Result<()> {
    let n = 200;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, n, 22, DType::F64, dev)?;
    let y0 = Tensor::ones(n, DType::F64, dev)?;
    let sigma = |t: f64| 0.05 + 2.0 * (-((t - 0.55) / 0.03).powi(2)).exp();
    let times = RefCell::new(Vec::new());
    let sde = (
        |_t: f64, y: &Tensor| y.affine(-0.5, 0.0),
        |t: f64, y: &Tensor| {
            times.borrow_mut().push(t);
            y.affine(sigma(t), 0.0)
        },
    );
    let reference = {
        // Off the solution by about 1e-4 (Heun is of order 1 here: 1e-2 at dt 1.6e-3).
        let opts = SdeOptions::default().method(SdeMethod::Heun).dt(2e-5);
        sdeint(&sde, &y0, &[0.0, 1.0], &bm, &opts)?.last()?
    };
    times.borrow_mut().clear();
    let opts = SdeOptions::default()
        .method(SdeMethod::Heun)
        .dt(0.01)
        .adaptive(SdeAdaptive::new(1e-3, 1e-3).dt_min(1e-7));
    let adaptive = sdeint(&sde, &y0, &[0.0, 1.0], &bm, &opts)?;
    let steps = adaptive.stats.steps;
    let attempts = steps + adaptive.stats.rejected_steps;
    let near = times
        .borrow()
        .iter()
        .filter(|&&t| (0.45..0.65).contains(&t))
        .count() as f64
        / times.borrow().len() as f64;
    let fixed = SdeOptions::default()
        .method(SdeMethod::Heun)
        .dt(1.0 / (3 * attempts) as f64);
    let fixed_err = mean_abs(
        &sdeint(&sde, &y0, &[0.0, 1.0], &bm, &fixed)?.last()?,
        &reference,
    )?;
    let adaptive_err = mean_abs(&adaptive.last()?, &reference)?;
    eprintln!(
        "{steps} steps ({} rejected), {near:.2} of the evaluations in [0.45, 0.65]; \
         error {adaptive_err:.2e} adaptive, {fixed_err:.2e} fixed",
        adaptive.stats.rejected_steps
    );
    assert!(near > 0.5, "{near} of the evaluations near the bump");
    assert!(
        adaptive_err < fixed_err / 3.0,
        "{adaptive_err} vs {fixed_err}"
    );
    Ok(())
}

/// Backwards in time along the same path, Heun from the exact `y(1)` lands near `y0`.
fn reverse_time(dev: &Device) -> Result<()> {
    let n = 200;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, n, 23, DType::F64, dev)?;
    let y0 = Tensor::ones(n, DType::F64, dev)?;
    let y1 = gbm_exact(&y0, &bm.value(1.0)?, 1.0, Calculus::Stratonovich)?;
    let mut errs = Vec::new();
    for tol in [1e-2, 1e-4] {
        let opts = SdeOptions::default()
            .method(SdeMethod::Heun)
            .dt(0.01)
            .adaptive(SdeAdaptive::new(tol, tol).dt_min(1e-7));
        let sol = sdeint(&gbm(), &y1, &[1.0, 0.0], &bm, &opts)?;
        errs.push(mean_abs(&sol.last()?, &y0)?);
    }
    eprintln!("reverse: errors {errs:?}");
    // Measured: 2.1e-2 and 1.4e-3, as forwards (`converges`: Heun 5.1e-2 and 2.8e-3).
    assert!(errs[1] < errs[0] / 10.0 && errs[1] < 3e-3, "{errs:?}");
    Ok(())
}

/// Backprop through the accepted steps: `∂y(1)/∂μ = y(1)` for Stratonovich GBM. The
/// gradient's error falls with the tolerances as the solution's does (the step sizes, chosen
/// from detached error estimates, are not differentiated).
fn gradients(dev: &Device) -> Result<()> {
    let n = 100;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, n, 24, DType::F64, dev)?;
    let mu = Var::new(MU, dev)?;
    let m = mu.as_tensor().clone();
    let sde = (
        move |_t: f64, y: &Tensor| y.broadcast_mul(&m),
        |_t: f64, y: &Tensor| y.affine(SIGMA, 0.0),
    );
    let y0 = Tensor::ones(n, DType::F64, dev)?;
    let exact = gbm_exact(&y0, &bm.value(1.0)?, 1.0, Calculus::Stratonovich)?
        .sum_all()?
        .to_scalar::<f64>()?;
    let mut errs = Vec::new();
    for tol in [1e-3, 1e-4, 1e-5] {
        let opts = SdeOptions::default()
            .method(SdeMethod::Midpoint)
            .dt(0.01)
            .adaptive(SdeAdaptive::new(tol, tol).dt_min(1e-7));
        let sol = sdeint(&sde, &y0, &[0.0, 1.0], &bm, &opts)?;
        assert!(sol.stats.rejected_steps > 0, "no step was rejected");
        let y1 = sol.last()?;
        let grads = y1.sum_all()?.backward()?;
        let dmu = grads.get(mu.as_tensor()).expect("dμ").to_scalar::<f64>()?;
        let solution = (y1.sum_all()?.to_scalar::<f64>()? - exact).abs() / exact;
        let rel = (dmu - exact).abs() / exact;
        eprintln!("tol {tol:e}: dμ off by {rel:.2e} relative, y(1) by {solution:.2e}");
        errs.push(rel);
    }
    assert!(errs[2] < errs[0] / 10.0 && errs[2] < 1e-3, "{errs:?}");
    Ok(())
}

candle_core::test_device!(converges, converges_cpu, converges_cuda, converges_metal);
candle_core::test_device!(
    steps_follow_the_noise,
    steps_follow_the_noise_cpu,
    steps_follow_the_noise_cuda,
    steps_follow_the_noise_metal
);
candle_core::test_device!(
    reverse_time,
    reverse_time_cpu,
    reverse_time_cuda,
    reverse_time_metal
);
candle_core::test_device!(gradients, gradients_cpu, gradients_cuda, gradients_metal);

/// Each attempt takes the step whole and in two halves (three steps' evaluations) and reads
/// its error ratio once; the outputs are read once more at the end.
#[test]
fn counts() -> Result<()> {
    let dev = Device::Cpu;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, 50, 25, DType::F64, &dev)?;
    let y0 = Tensor::ones(50, DType::F64, &dev)?;
    let ts = [0.0, 0.25, 1.0];
    for (method, drift, diffusion) in EVALS_PER_STEP {
        let opts = SdeOptions::default()
            .method(method)
            .dt(0.05)
            .adaptive(SdeAdaptive::new(1e-3, 1e-3).dt_min(1e-7));
        let s = sdeint(&gbm(), &y0, &ts, &bm, &opts)?.stats;
        let attempts = s.steps + s.rejected_steps;
        assert!(s.steps >= 2 && s.rejected_steps > 0, "{method}: {s:?}");
        assert_eq!(s.drift_evals, 3 * attempts * drift, "{method}");
        assert_eq!(s.diffusion_evals, 3 * attempts * diffusion, "{method}");
        assert_eq!(s.host_reads, attempts + 1, "{method}");
        let unchecked = sdeint(&gbm(), &y0, &ts, &bm, &opts.clone().check_finite(false))?;
        assert_eq!(unchecked.stats.host_reads, attempts, "{method}");
    }
    // Loose tolerances and a large first step: one step per interval, each cut at the
    // output time, none rejected.
    let opts = SdeOptions::default()
        .method(SdeMethod::Heun)
        .dt(1.0)
        .adaptive(SdeAdaptive::new(1e3, 1e3));
    let s = sdeint(&gbm(), &y0, &ts, &bm, &opts)?.stats;
    assert_eq!((s.steps, s.rejected_steps), (2, 0));
    // `dt_max` bounds every step: [0, 0.25] in 3 steps of at most 0.1, [0.25, 1] in 8.
    let s = sdeint(
        &gbm(),
        &y0,
        &ts,
        &bm,
        &opts
            .clone()
            .dt(0.1)
            .adaptive(SdeAdaptive::new(1e3, 1e3).dt_max(0.1)),
    )?
    .stats;
    assert_eq!((s.steps, s.rejected_steps), (3 + 8, 0));
    Ok(())
}

#[test]
fn errors() -> Result<()> {
    let dev = Device::Cpu;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, 10, 26, DType::F64, &dev)?;
    let y0 = Tensor::ones(10, DType::F64, &dev)?;
    let ts = [0.0, 1.0];
    let adaptive = SdeAdaptive::new(1e-3, 1e-3);
    let base = SdeOptions::default().method(SdeMethod::Heun).dt(0.01);
    let run = |opts: SdeOptions| sdeint(&gbm(), &y0, &ts, &bm, &opts);
    for (name, a) in [
        ("rtol", SdeAdaptive::new(0.0, 1e-3)),
        ("atol", SdeAdaptive::new(1e-3, f64::NAN)),
        ("atol", SdeAdaptive::new(1e-3, -1.0)),
    ] {
        let e = run(base.clone().adaptive(a)).expect_err(name);
        assert!(
            matches!(solver_error(&e), SolverError::InvalidTolerance { name: n, .. } if n == name),
            "{e}"
        );
    }
    let invalid = |opts: SdeOptions, what: &str| {
        let e = run(opts).expect_err(what);
        assert!(
            matches!(solver_error(&e), SolverError::InvalidOptions(_)),
            "{what}: {e}"
        );
        e.to_string()
    };
    invalid(base.clone().adaptive(adaptive.dt_min(-1.0)), "dt_min < 0");
    invalid(base.clone().adaptive(adaptive.dt_max(0.0)), "dt_max = 0");
    invalid(
        base.clone().adaptive(adaptive.dt_min(0.1).dt_max(0.01)),
        "dt_min > dt_max",
    );
    let msg = invalid(base.clone().adaptive(adaptive.dt_min(0.1)), "dt < dt_min");
    assert!(msg.contains("first adaptive step"), "{msg}");
    let msg = invalid(
        base.clone()
            .method(SdeMethod::ReversibleHeun)
            .adaptive(adaptive),
        "reversible Heun",
    );
    assert!(msg.contains("fixed steps"), "{msg}");
    // Tolerances the smallest step cannot meet.
    let e = run(base
        .clone()
        .adaptive(SdeAdaptive::new(1e-12, 1e-12).dt_min(1e-3)))
    .expect_err("too tight");
    assert!(
        matches!(solver_error(&e), SolverError::StepSizeTooSmall { .. }),
        "{e}"
    );
    // Too many attempts: counted as they are made.
    let e = run(base.clone().max_steps(5).adaptive(adaptive)).expect_err("max_steps");
    assert!(
        matches!(
            solver_error(&e),
            SolverError::MaxStepsExceeded { steps: 5, .. }
        ),
        "{e}"
    );
    // A diffusion that turns to NaN at t > 0.5: every attempt past it is rejected until the
    // step is the smallest, then the error says so, at the time it was met.
    let nan = (
        |_t: f64, y: &Tensor| y.affine(MU, 0.0),
        |t: f64, y: &Tensor| y.affine(if t > 0.5 { f64::NAN } else { SIGMA }, 0.0),
    );
    let e = sdeint(&nan, &y0, &ts, &bm, &base.clone().adaptive(adaptive)).expect_err("NaN");
    match solver_error(&e) {
        SolverError::NonFinite { t } => assert!((0.45..=0.5).contains(&t), "at {t}"),
        other => panic!("expected NonFinite, got {other}"),
    }
    Ok(())
}

/// The embedded Euler–Maruyama estimate of Heun and the midpoint method: one step's
/// evaluations per attempt, convergence as the tolerances fall, and a refusal for the
/// methods without one.
#[test]
fn embedded_estimate() -> Result<()> {
    let dev = Device::Cpu;
    let n = 200;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, n, 28, DType::F64, &dev)?;
    let y0 = Tensor::ones(n, DType::F64, &dev)?;
    let ts = [0.0, 0.5, 1.0];
    let exact = gbm_exact(&y0, &bm.value(1.0)?, 1.0, Calculus::Stratonovich)?;
    for method in [SdeMethod::Heun, SdeMethod::Midpoint] {
        let mut errs = Vec::new();
        for tol in [1e-2, 1e-3, 1e-4] {
            let a = SdeAdaptive::new(tol, tol)
                .dt_min(1e-7)
                .estimate(SdeErrorEstimate::Embedded);
            let opts = SdeOptions::default().method(method).dt(0.01).adaptive(a);
            let sol = sdeint(&gbm(), &y0, &ts, &bm, &opts)?;
            let s = sol.stats;
            let attempts = s.steps + s.rejected_steps;
            assert_eq!(s.drift_evals, 2 * attempts, "{method}");
            assert_eq!(s.host_reads, attempts + 1, "{method}");
            let err = mean_abs(&sol.last()?, &exact)?;
            eprintln!(
                "{method} embedded, tol {tol:e}: {} steps ({} rejected), {} drift evaluations, error {err:.2e}",
                s.steps, s.rejected_steps, s.drift_evals
            );
            errs.push(err);
        }
        assert!(errs[2] < errs[0] / 5.0, "{method}: {errs:?}");
    }
    let a = SdeAdaptive::new(1e-3, 1e-3).estimate(SdeErrorEstimate::Embedded);
    for method in [SdeMethod::EulerMaruyama, SdeMethod::ItoMilstein] {
        let opts = SdeOptions::default().method(method).adaptive(a);
        let e = sdeint(&gbm(), &y0, &ts, &bm, &opts).expect_err("no embedded estimate");
        assert!(
            matches!(solver_error(&e), SolverError::InvalidOptions(_)),
            "{e}"
        );
        assert!(e.to_string().contains("embedded"), "{e}");
    }
    Ok(())
}

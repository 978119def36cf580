//! Every failure returns its typed error: no panic, no hang, no silent NaN.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use node_solvers::{odeint, Method, SolveOptions, SolverError};

fn solver_error<T: std::fmt::Debug>(r: candle_core::Result<T>) -> SolverError {
    let e = r.expect_err("expected an error");
    SolverError::find(&e)
        .unwrap_or_else(|| panic!("not a SolverError: {e}"))
        .clone()
}

fn blow_up(_t: f64, y: &Tensor) -> candle_core::Result<Tensor> {
    // y' = y², y(0) = 1: y = 1/(1 - t), singular at t = 1.
    y.sqr()
}

fn step_size_underflow(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64], dev)?;
    match solver_error(odeint(&blow_up, &y0, &[0.0, 2.0], &SolveOptions::default())) {
        SolverError::StepSizeTooSmall { t, dt } => {
            // Located at the pole; near it (|y| ~ 1e8) a step can land just across it.
            assert!((t - 1.0).abs() < 1e-6, "t = {t}");
            assert!(dt > 0.0 && dt < 1e-12, "dt = {dt}");
        }
        e => panic!("expected StepSizeTooSmall, got {e}"),
    }
    // With a minimum step the failure comes as soon as that step is rejected.
    let opts = SolveOptions::default().min_step(1e-3);
    match solver_error(odeint(&blow_up, &y0, &[0.0, 2.0], &opts)) {
        SolverError::StepSizeTooSmall { t, .. } => assert!(t < 1.0 && t > 0.9, "t = {t}"),
        e => panic!("expected StepSizeTooSmall, got {e}"),
    }
    Ok(())
}

fn max_steps(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let f = |_t: f64, y: &Tensor| Tensor::cat(&[y.narrow(0, 1, 1)?, y.narrow(0, 0, 1)?.neg()?], 0);
    let opts = SolveOptions::default().max_steps(10);
    match solver_error(odeint(&f, &y0, &[0.0, 100.0], &opts)) {
        SolverError::MaxStepsExceeded { steps, t } => {
            assert_eq!(steps, 10);
            assert!(t > 0.0 && t < 100.0);
        }
        e => panic!("expected MaxStepsExceeded, got {e}"),
    }
    // A fixed grid that would exceed the limit is refused before any work.
    let opts = SolveOptions::default()
        .method(Method::Rk4)
        .step_size(1e-9)
        .max_steps(1000);
    assert!(matches!(
        solver_error(odeint(&f, &y0, &[0.0, 1.0], &opts)),
        SolverError::MaxStepsExceeded { .. }
    ));
    Ok(())
}

fn non_finite(dev: &Device) -> Result<()> {
    // The field turns NaN for t > 0.5.
    let f = |t: f64, y: &Tensor| {
        if t > 0.5 {
            y.affine(f64::NAN, 0.0)
        } else {
            y.neg()
        }
    };
    let y0 = Tensor::new(&[1.0f32, 2.0], dev)?;
    match solver_error(odeint(&f, &y0, &[0.0, 1.0], &SolveOptions::default())) {
        SolverError::NonFinite { t } => assert!((0.49..=0.5).contains(&t), "t = {t}"),
        e => panic!("expected NonFinite, got {e}"),
    }
    let opts = SolveOptions::default().method(Method::Rk4).fixed_steps(10);
    match solver_error(odeint(&f, &y0, &[0.0, 0.25, 0.75, 1.0], &opts)) {
        // Fixed steps check once per output: the first output after the blow-up.
        SolverError::NonFinite { t } => assert_eq!(t, 0.75),
        e => panic!("expected NonFinite, got {e}"),
    }
    // Unchecked (`check_finite(false)`), the NaN reaches the caller.
    let ys = odeint(&f, &y0, &[0.0, 0.25, 0.75], &opts.check_finite(false))?.ys;
    let ys = ys.to_vec2::<f32>()?;
    assert!(ys[1].iter().all(|v| v.is_finite()) && ys[2].iter().all(|v| v.is_nan()));
    // A non-finite initial state.
    let bad = Tensor::new(&[1.0f32, f32::INFINITY], dev)?;
    let g = |_t: f64, y: &Tensor| y.neg();
    match solver_error(odeint(&g, &bad, &[0.0, 1.0], &SolveOptions::default())) {
        SolverError::NonFinite { t } => assert_eq!(t, 0.0),
        e => panic!("expected NonFinite, got {e}"),
    }
    Ok(())
}

fn bad_times(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let g = |_t: f64, y: &Tensor| y.neg();
    let o = SolveOptions::default();
    assert!(matches!(
        solver_error(odeint(&g, &y0, &[0.0, 1.0, 1.0], &o)),
        SolverError::TimesNotMonotone { index: 2, .. }
    ));
    assert!(matches!(
        solver_error(odeint(&g, &y0, &[0.0, 1.0, 0.5], &o)),
        SolverError::TimesNotMonotone { index: 2, .. }
    ));
    assert!(matches!(
        solver_error(odeint(&g, &y0, &[], &o)),
        SolverError::InvalidTimes(_)
    ));
    assert!(matches!(
        solver_error(odeint(&g, &y0, &[0.0, f64::NAN], &o)),
        SolverError::InvalidTimes(_)
    ));
    // A single time is the initial state, with no evaluation.
    let one = odeint(&g, &y0, &[3.0], &o)?;
    assert_eq!(one.ys.dims(), &[1, 1]);
    assert_eq!(one.stats.nfe, 0);
    Ok(())
}

fn bad_field_output(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 2.0], dev)?;
    let wrong_shape = |_t: f64, y: &Tensor| y.sum_keepdim(0);
    match solver_error(odeint(
        &wrong_shape,
        &y0,
        &[0.0, 1.0],
        &SolveOptions::default(),
    )) {
        SolverError::ShapeMismatch { expected, got, t } => {
            assert_eq!(expected.dims(), &[2]);
            assert_eq!(got.dims(), &[1]);
            assert_eq!(t, 0.0);
        }
        e => panic!("expected ShapeMismatch, got {e}"),
    }
    let wrong_dtype = |_t: f64, y: &Tensor| y.to_dtype(DType::F32);
    assert!(matches!(
        solver_error(odeint(
            &wrong_dtype,
            &y0,
            &[0.0, 1.0],
            &SolveOptions::default()
        )),
        SolverError::OutputMismatch(_)
    ));
    // Errors of the field itself pass through untouched.
    let failing = |_t: f64, _y: &Tensor| -> candle_core::Result<Tensor> {
        candle_core::bail!("field exploded")
    };
    let e = odeint(&failing, &y0, &[0.0, 1.0], &SolveOptions::default()).unwrap_err();
    assert!(e.to_string().contains("field exploded"));
    Ok(())
}

fn bad_options(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 2.0], dev)?;
    let g = |_t: f64, y: &Tensor| y.neg();
    let ts = [0.0, 1.0];
    let check = |o: SolveOptions| solver_error(odeint(&g, &y0, &ts, &o));
    assert!(matches!(
        check(SolveOptions::default().rtol(0.0)),
        SolverError::InvalidTolerance { name: "rtol", .. }
    ));
    assert!(matches!(
        check(SolveOptions::default().atol(-1.0)),
        SolverError::InvalidTolerance { name: "atol", .. }
    ));
    assert!(matches!(
        check(SolveOptions::default().rtol(f64::NAN)),
        SolverError::InvalidTolerance { .. }
    ));
    let zero_atol = Tensor::new(&[1e-6f64, 0.0], dev)?;
    assert!(matches!(
        check(SolveOptions::default().atol(zero_atol)),
        SolverError::InvalidTolerance { name: "atol", .. }
    ));
    let wrong_atol = Tensor::new(&[1e-6f64, 1e-6, 1e-6], dev)?;
    assert!(matches!(
        check(SolveOptions::default().atol(wrong_atol)),
        SolverError::InvalidOptions(_)
    ));
    // A fixed-step method needs a step.
    match check(SolveOptions::default().method(Method::Rk4)) {
        SolverError::InvalidOptions(msg) => assert!(msg.contains("step_size"), "{msg}"),
        e => panic!("expected InvalidOptions, got {e}"),
    }
    assert!(matches!(
        check(SolveOptions::default().method(Method::Rk4).step_size(0.0)),
        SolverError::InvalidOptions(_)
    ));
    assert!(matches!(
        check(SolveOptions::default().method(Method::Rk4).fixed_steps(0)),
        SolverError::InvalidOptions(_)
    ));
    assert!(matches!(
        check(SolveOptions::default().first_step(-0.1)),
        SolverError::InvalidOptions(_)
    ));
    assert!(matches!(
        check(SolveOptions::default().max_steps(0)),
        SolverError::InvalidOptions(_)
    ));
    assert!(matches!(
        check(SolveOptions::default().min_step(1.0).max_step(0.5)),
        SolverError::InvalidOptions(_)
    ));
    // Integer states cannot be integrated.
    let yi = Tensor::new(&[1u32, 2], dev)?;
    let gi = |_t: f64, y: &Tensor| Ok(y.clone());
    assert!(matches!(
        solver_error(odeint(&gi, &yi, &ts, &SolveOptions::default())),
        SolverError::InvalidOptions(_)
    ));
    Ok(())
}

#[test]
fn errors_display_a_message_and_wrap_as_candle_errors() {
    let e: candle_core::Error = SolverError::StepSizeTooSmall { t: 0.5, dt: 1e-17 }.into();
    let msg = e.to_string();
    assert!(msg.contains("step size too small at t = 0.5"), "{msg}");
    assert!(matches!(
        SolverError::find(&e),
        Some(SolverError::StepSizeTooSmall { .. })
    ));
    let with_context = e.context("while training");
    assert!(SolverError::find(&with_context).is_some());
}

candle_core::test_device!(
    step_size_underflow,
    step_size_underflow_cpu,
    step_size_underflow_cuda,
    step_size_underflow_metal
);
candle_core::test_device!(max_steps, max_steps_cpu, max_steps_cuda, max_steps_metal);
candle_core::test_device!(
    non_finite,
    non_finite_cpu,
    non_finite_cuda,
    non_finite_metal
);
candle_core::test_device!(bad_times, bad_times_cpu, bad_times_cuda, bad_times_metal);
candle_core::test_device!(
    bad_field_output,
    bad_field_output_cpu,
    bad_field_output_cuda,
    bad_field_output_metal
);
candle_core::test_device!(
    bad_options,
    bad_options_cpu,
    bad_options_cuda,
    bad_options_metal
);

//! The reversible solver (`odeint_reversible`): its order, its accuracy and counts when
//! adaptive, walking its steps back, reverse time, jumps, f32, and its errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{fitted_slope, max_abs_diff};
use node_solvers::problems::Riccati;
use node_solvers::{odeint_reversible, Method, SolveOptions, SolverError, DEFAULT_COUPLING};

fn solver_error<T: std::fmt::Debug>(r: candle_core::Result<T>) -> SolverError {
    let e = r.expect_err("expected an error");
    SolverError::find(&e)
        .unwrap_or_else(|| panic!("not a SolverError: {e}"))
        .clone()
}

/// Fixed steps: the reversible form of every explicit method converges at the base method's
/// order (McCallum & Foster's theorem), on the nonlinear, non-autonomous Riccati problem.
fn order_case(dev: &Device) -> Result<()> {
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let (t0, t1) = (0.0, 2.0);
    let exact = p.exact(&y0, t0, t1)?;
    let mut report = vec![];
    let mut failed = false;
    for m in Method::RUNGE_KUTTA.into_iter().filter(|m| !m.is_implicit()) {
        // As tests/convergence.rs (errors between ~1e-3 and ~1e-13 on the three grids), but
        // finer for order 4: rk38's error ratios are 10.7, 14.5, 15.4, 15.5 from 64 steps on
        // (measured), so its asymptotic range starts at 128.
        let n0 = match m.order() {
            1 => 64,
            2 => 32,
            3 => 16,
            4 => 128,
            5 => 32,
            _ => 4,
        };
        let (mut hs, mut errs) = (vec![], vec![]);
        for n in [n0, 2 * n0, 4 * n0] {
            let opts = SolveOptions::default().method(m).fixed_steps(n);
            let (sol, trace) = odeint_reversible(&p.field(), &y0, &[t0, t1], &opts, 0.9)?;
            assert_eq!(sol.stats.accepted_steps, n);
            assert_eq!(trace.steps(), n);
            hs.push((t1 - t0) / n as f64);
            errs.push(max_abs_diff(&sol.last()?, &exact)?);
        }
        let slope = fitted_slope(&hs, &errs);
        let p = m.order() as f64;
        // Below p means a wrong step. Above: besides the base method's error, `y` carries a
        // parasitic part that decays like λ^n (the pair's difference), so on coarse grids the
        // error can fall faster than h^p (measured: dopri8 2^10 per halving down to
        // round-off; the plain method 2^8.6).
        failed |= slope <= p - 0.3 || slope >= p + 2.1;
        report.push(format!(
            "{m}: observed {slope:.2}, expected {p} (errors {errs:?})"
        ));
    }
    assert!(!failed, "convergence orders:\n{}", report.join("\n"));
    println!("{}", report.join("\n"));
    Ok(())
}

/// Adaptive: the outputs (dense output inside steps) follow the tolerance, and the counts are
/// those of the scheme (dopri5's dense output needs no evaluation beyond the step's stages).
fn adaptive_case(dev: &Device) -> Result<()> {
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let ts = [0.0, 0.3, 0.7, 1.1, 1.6, 2.0];
    let exact = Tensor::stack(
        &ts.iter()
            .map(|&t| p.exact(&y0, 0.0, t))
            .collect::<candle_core::Result<Vec<_>>>()?,
        0,
    )?;
    let mut prev = f64::INFINITY;
    for (rtol, bound) in [(1e-5, 1e-4), (1e-8, 1e-7), (1e-11, 1e-10)] {
        let opts = SolveOptions::default().tolerances(rtol, rtol * 1e-2);
        let (sol, trace) = odeint_reversible(&p.field(), &y0, &ts, &opts, DEFAULT_COUPLING)?;
        let err = max_abs_diff(&sol.ys, &exact)?;
        assert!(err < bound && err < prev, "rtol {rtol}: error {err:e}");
        prev = err;
        // Only the last output time need be a step's end: the others come from the steps'
        // dense output.
        assert_eq!(trace.times.last(), Some(&2.0));
        let inside = ts.iter().filter(|t| !trace.times.contains(t)).count();
        assert!(inside >= 2, "{inside} outputs inside steps");
        let s = sol.stats;
        assert_eq!(trace.steps(), s.accepted_steps);
        // dopri5: per attempted step, 6 forward stages (f(z) counted apart) and 1 + 5
        // backward evaluations (the FSAL stage only serves the error estimate; the backward
        // increment is taken before the read, for the gap); f(z) after each accepted step
        // but the last; f(z0) and Hairer's initial step.
        let (acc, rej) = (s.accepted_steps, s.rejected_steps);
        assert_eq!(s.nfe, 12 * (acc + rej) + (acc - 1) + 2, "{s:?}");
        // One read per attempted step (its error and gap together), two to choose the first.
        assert_eq!(s.host_reads, acc + rej + 2, "{s:?}");
        println!(
            "rtol {rtol:e}: error {err:.2e}, {} resyncs, {s:?}",
            trace.resyncs()
        );
    }
    Ok(())
}

/// Fixed steps: output times become step ends. One within rounding of a grid point replaces
/// it (no sliver step); one between grid points adds a step.
fn fixed_outputs_case(dev: &Device) -> Result<()> {
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let opts = SolveOptions::default().method(Method::Rk4).fixed_steps(25);
    // The grid point 2.5 · 7/25 is 0.7000000000000001: 0.7 takes its place.
    let on_grid = [0.0, 0.3, 0.7, 1.0, 2.5];
    let (_, trace) = odeint_reversible(&p.field(), &y0, &on_grid, &opts, DEFAULT_COUPLING)?;
    assert_eq!(trace.steps(), 25);
    let off_grid = [0.0, 0.33, 0.7, 2.5];
    let (sol, trace) = odeint_reversible(&p.field(), &y0, &off_grid, &opts, DEFAULT_COUPLING)?;
    assert_eq!(trace.steps(), 26);
    for t in off_grid {
        assert!(trace.times.contains(&t));
    }
    let exact = p.exact(&y0, 0.0, 0.33)?;
    assert!(max_abs_diff(&sol.ys.get(1)?, &exact)? < 1e-6);
    Ok(())
}

/// Walking the steps back from the last pair gives every output and `y0` again, to
/// round-off, for several couplings, methods, and in reverse time.
fn step_back_case(dev: &Device) -> Result<()> {
    let p = Riccati;
    let f = p.field();
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    for (ts, method, coupling) in [
        (vec![0.0, 0.5, 2.0], Method::Dopri5, DEFAULT_COUPLING),
        (vec![0.0, 0.5, 2.0], Method::Tsit5, 0.5),
        (vec![0.0, 1.0, 2.0], Method::Bosh3, 1.0),
        (vec![2.0, 1.2, 0.0], Method::Dopri8, DEFAULT_COUPLING),
    ] {
        let opts = SolveOptions::default()
            .method(method)
            .tolerances(1e-9, 1e-11);
        let (sol, trace) = odeint_reversible(&f, &y0, &ts, &opts, coupling)?;
        assert!(trace.steps() > 10);
        let (mut y, mut z) = (trace.y.clone(), trace.z.clone());
        let mut worst = 0.0f64;
        for i in (0..trace.steps()).rev() {
            // Outputs at steps' ends are the walked-back `y` there.
            if let Some(out) = ts.iter().position(|&t| t == trace.times[i + 1]) {
                worst = worst.max(max_abs_diff(&y, &sol.ys.get(out)?)?);
            }
            if let Some((y_kept, z_kept)) = trace.resync_at(i + 1) {
                (y, z) = (y_kept.clone(), z_kept.clone());
            }
            (y, z) = trace.step_back(&f, i, &y, &z)?;
        }
        worst = worst.max(max_abs_diff(&y, &y0)?);
        // The pair meets again at the start: z0 = y0 too.
        worst = worst.max(max_abs_diff(&z, &y0)?);
        // Each step back divides by λ: round-off grows like λ^(−n), which is why λ stays
        // near 1 (measured: 1e-15 after 26 steps at λ = 0.999, 3e-9 after 28 at λ = 0.5;
        // dopri8, whose stages have large coefficients, 2e-13).
        let bound = 1e-12 * coupling.powi(-(trace.steps() as i32));
        assert!(
            worst < bound,
            "{method} λ = {coupling}: walked back with error {worst:e} (bound {bound:e})"
        );
        println!(
            "{method} λ = {coupling}, {} steps, {} resyncs: walked back to {worst:.1e}",
            trace.steps(),
            trace.resyncs()
        );
    }
    Ok(())
}

/// `dy/dt = −k y`: the pair's difference evolves like the dynamics run backwards (`e^(kt)`
/// against `y`'s `e^(−kt)`), so the solve starts the pair afresh whenever the gap passes the
/// tolerance. Without that, dopri5 at rtol 1e-6 ends at 6e-3 for k = 10 (exact 4.5e-5) and
/// at 2e15 for k = 50 (measured before it was added); with it, within the tolerance, for a
/// few stored pairs.
fn contracting_case(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 0.3], dev)?;
    for (k, max_resyncs) in [(1.0, 0), (10.0, 8), (50.0, 24)] {
        let f = move |_t: f64, y: &Tensor| y.affine(-k, 0.0);
        let opts = SolveOptions::default().tolerances(1e-6, 1e-6);
        let (sol, trace) = odeint_reversible(&f, &y0, &[0.0, 1.0], &opts, DEFAULT_COUPLING)?;
        let exact = y0.affine((-k).exp(), 0.0)?;
        let err = max_abs_diff(&sol.last()?, &exact)?;
        assert!(err < 1e-6, "k = {k}: error {err:e}");
        assert!(
            trace.resyncs() <= max_resyncs,
            "k = {k}: {} resyncs in {} steps",
            trace.resyncs(),
            trace.steps()
        );
        if k > 1.0 {
            assert!(trace.resyncs() > 0);
        }
        let (mut y, mut z) = (trace.y.clone(), trace.z.clone());
        for i in (0..trace.steps()).rev() {
            if let Some((y_kept, z_kept)) = trace.resync_at(i + 1) {
                (y, z) = (y_kept.clone(), z_kept.clone());
            }
            (y, z) = trace.step_back(&f, i, &y, &z)?;
        }
        assert!(max_abs_diff(&y, &y0)? < 1e-12, "k = {k}: walked back");
        println!(
            "k = {k}: error {err:.1e}, {} steps, {} resyncs",
            trace.steps(),
            trace.resyncs()
        );
    }
    // Fixed steps cannot start the pair afresh: a diverging pair is a typed error.
    let f = |_t: f64, y: &Tensor| y.affine(-10.0, 0.0);
    let opts = SolveOptions::default().method(Method::Rk4).fixed_steps(20);
    match solver_error(odeint_reversible(&f, &y0, &[0.0, 1.0], &opts, 0.999)) {
        SolverError::ReversibleDiverged { gap, .. } => assert!(gap > 1.0, "{gap}"),
        e => panic!("expected ReversibleDiverged, got {e}"),
    }
    Ok(())
}

/// `dy/dt = a(t) y` with `a` jumping from 1 to 3 at `t = 1`: with the jump given, the
/// increments on either side see the field of their own interval, and the solve is accurate.
fn jump_case(dev: &Device) -> Result<()> {
    let f = |t: f64, y: &Tensor| y.affine(if t < 1.0 { 1.0 } else { 3.0 }, 0.0);
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let exact = (1.0f64 + 3.0 * 0.5).exp(); // y(1.5) = e^1 · e^(3 · 0.5)
    let opts = SolveOptions::default().tolerances(1e-8, 1e-8);
    let with = opts.clone().jump_ts(vec![1.0]);
    let (sol_j, trace_j) = odeint_reversible(&f, &y0, &[0.0, 1.5], &with, DEFAULT_COUPLING)?;
    let (sol, _) = odeint_reversible(&f, &y0, &[0.0, 1.5], &opts, DEFAULT_COUPLING)?;
    let err_j = (sol_j.last()?.to_vec1::<f64>()?[0] - exact).abs() / exact;
    assert!(trace_j.times.contains(&1.0));
    assert!(err_j < 1e-7, "relative error with the jump {err_j:e}");
    assert!(
        sol_j.stats.rejected_steps < sol.stats.rejected_steps,
        "{:?} against {:?}",
        sol_j.stats,
        sol.stats
    );
    // Walking back crosses the jump too.
    let (mut y, mut z) = (trace_j.y.clone(), trace_j.z.clone());
    for i in (0..trace_j.steps()).rev() {
        if let Some((y_kept, z_kept)) = trace_j.resync_at(i + 1) {
            (y, z) = (y_kept.clone(), z_kept.clone());
        }
        (y, z) = trace_j.step_back(&f, i, &y, &z)?;
    }
    assert!(max_abs_diff(&y, &y0)? < 1e-12);
    Ok(())
}

/// f32 state: the solve keeps the dtype and reaches f32 accuracy.
fn f32_case(dev: &Device) -> Result<()> {
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f32, 0.5], dev)?;
    let opts = SolveOptions::default().tolerances(1e-5, 1e-6);
    let (sol, trace) = odeint_reversible(&p.field(), &y0, &[0.0, 2.0], &opts, DEFAULT_COUPLING)?;
    assert_eq!(sol.ys.dtype(), DType::F32);
    assert_eq!(trace.z.dtype(), DType::F32);
    let exact = p.exact(&y0.to_dtype(DType::F64)?, 0.0, 2.0)?;
    let err = max_abs_diff(&sol.last()?.to_dtype(DType::F64)?, &exact)?;
    assert!(err < 1e-4, "f32 error {err:e}");
    Ok(())
}

fn errors_case(dev: &Device) -> Result<()> {
    let f = |_t: f64, y: &Tensor| y.neg();
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let opts = SolveOptions::default();
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        match solver_error(odeint_reversible(&f, &y0, &[0.0, 1.0], &opts, bad)) {
            SolverError::InvalidOptions(m) => assert!(m.contains("coupling"), "{m}"),
            e => panic!("coupling {bad}: expected InvalidOptions, got {e}"),
        }
    }
    let implicit = opts.clone().method(Method::Kvaerno5);
    match solver_error(odeint_reversible(&f, &y0, &[0.0, 1.0], &implicit, 0.9)) {
        SolverError::InvalidOptions(m) => assert!(m.contains("explicit"), "{m}"),
        e => panic!("expected InvalidOptions, got {e}"),
    }
    match solver_error(odeint_reversible(&f, &y0, &[0.0, 0.0], &opts, 0.9)) {
        SolverError::TimesNotMonotone { .. } => {}
        e => panic!("expected TimesNotMonotone, got {e}"),
    }
    // y' = y², y(0) = 1 blows up at t = 1: a typed error, adaptive or fixed.
    let blow_up = |_t: f64, y: &Tensor| y.sqr();
    let e = solver_error(odeint_reversible(&blow_up, &y0, &[0.0, 2.0], &opts, 0.9));
    assert!(
        matches!(
            e,
            SolverError::StepSizeTooSmall { .. } | SolverError::NonFinite { .. }
        ),
        "{e}"
    );
    let fixed = opts.clone().method(Method::Rk4).fixed_steps(40);
    match solver_error(odeint_reversible(&blow_up, &y0, &[0.0, 2.0], &fixed, 0.9)) {
        SolverError::NonFinite { .. } => {}
        e => panic!("expected NonFinite, got {e}"),
    }
    let few = opts.clone().max_steps(5);
    match solver_error(odeint_reversible(&f, &y0, &[0.0, 100.0], &few, 0.9)) {
        SolverError::MaxStepsExceeded { steps: 5, .. } => {}
        e => panic!("expected MaxStepsExceeded, got {e}"),
    }
    let (_, trace) = odeint_reversible(&f, &y0, &[0.0, 1.0], &opts, 0.9)?;
    let past = trace.steps();
    match solver_error(trace.increment(&f, past, false, &y0)) {
        SolverError::InvalidOptions(m) => assert!(m.contains("step"), "{m}"),
        e => panic!("expected InvalidOptions, got {e}"),
    }
    // One output time: no step, the state itself.
    let (sol, trace) = odeint_reversible(&f, &y0, &[0.5], &opts, 0.9)?;
    assert_eq!(sol.ys.dims(), &[1, 1]);
    assert_eq!(trace.steps(), 0);
    Ok(())
}

candle_core::test_device!(order_case, order_cpu, order_cuda, order_metal);
candle_core::test_device!(adaptive_case, adaptive_cpu, adaptive_cuda, adaptive_metal);
candle_core::test_device!(
    step_back_case,
    step_back_cpu,
    step_back_cuda,
    step_back_metal
);
candle_core::test_device!(
    fixed_outputs_case,
    fixed_outputs_cpu,
    fixed_outputs_cuda,
    fixed_outputs_metal
);
candle_core::test_device!(
    contracting_case,
    contracting_cpu,
    contracting_cuda,
    contracting_metal
);
candle_core::test_device!(jump_case, jump_cpu, jump_cuda, jump_metal);
candle_core::test_device!(f32_case, f32_cpu, f32_cuda, f32_metal);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);

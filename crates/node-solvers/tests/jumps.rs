//! Step stops and jumps (`SolveOptions::step_ts`, `SolveOptions::jump_ts`): an adaptive solve
//! steps to them exactly, evaluates a discontinuous field on the right side of each jump, keeps
//! its accuracy and saves the rejected steps that find a jump otherwise.

use anyhow::Result;
use candle_core::{Device, Tensor};
use node_solvers::{odeint, odeint_traced, Method, SolveOptions, SolverError, SolverStats};
use std::cell::RefCell;

/// `dy/dt = a(t)·y` with `a = 1` before `t = 1` and `a = 3` from it on: `y(t) = y0·e^{A(t)}`
/// with `A(t) = t` up to 1 and `1 + 3(t − 1)` after.
fn rate(t: f64) -> f64 {
    if t < 1.0 {
        1.0
    } else {
        3.0
    }
}

fn exponent(t: f64) -> f64 {
    if t <= 1.0 {
        t
    } else {
        1.0 + 3.0 * (t - 1.0)
    }
}

/// Solves the switching problem, recording every time the field is evaluated at.
fn solve_switch(
    ts: &[f64],
    opts: &SolveOptions,
    dev: &Device,
) -> Result<(Vec<f64>, SolverStats, Vec<f64>)> {
    let seen = RefCell::new(vec![]);
    let field = |t: f64, y: &Tensor| {
        seen.borrow_mut().push(t);
        y.affine(rate(t), 0.0)
    };
    // y(t) = e^{A(t)}·(1, −0.5).
    let y0 = Tensor::new(&[1.0f64, -0.5], dev)?.affine(exponent(ts[0]).exp(), 0.0)?;
    let sol = odeint(&field, &y0, ts, opts)?;
    // The relative error of every output.
    let mut errs = vec![];
    for (i, &t) in ts.iter().enumerate() {
        let got = sol.ys.get(i)?.to_vec1::<f64>()?;
        let want = exponent(t).exp();
        errs.push(
            ((got[0] - want) / want)
                .abs()
                .max(((got[1] + 0.5 * want) / want).abs()),
        );
    }
    Ok((errs, sol.stats, seen.into_inner()))
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

fn adaptive_solves_step_to_jumps(dev: &Device) -> Result<()> {
    let ts = [0.0, 0.5, 1.5, 2.0];
    for (m, tol) in [
        (Method::Dopri5, 1e-8),
        (Method::Bosh3, 1e-6),
        (Method::Dopri8, 1e-10),
        (Method::AdaptiveHeun, 1e-5),
    ] {
        let opts = SolveOptions::default().method(m).tolerances(tol, tol);
        let (err_blind, blind, _) = solve_switch(&ts, &opts, dev)?;
        let (err, told, seen) = solve_switch(&ts, &opts.clone().jump_ts([1.0]), dev)?;
        // The field is never evaluated at the jump itself: the step that ends there sees the
        // float before it, the one that starts there the float after it.
        assert!(!seen.contains(&1.0), "{m}: evaluated at the jump");
        assert!(seen.contains(&1.0f64.next_down()) && seen.contains(&1.0f64.next_up()));
        // Exact up to the tolerance (the global error of a few steps at this tolerance).
        assert!(max(&err) < 100.0 * tol, "{m}: errors {err:?}");
        // Knowing the jump saves the rejected steps that locate it.
        assert!(
            told.rejected_steps + 2 <= blind.rejected_steps,
            "{m}: rejected {} with the jump given, {} without",
            told.rejected_steps,
            blind.rejected_steps
        );
        assert!(
            told.nfe < blind.nfe,
            "{m}: {} evaluations with the jump given, {} without",
            told.nfe,
            blind.nfe
        );
        println!(
            "{m}: NFE {} vs {}, rejected {} vs {}, error {:.1e} vs {:.1e}",
            told.nfe,
            blind.nfe,
            told.rejected_steps,
            blind.rejected_steps,
            max(&err),
            max(&err_blind)
        );
    }
    Ok(())
}

fn reverse_time_and_stops(dev: &Device) -> Result<()> {
    // Backwards from 2 to 0 across the jump.
    let opts = SolveOptions::default()
        .tolerances(1e-8, 1e-8)
        .jump_ts([1.0]);
    let (err, _, seen) = solve_switch(&[2.0, 0.7, 0.0], &opts, dev)?;
    assert!(max(&err) < 1e-6, "{err:?}");
    assert!(!seen.contains(&1.0));
    // step_ts: every stop inside the interval becomes a step boundary, in any order; those
    // outside are ignored. On a smooth problem they change nothing else.
    let field = |_t: f64, y: &Tensor| y.affine(-0.5, 0.0);
    let y0 = Tensor::new(&[2.0f64], dev)?;
    let opts = SolveOptions::default()
        .tolerances(1e-9, 1e-9)
        .step_ts([0.7, 5.0, 0.3, -1.0, 0.3]);
    for ts in [[0.0, 1.0], [1.0, 0.0]] {
        let (sol, trace) = odeint_traced(&field, &y0, &ts, &opts, 1000)?;
        for s in [0.3, 0.7] {
            assert!(trace.times.contains(&s), "{ts:?}: no step ends at {s}");
        }
        assert!(!trace.times.contains(&5.0) && !trace.times.contains(&-1.0));
        let want = 2.0 * (-0.5 * (ts[1] - ts[0])).exp();
        let got = sol.ys.get(1)?.to_vec1::<f64>()?[0];
        assert!((got - want).abs() < 1e-8, "{ts:?}: {got} vs {want}");
    }
    // A step a hair shorter than the gap to a stop whose end rounds onto it ends there: from
    // the stop 0.2, a step of 0.1 is shorter than the gap to the stop 0.2 + 0.1 (computed,
    // 0.30000000000000004) but ends on it. No step of length zero after it (which failed the
    // solve before).
    let still = |_t: f64, y: &Tensor| y.zeros_like();
    let stops = [0.1, 0.2, 0.2 + 0.1, 0.7];
    assert!(0.1 < stops[2] - 0.2);
    let opts = SolveOptions::default().max_step(0.1).step_ts(stops);
    let (_, trace) = odeint_traced(&still, &y0, &[0.0, 1.0], &opts, 1000)?;
    assert!(
        trace.times.windows(2).all(|w| w[1] > w[0]),
        "{:?}",
        trace.times
    );
    for s in stops {
        assert!(trace.times.contains(&s), "no step ends at {s}");
    }
    // One time given twice, an ulp apart (an output time and a sum of delays computed two
    // ways): one stop, one jump. Before, a step of an ulp between them and the steps to grow
    // back: 51 steps against the single jump's 36 (checked).
    let (once_err, once, _) = solve_switch(
        &[0.0, 2.0],
        &SolveOptions::default()
            .tolerances(1e-8, 1e-8)
            .jump_ts([1.0]),
        dev,
    )?;
    for twice in [
        vec![1.0, 1f64.next_up()],
        vec![1f64.next_down(), 1.0, 1f64.next_up()],
    ] {
        let opts = SolveOptions::default()
            .tolerances(1e-8, 1e-8)
            .jump_ts(twice.clone())
            .step_ts(twice.clone());
        let (err, stats, seen) = solve_switch(&[0.0, 2.0], &opts, dev)?;
        assert_eq!(
            (stats.accepted_steps, stats.rejected_steps),
            (once.accepted_steps, once.rejected_steps),
            "{twice:?}: {:?}",
            (once.accepted_steps, once.rejected_steps)
        );
        assert!(max(&err) <= 2.0 * max(&once_err), "{err:?}");
        // The field is evaluated on each side of the whole cluster, never inside it.
        assert!(!seen
            .iter()
            .any(|t| twice[0] <= *t && *t <= twice[twice.len() - 1]));
    }
    Ok(())
}

fn fixed_grids_through_a_jump(dev: &Device) -> Result<()> {
    // RK4 on a grid that holds the jump: with `jump_ts` each step sees one side of it and the
    // solve keeps fourth order; without, the step ending at 1 takes its last stage from the
    // other side and the error is first order.
    let grid = |n: usize| -> Vec<f64> { (0..=n).map(|i| 2.0 * i as f64 / n as f64).collect() };
    let mut errs = vec![];
    for n in [20, 40] {
        let base = SolveOptions::default()
            .method(Method::Rk4)
            .step_grid(grid(n));
        let (blind, _, _) = solve_switch(&[0.0, 2.0], &base, dev)?;
        let (told, _, _) = solve_switch(&[0.0, 2.0], &base.jump_ts([1.0]), dev)?;
        errs.push((max(&told), max(&blind)));
    }
    let order_told = (errs[0].0 / errs[1].0).log2();
    let order_blind = (errs[0].1 / errs[1].1).log2();
    assert!(
        order_told > 3.7,
        "with the jump: order {order_told:.2} ({errs:?})"
    );
    assert!(
        order_blind < 1.3,
        "without: order {order_blind:.2} ({errs:?})"
    );
    // Four evaluations per step, those at the jump on the side of the step. The step that
    // ends at the jump evaluates the field there from before it only when its dense output
    // needs it: for an output inside the step.
    let base = SolveOptions::default()
        .method(Method::Rk4)
        .step_grid(grid(20))
        .jump_ts([1.0]);
    let just_before = |seen: &[f64]| seen.iter().filter(|&&t| t < 1.0 && t > 1.0 - 1e-12).count();
    let (_, _, seen) = solve_switch(&[0.0, 2.0], &base, dev)?;
    assert_eq!(seen.len(), 4 * 20);
    // RK4's last stage.
    assert_eq!(just_before(&seen), 1, "{seen:?}");
    let (err, _, seen) = solve_switch(&[0.0, 0.95, 2.0], &base, dev)?;
    assert_eq!(seen.len(), 4 * 20 + 1);
    // The last stage and the dense output's end.
    assert_eq!(just_before(&seen), 2, "{seen:?}");
    assert!(err[1] < 1e-6, "{err:?}");
    Ok(())
}

fn bad_stops_are_errors(dev: &Device) -> Result<()> {
    let field = |_t: f64, y: &Tensor| Ok(y.clone());
    let y0 = Tensor::new(&[1.0f64], dev)?;
    for opts in [
        SolveOptions::default().jump_ts([0.5, f64::NAN]),
        SolveOptions::default().step_ts([f64::INFINITY]),
    ] {
        let e = odeint(&field, &y0, &[0.0, 1.0], &opts).unwrap_err();
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(_))),
            "{e}"
        );
    }
    Ok(())
}

candle_core::test_device!(
    adaptive_solves_step_to_jumps,
    adaptive_jumps_cpu,
    adaptive_jumps_cuda,
    adaptive_jumps_metal
);
candle_core::test_device!(
    reverse_time_and_stops,
    reverse_and_stops_cpu,
    reverse_and_stops_cuda,
    reverse_and_stops_metal
);
candle_core::test_device!(
    fixed_grids_through_a_jump,
    fixed_grids_cpu,
    fixed_grids_cuda,
    fixed_grids_metal
);
candle_core::test_device!(
    bad_stops_are_errors,
    bad_stops_cpu,
    bad_stops_cuda,
    bad_stops_metal
);

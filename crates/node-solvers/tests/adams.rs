//! The Adams methods (`explicit_adams`, `implicit_adams`, `adams`): their weights, their order
//! on equal and uneven fixed steps, the error control and evaluation counts of `adams`,
//! dense output, reverse time, jumps, events, and their errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{fitted_slope, max_abs_diff};
use node_solvers::adams::lagrange_integrals;
use node_solvers::problems::{Riccati, Rotation};
use node_solvers::{
    locate_event, odeint, odeint_dense, odeint_reversible, odeint_traced, EventOptions, Method,
    SolveOptions, SolverError, DEFAULT_COUPLING,
};

/// The textbook Adams–Bashforth and Adams–Moulton coefficients of orders 1 to 6 (numerators,
/// newest value first, and their common divisor).
const BASHFORTH: [&[f64]; 6] = [
    &[1.0],
    &[3.0, -1.0],
    &[23.0, -16.0, 5.0],
    &[55.0, -59.0, 37.0, -9.0],
    &[1901.0, -2774.0, 2616.0, -1274.0, 251.0],
    &[4277.0, -7923.0, 9982.0, -7298.0, 2877.0, -475.0],
];
const MOULTON: [&[f64]; 6] = [
    &[1.0],
    &[1.0, 1.0],
    &[5.0, 8.0, -1.0],
    &[9.0, 19.0, -5.0, 1.0],
    &[251.0, 646.0, -264.0, 106.0, -19.0],
    &[475.0, 1427.0, -798.0, 482.0, -173.0, 27.0],
];
const DIVISOR: [f64; 6] = [1.0, 2.0, 12.0, 24.0, 720.0, 1440.0];

#[test]
fn weights_are_the_adams_coefficients() {
    for k in 1..=6 {
        // Equal steps: Adams–Bashforth on the nodes 0, −1, …, Adams–Moulton with 1 added.
        let past: Vec<f64> = (0..k).map(|j| -(j as f64)).collect();
        let mut with_end = vec![1.0];
        with_end.extend(&past[..k - 1]);
        for (nodes, table) in [(&past, BASHFORTH[k - 1]), (&with_end, MOULTON[k - 1])] {
            let w = lagrange_integrals(nodes, 0.0, 1.0);
            for (got, num) in w.iter().zip(table) {
                let want = num / DIVISOR[k - 1];
                assert!((got - want).abs() < 1e-13, "order {k}: {w:?} vs {table:?}");
            }
        }
    }
    // Uneven nodes, up to 13 of them (the highest order's corrector): the weights integrate
    // every polynomial of degree below their number exactly over [a, b], which determines
    // them. The bound is round-off on the sum's terms.
    let uneven = [
        1.0, 0.0, -0.7, -1.1, -2.5, -2.9, -4.0, -4.2, -5.6, -7.0, -7.3, -8.8, -9.5,
    ];
    for first in [0, 1] {
        for m in 1..=13 - first {
            let nodes = &uneven[first..first + m];
            for (a, b) in [(0.0, 1.0), (0.0, 0.37)] {
                let w = lagrange_integrals(nodes, a, b);
                for d in 0..m as i32 {
                    let terms = w.iter().zip(nodes).map(|(w, u)| w * u.powi(d));
                    let got: f64 = terms.clone().sum();
                    let size: f64 = terms.map(f64::abs).sum();
                    let want = (b.powi(d + 1) - a.powi(d + 1)) / (d + 1) as f64;
                    assert!(
                        (got - want).abs() < 1e-13 * size.max(1.0),
                        "{nodes:?}, degree {d} on [{a}, {b}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// Errors at the end of the Riccati problem over [0, 2] with `n` steps of each count.
fn riccati_errors(dev: &Device, opts: &SolveOptions, counts: &[usize]) -> Result<Vec<f64>> {
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let exact = p.exact(&y0, 0.0, 2.0)?;
    let mut errs = vec![];
    for &n in counts {
        let sol = odeint(&p.field(), &y0, &[0.0, 2.0], &opts.clone().fixed_steps(n))?;
        assert_eq!(sol.stats.accepted_steps, n);
        errs.push(max_abs_diff(&sol.last()?, &exact)?);
    }
    Ok(errs)
}

fn fixed_step_orders(dev: &Device) -> Result<()> {
    let mut report = vec![];
    let mut failed = false;
    for (m, lowest) in [(Method::ExplicitAdams, 1), (Method::ImplicitAdams, 2)] {
        for k in lowest..=8 {
            // Errors between ~1e-4 and ~1e-13: inside the asymptotic range, above round-off.
            let counts = if k <= 4 {
                [64, 128, 256]
            } else {
                [32, 64, 128]
            };
            let opts = SolveOptions::default().method(m).adams_order(k);
            let errs = riccati_errors(dev, &opts, &counts)?;
            let hs: Vec<f64> = counts.iter().map(|&n| 2.0 / n as f64).collect();
            let slope = fitted_slope(&hs, &errs);
            failed |= slope <= k as f64 - 0.6 || slope >= k as f64 + 1.0;
            report.push(format!("{m} order {k}: observed {slope:.2} ({errs:?})"));
        }
    }
    assert!(!failed, "{}", report.join("\n"));
    // The evaluations: the starter's (3/8 rule: 4 per step) until it has the values, then one
    // per step (explicit) or two (PECE); one at the start.
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    for (m, per_step) in [(Method::ExplicitAdams, 1), (Method::ImplicitAdams, 2)] {
        let opts = SolveOptions::default().method(m).fixed_steps(20);
        let sol = odeint(&p.field(), &y0, &[0.0, 2.0], &opts)?;
        let start = if m == Method::ExplicitAdams { 3 } else { 2 };
        // 1 at t0; 3 more per starter step plus its end; per_step per Adams step, less the
        // evaluation at the end of the last step, which nothing needs.
        let want = 1 + 4 * start + per_step * (20 - start) - 1;
        assert_eq!(sol.stats.nfe, want, "{m}");
    }
    Ok(())
}

fn uneven_grids_keep_the_order(dev: &Device) -> Result<()> {
    // Steps alternating between lengths 1 and 3 (relative): weights for equal steps would
    // lose the order; the Lagrange weights of the actual nodes keep it.
    for (m, k) in [
        (Method::ExplicitAdams, 4),
        (Method::ImplicitAdams, 4),
        (Method::ImplicitAdams, 6),
    ] {
        let mut hs = vec![];
        let mut errs = vec![];
        for pairs in [32, 64, 128] {
            let unit = 2.0 / (4 * pairs) as f64;
            let mut grid = vec![0.0];
            for i in 0..2 * pairs {
                let step = if i % 2 == 0 { unit } else { 3.0 * unit };
                grid.push(grid[i] + step);
            }
            grid[2 * pairs] = 2.0;
            let opts = SolveOptions::default()
                .method(m)
                .adams_order(k)
                .step_grid(grid);
            let p = Riccati;
            let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
            let sol = odeint(&p.field(), &y0, &[0.0, 2.0], &opts)?;
            errs.push(max_abs_diff(&sol.last()?, &p.exact(&y0, 0.0, 2.0)?)?);
            hs.push(4.0 * unit);
        }
        let slope = fitted_slope(&hs, &errs);
        assert!(
            slope > k as f64 - 0.4 && slope < k as f64 + 1.0,
            "{m} order {k} on uneven steps: {slope:.2} ({errs:?})"
        );
    }
    Ok(())
}

fn adaptive_tracks_tolerance(dev: &Device) -> Result<()> {
    let riccati = Riccati;
    let rotation = Rotation {
        decay: 0.1,
        freq: 2.0,
    };
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    type Case<'a> = (
        &'a str,
        Box<dyn Fn(f64, &Tensor) -> candle_core::Result<Tensor> + 'a>,
        Tensor,
        f64,
    );
    let cases: Vec<Case> = vec![
        (
            "riccati",
            Box::new(riccati.field()),
            riccati.exact(&y0, 0.0, 4.0)?,
            4.0,
        ),
        (
            "rotation",
            Box::new(rotation.field()),
            rotation.exact(&y0, 0.0, 20.0)?,
            20.0,
        ),
    ];
    for (name, field, exact, t1) in &cases {
        let mut prev = f64::INFINITY;
        for tol in [1e-5, 1e-7, 1e-9, 1e-11] {
            let opts = SolveOptions::default()
                .method(Method::Adams)
                .tolerances(tol, tol);
            let field = |t: f64, y: &Tensor| field(t, y);
            let sol = odeint(&field, &y0, &[0.0, *t1], &opts)?;
            let err = max_abs_diff(&sol.last()?, exact)?;
            let s = sol.stats;
            // Two evaluations per attempted step, less the last accepted step's second; one
            // at t0 and one for the first step (Hairer's rule).
            assert_eq!(s.nfe, 1 + 2 * s.accepted_steps + s.rejected_steps, "{name}");
            // One read per step (its error ratios); two for the first step.
            assert_eq!(
                s.host_reads,
                2 + s.accepted_steps + s.rejected_steps,
                "{name}"
            );
            // Global errors of 0.2 to 30 times the tolerance (measured), falling with it.
            assert!(
                err < 100.0 * tol && err < prev,
                "{name} at {tol:e}: error {err:e}"
            );
            prev = err;
            // Variable order to 12 at two evaluations a step: fewer evaluations than
            // dopri5 (riccati 85 against 110 at 1e-5 and 244 against 1052 at 1e-11;
            // rotation 293 against 446 and 765 against 6878, measured).
            let dopri5 = odeint(
                &field,
                &y0,
                &[0.0, *t1],
                &SolveOptions::default().tolerances(tol, tol),
            )?;
            let share = s.nfe as f64 / dopri5.stats.nfe as f64;
            let most = if tol >= 1e-5 { 0.8 } else { 0.6 };
            assert!(
                share < most,
                "{name} at {tol:e}: {} evaluations against dopri5's {}",
                s.nfe,
                dopri5.stats.nfe
            );
        }
    }
    Ok(())
}

fn dense_output_and_reverse_time(dev: &Device) -> Result<()> {
    let p = Riccati;
    let y2 = Tensor::new(&[0.6f64, 0.3], dev)?;
    // Backwards through output times inside steps, adaptive and fixed.
    let ts: Vec<f64> = (0..=25).map(|i| 2.0 - 0.1 * i as f64).collect();
    for opts in [
        SolveOptions::default()
            .method(Method::Adams)
            .tolerances(1e-9, 1e-9),
        SolveOptions::default()
            .method(Method::ImplicitAdams)
            .adams_order(6)
            .fixed_steps(160),
        SolveOptions::default()
            .method(Method::ExplicitAdams)
            .fixed_steps(1000),
    ] {
        let sol = odeint(&p.field(), &y2, &ts, &opts)?;
        for (i, &t) in ts.iter().enumerate() {
            let e = max_abs_diff(&sol.ys.get(i)?, &p.exact(&y2, 2.0, t)?)?;
            assert!(e < 1e-6, "{}: error {e:e} at t = {t}", opts.method);
        }
        // The outputs cost no evaluations.
        let two = odeint(&p.field(), &y2, &[2.0, -0.5], &opts)?;
        assert_eq!(two.stats, sol.stats, "{}", opts.method);
    }
    Ok(())
}

/// `dy/dt = a(t)·y` with `a = 1` before `t = 1` and `3` from it: `y(2) = y0·e^4`.
fn jumps_restart_the_history(dev: &Device) -> Result<()> {
    let field = |t: f64, y: &Tensor| y.affine(if t < 1.0 { 1.0 } else { 3.0 }, 0.0);
    let y0 = Tensor::new(&[1.0f64, -0.5], dev)?;
    let want = 4f64.exp();
    let rel_err = |y: &Tensor| -> Result<f64> {
        let v = y.to_vec1::<f64>()?;
        Ok(((v[0] - want) / want).abs())
    };
    let opts = SolveOptions::default()
        .method(Method::Adams)
        .tolerances(1e-9, 1e-9);
    let told = odeint(&field, &y0, &[0.0, 2.0], &opts.clone().jump_ts([1.0]))?;
    let blind = odeint(&field, &y0, &[0.0, 2.0], &opts)?;
    let (e_told, e_blind) = (rel_err(&told.last()?)?, rel_err(&blind.last()?)?);
    assert!(
        e_told < 1e-7,
        "with the jump: {e_told:e} (without it: {e_blind:e})"
    );
    assert!(
        told.stats.rejected_steps < blind.stats.rejected_steps,
        "rejected {} with the jump, {} without",
        told.stats.rejected_steps,
        blind.stats.rejected_steps
    );
    // Fixed steps on a grid through the jump keep their order with it, not without.
    let mut with = vec![];
    let mut without = vec![];
    for n in [16, 32, 64] {
        let opts = SolveOptions::default()
            .method(Method::ImplicitAdams)
            .fixed_steps(2 * n);
        let a = odeint(&field, &y0, &[0.0, 2.0], &opts.clone().jump_ts([1.0]))?;
        let b = odeint(&field, &y0, &[0.0, 2.0], &opts)?;
        with.push(rel_err(&a.last()?)?);
        without.push(rel_err(&b.last()?)?);
    }
    let hs = [1.0 / 16.0, 1.0 / 32.0, 1.0 / 64.0];
    let (s_with, s_without) = (fitted_slope(&hs, &with), fitted_slope(&hs, &without));
    assert!(s_with > 3.6, "with the jump: order {s_with:.2} ({with:?})");
    // Measured: 3.8 with the jump, 1.0 without.
    assert!(
        s_without < 1.5,
        "without the jump: order {s_without:.2} ({without:?})"
    );
    Ok(())
}

fn events_and_single_precision(dev: &Device) -> Result<()> {
    // dy/dt = −y from 1 crosses 1/2 at ln 2.
    let field = |_t: f64, y: &Tensor| y.neg();
    let g = |_t: f64, y: &Tensor| y.affine(1.0, -0.5);
    let y0 = Tensor::new(&[1.0f64], dev)?;
    // The time is as accurate as the dense output: 1.7e-8 off with 200 fixed steps.
    for (opts, bound) in [
        (
            SolveOptions::default()
                .method(Method::Adams)
                .tolerances(1e-10, 1e-10),
            1e-9,
        ),
        (
            SolveOptions::default()
                .method(Method::ImplicitAdams)
                .fixed_steps(200),
            1e-7,
        ),
    ] {
        let ev = locate_event(&field, &y0, 0.0, 5.0, &g, &opts, &EventOptions::default())?;
        assert_eq!(ev.event, Some(0), "{}", opts.method);
        assert!(
            (ev.t - 2f64.ln()).abs() < bound,
            "{}: event at {} against ln 2",
            opts.method,
            ev.t
        );
    }
    // f32: the weights are f64 host numbers applied to f32 tensors.
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f32, 0.5], dev)?;
    let opts = SolveOptions::default()
        .method(Method::Adams)
        .tolerances(1e-5, 1e-5);
    let sol = odeint(&p.field(), &y0, &[0.0, 2.0], &opts)?;
    assert_eq!(sol.ys.dtype(), DType::F32);
    let exact = p.exact(&y0.to_dtype(DType::F64)?, 0.0, 2.0)?;
    let e = max_abs_diff(&sol.last()?.to_dtype(DType::F64)?, &exact)?;
    assert!(e < 1e-4, "f32 error {e:e}");
    Ok(())
}

fn errors(dev: &Device) -> Result<()> {
    let f = |_t: f64, y: &Tensor| y.neg();
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let invalid = |r: candle_core::Result<()>, needle: &str| {
        let e = r.expect_err("an error");
        let msg = e.to_string();
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(_))),
            "{msg}"
        );
        assert!(msg.contains(needle), "{msg} lacks `{needle}`");
    };
    let adams = SolveOptions::default().method(Method::Adams);
    for (m, k) in [
        (Method::ExplicitAdams, 0),
        (Method::ExplicitAdams, 13),
        (Method::ImplicitAdams, 1),
        (Method::Adams, 1),
        (Method::Adams, 13),
    ] {
        let opts = SolveOptions::default()
            .method(m)
            .adams_order(k)
            .fixed_steps(10);
        invalid(odeint(&f, &y0, &[0.0, 1.0], &opts).map(|_| ()), "orders");
    }
    invalid(
        odeint(
            &f,
            &y0,
            &[0.0, 1.0],
            &SolveOptions::default().method(Method::ExplicitAdams),
        )
        .map(|_| ()),
        "no error estimate",
    );
    invalid(
        odeint_dense(&f, &y0, &[0.0, 1.0], &adams).map(|_| ()),
        "multistep",
    );
    invalid(
        odeint_traced(&f, &y0, &[0.0, 1.0], &adams, 100).map(|_| ()),
        "multistep",
    );
    invalid(
        odeint_reversible(&f, &y0, &[0.0, 1.0], &adams, DEFAULT_COUPLING).map(|_| ()),
        "multistep",
    );
    // A blow-up is reported, not returned as NaN.
    let blow = |_t: f64, y: &Tensor| y.sqr();
    let e = odeint(&blow, &y0, &[0.0, 2.0], &adams).unwrap_err();
    assert!(
        matches!(
            SolverError::find(&e),
            Some(SolverError::StepSizeTooSmall { .. } | SolverError::NonFinite { .. })
        ),
        "{e}"
    );
    Ok(())
}

candle_core::test_device!(
    fixed_step_orders,
    fixed_step_orders_cpu,
    fixed_step_orders_cuda,
    fixed_step_orders_metal
);
candle_core::test_device!(
    uneven_grids_keep_the_order,
    uneven_grids_cpu,
    uneven_grids_cuda,
    uneven_grids_metal
);
candle_core::test_device!(
    adaptive_tracks_tolerance,
    adaptive_tracks_tolerance_cpu,
    adaptive_tracks_tolerance_cuda,
    adaptive_tracks_tolerance_metal
);
candle_core::test_device!(
    dense_output_and_reverse_time,
    dense_output_and_reverse_time_cpu,
    dense_output_and_reverse_time_cuda,
    dense_output_and_reverse_time_metal
);
candle_core::test_device!(
    jumps_restart_the_history,
    jumps_restart_the_history_cpu,
    jumps_restart_the_history_cuda,
    jumps_restart_the_history_metal
);
candle_core::test_device!(
    events_and_single_precision,
    events_and_single_precision_cpu,
    events_and_single_precision_cuda,
    events_and_single_precision_metal
);
candle_core::test_device!(errors, errors_cpu, errors_cuda, errors_metal);

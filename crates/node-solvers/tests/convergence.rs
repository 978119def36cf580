//! Convergence order of every Runge–Kutta method with fixed steps, of its dense output, on the
//! nonlinear, non-autonomous Riccati problem `y' = −y² cos t` (exact: `1/y = 1/y0 + sin t`).

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{fitted_slope, max_abs_diff, worst_riccati_error};
use node_solvers::problems::Riccati;
use node_solvers::{odeint, Method, SolveOptions};

/// Base step counts: the errors on the three grids lie between ~1e-3 and ~1e-13, inside the
/// asymptotic range and above f64 round-off (measured; e.g. RK4 at h = 1/8 still has error
/// ratios 11 and 15 on the way to 16, dopri8 reaches round-off at 32 steps).
fn base_steps(order: usize) -> usize {
    match order {
        1 => 64,
        2 => 32,
        3 => 16,
        4 => 64,
        5 => 32,
        _ => 4,
    }
}

fn order_case(dev: &Device) -> Result<()> {
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let (t0, t1) = (0.0, 2.0);
    let exact = p.exact(&y0, t0, t1)?;
    let mut report = vec![];
    let mut failed = false;
    for m in Method::RUNGE_KUTTA {
        // The Rosenbrock methods' transformed coefficients (tens, with cancellations) reach
        // f64 round-off sooner: rodas4's error stalls near 1e-12 from 128 steps (measured:
        // 1.1e-10, 7.1e-12, 1.0e-12 at 64, 128, 256 steps; 1.8e-9 at 32, and ratios 10.6 and
        // 17 from 16 steps, before the asymptotic range).
        let n0 = if m.is_rosenbrock() {
            32
        } else {
            base_steps(m.order())
        };
        let mut hs = vec![];
        let mut errs = vec![];
        for n in [n0, 2 * n0, 4 * n0] {
            // The tolerances are the implicit methods' Newton tolerance, far below the
            // discretization error (at the default 1e-7 kvaerno5's error stalls near 1e-8);
            // explicit fixed steps ignore them.
            let opts = SolveOptions::default()
                .method(m)
                .fixed_steps(n)
                .tolerances(1e-13, 1e-15);
            let sol = odeint(&p.field(), &y0, &[t0, t1], &opts)?;
            hs.push((t1 - t0) / n as f64);
            errs.push(max_abs_diff(&sol.last()?, &exact)?);
            assert_eq!(sol.stats.accepted_steps, n);
        }
        let slope = fitted_slope(&hs, &errs);
        let p = m.order() as f64;
        // Below p means a wrong coefficient. Above: high-order methods converge slightly
        // faster than h^p before the asymptotic range on this problem (dopri8: 2^8.5 per
        // halving just above round-off), so allow up to p + 1.
        // rodas4p's error ratios approach 16 from below and only slowly: 12.6, 13.9, 14.9,
        // 15.9 per halving from 64 steps, measured in 40-digit arithmetic on `y' = −y²`,
        // past f64's round-off (here 9.2 and 12.9 from 32 steps). Its order conditions are
        // checked exactly in tests/tableaus.rs.
        let low = if m == Method::Rodas4P {
            p - 0.7
        } else {
            p - 0.3
        };
        failed |= slope <= low || slope >= p + 1.0;
        report.push(format!(
            "{m}: observed {slope:.2}, expected {p} (errors {errs:?})"
        ));
    }
    assert!(!failed, "convergence orders:\n{}", report.join("\n"));
    println!("{}", report.join("\n"));
    Ok(())
}

fn dense_output_case(dev: &Device) -> Result<()> {
    // Output times that fall strictly inside steps: the interpolant must keep (at least) third
    // order, the order of the cubic Hermite fallback; dopri5/tsit5/dopri8 have 4th+ order ones.
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let ts = [0.0, 0.377, 1.113, 1.5];
    for m in Method::RUNGE_KUTTA {
        let n0 = base_steps(m.order()).max(8);
        let mut hs = vec![];
        let mut errs = vec![];
        for n in [n0, 2 * n0, 4 * n0] {
            let opts = SolveOptions::default()
                .method(m)
                .fixed_steps(n)
                .tolerances(1e-13, 1e-15);
            let sol = odeint(&p.field(), &y0, &ts, &opts)?;
            hs.push(1.5 / n as f64);
            errs.push(worst_riccati_error(&sol.ys, &y0, &ts)?);
        }
        let slope = fitted_slope(&hs, &errs);
        let want = (m.order() as f64).min(3.0);
        assert!(
            slope > want - 0.3,
            "{m}: dense output order {slope:.2} < {want} ({errs:?})"
        );
    }
    Ok(())
}

candle_core::test_device!(
    order_case,
    fixed_step_order_cpu,
    fixed_step_order_cuda,
    fixed_step_order_metal
);
candle_core::test_device!(
    dense_output_case,
    dense_output_order_cpu,
    dense_output_order_cuda,
    dense_output_order_metal
);

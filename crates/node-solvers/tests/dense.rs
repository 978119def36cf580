//! Dense solutions (`odeint_dense`): evaluated anywhere, they give what an output time there
//! gives, bit for bit; they match the exact solution to the tolerance; gradients flow through
//! them; and times outside the solve are errors.

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use common::max_abs_diff;
use node_solvers::problems::Rotation;
use node_solvers::{odeint, odeint_dense, Method, SolveOptions, SolverError};

fn rotation() -> Rotation {
    Rotation {
        decay: 0.2,
        freq: 3.0,
    }
}

fn y0(dev: &Device) -> Result<Tensor> {
    Ok(Tensor::new(&[[1.0f64, 0.0], [0.0, 2.0], [-1.5, 0.5]], dev)?)
}

fn equals_output_times(dev: &Device) -> Result<()> {
    // Output times do not change the steps (they come from dense output), so a dense solve of
    // [t0, t1] evaluated at inner times is the solve with those output times, exactly; for
    // every kind of interpolant (dopri5's quartic, tsit5's and dopri8's own weights, Hermite
    // with and without FSAL), adaptive and fixed steps, forward and reverse time.
    let p = rotation();
    let field = p.field();
    let y0 = y0(dev)?;
    let cases = [
        SolveOptions::default().tolerances(1e-8, 1e-8),
        SolveOptions::default()
            .method(Method::Tsit5)
            .tolerances(1e-7, 1e-7),
        SolveOptions::default()
            .method(Method::Dopri8)
            .tolerances(1e-9, 1e-9),
        SolveOptions::default()
            .method(Method::Bosh3)
            .tolerances(1e-6, 1e-6),
        SolveOptions::default()
            .method(Method::Fehlberg2)
            .tolerances(1e-5, 1e-5),
        SolveOptions::default().method(Method::Rk4).fixed_steps(17),
        SolveOptions::default()
            .method(Method::Midpoint)
            .step_size(0.02),
    ];
    for opts in cases {
        let m = opts.method;
        for ts in [vec![0.0, 0.37, 1.0, 1.5, 2.0], vec![2.0, 1.2, 0.05, 0.0]] {
            let ends = [ts[0], ts[ts.len() - 1]];
            let (sol, dense) = odeint_dense(&field, &y0, &ends, &opts)?;
            let with_outputs = odeint(&field, &y0, &ts, &opts)?;
            assert_eq!(sol.stats.accepted_steps, with_outputs.stats.accepted_steps);
            assert_eq!(dense.span(), (ends[0], ends[1]));
            assert_eq!(dense.step_times().len(), sol.stats.accepted_steps + 1);
            let got = dense.evaluate_many(&ts)?;
            assert_eq!(
                max_abs_diff(&got, &with_outputs.ys)?,
                0.0,
                "{m}, {ts:?}: dense output differs from output times"
            );
            // And it is the solution (a sanity bound: second-order methods at loose
            // tolerances are among the cases).
            for (i, &t) in ts.iter().enumerate() {
                let err = max_abs_diff(&got.get(i)?, &p.exact(&y0, ts[0], t)?)?;
                assert!(err < 5e-2, "{m}, t = {t}: error {err:e}");
            }
        }
    }
    Ok(())
}

fn accurate_between_steps(dev: &Device) -> Result<()> {
    // At 200 times over the interval, dopri5's dense output stays within a small multiple of
    // the tolerance of the exact solution (the interpolant is fourth order).
    let p = rotation();
    let y0 = y0(dev)?;
    let opts = SolveOptions::default().tolerances(1e-9, 1e-9);
    let (_, dense) = odeint_dense(&p.field(), &y0, &[0.0, 3.0], &opts)?;
    let mut worst = 0.0f64;
    for i in 0..=200 {
        let t = 3.0 * i as f64 / 200.0;
        let err = max_abs_diff(&dense.evaluate(t)?, &p.exact(&y0, 0.0, t)?)?;
        worst = worst.max(err);
    }
    assert!(worst < 1e-7, "worst error {worst:e}");
    Ok(())
}

fn gradients_flow(dev: &Device) -> Result<()> {
    // dy/dt = θ y: the dense value at 0.8 has the gradient of the output at 0.8.
    let theta = Var::new(&[-0.7f64], dev)?;
    let th = theta.clone();
    let f = move |_t: f64, y: &Tensor| y.broadcast_mul(th.as_tensor());
    let y0 = Tensor::new(&[1.5f64, -0.5], dev)?;
    let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
    let (_, dense) = odeint_dense(&f, &y0, &[0.0, 2.0], &opts)?;
    let g_dense = dense.evaluate(0.8)?.sum_all()?.backward()?;
    let direct = odeint(&f, &y0, &[0.0, 0.8, 2.0], &opts)?;
    let g_direct = direct.ys.get(1)?.sum_all()?.backward()?;
    let (a, b) = (
        g_dense.get(&theta).expect("θ").to_vec1::<f64>()?[0],
        g_direct.get(&theta).expect("θ").to_vec1::<f64>()?[0],
    );
    assert_eq!(a, b);
    // d/dθ Σ y0 e^{θt} = t Σ y0 e^{θt}.
    let want = 0.8 * 1.0 * (-0.7f64 * 0.8).exp();
    assert!((a - want).abs() < 1e-8, "{a} vs {want}");
    Ok(())
}

fn outside_is_an_error(dev: &Device) -> Result<()> {
    let f = |_t: f64, y: &Tensor| y.neg();
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let (_, dense) = odeint_dense(&f, &y0, &[1.0, 0.0], &SolveOptions::default())?;
    assert_eq!(dense.evaluate(1.0)?.to_vec1::<f64>()?, [1.0]);
    for t in [1.5, -0.1, f64::NAN] {
        let e = dense.evaluate(t).unwrap_err();
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidTimes(_))),
            "{t}: {e}"
        );
    }
    assert!(dense.evaluate_many(&[]).is_err());
    // One output time: nothing solved, the one value there.
    let (_, dense) = odeint_dense(&f, &y0, &[0.5], &SolveOptions::default())?;
    assert_eq!(dense.evaluate(0.5)?.to_vec1::<f64>()?, [1.0]);
    assert!(dense.evaluate(0.6).is_err());
    Ok(())
}

candle_core::test_device!(
    equals_output_times,
    equals_outputs_cpu,
    equals_outputs_cuda,
    equals_outputs_metal
);
candle_core::test_device!(
    accurate_between_steps,
    accurate_cpu,
    accurate_cuda,
    accurate_metal
);
candle_core::test_device!(
    gradients_flow,
    gradients_cpu,
    gradients_cuda,
    gradients_metal
);
candle_core::test_device!(
    outside_is_an_error,
    outside_cpu,
    outside_cuda,
    outside_metal
);

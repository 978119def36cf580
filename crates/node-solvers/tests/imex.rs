//! The IMEX methods (KenCarp3/4/5) on split fields: their order with both parts at work,
//! their evaluation counts, a stiff reaction–diffusion system whose stiff part alone is
//! solved implicitly, and their errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{fitted_slope, max_abs_diff, worst_riccati_error};
use node_solvers::problems::{Brusselator, Riccati};
use node_solvers::{
    odeint, odeint_dense, odeint_event, EventOptions, Method, SolveOptions, SolverError, Split,
    VectorField, WithJacobian,
};
use std::cell::Cell;

const IMEX: [Method; 3] = [Method::KenCarp3, Method::KenCarp4, Method::KenCarp5];

/// The Riccati field `−y² cos t` split into two non-autonomous, nonlinear parts (`f_I` with a
/// linear decay, `f_E` adding it back), so that the solution is still Riccati's and the
/// coupling between the two tableaus shows in the order.
fn split_riccati() -> Split<impl VectorField, impl VectorField> {
    let half = |t: f64, y: &Tensor| y.sqr()?.affine(-0.5 * t.cos(), 0.0);
    Split::new(
        move |t: f64, y: &Tensor| half(t, y)? + y.affine(3.0, 0.0)?,
        move |t: f64, y: &Tensor| half(t, y)? - y.affine(3.0, 0.0)?,
    )
}

fn order_case(dev: &Device) -> Result<()> {
    let p = Riccati;
    let f = split_riccati();
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let (t0, t1) = (0.0, 2.0);
    let exact = p.exact(&y0, t0, t1)?;
    let mut report = vec![];
    let mut failed = false;
    for m in IMEX {
        let stages = m.tableau().unwrap().stages();
        let n0 = 32;
        let (mut hs, mut errs) = (vec![], vec![]);
        for n in [n0, 2 * n0, 4 * n0] {
            let opts = SolveOptions::default()
                .method(m)
                .fixed_steps(n)
                .tolerances(1e-13, 1e-15);
            let sol = odeint(&f, &y0, &[t0, t1], &opts)?;
            hs.push((t1 - t0) / n as f64);
            errs.push(max_abs_diff(&sol.last()?, &exact)?);
            // One explicit evaluation per stage: the first stage's comes with `f(t, y)` at
            // the step start (the method is not FSAL), and is not evaluated twice.
            assert_eq!(sol.stats.explicit_nfe, n * stages, "{m}: {:?}", sol.stats);
            // The same method on the field as a whole (all of it implicit) steps otherwise.
            let whole = |t: f64, y: &Tensor| f.eval(t, y);
            let unsplit = odeint(&whole, &y0, &[t0, t1], &opts)?;
            assert_eq!(unsplit.stats.explicit_nfe, 0);
            assert!(max_abs_diff(&unsplit.last()?, &sol.last()?)? > 0.0, "{m}");
        }
        let slope = fitted_slope(&hs, &errs);
        let want = m.order() as f64;
        failed |= slope <= want - 0.3 || slope >= want + 1.0;
        report.push(format!(
            "{m}: observed {slope:.2}, expected {want} (errors {errs:?})"
        ));
    }
    println!("{}", report.join("\n"));
    assert!(!failed, "IMEX convergence orders:\n{}", report.join("\n"));
    Ok(())
}

fn dense_case(dev: &Device) -> Result<()> {
    // Outputs inside the steps of a split solve come from Kennedy and Carpenter's dense
    // output on the sums of the stages' parts: errors of order 3 (KenCarp3's second-order
    // interpolant) or more.
    let f = split_riccati();
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let ts = [0.0, 0.377, 1.113, 1.5];
    for m in IMEX {
        let (mut hs, mut errs) = (vec![], vec![]);
        for n in [16, 32, 64] {
            let opts = SolveOptions::default()
                .method(m)
                .fixed_steps(n)
                .tolerances(1e-13, 1e-15);
            let sol = odeint(&f, &y0, &ts, &opts)?;
            hs.push(1.5 / n as f64);
            errs.push(worst_riccati_error(&sol.ys, &y0, &ts)?);
        }
        let slope = fitted_slope(&hs, &errs);
        assert!(slope > 2.7, "{m}: dense output order {slope:.2} ({errs:?})");
    }
    // A dense solution of a split solve agrees with the solve's own outputs.
    let opts = SolveOptions::default().method(Method::KenCarp4);
    let (sol, dense) = odeint_dense(&f, &y0, &[0.0, 1.5], &opts)?;
    let outputs = odeint(&f, &y0, &ts, &opts)?;
    assert_eq!(sol.stats, outputs.stats);
    for (i, &t) in ts.iter().enumerate() {
        let d = max_abs_diff(&dense.evaluate(t)?, &outputs.ys.get(i)?)?;
        assert!(d < 1e-12, "dense solution off the solve by {d:e} at {t}");
    }
    Ok(())
}

/// The Brusselator on `N` points with the reaction counted.
struct CountedReaction<'a> {
    p: &'a Brusselator,
    calls: Cell<usize>,
}

impl VectorField for CountedReaction<'_> {
    fn eval(&self, t: f64, y: &Tensor) -> candle_core::Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        self.p.reaction()(t, y)
    }
}

fn stiff_case(dev: &Device) -> Result<()> {
    // 64 points: the diffusion's eigenvalues reach −4α(N+1)² = −338, the reaction's stay
    // near −10. A reference by kvaerno5 on the whole field at tight tolerances.
    let p = Brusselator::new(64);
    let y0 = p.initial(candle_core::DType::F64, dev)?;
    let ts = [0.0, 2.0, 10.0];
    let jac = node_solvers::WithJacobian::new(p.field(), p.jacobian());
    let reference = odeint(
        &jac,
        &y0,
        &ts,
        &SolveOptions::default()
            .method(Method::Kvaerno5)
            .tolerances(1e-11, 1e-11),
    )?;
    let explicit = SolveOptions::default().tolerances(1e-5, 1e-5);
    let dopri5 = odeint(&p.field(), &y0, &ts, &explicit)?;
    for m in IMEX {
        let reaction = CountedReaction {
            p: &p,
            calls: Cell::new(0),
        };
        let diffusion = node_solvers::WithJacobian::new(p.diffusion(), p.diffusion_jacobian());
        let f = Split::new(|t: f64, y: &Tensor| reaction.eval(t, y), diffusion);
        let opts = explicit.clone().method(m);
        let sol = odeint(&f, &y0, &ts, &opts)?;
        let err = max_abs_diff(&sol.ys, &reference.ys)?;
        println!(
            "{m}: error {err:e}, {:?}; dopri5 {:?}",
            sol.stats, dopri5.stats
        );
        assert!(err < 1e-3, "{m}: error {err:e}");
        // The reaction is only evaluated, never differentiated: once per stage of every
        // step tried, and once or twice to choose the first step.
        let stages = m.tableau().unwrap().stages();
        let tried = sol.stats.accepted_steps + sol.stats.rejected_steps;
        assert_eq!(reaction.calls.get(), sol.stats.explicit_nfe);
        assert!(
            sol.stats.explicit_nfe <= stages * tried + 2,
            "{m}: {:?}",
            sol.stats
        );
        // The step is not held to the diffusion's stability limit, as dopri5's is.
        assert!(
            5 * sol.stats.accepted_steps < dopri5.stats.accepted_steps,
            "{m}: {:?} against dopri5's {:?}",
            sol.stats,
            dopri5.stats
        );
    }
    // Without its Jacobian, the diffusion's is built by differences of the diffusion alone:
    // the reaction's count does not grow with them.
    let reaction = CountedReaction {
        p: &p,
        calls: Cell::new(0),
    };
    let f = Split::new(|t: f64, y: &Tensor| reaction.eval(t, y), p.diffusion());
    let sol = odeint(&f, &y0, &ts, &explicit.clone().method(Method::KenCarp4))?;
    let tried = sol.stats.accepted_steps + sol.stats.rejected_steps;
    assert!(sol.stats.jacobians >= 1);
    assert!(sol.stats.nfe > sol.stats.jacobians * 128, "{:?}", sol.stats);
    assert!(sol.stats.explicit_nfe <= 6 * tried + 2, "{:?}", sol.stats);
    assert!(max_abs_diff(&sol.ys, &reference.ys)? < 1e-3);
    Ok(())
}

fn fast_balance_case(dev: &Device) -> Result<()> {
    // `y' = (cos t − y)/ε + sin y`, ε = 1e-3: the explicit part pushes along the stiff
    // direction, and the state sits where the two balance. Each IMEX step ends off that
    // balance by the explicit weights' error (the implicit part alone is stiffly accurate,
    // the sum is not), so the split loses order: KenCarp3 with ten steps is 2800 times less
    // accurate than the same method on the whole field (measured 1.7e-3 against 6.0e-7; a
    // scalar Python transcription of the method gives the same 1.673e-3). The adaptive
    // solve still meets its tolerance: the estimate sees the error (overstated, not hidden).
    let eps = 1e-3;
    let stiff = move |t: f64, y: &Tensor| y.affine(-1.0 / eps, t.cos() / eps);
    let f = Split::new(|_t: f64, y: &Tensor| y.sin(), stiff);
    let whole = |t: f64, y: &Tensor| f.eval(t, y);
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let ts = [0.0, 1.0];
    let tight = SolveOptions::default()
        .method(Method::Kvaerno5)
        .tolerances(1e-12, 1e-14);
    let exact = odeint(&whole, &y0, &ts, &tight)?.last()?;
    let fixed = SolveOptions::default()
        .method(Method::KenCarp3)
        .fixed_steps(10)
        .tolerances(1e-12, 1e-14);
    let split_err = max_abs_diff(&odeint(&f, &y0, &ts, &fixed)?.last()?, &exact)?;
    let whole_err = max_abs_diff(&odeint(&whole, &y0, &ts, &fixed)?.last()?, &exact)?;
    assert!(
        split_err > 1000.0 * whole_err,
        "split {split_err:e}, whole {whole_err:e}"
    );
    for m in IMEX {
        let opts = SolveOptions::default().method(m).tolerances(1e-6, 1e-9);
        let sol = odeint(&f, &y0, &ts, &opts)?;
        let err = max_abs_diff(&sol.last()?, &exact)?;
        println!("{m}: error {err:e}, {:?}", sol.stats);
        // Measured: 2.3e-6, 1.1e-7, 9.2e-8 (rtol · |y| = 5.4e-7): a global error of a few
        // local tolerances, as on non-stiff problems.
        assert!(err < 1e-5, "{m}: error {err:e}");
    }
    Ok(())
}

fn event_and_f32_case(dev: &Device) -> Result<()> {
    // An event on a split solve: the first component of the split Riccati problem falls
    // through 0.8 where 1/0.8 = 1 + sin t.
    let f = split_riccati();
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let g = |_t: f64, y: &Tensor| y.narrow(0, 0, 1)?.affine(1.0, -0.8);
    let want = 0.25f64.asin();
    for m in IMEX {
        let opts = SolveOptions::default().method(m).tolerances(1e-10, 1e-12);
        let sol = odeint_event(&f, &y0, 0.0, 2.0, &g, &opts, &EventOptions::default())?;
        assert_eq!(sol.event, Some(0), "{m}");
        assert!(sol.stats.explicit_nfe > 0, "{m}");
        assert!(
            (sol.t - want).abs() < 1e-8,
            "{m}: event at {} not {want}",
            sol.t
        );
    }
    // f32: the split Brusselator on 32 points agrees with the f64 solve to f32's tolerance.
    let p = Brusselator::new(32);
    let opts = SolveOptions::default()
        .method(Method::KenCarp4)
        .tolerances(1e-4, 1e-4);
    let ts = [0.0, 5.0];
    let y64 = odeint(&p.split(), &p.initial(DType::F64, dev)?, &ts, &opts)?;
    let y32 = odeint(&p.split(), &p.initial(DType::F32, dev)?, &ts, &opts)?;
    assert_eq!(y32.ys.dtype(), DType::F32);
    let d = max_abs_diff(&y32.ys.to_dtype(DType::F64)?, &y64.ys)?;
    assert!(d < 1e-3, "f32 against f64: {d:e}");
    // A split field wrapped with a Jacobian of the whole keeps its split: an IMEX method
    // solves it split (its explicit part evaluated), kvaerno5 uses the whole's Jacobian.
    let whole_jac = WithJacobian::new(p.split(), p.jacobian());
    let y0 = p.initial(DType::F64, dev)?;
    let imex = odeint(&whole_jac, &y0, &ts, &opts)?;
    assert!(imex.stats.explicit_nfe > 0);
    assert_eq!(imex.stats.nfe, y64.stats.nfe);
    let kv = odeint(&whole_jac, &y0, &ts, &opts.clone().method(Method::Kvaerno5))?;
    let kv_fd = odeint(&p.split(), &y0, &ts, &opts.clone().method(Method::Kvaerno5))?;
    assert!(
        kv.stats.nfe < kv_fd.stats.nfe,
        "{:?} {:?}",
        kv.stats,
        kv_fd.stats
    );
    Ok(())
}

fn error_case(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let opts = SolveOptions::default().method(Method::KenCarp4);
    // An explicit part of the wrong shape is named as such, at the time it was evaluated.
    let f = Split::new(
        |_t: f64, y: &Tensor| y.narrow(0, 0, 1),
        |_t: f64, y: &Tensor| y.neg(),
    );
    let err = odeint(&f, &y0, &[0.0, 1.0], &opts).unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::ShapeMismatch { .. })
        ),
        "{err}"
    );
    // So is an implicit part of the wrong dtype.
    let f = Split::new(
        |_t: f64, y: &Tensor| y.neg(),
        |_t: f64, y: &Tensor| y.to_dtype(candle_core::DType::F32),
    );
    let err = odeint(&f, &y0, &[0.0, 1.0], &opts).unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::OutputMismatch(_))
        ),
        "{err}"
    );
    // A blow-up of the explicit part is reported, not returned.
    let f = Split::new(
        |_t: f64, y: &Tensor| y.affine(0.0, f64::NAN),
        |_t: f64, y: &Tensor| y.neg(),
    );
    let err = odeint(&f, &y0, &[0.0, 1.0], &opts).unwrap_err();
    assert!(
        matches!(SolverError::find(&err), Some(SolverError::NonFinite { .. })),
        "{err}"
    );
    Ok(())
}

candle_core::test_device!(
    order_case,
    imex_order_cpu,
    imex_order_cuda,
    imex_order_metal
);
candle_core::test_device!(
    dense_case,
    imex_dense_cpu,
    imex_dense_cuda,
    imex_dense_metal
);
candle_core::test_device!(
    stiff_case,
    imex_stiff_cpu,
    imex_stiff_cuda,
    imex_stiff_metal
);
candle_core::test_device!(
    fast_balance_case,
    imex_fast_balance_cpu,
    imex_fast_balance_cuda,
    imex_fast_balance_metal
);
candle_core::test_device!(
    error_case,
    imex_errors_cpu,
    imex_errors_cuda,
    imex_errors_metal
);
candle_core::test_device!(
    event_and_f32_case,
    imex_event_f32_cpu,
    imex_event_f32_cuda,
    imex_event_f32_metal
);

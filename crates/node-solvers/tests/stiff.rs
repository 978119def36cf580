//! The implicit methods on stiff problems: Robertson's kinetics against reference values,
//! L-stability, the Jacobian options, Jacobians in closed form, reverse time, f32, and their
//! errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::{brusselator_at_10, max_abs_diff};
use node_solvers::problems::{Brusselator, Exponential, Robertson};
use node_solvers::{
    odeint, odeint_event, EventOptions, Jacobian, Method, SolveOptions, SolverError, StepSize,
    VectorField, WithJacobian,
};

/// Largest relative error of each component of `y` (a `[3]` or `[B, 3]` state) against
/// `want`.
fn rel_errors(y: &Tensor, want: &[f64; 3]) -> Result<Vec<f64>> {
    let y = y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(y.iter()
        .enumerate()
        .map(|(i, v)| (v - want[i % 3]).abs() / want[i % 3].abs())
        .collect())
}

fn robertson_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?;
    let [(t40, at40), (t5, at5)] = Robertson::REFERENCE;
    // Measured: kvaerno3 5533 evaluations in 850 steps, kvaerno5 3571 in 168; the worst
    // relative errors 2.3e-6 and 2.6e-6 (y2 at t = 40 comes from the cubic Hermite dense
    // output inside a long kvaerno5 step).
    for (m, rtol, bound, most_nfe) in [
        (Method::Kvaerno3, 1e-6, 1e-4, 10_000),
        (Method::Kvaerno5, 1e-8, 1e-5, 10_000),
    ] {
        // y2 stays below 4e-5: its absolute tolerance must be far below that.
        let opts = SolveOptions::default().method(m).tolerances(rtol, 1e-14);
        let sol = odeint(&p.field(), &y0, &[0.0, t40, t5], &opts)?;
        let e40 = rel_errors(&sol.ys.get(1)?, &at40)?;
        let e5 = rel_errors(&sol.ys.get(2)?, &at5)?;
        println!(
            "{m}: {:?}, relative errors {e40:?} at 40, {e5:?} at 1e5",
            sol.stats
        );
        let worst = e40.iter().chain(&e5).fold(0.0f64, |a, &b| a.max(b));
        assert!(worst < bound, "{m}: relative error {worst:e}");
        assert!(sol.stats.nfe < most_nfe, "{m}: {:?}", sol.stats);
    }
    // An explicit method is held to steps of ~1/λ by stability: dopri5 runs out of steps
    // before t = 40 (the stiffness grows with t).
    let opts = SolveOptions::default().max_steps(20_000);
    let err = odeint(&p.field(), &y0, &[0.0, t40], &opts).unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::MaxStepsExceeded { .. })
        ),
        "{err}"
    );
    Ok(())
}

/// L-stability: one step of size 1 on `y' = −10⁸ y` damps the state to nothing, where an
/// explicit step would multiply it by about 10⁸ⁿ.
fn l_stable_case(dev: &Device) -> Result<()> {
    let p = Exponential { rate: -1e8 };
    let y0 = Tensor::new(&[1.0f64, -2.0], dev)?;
    for m in [
        Method::ImplicitEuler,
        Method::Kvaerno3,
        Method::Kvaerno5,
        Method::Rodas4,
        Method::Rodas4P,
        Method::Rodas5P,
        Method::Ros34pw2,
    ] {
        let opts = SolveOptions::default().method(m).fixed_steps(1);
        let y1 = odeint(&p.field(), &y0, &[0.0, 1.0], &opts)?.last()?;
        let worst = max_abs_diff(&y1, &y1.zeros_like()?)?;
        assert!(worst < 1e-6, "{m}: |y(1)| = {worst:e}");
    }
    Ok(())
}

/// A stiff linear problem with a slow forcing, `y' = −λ (y − cos t)`, λ = 10⁶: after the
/// transient the solution is `cos t + sin t / λ + O(1/λ²)`. The implicit methods take steps
/// set by the slow part alone; an explicit method would need ~600 000 (dopri5's stability
/// region reaches to about −3.3 on the real axis).
fn stiff_forcing_case(dev: &Device) -> Result<()> {
    let lambda = 1e6;
    let f = move |t: f64, y: &Tensor| y.affine(-lambda, lambda * t.cos());
    let y0 = Tensor::new(&[1.0f64, 0.0, 3.0], dev)?;
    for m in [Method::ImplicitEuler, Method::Kvaerno3, Method::Kvaerno5] {
        let opts = SolveOptions::default().method(m).tolerances(1e-6, 1e-8);
        let sol = odeint(&f, &y0, &[0.0, 2.0], &opts)?;
        let want = 2.0f64.cos() + 2.0f64.sin() / lambda;
        let e = max_abs_diff(&sol.last()?, &sol.last()?.ones_like()?.affine(want, 0.0)?)?;
        assert!(e < 1e-4, "{m}: error {e:e}");
        println!("{m}: {:?}", sol.stats);
        // First-order implicit Euler needs ~5000 steps at this tolerance (measured 5042).
        assert!(sol.stats.accepted_steps < 10_000, "{m}: {:?}", sol.stats);
    }
    // Events work on implicit steps: y crosses zero where cos t + sin t / λ does, at
    // π/2 + 1/λ + O(1/λ³). The crossing is located on the cubic Hermite interpolant, whose
    // error inside a step is far above the steps' own: measured 1.5e-11 for kvaerno3 and
    // 2.4e-9 for kvaerno5, whose steps are longer (at this tolerance, outputs inside steps
    // were off by up to 4.9e-9 and 1.8e-7, against 1.2e-12 and 3.2e-11 at the steps' ends).
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let down = |_t: f64, y: &Tensor| Ok(y.clone());
    let want = std::f64::consts::FRAC_PI_2 + 1.0 / lambda;
    for m in [Method::Kvaerno3, Method::Kvaerno5] {
        let opts = SolveOptions::default().method(m).tolerances(1e-10, 1e-12);
        let sol = odeint_event(&f, &y0, 0.0, 3.0, &down, &opts, &EventOptions::default())?;
        assert_eq!(sol.event, Some(0), "{m}");
        println!("{m} event: t = {} ({:?})", sol.t, sol.stats);
        assert!(
            (sol.t - want).abs() < 1e-8,
            "{m}: event at {} not {want}",
            sol.t
        );
    }
    Ok(())
}

/// The three Jacobian options give the same solution; the batched one builds its blocks with
/// 3 evaluations per Jacobian whatever the batch, the dense one with 3·B.
fn jacobian_options_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let b = 4;
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?
        .unsqueeze(0)?
        .repeat((b, 1))?;
    let base = SolveOptions::default()
        .method(Method::Kvaerno3)
        .tolerances(1e-6, 1e-14);
    let [(t40, at40), _] = Robertson::REFERENCE;
    let mut sols = vec![];
    for jac in [Jacobian::Dense, Jacobian::Batched] {
        let sol = odeint(&p.field(), &y0, &[0.0, t40], &base.clone().jacobian(jac))?;
        let worst = rel_errors(&sol.last()?, &at40)?
            .into_iter()
            .fold(0.0f64, f64::max);
        assert!(worst < 1e-4, "{jac:?}: relative error {worst:e}");
        println!("{jac:?}: {:?}", sol.stats);
        sols.push(sol);
    }
    assert!(
        sols[1].stats.nfe < sols[0].stats.nfe,
        "batched {:?} against dense {:?}",
        sols[1].stats,
        sols[0].stats
    );
    // `Blocks` spelled out is `Batched`: the same solve.
    let blocks = Jacobian::Blocks { count: b, size: 3 };
    let sol = odeint(&p.field(), &y0, &[0.0, t40], &base.clone().jacobian(blocks))?;
    assert_eq!(sol.stats, sols[1].stats);
    assert_eq!(max_abs_diff(&sol.ys, &sols[1].ys)?, 0.0);
    // An integral the field accumulates, `∫ y2 dt`, as a fourth component: a prefix of 3.
    let f = p.field();
    let g = move |t: f64, y: &Tensor| -> candle_core::Result<Tensor> {
        let d = f(t, &y.narrow(0, 0, 3)?)?;
        Tensor::cat(&[d, y.narrow(0, 1, 1)?], 0)
    };
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0, 0.0], dev)?;
    let with_integral = odeint(
        &g,
        &y0,
        &[0.0, t40],
        &base.clone().jacobian(Jacobian::DensePrefix(3)),
    )?;
    let worst = rel_errors(&with_integral.last()?.narrow(0, 0, 3)?, &at40)?
        .into_iter()
        .fold(0.0f64, f64::max);
    assert!(worst < 1e-4, "prefix: relative error {worst:e}");
    // One block of 3 and the integral: the prefix again.
    let one_block = Jacobian::Blocks { count: 1, size: 3 };
    let sol = odeint(&g, &y0, &[0.0, t40], &base.clone().jacobian(one_block))?;
    assert_eq!(sol.stats, with_integral.stats);
    Ok(())
}

/// `∂f/∂y` by central differences, `[n, n]` over the flattened state (f64).
fn central_jacobian(f: &dyn VectorField, y: &Tensor) -> Result<Vec<f64>> {
    let yh = y.flatten_all()?.to_vec1::<f64>()?;
    let n = yh.len();
    let mut jac = vec![0.0; n * n];
    for c in 0..n {
        let d = 1e-6 * yh[c].abs().max(1e-3);
        let at = |s: f64| -> Result<Vec<f64>> {
            let mut p = yh.clone();
            p[c] += s * d;
            let p = Tensor::from_vec(p, y.shape(), y.device())?;
            Ok(f.eval(0.0, &p)?.flatten_all()?.to_vec1::<f64>()?)
        };
        let (up, down) = (at(1.0)?, at(-1.0)?);
        for r in 0..n {
            jac[r * n + c] = (up[r] - down[r]) / (2.0 * d);
        }
    }
    Ok(jac)
}

/// Largest entry-wise difference relative to the largest entry.
fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// The closed-form Jacobians of the reference problems match central differences, and
/// Robertson's batched blocks are its single ones.
fn closed_form_jacobians_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let states = [[0.9f64, 2e-5, 0.1], [0.3, 1e-6, 0.7]];
    for s in &states {
        let y = Tensor::new(s, dev)?;
        let want = central_jacobian(&p.field(), &y)?;
        let got = p.jacobian()(0.0, &y)?;
        assert_eq!(got.dims(), [3, 3]);
        let got = got.flatten_all()?.to_vec1::<f64>()?;
        let d = rel_diff(&got, &want);
        assert!(d < 1e-6, "Robertson at {s:?}: {got:?} against {want:?}");
    }
    let batch = Tensor::new(&states, dev)?;
    let blocks = p.jacobian()(0.0, &batch)?;
    assert_eq!(blocks.dims(), [2, 3, 3]);
    for (i, s) in states.iter().enumerate() {
        let single = p.jacobian()(0.0, &Tensor::new(s, dev)?)?;
        assert_eq!(max_abs_diff(&blocks.get(i)?, &single)?, 0.0);
    }
    let b = Brusselator::new(6);
    let y0 = b.initial(DType::F64, dev)?;
    // Away from the initial state too (v = 3 there everywhere).
    let y = (&y0 + y0.sin()?.affine(0.3, 0.0)?)?;
    for y in [&y0, &y] {
        let want = central_jacobian(&b.field(), y)?;
        let got = b.jacobian()(0.0, y)?;
        assert_eq!(got.dims(), [12, 12]);
        let d = rel_diff(&got.flatten_all()?.to_vec1::<f64>()?, &want);
        assert!(d < 1e-7, "Brusselator: {d:e}");
    }
    Ok(())
}

/// A field's own Jacobian replaces the finite-difference one: the same solution, one
/// Jacobian call instead of `n` evaluations per build.
fn field_jacobian_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let [(t40, at40), _] = Robertson::REFERENCE;
    let opts = SolveOptions::default()
        .method(Method::Kvaerno5)
        .tolerances(1e-8, 1e-14);
    let exact = WithJacobian::new(p.field(), p.jacobian());
    // One reaction (dense `[3, 3]`), and four with the batched `[4, 3, 3]` blocks.
    let one = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?;
    let four = one.unsqueeze(0)?.repeat((4, 1))?;
    for (y0, jac) in [(&one, Jacobian::Dense), (&four, Jacobian::Batched)] {
        let opts = opts.clone().jacobian(jac);
        let fd = odeint(&p.field(), y0, &[0.0, t40], &opts)?;
        let own = odeint(&exact, y0, &[0.0, t40], &opts)?;
        println!("{jac:?}: differences {:?}, own {:?}", fd.stats, own.stats);
        for sol in [&fd, &own] {
            let worst = rel_errors(&sol.last()?, &at40)?
                .into_iter()
                .fold(0.0f64, f64::max);
            assert!(worst < 1e-5, "{jac:?}: relative error {worst:e}");
        }
        assert!(own.stats.jacobians > 0, "{:?}", own.stats);
        // Each finite-difference build costs 3 evaluations (one per column of a block)
        // and one at y; the field's own costs none.
        assert!(
            own.stats.nfe + 2 * own.stats.jacobians < fd.stats.nfe,
            "own {:?} against differences {:?}",
            own.stats,
            fd.stats
        );
    }
    // The Brusselator on 16 points: 33 evaluations per finite-difference build. Both
    // Jacobians follow dopri5's solution at a tight tolerance.
    let (b, y0, tight) = brusselator_at_10(16, dev)?;
    let ts = [0.0, 10.0];
    let opts = SolveOptions::default()
        .method(Method::Kvaerno5)
        .tolerances(1e-7, 1e-7);
    let fd = odeint(&b.field(), &y0, &ts, &opts)?;
    let own = odeint(&WithJacobian::new(b.field(), b.jacobian()), &y0, &ts, &opts)?;
    println!(
        "Brusselator: differences {:?}, own {:?}",
        fd.stats, own.stats
    );
    for sol in [&fd, &own] {
        let e = max_abs_diff(&sol.last()?, &tight)?;
        assert!(e < 1e-5, "Brusselator error {e:e} ({:?})", sol.stats);
    }
    assert!(own.stats.nfe + 30 * own.stats.jacobians < fd.stats.nfe);
    // A Jacobian half the true one still converges (more slowly, with rebuilds): only the
    // speed depends on it.
    let halved = WithJacobian::new(b.field(), |t: f64, y: &Tensor| {
        b.jacobian()(t, y)?.affine(0.5, 0.0)
    });
    let off = odeint(&halved, &y0, &ts, &opts)?;
    println!("Brusselator, half the Jacobian: {:?}", off.stats);
    let e = max_abs_diff(&off.last()?, &tight)?;
    assert!(e < 1e-5, "halved Jacobian: error {e:e} ({:?})", off.stats);
    assert!(off.stats.nfe > own.stats.nfe);
    Ok(())
}

/// With a Newton matrix of 64 components or more, an adaptive step is kept unless it can
/// grow by a fifth (RADAU5's rule), so the LU factors serve many steps; below 64 the step
/// follows the controller and is refactored at almost every step.
fn keeps_steps_case(dev: &Device) -> Result<()> {
    let opts = SolveOptions::default()
        .method(Method::Kvaerno3)
        .tolerances(1e-6, 1e-6);
    for (points, kept) in [(16, false), (32, true)] {
        let b = Brusselator::new(points);
        let f = WithJacobian::new(b.field(), b.jacobian());
        let sol = odeint(&f, &b.initial(DType::F64, dev)?, &[0.0, 10.0], &opts)?;
        let s = sol.stats;
        println!("{} components: {s:?}", 2 * points);
        // Measured: 42 factorizations for 424 accepted steps with 64 components, 261 for 395
        // with 32.
        if kept {
            assert!(4 * s.factorizations < s.accepted_steps, "{s:?}");
        } else {
            assert!(2 * s.factorizations > s.accepted_steps, "{s:?}");
        }
    }
    Ok(())
}

/// A Jacobian of the wrong shape or with a NaN is a typed error; explicit methods never
/// ask for it.
fn field_jacobian_errors_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?;
    let four = y0.unsqueeze(0)?.repeat((4, 1))?;
    let opts = SolveOptions::default().method(Method::Kvaerno3);
    let find = |e: &candle_core::Error| SolverError::find(e).cloned();
    // Blocks given where the dense `[12, 12]` is asked for.
    let exact = WithJacobian::new(p.field(), p.jacobian());
    let err = odeint(&exact, &four, &[0.0, 1.0], &opts).unwrap_err();
    assert!(
        matches!(find(&err), Some(SolverError::OutputMismatch(_))),
        "{err}"
    );
    assert!(err.to_string().contains("[4, 3, 3]"), "{err}");
    assert!(err.to_string().contains("[12, 12]"), "{err}");
    let nan = WithJacobian::new(p.field(), |t: f64, y: &Tensor| {
        p.jacobian()(t, y)?.affine(f64::NAN, 0.0)
    });
    let err = odeint(&nan, &y0, &[0.0, 1.0], &opts).unwrap_err();
    assert!(
        matches!(find(&err), Some(SolverError::NonFinite { .. })),
        "{err}"
    );
    let sol = odeint(&nan, &y0, &[0.0, 1.0], &SolveOptions::default())?;
    assert_eq!(sol.stats.jacobians, 0);
    Ok(())
}

/// Reverse time, and f32 states.
fn reverse_and_f32_case(dev: &Device) -> Result<()> {
    let p = Exponential { rate: -50.0 };
    let y1 = Tensor::new(&[1e-3f64, 2e-3], dev)?;
    for m in [Method::Kvaerno3, Method::Kvaerno5] {
        // Backwards the decay is growth: y(0) = y(0.1) e^5.
        let opts = SolveOptions::default().method(m).tolerances(1e-8, 1e-12);
        let sol = odeint(&p.field(), &y1, &[0.1, 0.05, 0.0], &opts)?;
        let e = max_abs_diff(&sol.last()?, &p.exact(&y1, 0.1, 0.0)?)?;
        // |y(0)| = 0.3: the global error is a few times rtol, relative.
        assert!(e < 1e-7, "{m}: reverse-time error {e:e}");
        // In f32 the solve follows the f64 solve with the same options (the global error
        // itself can reach e^5 times the local one backwards).
        let opts = SolveOptions::default().method(m).tolerances(1e-4, 1e-7);
        let sol32 = odeint(&p.field(), &y1.to_dtype(DType::F32)?, &[0.1, 0.0], &opts)?;
        let sol64 = odeint(&p.field(), &y1, &[0.1, 0.0], &opts)?;
        assert_eq!(sol32.ys.dtype(), DType::F32);
        let d = max_abs_diff(&sol32.last()?.to_dtype(DType::F64)?, &sol64.last()?)?;
        assert!(d < 1e-5, "{m}: f32 against f64 {d:e}");
    }
    Ok(())
}

fn errors_case(dev: &Device) -> Result<()> {
    let p = Exponential { rate: -1.0 };
    let y0 = Tensor::new(&[1.0f64, 2.0], dev)?;
    let opts = SolveOptions::default().method(Method::Kvaerno3);
    let find = |e: &candle_core::Error| SolverError::find(e).cloned();
    // A batched Jacobian needs a batch dimension; a prefix must fit the state.
    let scalar = Tensor::new(1.0f64, dev)?;
    for (y, jac) in [
        (&scalar, Jacobian::Batched),
        (&y0, Jacobian::DensePrefix(0)),
        (&y0, Jacobian::DensePrefix(3)),
        (&y0, Jacobian::Blocks { count: 0, size: 1 }),
        (&y0, Jacobian::Blocks { count: 2, size: 0 }),
        (&y0, Jacobian::Blocks { count: 1, size: 3 }),
        (
            &y0,
            Jacobian::Blocks {
                count: usize::MAX,
                size: 2,
            },
        ),
    ] {
        let err = odeint(&p.field(), y, &[0.0, 1.0], &opts.clone().jacobian(jac)).unwrap_err();
        assert!(
            matches!(find(&err), Some(SolverError::InvalidOptions(_))),
            "{jac:?}: {err}"
        );
    }
    // A Jacobian too large for the host is refused before it is allocated: an MNIST
    // ODE-Net state (batch 128 of 64 × 7 × 7) dense, or in blocks of 3136.
    let big = Tensor::zeros((128, 64, 7, 7), DType::F32, dev)?;
    for jac in [Jacobian::Dense, Jacobian::Batched] {
        let err = odeint(&p.field(), &big, &[0.0, 1.0], &opts.clone().jacobian(jac)).unwrap_err();
        assert!(
            matches!(find(&err), Some(SolverError::InvalidOptions(_))),
            "{jac:?}: {err}"
        );
        assert!(err.to_string().contains("GiB"), "{err}");
    }
    // y' = y² from 1 with h = 2: `z = 1 + 2z²` has no real root, Newton cannot converge.
    let sq = |_t: f64, y: &Tensor| y.sqr();
    let one = Tensor::new(&[1.0f64], dev)?;
    let fixed = SolveOptions::default()
        .method(Method::ImplicitEuler)
        .fixed_steps(1);
    let err = odeint(&sq, &one, &[0.0, 2.0], &fixed).unwrap_err();
    assert!(
        matches!(find(&err), Some(SolverError::NewtonFailed { t, h }) if t == 0.0 && h == 2.0),
        "{err}"
    );
    // Adaptive steps shrink instead, up to the blow-up at t = 1.
    // The first step, clipped to 0.9, has no root either (hγ = 0.39).
    let adaptive = SolveOptions::default()
        .method(Method::Kvaerno3)
        .first_step(2.0);
    let sol = odeint(&sq, &one, &[0.0, 0.9], &adaptive)?;
    // y(0.9) = 10, with a sensitivity to earlier errors that grows as y².
    let e = max_abs_diff(&sol.last()?, &Tensor::new(&[10.0f64], dev)?)?;
    assert!(e < 1e-4, "error {e:e} at 0.9 ({:?})", sol.stats);
    assert!(sol.stats.rejected_steps > 0, "{:?}", sol.stats);
    // Backprop through Newton's host iterations would be wrong: refused.
    let rate = Var::new(&[-1.0f64], dev)?;
    let tracked = |_t: f64, y: &Tensor| y.broadcast_mul(rate.as_tensor());
    let err = odeint(&tracked, &y0, &[0.0, 1.0], &opts).unwrap_err();
    assert!(
        matches!(
            find(&err),
            Some(SolverError::NotDifferentiable { method: "kvaerno3" })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("odeint_adjoint"), "{err}");
    assert!(matches!(opts.step, StepSize::Adaptive));
    Ok(())
}

candle_core::test_device!(
    robertson_case,
    robertson_cpu,
    robertson_cuda,
    robertson_metal
);
candle_core::test_device!(l_stable_case, l_stable_cpu, l_stable_cuda, l_stable_metal);
candle_core::test_device!(
    stiff_forcing_case,
    stiff_forcing_cpu,
    stiff_forcing_cuda,
    stiff_forcing_metal
);
candle_core::test_device!(
    jacobian_options_case,
    jacobian_options_cpu,
    jacobian_options_cuda,
    jacobian_options_metal
);
candle_core::test_device!(
    reverse_and_f32_case,
    reverse_and_f32_cpu,
    reverse_and_f32_cuda,
    reverse_and_f32_metal
);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);
candle_core::test_device!(
    closed_form_jacobians_case,
    closed_form_jacobians_cpu,
    closed_form_jacobians_cuda,
    closed_form_jacobians_metal
);
candle_core::test_device!(
    field_jacobian_case,
    field_jacobian_cpu,
    field_jacobian_cuda,
    field_jacobian_metal
);
candle_core::test_device!(
    field_jacobian_errors_case,
    field_jacobian_errors_cpu,
    field_jacobian_errors_cuda,
    field_jacobian_errors_metal
);
candle_core::test_device!(
    keeps_steps_case,
    keeps_steps_cpu,
    keeps_steps_cuda,
    keeps_steps_metal
);

//! The symplectic methods: their order on a forced oscillator (time-dependent force), energy
//! without drift over long pendulum runs, time reversibility, evaluation counts, gradients
//! by backprop against finite differences, shapes, dtypes and errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::fitted_slope;
use node_solvers::{
    odeint, odeint_symplectic, Method, Separable, SeparableField, SolveOptions, SolverError,
    SymplecticMethod, SymplecticOptions,
};

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// `q'' = −q + cos 2t` from `q = 1, q' = 0`: `q = (4/3) cos t − (1/3) cos 2t`,
/// `p = −(4/3) sin t + (2/3) sin 2t`.
fn forced_exact(t: f64) -> (f64, f64) {
    (
        4.0 / 3.0 * t.cos() - (2.0 * t).cos() / 3.0,
        -4.0 / 3.0 * t.sin() + 2.0 / 3.0 * (2.0 * t).sin(),
    )
}

fn orders(dev: &Device) -> Result<()> {
    let forced = Separable {
        velocity: |_t: f64, p: &Tensor| Ok(p.clone()),
        force: |t: f64, q: &Tensor| q.neg()?.affine(1.0, (2.0 * t).cos()),
    };
    let q0 = Tensor::new(&[1.0f64], dev)?;
    let p0 = Tensor::new(&[0.0f64], dev)?;
    let t1 = 5.0;
    let (qe, pe) = forced_exact(t1);
    let mut report = vec![];
    let mut failed = false;
    for m in SymplecticMethod::ALL {
        // Errors between ~1e-2 and ~1e-11: the asymptotic range, above round-off.
        let base = match m.order() {
            1 => 256,
            2 => 64,
            4 => 32,
            _ => 16,
        };
        let (mut hs, mut errs) = (vec![], vec![]);
        for n in [base, 2 * base, 4 * base] {
            let opts = SymplecticOptions::new(t1 / n as f64).method(m);
            let sol = odeint_symplectic(&forced, &q0, &p0, &[0.0, t1], &opts)?;
            assert_eq!(sol.stats.steps, n);
            let (q, p) = (host(&sol.qs.get(1)?)?[0], host(&sol.ps.get(1)?)?[0]);
            hs.push(t1 / n as f64);
            errs.push((q - qe).abs().max((p - pe).abs()));
        }
        let slope = fitted_slope(&hs, &errs);
        let k = m.order() as f64;
        failed |= slope < k - 0.3 || slope > k + 0.8;
        report.push(format!("{m}: observed {slope:.2}, expected {k} ({errs:?})"));
    }
    assert!(!failed, "{}", report.join("\n"));
    Ok(())
}

/// The pendulum `H = p²/2 − cos q`, swinging to about 115° (q0 = 2).
fn pendulum() -> impl SeparableField {
    Separable {
        velocity: |_t: f64, p: &Tensor| Ok(p.clone()),
        force: |_t: f64, q: &Tensor| q.sin()?.neg(),
    }
}

fn energy(q: f64, p: f64) -> f64 {
    p * p / 2.0 - q.cos()
}

/// The largest energy error over the first and the last twentieth of the outputs.
fn energy_drift(qs: &[f64], ps: &[f64]) -> (f64, f64) {
    let e0 = energy(qs[0], ps[0]);
    let errs: Vec<f64> = qs
        .iter()
        .zip(ps)
        .map(|(&q, &p)| (energy(q, p) - e0).abs())
        .collect();
    let part = errs.len() / 20;
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    (max(&errs[..part]), max(&errs[errs.len() - part..]))
}

fn energy_does_not_drift(dev: &Device) -> Result<()> {
    let f = pendulum();
    let q0 = Tensor::new(&[2.0f64], dev)?;
    let p0 = Tensor::new(&[0.0f64], dev)?;
    let ts: Vec<f64> = (0..=200).map(|i| i as f64 * 20.0).collect();
    let h = 0.25;
    let sol = odeint_symplectic(&f, &q0, &p0, &ts, &SymplecticOptions::new(h))?;
    let (early, late) = energy_drift(&host(&sol.qs)?, &host(&sol.ps)?);
    // Leapfrog's energy error oscillates with amplitude O(h²) and does not grow (measured:
    // at most 0.013 over t ≤ 180, 0.016 over t ≥ 3820).
    assert!(
        late < 0.05 && late < 2.0 * early,
        "leapfrog: energy error {early:e} early, {late:e} late"
    );
    // RK4 with the same step, at four times leapfrog's force evaluations, loses energy
    // steadily (measured: 0.0018, then 0.039).
    let y0 = Tensor::cat(&[&q0, &p0], 0)?;
    let field = |_t: f64, y: &Tensor| {
        let (q, p) = (y.narrow(0, 0, 1)?, y.narrow(0, 1, 1)?);
        Tensor::cat(&[p, q.sin()?.neg()?], 0)
    };
    let rk = odeint(
        &field,
        &y0,
        &ts,
        &SolveOptions::default().method(Method::Rk4).step_size(h),
    )?;
    let (rk_early, rk_late) = energy_drift(
        &host(&rk.ys.narrow(1, 0, 1)?)?,
        &host(&rk.ys.narrow(1, 1, 1)?)?,
    );
    assert!(
        rk_late > 10.0 * rk_early && rk_late > late,
        "rk4: energy error {rk_early:e} early, {rk_late:e} late (leapfrog {late:e})"
    );
    Ok(())
}

fn reversible_and_counted(dev: &Device) -> Result<()> {
    let f = pendulum();
    let q0 = Tensor::new(&[2.0f64, -0.5], dev)?;
    let p0 = Tensor::new(&[0.0f64, 1.0], dev)?;
    let n = 400;
    for m in SymplecticMethod::ALL {
        let opts = SymplecticOptions::new(0.05).method(m);
        let fwd = odeint_symplectic(&f, &q0, &p0, &[0.0, 0.05 * n as f64], &opts)?;
        // Each leapfrog substep kicks once; the last kick's force starts the next step.
        let (kicks, drifts) = match m {
            SymplecticMethod::SemiImplicitEuler => (n, n),
            SymplecticMethod::Leapfrog => (n + 1, n),
            SymplecticMethod::Yoshida4 => (3 * n + 1, 3 * n),
            SymplecticMethod::Yoshida6 => (7 * n + 1, 7 * n),
        };
        assert_eq!(fwd.stats.force_evals, kicks, "{m}");
        assert_eq!(fwd.stats.velocity_evals, drifts, "{m}");
        // Back from the end with −h: the symmetric methods return to the start.
        let (q1, p1) = (fwd.qs.get(1)?, fwd.ps.get(1)?);
        let back = odeint_symplectic(&f, &q1, &p1, &[0.05 * n as f64, 0.0], &opts)?;
        let gap = host(&(back.qs.get(1)? - &q0)?.abs()?.max(0)?)?[0]
            .max(host(&(back.ps.get(1)? - &p0)?.abs()?.max(0)?)?[0]);
        if m == SymplecticMethod::SemiImplicitEuler {
            assert!(gap > 1e-3, "{m} is not symmetric, yet came back to {gap:e}");
        } else {
            assert!(gap < 1e-11, "{m}: back to within {gap:e}");
        }
    }
    Ok(())
}

fn gradients_by_backprop(dev: &Device) -> Result<()> {
    // q'' = −k q: d q(T)/dk and d q(T)/dq0 through the discrete solve, against central
    // differences of the same solve.
    let k = Var::new(&[1.3f64], dev)?;
    let q0 = Var::new(&[0.7f64], dev)?;
    let p0 = Tensor::new(&[0.2f64], dev)?;
    let solve = |k: &Tensor, q0: &Tensor, m: SymplecticMethod| -> Result<Tensor> {
        let f = Separable {
            velocity: |_t: f64, p: &Tensor| Ok(p.clone()),
            force: |_t: f64, q: &Tensor| q.broadcast_mul(k)?.neg(),
        };
        let opts = SymplecticOptions::new(0.1).method(m);
        let sol = odeint_symplectic(&f, q0, &p0, &[0.0, 1.0, 3.0], &opts)?;
        Ok((sol.qs.get(2)? + sol.ps.get(1)?)?.sum_all()?)
    };
    for m in SymplecticMethod::ALL {
        let grads = solve(k.as_tensor(), q0.as_tensor(), m)?.backward()?;
        let eps = 1e-6;
        for (var, other, is_k) in [(&k, &q0, true), (&q0, &k, false)] {
            let at = |d: f64| -> Result<f64> {
                let shifted = var.as_tensor().affine(1.0, d)?;
                let l = if is_k {
                    solve(&shifted, other.as_tensor(), m)?
                } else {
                    solve(other.as_tensor(), &shifted, m)?
                };
                Ok(host(&l)?[0])
            };
            let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
            let g = host(grads.get(var).expect("a gradient"))?[0];
            assert!(
                (g - fd).abs() < 1e-7 * (1.0 + fd.abs()),
                "{m}: backprop {g} vs FD {fd}"
            );
        }
    }
    Ok(())
}

fn shapes_dtypes_and_errors(dev: &Device) -> Result<()> {
    let f = pendulum();
    // A batch [3, 2] in f32: outputs [T, 3, 2].
    let q0 = Tensor::ones((3, 2), DType::F32, dev)?;
    let p0 = Tensor::zeros((3, 2), DType::F32, dev)?;
    let sol = odeint_symplectic(&f, &q0, &p0, &[0.0, 0.5, 1.0], &SymplecticOptions::new(0.1))?;
    assert_eq!(sol.qs.dims(), &[3, 3, 2]);
    assert_eq!(sol.ps.dtype(), DType::F32);
    let kind = |r: candle_core::Result<node_solvers::SymplecticSolution>| {
        let e = r.expect_err("an error");
        SolverError::find(&e)
            .cloned()
            .unwrap_or_else(|| panic!("untyped: {e}"))
    };
    let q0 = Tensor::new(&[1.0f64], dev)?;
    let p0 = Tensor::new(&[0.0f64], dev)?;
    for h in [0.0, -0.1, f64::NAN] {
        let e = kind(odeint_symplectic(
            &f,
            &q0,
            &p0,
            &[0.0, 1.0],
            &SymplecticOptions::new(h),
        ));
        assert!(matches!(e, SolverError::InvalidOptions(_)), "{e}");
    }
    let p_wide = Tensor::new(&[0.0f64, 1.0], dev)?;
    let e = kind(odeint_symplectic(
        &f,
        &q0,
        &p_wide,
        &[0.0, 1.0],
        &SymplecticOptions::new(0.1),
    ));
    assert!(matches!(e, SolverError::InvalidOptions(_)), "{e}");
    let e = kind(odeint_symplectic(
        &f,
        &q0,
        &p0,
        &[0.0, 0.0],
        &SymplecticOptions::new(0.1),
    ));
    assert!(matches!(e, SolverError::TimesNotMonotone { .. }), "{e}");
    let opts = SymplecticOptions::new(1e-3).max_steps(100);
    let e = kind(odeint_symplectic(&f, &q0, &p0, &[0.0, 1.0], &opts));
    assert!(matches!(e, SolverError::MaxStepsExceeded { .. }), "{e}");
    let bad_shape = Separable {
        velocity: |_t: f64, p: &Tensor| Ok(p.clone()),
        force: |_t: f64, q: &Tensor| Tensor::cat(&[q, q], 0),
    };
    let e = kind(odeint_symplectic(
        &bad_shape,
        &q0,
        &p0,
        &[0.0, 1.0],
        &SymplecticOptions::new(0.1),
    ));
    assert!(matches!(e, SolverError::ShapeMismatch { .. }), "{e}");
    // q'' = q³ from q = 2 blows up before t = 1: reported, not returned as NaN.
    let blow = Separable {
        velocity: |_t: f64, p: &Tensor| Ok(p.clone()),
        force: |_t: f64, q: &Tensor| q.powf(3.0),
    };
    let q2 = Tensor::new(&[2.0f64], dev)?;
    let e = kind(odeint_symplectic(
        &blow,
        &q2,
        &p0,
        &[0.0, 2.0],
        &SymplecticOptions::new(0.1),
    ));
    assert!(matches!(e, SolverError::NonFinite { .. }), "{e}");
    // Names.
    for m in SymplecticMethod::ALL {
        assert_eq!(m.to_string().parse::<SymplecticMethod>()?, m);
    }
    assert_eq!(
        "velocity-verlet".parse::<SymplecticMethod>()?,
        SymplecticMethod::Leapfrog
    );
    let e = "rk4".parse::<SymplecticMethod>().unwrap_err().to_string();
    assert!(e.contains("leapfrog"), "{e}");
    Ok(())
}

candle_core::test_device!(orders, orders_cpu, orders_cuda, orders_metal);
candle_core::test_device!(
    energy_does_not_drift,
    energy_does_not_drift_cpu,
    energy_does_not_drift_cuda,
    energy_does_not_drift_metal
);
candle_core::test_device!(
    reversible_and_counted,
    reversible_and_counted_cpu,
    reversible_and_counted_cuda,
    reversible_and_counted_metal
);
candle_core::test_device!(
    gradients_by_backprop,
    gradients_by_backprop_cpu,
    gradients_by_backprop_cuda,
    gradients_by_backprop_metal
);
candle_core::test_device!(
    shapes_dtypes_and_errors,
    shapes_dtypes_and_errors_cpu,
    shapes_dtypes_and_errors_cuda,
    shapes_dtypes_and_errors_metal
);

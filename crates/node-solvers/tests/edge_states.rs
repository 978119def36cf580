//! States at the edges of what a solve takes: no components, a scalar, half precision, f32 at
//! the default tolerances under the implicit methods, a field that turns NaN. Each either
//! solves correctly or fails with its typed error, for every method that applies.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use node_solvers::symplectic::Separable;
use node_solvers::{
    odeint, odeint_dense, odeint_independent, odeint_symplectic, sdeint, step_times, Method,
    SdeAdaptive, SdeMethod, SdeOptions, SolveOptions, SolverError, SymplecticOptions,
    VirtualBrownianTree,
};

mod common;
use common::solver_error;

fn decay(_t: f64, y: &Tensor) -> candle_core::Result<Tensor> {
    y.neg()
}

/// Options that make `m` step on its own: its step size for a fixed-step method.
fn options(m: Method) -> SolveOptions {
    let o = SolveOptions::default().method(m);
    if m.is_adaptive() {
        o
    } else {
        o.step_size(0.05)
    }
}

/// `y(1)` of `y' = −y` from `y0 = 1` as f64 values, and `e⁻¹` to compare with.
fn last(ys: &Tensor) -> Result<Vec<f64>> {
    let n = ys.dim(0)?;
    Ok(ys
        .get(n - 1)?
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?)
}

/// A state without components solves under every method, its steps growing freely (its error
/// norm is 0, as diffrax's RMS norm of nothing). The adaptive methods met 0 / 0 in the norm and
/// failed with a non-finite error; the implicit ones shrank their steps to nothing.
fn empty_states(dev: &Device) -> Result<()> {
    for shape in [vec![0], vec![2, 0]] {
        let y0 = Tensor::zeros(shape.as_slice(), DType::F64, dev)?;
        for m in Method::ALL {
            let sol = odeint(&decay, &y0, &[0.0, 0.5, 1.0], &options(m))
                .map_err(|e| anyhow::anyhow!("{m} {shape:?}: {e}"))?;
            let mut want = vec![3];
            want.extend(&shape);
            assert_eq!(sol.ys.dims(), want.as_slice(), "{m}");
            if m.tableau().is_some() || m == Method::Rkc {
                let (_, dense) = odeint_dense(&decay, &y0, &[0.0, 1.0], &options(m))?;
                assert_eq!(dense.evaluate(0.3)?.dims(), shape.as_slice(), "{m}");
            }
        }
    }
    // Samples without components side by side: the one-pass row combination steps aside
    // (its chunks of zero length panicked).
    let y0 = Tensor::zeros((2, 0), DType::F64, dev)?;
    let f = |_t: &Tensor, y: &Tensor| y.neg();
    let sol = odeint_independent(&f, &y0, &[vec![0.0, 1.0]], &SolveOptions::default())?;
    assert_eq!(sol.ys.dims(), &[2, 2, 0]);
    Ok(())
}

/// A scalar state (rank 0) under the fixed-step methods, whose check of the outputs for
/// NaN flattened a dimension the outputs `[T]` do not have.
fn scalar_states(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(1.0f64, dev)?;
    for m in [Method::Rk4, Method::Euler, Method::Dopri5, Method::Kvaerno5] {
        let sol = odeint(&decay, &y0, &[0.0, 1.0], &options(m).max_step(0.05))?;
        assert_eq!(sol.ys.dims(), &[2]);
        // Euler's global error at h = 0.05 is about h/2 · e⁻¹ ≈ 0.01.
        let err = (last(&sol.ys)?[0] - (-1.0f64).exp()).abs();
        assert!(err < 0.01, "{m}: error {err}");
    }
    Ok(())
}

/// Half precisions: the error norm is measured in f32 (in f16 the default atol is 0, and
/// `‖f / scale‖²` passed its largest value, 65504, at the first step: every adaptive solve at
/// rtol 1e-3 failed as non-finite at t = 0), tolerances finer than the dtype resolves are refused (bf16 at the
/// default rtol took dopri5 from 1 to 0.988 for e⁻¹ = 0.368: its steps' updates rounded
/// away), and the implicit methods ask for f32.
fn half_precision(dev: &Device) -> Result<()> {
    // (dtype, its epsilon, an rtol it resolves: ODE-Net's 1e-3 in f16)
    for (dtype, eps, rtol) in [
        (DType::F16, 9.765625e-4, 1e-3),
        (DType::BF16, 7.8125e-3, 1e-2),
    ] {
        let y0 = Tensor::ones((2, 3), dtype, dev)?;
        for m in [
            Method::Dopri5,
            Method::Tsit5,
            Method::Bosh3,
            Method::AdaptiveHeun,
            Method::Dopri8,
            Method::Rkc,
            Method::Adams,
        ] {
            // The default atol, 1e-9, is 0 in f16.
            let opts = SolveOptions::default().method(m).rtol(rtol);
            let sol = odeint(&decay, &y0, &[0.0, 0.5, 1.0], &opts)
                .map_err(|e| anyhow::anyhow!("{m} {dtype:?}: {e}"))?;
            assert_eq!(sol.ys.dtype(), dtype);
            for v in last(&sol.ys)? {
                // Ten times the tolerance (the global error of local control), and a few
                // roundings of the dtype on top.
                assert!(
                    (v - (-1.0f64).exp()).abs() < 10.0 * rtol + 4.0 * eps,
                    "{m} {dtype:?}: {v}"
                );
            }
        }
        // Finer than the dtype: refused, naming it.
        let fine = SolveOptions::default().tolerances(eps / 2.0, 1e-4);
        match solver_error(&odeint(&decay, &y0, &[0.0, 1.0], &fine).unwrap_err()) {
            SolverError::InvalidOptions(msg) => {
                assert!(
                    msg.contains(&format!("{dtype:?}")) && msg.contains("f32"),
                    "{msg}"
                )
            }
            e => panic!("{dtype:?}: expected InvalidOptions, got {e}"),
        }
        // At the dtype's epsilon it solves; fixed steps take no tolerance.
        odeint(&decay, &y0, &[0.0, 1.0], &fine.clone().rtol(eps))?;
        odeint(&decay, &y0, &[0.0, 1.0], &options(Method::Rk4))?;
        // So do adaptive SDE steps.
        let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-3, (2, 3), 0, dtype, dev)?;
        let sde = (
            |_t: f64, y: &Tensor| y.neg(),
            |_t: f64, y: &Tensor| y.affine(0.1, 0.0),
        );
        let sde_opts = |rtol| {
            SdeOptions::default()
                .method(SdeMethod::Heun)
                .dt(0.1)
                .adaptive(SdeAdaptive::new(rtol, 1e-3))
        };
        match solver_error(&sdeint(&sde, &y0, &[0.0, 1.0], &bm, &sde_opts(eps / 2.0)).unwrap_err())
        {
            SolverError::InvalidOptions(msg) => {
                assert!(msg.contains(&format!("{dtype:?}")), "{msg}")
            }
            e => panic!("{dtype:?} sdeint: expected InvalidOptions, got {e}"),
        }
        sdeint(&sde, &y0, &[0.0, 1.0], &bm, &sde_opts(rtol))?;
        for m in [Method::Kvaerno5, Method::Rodas5P, Method::KenCarp4] {
            let opts = SolveOptions::default().method(m).tolerances(2e-2, 1e-4);
            match solver_error(&odeint(&decay, &y0, &[0.0, 1.0], &opts).unwrap_err()) {
                SolverError::InvalidOptions(msg) => assert!(msg.contains("f32"), "{msg}"),
                e => panic!("{m} {dtype:?}: expected InvalidOptions, got {e}"),
            }
        }
    }
    Ok(())
}

/// f32 at the default tolerances (rtol 1e-7, below f32's epsilon) under the implicit methods.
/// Their stage derivatives were recovered as `(z − base) / hγ`, whose round-off put a floor of
/// a few `ε|y|` under the error estimate: implicit Euler and Kværnø 3 shrank their steps
/// until `max_steps` on `y' = −y`. Newton's method now solves for the increment `z − base`.
fn f32_implicit_at_default_tolerances(dev: &Device) -> Result<()> {
    let y0 = Tensor::ones(3, DType::F32, dev)?;
    // (method, steps it takes here: a bound that the floor made unreachable)
    for (m, most) in [
        (Method::ImplicitEuler, 5000),
        (Method::Kvaerno3, 300),
        (Method::Kvaerno5, 50),
        (Method::KenCarp3, 300),
    ] {
        let opts = SolveOptions::default().method(m).max_steps(most);
        let sol =
            odeint(&decay, &y0, &[0.0, 1.0], &opts).map_err(|e| anyhow::anyhow!("{m}: {e}"))?;
        for v in last(&sol.ys)? {
            // Implicit Euler's estimate is its local error: the global one is larger.
            let tol = if m == Method::ImplicitEuler {
                1e-4
            } else {
                2e-6
            };
            assert!((v - (-1.0f64).exp()).abs() < tol, "{m}: {v}");
        }
    }
    Ok(())
}

/// A NaN error ratio rejects the step under every adaptive method (the variable-order Adams
/// method and rkc compared `ratio > 1` and so accepted NaN: `adams` returned NaN states as a
/// success), and a step that keeps failing at t = 0 ends in a typed error before its size
/// leaves the normal floats (its products with the tableau's coefficients underflowed).
fn non_finite_steps(dev: &Device) -> Result<()> {
    let y0 = Tensor::ones(3, DType::F64, dev)?;
    let late = |t: f64, y: &Tensor| {
        if t > 0.5 {
            y.affine(f64::NAN, 0.0)
        } else {
            y.neg()
        }
    };
    for m in Method::ALL.into_iter().filter(|m| m.is_adaptive()) {
        let r = odeint(&late, &y0, &[0.0, 1.0], &options(m));
        match solver_error(&r.unwrap_err()) {
            SolverError::NonFinite { t } | SolverError::StepSizeTooSmall { t, .. } => {
                assert!(t <= 0.5 + 1e-9, "{m}: t = {t}")
            }
            e => panic!("{m}: {e}"),
        }
    }
    let at_once = |t: f64, y: &Tensor| {
        if t > 0.0 {
            y.affine(f64::NAN, 0.0)
        } else {
            y.neg()
        }
    };
    for m in [Method::Dopri5, Method::Bosh3, Method::Adams] {
        match solver_error(&odeint(&at_once, &y0, &[0.0, 1.0], &options(m)).unwrap_err()) {
            SolverError::NonFinite { t } => assert_eq!(t, 0.0, "{m}"),
            e => panic!("{m}: expected NonFinite, got {e}"),
        }
    }
    Ok(())
}

/// A fixed step far too small for its span is refused before any work, with the steps it
/// needs (saturated at `usize::MAX`): with two intervals the symplectic and SDE solvers' sum
/// of the intervals' counts overflowed, a panic in debug builds, and `step_times` tried to
/// allocate the grid.
fn tiny_fixed_steps(dev: &Device) -> Result<()> {
    let y0 = Tensor::ones(3, DType::F64, dev)?;
    let ts = [0.0, 0.5, 1.0];
    let limit =
        |r: candle_core::Result<()>, want: usize, what: &str| match solver_error(&r.unwrap_err()) {
            SolverError::MaxStepsExceeded { t, steps } => {
                assert_eq!((t, steps), (0.0, usize::MAX), "{what}: over {want}")
            }
            e => panic!("{what}: expected MaxStepsExceeded, got {e}"),
        };
    let rk4 = SolveOptions::default()
        .method(Method::Rk4)
        .step_size(1e-300);
    limit(odeint(&decay, &y0, &ts, &rk4).map(|_| ()), 100_000, "rk4");
    let sep = Separable {
        velocity: |_t: f64, p: &Tensor| Ok(p.clone()),
        force: |_t: f64, q: &Tensor| q.neg(),
    };
    let opts = SymplecticOptions::new(1e-300);
    let max = opts.max_steps;
    limit(
        odeint_symplectic(&sep, &y0, &y0, &ts, &opts).map(|_| ()),
        max,
        "symplectic",
    );
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-3, 3, 0, DType::F64, dev)?;
    let sde = (
        |_t: f64, y: &Tensor| y.neg(),
        |_t: f64, y: &Tensor| y.affine(0.1, 0.0),
    );
    let opts = SdeOptions::default().dt(1e-300);
    let max = opts.max_steps;
    limit(
        sdeint(&sde, &y0, &ts, &bm, &opts).map(|_| ()),
        max,
        "sdeint",
    );
    limit(step_times(&ts, 1e-300).map(|_| ()), max, "step_times");
    Ok(())
}

candle_core::test_device!(
    empty_states,
    empty_states_cpu,
    empty_states_cuda,
    empty_states_metal
);
candle_core::test_device!(
    scalar_states,
    scalar_states_cpu,
    scalar_states_cuda,
    scalar_states_metal
);
candle_core::test_device!(
    half_precision,
    half_precision_cpu,
    half_precision_cuda,
    half_precision_metal
);
candle_core::test_device!(
    f32_implicit_at_default_tolerances,
    f32_implicit_at_default_tolerances_cpu,
    f32_implicit_at_default_tolerances_cuda,
    f32_implicit_at_default_tolerances_metal
);
candle_core::test_device!(
    non_finite_steps,
    non_finite_steps_cpu,
    non_finite_steps_cuda,
    non_finite_steps_metal
);
candle_core::test_device!(
    tiny_fixed_steps,
    tiny_fixed_steps_cpu,
    tiny_fixed_steps_cuda,
    tiny_fixed_steps_metal
);

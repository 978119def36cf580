//! Reversible backprop (`odeint_reversible_adjoint`): the gradients of backprop through the
//! reversible solve, exactly, from walking its steps back; against central differences and
//! the adjoint's; the backward pass's costs; the errors.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{
    odeint_adjoint, odeint_adjoint_with_times, odeint_reversible_adjoint,
    odeint_reversible_adjoint_with_times, with_params, AdjointOptions, ParamVectorField,
    ReversibleOptions,
};
use node_solvers::{
    odeint_reversible, Method, SolveOptions, SolverError, VectorField, DEFAULT_COUPLING,
};
use time_mlp::{max_rel, scalar, seeded_normal, Mlp};

#[path = "common/time_mlp.rs"]
mod time_mlp;

/// `[dL/dy0, dL/dθ...]` of `L = Σ w ⊙ ys`, for the field's parameters `params`.
fn grads_of(ys: &Tensor, w: &Tensor, y0: &Var, params: &[Var]) -> Result<Vec<Tensor>> {
    let g = (ys * w)?.sum_all()?.backward()?;
    let mut out = vec![g.get(y0).expect("y0 has a gradient").clone()];
    for p in params {
        out.push(g.get(p).expect("every parameter has a gradient").clone());
    }
    Ok(out)
}

/// Each gradient of `got` within `tol` (relative) of `want`'s.
fn assert_close(got: &[Tensor], want: &[Tensor], tol: f64, what: &str) -> Result<()> {
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        let r = max_rel(x, y)?;
        assert!(r < tol, "{what}, gradient {i}: relative difference {r:e}");
    }
    Ok(())
}

fn rev(coupling: f64) -> ReversibleOptions {
    ReversibleOptions::default().coupling(coupling)
}

fn matches_backprop(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(3, 16, DType::F64, dev, 301)?;
    let y0 = Var::from_tensor(&seeded_normal((5, 3), 309, DType::F64, dev)?)?; // a batch of 5
    let forward = [0.0, 0.3, 0.7, 1.0, 2.5];
    let reverse = [2.5, 1.2, 0.0];
    let cases = [
        (
            SolveOptions::default().tolerances(1e-8, 1e-8),
            &forward[..],
            0.999,
        ),
        (
            SolveOptions::default()
                .method(Method::Bosh3)
                .tolerances(1e-5, 1e-5),
            &forward[..],
            0.9,
        ),
        // A Hermite dense output that needs f(t1, z + Ψ) besides the stages.
        (
            SolveOptions::default()
                .method(Method::Fehlberg2)
                .tolerances(1e-5, 1e-5),
            &forward[..],
            DEFAULT_COUPLING,
        ),
        // Output times off the fixed grid (0.3 and 0.7 with steps of 0.125) join it.
        (
            SolveOptions::default().method(Method::Rk4).fixed_steps(20),
            &forward[..],
            0.999,
        ),
        (
            SolveOptions::default()
                .method(Method::Tsit5)
                .tolerances(1e-9, 1e-9),
            &reverse[..],
            1.0,
        ),
    ];
    for (opts, ts, coupling) in cases {
        let m = opts.method;
        let w = seeded_normal((ts.len(), 5, 3), 350, DType::F64, dev)?;
        // Backprop through the same solve, every step's graph kept.
        let (direct, trace) = odeint_reversible(&field, y0.as_tensor(), ts, &opts, coupling)?;
        let want = grads_of(&direct.ys, &w, &y0, &field.params())?;
        let steps = trace.steps();
        assert!(steps >= 10, "{m}: {steps} steps");
        let sol = odeint_reversible_adjoint(&field, y0.as_tensor(), ts, &opts, &rev(coupling))?;
        assert_eq!(max_rel(&sol.ys, &direct.ys)?, 0.0, "{m}: forward values");
        let got = grads_of(&sol.ys, &w, &y0, &field.params())?;
        // Backprop's gradients, up to the round-off of the walked-back states.
        assert_close(&got, &want, 1e-10, &format!("{m} λ = {coupling}"))?;
        let (fwd, bwd) = (sol.stats.forward(), sol.stats.backward());
        assert_eq!(
            fwd, direct.stats,
            "{m}: the forward solve is odeint_reversible's"
        );
        // Two increments per step, the dense output's extra evaluations in each step that
        // holds outputs, no rejections, no reads back.
        let dir = ts[ts.len() - 1] - ts[0];
        let dense_steps = trace
            .times
            .windows(2)
            .filter(|w| {
                ts.iter()
                    .any(|&t| (t - w[0]) * dir > 0.0 && (w[1] - t) * dir > 0.0)
            })
            .count();
        assert_eq!(
            bwd.nfe,
            2 * steps * trace.increment_nfe() + dense_steps * trace.dense_nfe()
        );
        assert_eq!(bwd.accepted_steps, steps);
        // One read: the check that the walk back ended at the start.
        assert_eq!((bwd.rejected_steps, bwd.host_reads), (0, 1));
        println!(
            "{m} λ = {coupling}: {steps} steps, {dense_steps} with outputs inside, forward {fwd:?}, backward {bwd:?}"
        );
    }
    Ok(())
}

/// Contracting dynamics (`f = mlp − 5y`): the forward solve starts the pair afresh several
/// times, and the walk back goes through each restart (what reached `z` goes to `y`), still
/// with backprop's gradients.
fn contracting_matches_backprop(dev: &Device) -> Result<()> {
    let mlp = Mlp::seeded(3, 16, DType::F64, dev, 302)?;
    let inner = mlp.clone();
    let field = with_params(
        move |t: f64, y: &Tensor| inner.eval(t, y)? - y.affine(5.0, 0.0)?,
        mlp.params(),
    );
    let y0 = Var::from_tensor(&seeded_normal((5, 3), 310, DType::F64, dev)?)?;
    let ts = [0.0, 0.5, 1.0, 2.0];
    let opts = SolveOptions::default().tolerances(1e-7, 1e-7);
    let w = seeded_normal((ts.len(), 5, 3), 351, DType::F64, dev)?;
    let r = ReversibleOptions::default();
    let (direct, trace) = odeint_reversible(&field, y0.as_tensor(), &ts, &opts, r.coupling)?;
    assert!(
        trace.resyncs() >= 3,
        "{} resyncs in {} steps",
        trace.resyncs(),
        trace.steps()
    );
    let want = grads_of(&direct.ys, &w, &y0, &mlp.params())?;
    let sol = odeint_reversible_adjoint(&field, y0.as_tensor(), &ts, &opts, &r)?;
    let got = grads_of(&sol.ys, &w, &y0, &mlp.params())?;
    assert_close(&got, &want, 1e-10, "contracting")?;
    println!(
        "{} steps, {} resyncs: gradients equal backprop's",
        trace.steps(),
        trace.resyncs()
    );
    Ok(())
}

/// Central differences of the fixed-step reversible solve, for every entry of `y0` and of the
/// first layer's bias: the gradient of the discrete solve, which a wrong sign or a missing
/// `(1 − λ)` term in the walk back would break.
fn finite_differences(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(2, 6, DType::F64, dev, 303)?;
    let y0v = seeded_normal((2, 2), 311, DType::F64, dev)?;
    let y0 = Var::from_tensor(&y0v)?;
    let ts = [0.0, 0.6, 1.5];
    let w = seeded_normal((3, 2, 2), 312, DType::F64, dev)?;
    let opts = SolveOptions::default().method(Method::Rk4).fixed_steps(12);
    let coupling = 0.8; // far from 1: the λ terms weigh
    let sol = odeint_reversible_adjoint(&field, y0.as_tensor(), &ts, &opts, &rev(coupling))?;
    let grads = (&sol.ys * &w)?.sum_all()?.backward()?;
    let loss = |y0: &Tensor| -> Result<f64> {
        let (s, _) = odeint_reversible(&field, y0, &ts, &opts, coupling)?;
        scalar(&(s.ys * &w)?.sum_all()?)
    };
    let g = grads
        .get(&y0)
        .expect("y0")
        .flatten_all()?
        .to_vec1::<f64>()?;
    let eps = 1e-6;
    let flat = y0v.flatten_all()?.to_vec1::<f64>()?;
    for k in 0..flat.len() {
        let bump = |d: f64| -> Result<Tensor> {
            let mut v = flat.clone();
            v[k] += d;
            Ok(Tensor::new(v, dev)?.reshape((2, 2))?)
        };
        let fd = (loss(&bump(eps)?)? - loss(&bump(-eps)?)?) / (2.0 * eps);
        assert!(
            (g[k] - fd).abs() < 1e-7 * (1.0 + fd.abs()),
            "dL/dy0[{k}]: {} vs central difference {fd}",
            g[k]
        );
    }
    // One parameter, every entry: perturb it in place and solve again.
    let p = &field.params()[1];
    let gp = grads.get(p).expect("θ").flatten_all()?.to_vec1::<f64>()?;
    let pv = p.as_tensor().flatten_all()?.to_vec1::<f64>()?;
    for k in 0..pv.len() {
        let mut fd = 0.0;
        for (d, s) in [(eps, 1.0), (-eps, -1.0)] {
            let mut v = pv.clone();
            v[k] += d;
            p.set(&Tensor::new(v, dev)?.reshape(p.shape())?)?;
            fd += s * loss(y0.as_tensor())? / (2.0 * eps);
        }
        p.set(&Tensor::new(pv.clone(), dev)?.reshape(p.shape())?)?;
        assert!(
            (gp[k] - fd).abs() < 1e-7 * (1.0 + fd.abs()),
            "dL/dθ[{k}]: {} vs central difference {fd}",
            gp[k]
        );
    }
    Ok(())
}

/// At tight tolerances the discrete gradient approaches the continuous one: the adjoint's.
fn approaches_the_adjoint(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(3, 8, DType::F64, dev, 304)?;
    let y0 = Var::from_tensor(&seeded_normal((4, 3), 313, DType::F64, dev)?)?;
    let ts = [0.0, 1.0, 2.0];
    let w = seeded_normal((3, 4, 3), 314, DType::F64, dev)?;
    let opts = SolveOptions::default().tolerances(1e-11, 1e-11);
    let adj = odeint_adjoint(
        &field,
        y0.as_tensor(),
        &ts,
        &opts,
        &AdjointOptions::default(),
    )?;
    let want = grads_of(&adj.ys, &w, &y0, &field.params())?;
    let sol = odeint_reversible_adjoint(
        &field,
        y0.as_tensor(),
        &ts,
        &opts,
        &ReversibleOptions::default(),
    )?;
    let got = grads_of(&sol.ys, &w, &y0, &field.params())?;
    assert_close(&got, &want, 1e-7, "reversible against adjoint")?;
    Ok(())
}

fn upstream_and_chained(dev: &Device) -> Result<()> {
    // y0 = 2x feeds a reversible solve whose end feeds another: the gradient reaches x
    // through both, as backprop through two reversible solves does.
    let field = Mlp::seeded(2, 8, DType::F64, dev, 305)?;
    let x = Var::from_tensor(&seeded_normal((3, 2), 315, DType::F64, dev)?)?;
    let opts = SolveOptions::default().tolerances(1e-7, 1e-7);
    let r = ReversibleOptions::default();
    let y0 = x.as_tensor().affine(2.0, 0.0)?;
    let y1 = odeint_reversible_adjoint(&field, &y0, &[0.0, 1.0], &opts, &r)?
        .ys
        .get(1)?;
    let y2 = odeint_reversible_adjoint(&field, &y1, &[1.0, 2.0], &opts, &r)?
        .ys
        .get(1)?;
    let got = y2.sqr()?.sum_all()?.backward()?;
    let d1 = odeint_reversible(&field, &y0, &[0.0, 1.0], &opts, r.coupling)?
        .0
        .ys
        .get(1)?;
    let d2 = odeint_reversible(&field, &d1, &[1.0, 2.0], &opts, r.coupling)?
        .0
        .ys
        .get(1)?;
    let want = d2.sqr()?.sum_all()?.backward()?;
    let rel = max_rel(got.get(&x).expect("x"), want.get(&x).expect("x"))?;
    assert!(rel < 1e-10, "dL/dx: relative difference {rel:e}");
    for p in field.params() {
        let rel = max_rel(got.get(&p).expect("θ"), want.get(&p).expect("θ"))?;
        assert!(rel < 1e-10, "dL/dθ: relative difference {rel:e}");
    }
    Ok(())
}

fn f32_works(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(3, 8, DType::F32, dev, 306)?;
    let y0 = Var::from_tensor(&seeded_normal((4, 3), 316, DType::F32, dev)?)?;
    let ts = [0.0, 0.5, 1.0];
    let w = seeded_normal((3, 4, 3), 317, DType::F32, dev)?;
    let opts = SolveOptions::default().tolerances(1e-5, 1e-5);
    let r = ReversibleOptions::default();
    let (direct, _) = odeint_reversible(&field, y0.as_tensor(), &ts, &opts, r.coupling)?;
    let want = grads_of(&direct.ys, &w, &y0, &field.params())?;
    let sol = odeint_reversible_adjoint(&field, y0.as_tensor(), &ts, &opts, &r)?;
    let got = grads_of(&sol.ys, &w, &y0, &field.params())?;
    assert_close(&got, &want, 1e-5, "f32")?;
    Ok(())
}

fn time_gradients(dev: &Device) -> Result<()> {
    // Output times as a tensor: the flow identity's dL/dt_i, as the adjoint's; y0 and θ get
    // the same gradients as without.
    let field = Mlp::seeded(2, 6, DType::F64, dev, 307)?;
    let y0 = Var::from_tensor(&seeded_normal((3, 2), 318, DType::F64, dev)?)?;
    let opts = SolveOptions::default().tolerances(1e-11, 1e-11);
    let r = ReversibleOptions::default();
    for ts_v in [[0.2f64, 0.7, 1.4, 2.0], [2.0, 1.1, 0.4, 0.0]] {
        let w = seeded_normal((4, 3, 2), 319, DType::F64, dev)?;
        let ts = Var::from_tensor(&Tensor::new(&ts_v, dev)?)?;
        let sol = odeint_reversible_adjoint_with_times(&field, y0.as_tensor(), &ts, &opts, &r)?;
        let grads = (&sol.ys * &w)?.sum_all()?.backward()?;
        let plain = odeint_reversible_adjoint(&field, y0.as_tensor(), &ts_v, &opts, &r)?;
        let want = grads_of(&plain.ys, &w, &y0, &field.params())?;
        let rel = max_rel(grads.get(&y0).expect("y0"), &want[0])?;
        assert!(rel < 1e-13, "{ts_v:?}: dL/dy0 {rel:e}");
        let adj = odeint_adjoint_with_times(
            &field,
            y0.as_tensor(),
            &ts,
            &opts,
            &AdjointOptions::default(),
        )?;
        let ga = (&adj.ys * &w)?.sum_all()?.backward()?;
        let rel = max_rel(grads.get(&ts).expect("ts"), ga.get(&ts).expect("ts"))?;
        assert!(
            rel < 1e-7,
            "{ts_v:?}: dL/dts against the adjoint's: {rel:e}"
        );
    }
    // A single output time: y(t_0) = y0, whatever t_0.
    let ts = Var::from_tensor(&Tensor::new(&[0.5f64], dev)?)?;
    let sol = odeint_reversible_adjoint_with_times(&field, y0.as_tensor(), &ts, &opts, &r)?;
    let w = seeded_normal((1, 3, 2), 320, DType::F64, dev)?;
    let grads = (&sol.ys * &w)?.sum_all()?.backward()?;
    assert_eq!(grads.get(&ts).expect("ts").to_vec1::<f64>()?, [0.0]);
    assert_eq!(max_rel(grads.get(&y0).expect("y0"), &w.get(0)?)?, 0.0);
    Ok(())
}

fn errors(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(2, 4, DType::F32, dev, 308)?;
    let y0 = Tensor::zeros((1, 2), DType::F64, dev)?;
    let opts = SolveOptions::default();
    let r = ReversibleOptions::default();
    let e = odeint_reversible_adjoint(&field, &y0, &[0.0, 1.0], &opts, &r).unwrap_err();
    assert!(e.to_string().contains("dtype"), "{e}");
    let y0 = y0.to_dtype(DType::F32)?;
    for (opts, r) in [
        (opts.clone(), r.coupling(0.0)),
        (opts.clone().method(Method::Kvaerno3), r),
    ] {
        let e = odeint_reversible_adjoint(&field, &y0, &[0.0, 1.0], &opts, &r).unwrap_err();
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(_))),
            "{e}"
        );
    }
    Ok(())
}

candle_core::test_device!(
    matches_backprop,
    matches_backprop_cpu,
    matches_backprop_cuda,
    matches_backprop_metal
);
candle_core::test_device!(
    contracting_matches_backprop,
    contracting_cpu,
    contracting_cuda,
    contracting_metal
);
candle_core::test_device!(
    finite_differences,
    finite_differences_cpu,
    finite_differences_cuda,
    finite_differences_metal
);
candle_core::test_device!(
    approaches_the_adjoint,
    approaches_the_adjoint_cpu,
    approaches_the_adjoint_cuda,
    approaches_the_adjoint_metal
);
candle_core::test_device!(
    upstream_and_chained,
    upstream_and_chained_cpu,
    upstream_and_chained_cuda,
    upstream_and_chained_metal
);
candle_core::test_device!(f32_works, f32_works_cpu, f32_works_cuda, f32_works_metal);
candle_core::test_device!(
    time_gradients,
    time_gradients_cpu,
    time_gradients_cuda,
    time_gradients_metal
);
candle_core::test_device!(errors, errors_cpu, errors_cuda, errors_metal);
candle_core::test_device!(
    lost_walk_back,
    lost_walk_back_cpu,
    lost_walk_back_cuda,
    lost_walk_back_metal
);

/// A walk back that loses the forward states is an error, not a gradient: on a damped
/// rotation over 10 time units, RK4's 1000 steps walked back with λ = 0.9 gave NaN gradients
/// (λ = 1e-8 under dopri5 a gradient of 3.5e14 for 0.59), silently. The default λ walks the
/// same steps back to the start within round-off.
fn lost_walk_back(dev: &Device) -> Result<()> {
    for dtype in [DType::F64, DType::F32] {
        let theta = Var::from_tensor(&Tensor::new(&[0.5f64], dev)?.to_dtype(dtype)?)?;
        let th = theta.clone();
        let field = with_params(
            move |_t, y: &Tensor| {
                let r = Tensor::cat(&[y.narrow(0, 1, 1)?, y.narrow(0, 0, 1)?.neg()?], 0)?;
                r - y.broadcast_mul(th.as_tensor())?.affine(0.1, 0.0)?
                    + y.sqr()?.affine(0.05, 0.0)?
            },
            vec![theta.clone()],
        );
        let y0 = Tensor::new(&[1.0f64, 0.5], dev)?.to_dtype(dtype)?;
        let gradient = |opts: &SolveOptions, coupling: f64| -> candle_core::Result<f64> {
            let sol = odeint_reversible_adjoint(&field, &y0, &[0.0, 10.0], opts, &rev(coupling))?;
            let grads = sol.ys.to_dtype(DType::F64)?.sum_all()?.backward()?;
            grads
                .get(theta.as_tensor())
                .expect("a gradient for θ")
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()
                .map(|v| v[0])
        };
        let rk4 = SolveOptions::default().method(Method::Rk4).step_size(0.01);
        let dopri5 = SolveOptions::default().tolerances(1e-3, 1e-5);
        for (opts, coupling) in [(&rk4, 0.9), (&dopri5, 1e-8)] {
            let e = gradient(opts, coupling).unwrap_err();
            match SolverError::find(&e) {
                Some(SolverError::InvalidOptions(msg)) => {
                    assert!(
                        msg.contains("walk back") && msg.contains("coupling"),
                        "{msg}"
                    )
                }
                _ => panic!("{dtype:?} λ = {coupling}: expected InvalidOptions, got {e}"),
            }
        }
        // dL/dθ by the default λ under RK4 and dopri5 agree to the solves' accuracy.
        let (a, b) = (gradient(&rk4, 0.999)?, gradient(&dopri5, 0.999)?);
        assert!((a - b).abs() < 1e-2 * a.abs(), "{dtype:?}: {a} vs {b}");
    }
    Ok(())
}

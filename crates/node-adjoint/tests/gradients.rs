//! Adjoint gradients against analytic ones, against backprop through the solver, and against
//! central finite differences.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{
    odeint_adjoint, odeint_adjoint_with_times, odeint_checkpointed, odeint_reversible_adjoint,
    with_params, AdjointNorm, AdjointOptions, AdjointState, CheckpointOptions, ParamVectorField,
    ReversibleOptions,
};
use node_solvers::{odeint, Method, SolveOptions, SolverError};
use time_mlp::{max_rel, scalar, seeded_normal, Mlp};

#[path = "common/time_mlp.rs"]
mod time_mlp;

/// L = Σ_i Σ w_i ⊙ y(t_i): every output time contributes.
fn weighted_loss(ys: &Tensor, weights: &Tensor) -> Result<Tensor> {
    Ok((ys * weights)?.sum_all()?)
}

fn analytic_linear(dev: &Device) -> Result<()> {
    for method in [Method::Dopri5, Method::Adams] {
        analytic_linear_by(method, dev)?;
    }
    Ok(())
}

fn analytic_linear_by(method: Method, dev: &Device) -> Result<()> {
    // y' = θ y, L = y(T): dL/dθ = T·y0·e^{θT}, dL/dy0 = e^{θT}, dL/dT = θ·y(T), dL/dt0 = −θ·y(T).
    let (theta0, y00, t0, t1) = (0.7f64, 1.3f64, 0.2f64, 1.5f64);
    let theta = Var::from_tensor(&Tensor::new(&[theta0], dev)?)?;
    let y0 = Var::from_tensor(&Tensor::new(&[y00], dev)?)?;
    let th = theta.clone();
    let f = with_params(
        move |_t, y: &Tensor| y.broadcast_mul(th.as_tensor()),
        vec![theta.clone()],
    );
    let ts = Var::from_tensor(&Tensor::new(&[t0, t1], dev)?)?;
    let opts = SolveOptions::default()
        .method(method)
        .tolerances(1e-10, 1e-12);
    let sol = odeint_adjoint_with_times(
        &f,
        y0.as_tensor(),
        ts.as_tensor(),
        &opts,
        &AdjointOptions::default(),
    )?;
    let loss = sol.ys.get(1)?.sum_all()?;
    let grads = loss.backward()?;
    let tau = t1 - t0;
    let y_t = y00 * (theta0 * tau).exp();
    let check = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() < 1e-7 * want.abs().max(1.0),
            "{method} {what}: {got} vs {want}"
        )
    };
    check(scalar(&loss)?, y_t, "y(T)");
    check(
        scalar(&grads.get(&theta).unwrap().sum_all()?)?,
        tau * y_t,
        "dL/dθ",
    );
    check(
        scalar(&grads.get(&y0).unwrap().sum_all()?)?,
        (theta0 * tau).exp(),
        "dL/dy0",
    );
    let gt = grads.get(&ts).unwrap().to_vec1::<f64>()?;
    check(gt[1], theta0 * y_t, "dL/dT");
    check(gt[0], -theta0 * y_t, "dL/dt0");
    let back = sol.stats.backward();
    assert!(back.nfe > 0, "backward statistics are recorded");
    // One interval: two reads to pick its first step and one per step; dL/dt reads nothing
    // (one evaluation per output time).
    assert_eq!(
        back.host_reads,
        2 + back.accepted_steps + back.rejected_steps
    );
    Ok(())
}

fn direct_grads(
    field: &Mlp,
    y0: &Var,
    ts: &[f64],
    opts: &SolveOptions,
    w: &Tensor,
) -> Result<Vec<Tensor>> {
    let ys = odeint(field, y0.as_tensor(), ts, opts)?.ys;
    let g = weighted_loss(&ys, w)?.backward()?;
    let mut out = vec![g.get(y0).unwrap().clone()];
    for p in field.params() {
        out.push(g.get(&p).unwrap().clone());
    }
    Ok(out)
}

fn adjoint_grads(
    field: &Mlp,
    y0: &Var,
    ts: &[f64],
    opts: &SolveOptions,
    adj: &AdjointOptions,
    w: &Tensor,
) -> Result<Vec<Tensor>> {
    let ys = odeint_adjoint(field, y0.as_tensor(), ts, opts, adj)?.ys;
    let g = weighted_loss(&ys, w)?.backward()?;
    let mut out = vec![g.get(y0).unwrap().clone()];
    for p in field.params() {
        out.push(g.get(&p).unwrap().clone());
    }
    Ok(out)
}

/// Backprop through 1000 RK4 steps is a graph ~20 000 levels deep: sorted and dropped on the
/// test thread's own stack (`third_party/candle-core`'s patch; Candle recursed once per level).
fn adjoint_matches_direct(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(3, 16, DType::F64, dev, 201)?;
    let y0 = Var::from_tensor(&seeded_normal((5, 3), 208, DType::F64, dev)?)?; // a batch of 5
    let ts = [0.0, 0.3, 0.7, 1.0];
    let w = seeded_normal((4, 5, 3), 209, DType::F64, dev)?;
    // Fixed-step RK4 with many steps: both gradients approximate the same continuous one to
    // O(h⁴) ~ 1e-12, so they agree near round-off.
    let rk4 = SolveOptions::default().method(Method::Rk4).step_size(1e-3);
    // The same on a graded step grid (steps from 1e-6 to 2e-3): each reverse interval steps
    // back over its part of the grid.
    let graded: Vec<f64> = (0..=1000).map(|i| (i as f64 / 1000.0).powi(2)).collect();
    let grid = SolveOptions::default()
        .method(Method::Rk4)
        .step_grid(graded);
    for (opts, what) in [(rk4, "rk4"), (grid, "rk4 on a grid")] {
        let d = direct_grads(&field, &y0, &ts, &opts, &w)?;
        let a = adjoint_grads(&field, &y0, &ts, &opts, &AdjointOptions::default(), &w)?;
        for (i, (x, y)) in a.iter().zip(&d).enumerate() {
            let r = max_rel(x, y)?;
            assert!(r < 1e-9, "{what} gradient {i}: relative difference {r:e}");
        }
    }
    // dopri5 at tight tolerances: agreement within the tolerance, with either norm.
    let dp = SolveOptions::default().tolerances(1e-10, 1e-10);
    let d = direct_grads(&field, &y0, &ts, &dp, &w)?;
    for norm in [AdjointNorm::Seminorm, AdjointNorm::Full] {
        let a = adjoint_grads(
            &field,
            &y0,
            &ts,
            &dp,
            &AdjointOptions::default().norm(norm),
            &w,
        )?;
        for (i, (x, y)) in a.iter().zip(&d).enumerate() {
            let r = max_rel(x, y)?;
            assert!(
                r < 1e-7,
                "dopri5 {norm:?} gradient {i}: relative difference {r:e}"
            );
        }
    }
    Ok(())
}

/// The Adams methods: the adjoint's reverse solve is an Adams solve too; it and backprop
/// through the multistep combinations approximate the same gradient.
fn adams_matches_direct(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(3, 16, DType::F64, dev, 202)?;
    let y0 = Var::from_tensor(&seeded_normal((5, 3), 210, DType::F64, dev)?)?;
    let ts = [0.0, 0.3, 0.7, 1.0];
    let w = seeded_normal((4, 5, 3), 211, DType::F64, dev)?;
    // Fixed steps of order 4: both within O(h⁴) ~ 1e-12 of the continuous gradient (7.5e-12
    // apart at most, measured).
    let fixed = SolveOptions::default()
        .method(Method::ImplicitAdams)
        .step_size(1e-3);
    // Error-controlled, variable order: within the tolerance (2.0e-10 apart, measured; 2.0e-10
    // from dopri5's adjoint).
    let adaptive = SolveOptions::default()
        .method(Method::Adams)
        .tolerances(1e-10, 1e-10);
    for (opts, bound) in [(fixed, 1e-9), (adaptive, 1e-7)] {
        let d = direct_grads(&field, &y0, &ts, &opts, &w)?;
        let a = adjoint_grads(&field, &y0, &ts, &opts, &AdjointOptions::default(), &w)?;
        // And against dopri5's adjoint at the same tolerance.
        let dp = SolveOptions::default().tolerances(1e-10, 1e-10);
        let r = adjoint_grads(&field, &y0, &ts, &dp, &AdjointOptions::default(), &w)?;
        for (i, ((x, y), z)) in a.iter().zip(&d).zip(&r).enumerate() {
            let (rd, rr) = (max_rel(x, y)?, max_rel(x, z)?);
            assert!(
                rd < bound && rr < 1e-7,
                "{} gradient {i}: {rd:e} from backprop, {rr:e} from dopri5's adjoint",
                opts.method
            );
        }
    }
    // The modes that trace or walk back the steps need a Runge–Kutta method, and say so.
    let adams = SolveOptions::default().method(Method::Adams);
    let x = y0.as_tensor();
    let interpolated = AdjointOptions::default().state(AdjointState::Interpolated);
    let refusals = [
        odeint_checkpointed(&field, x, &ts, &adams, &CheckpointOptions::default()).map(|_| ()),
        odeint_adjoint(&field, x, &ts, &adams, &interpolated).map(|_| ()),
        odeint_reversible_adjoint(&field, x, &ts, &adams, &ReversibleOptions::default())
            .map(|_| ()),
    ];
    for r in refusals {
        let e = r.expect_err("refused");
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(_)))
                && e.to_string().contains("multistep"),
            "{e}"
        );
    }
    Ok(())
}

fn many_output_times(dev: &Device) -> Result<()> {
    // 41 output times, as a latent ODE has: the reverse solve runs 40 intervals. Starting
    // each from the step the previous one's controller proposed (the default) must give the
    // gradients that picking each first step afresh gives, within the tolerance, and save
    // evaluations.
    //
    // Seeded: how much carrying saves depends on the field. Over 40 unseeded draws of this
    // field the carried run took 0.51 of the reselected run's evaluations in 34, 0.60–0.77 in
    // 5, and 0.99 in one (557 against 560): a field fast enough to need two steps per
    // interval anyway saves only Hairer's trial evaluation, and its carried steps, sized for
    // the previous interval's end, were rejected once.
    let field = Mlp::seeded(3, 16, DType::F64, dev, 1)?;
    let y0 = Var::from_tensor(&seeded_normal(&[5, 3], 2, DType::F64, dev)?)?;
    let ts: Vec<f64> = (0..=40).map(|i| i as f64 * 0.05).collect();
    let w = seeded_normal(&[41, 5, 3], 3, DType::F64, dev)?;
    let opts = SolveOptions::default().tolerances(1e-8, 1e-8);
    let direct = direct_grads(&field, &y0, &ts, &opts, &w)?;
    let mut nfe = vec![];
    for reselect in [false, true] {
        let adj = AdjointOptions::default().reselect_first_step(reselect);
        let sol = odeint_adjoint(&field, y0.as_tensor(), &ts, &opts, &adj)?;
        let g = weighted_loss(&sol.ys, &w)?.backward()?;
        let mut got = vec![g.get(&y0).unwrap().clone()];
        for p in field.params() {
            got.push(g.get(&p).unwrap().clone());
        }
        for (i, (x, y)) in got.iter().zip(&direct).enumerate() {
            let r = max_rel(x, y)?;
            assert!(r < 1e-6, "reselect {reselect}, gradient {i}: {r:e}");
        }
        nfe.push(sol.stats.backward().nfe);
    }
    // Measured on the CPU: 287 carried, 560 reselected. About 7 per interval (its first
    // evaluation and one step's six stages) against 14: Hairer's rule costs one trial
    // evaluation and picks a first step that needs a second step to cover the interval.
    assert!(
        (nfe[0] as f64) < 0.8 * nfe[1] as f64,
        "carried {} vs reselected {} evaluations",
        nfe[0],
        nfe[1]
    );
    Ok(())
}

fn finite_differences(dev: &Device) -> Result<()> {
    // Central differences in f64 on every parameter entry and on y0 and the times.
    let field = Mlp::seeded(2, 4, DType::F64, dev, 203)?;
    let y0 = Var::from_tensor(&Tensor::new(&[[0.3f64, -0.8]], dev)?)?;
    let ts_v = [0.0f64, 0.6, 1.1];
    let w = seeded_normal((3, 1, 2), 212, DType::F64, dev)?;
    let opts = SolveOptions::default().tolerances(1e-12, 1e-12);
    let loss_at = |y0: &Tensor, ts: &[f64]| -> Result<f64> {
        let ys = odeint(&field, y0, ts, &opts)?.ys;
        scalar(&weighted_loss(&ys, &w)?)
    };
    let ts = Var::from_tensor(&Tensor::new(&ts_v, dev)?)?;
    let sol = odeint_adjoint_with_times(
        &field,
        y0.as_tensor(),
        ts.as_tensor(),
        &opts,
        &AdjointOptions::default(),
    )?;
    let grads = weighted_loss(&sol.ys, &w)?.backward()?;
    let eps = 1e-6;
    let fd_check = |analytic: f64, fd: f64, what: String| {
        assert!(
            (analytic - fd).abs() < 1e-6 * (1.0 + fd.abs()),
            "{what}: adjoint {analytic} vs FD {fd}"
        );
    };
    for p in field.params().iter().chain(std::iter::once(&y0)) {
        let base = p.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let g = grads.get(p).unwrap().flatten_all()?.to_vec1::<f64>()?;
        for k in 0..base.len() {
            let eval = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[k] += delta;
                p.set(&Tensor::from_vec(v, p.shape(), dev)?)?;
                let l = loss_at(y0.as_tensor(), &ts_v);
                p.set(&Tensor::from_vec(base.clone(), p.shape(), dev)?)?;
                l
            };
            let fd = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            fd_check(g[k], fd, format!("param {:?} entry {k}", p.shape()));
        }
    }
    let gt = grads.get(&ts).unwrap().to_vec1::<f64>()?;
    for k in 0..ts_v.len() {
        let mut plus = ts_v;
        plus[k] += eps;
        let mut minus = ts_v;
        minus[k] -= eps;
        let fd = (loss_at(y0.as_tensor(), &plus)? - loss_at(y0.as_tensor(), &minus)?) / (2.0 * eps);
        fd_check(gt[k], fd, format!("t[{k}]"));
    }
    Ok(())
}

fn upstream_and_chained(dev: &Device) -> Result<()> {
    // An encoder Var feeds y0; two adjoint blocks are chained; gradients match backprop.
    let enc = Var::from_tensor(&(seeded_normal((4, 3), 213, DType::F64, dev)? * 0.5)?)?;
    let x = seeded_normal((6, 4), 214, DType::F64, dev)?;
    let f1 = Mlp::seeded(3, 8, DType::F64, dev, 204)?;
    let f2 = Mlp::seeded(3, 8, DType::F64, dev, 205)?;
    let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
    let target = seeded_normal((6, 3), 215, DType::F64, dev)?;
    let run = |adjoint: bool| -> Result<Vec<Tensor>> {
        let y0 = x.matmul(enc.as_tensor())?;
        let solve = |f: &Mlp, y: &Tensor| -> Result<Tensor> {
            Ok(if adjoint {
                odeint_adjoint(f, y, &[0.0, 0.5], &opts, &AdjointOptions::default())?
                    .ys
                    .get(1)?
            } else {
                odeint(f, y, &[0.0, 0.5], &opts)?.ys.get(1)?
            })
        };
        let y1 = solve(&f1, &y0)?;
        let y2 = solve(&f2, &y1.tanh()?)?;
        let loss = (y2 - &target)?.sqr()?.mean_all()?;
        let g = loss.backward()?;
        let mut out = vec![g.get(&enc).unwrap().clone()];
        for p in f1.params().iter().chain(f2.params().iter()) {
            out.push(g.get(p).unwrap().clone());
        }
        Ok(out)
    };
    let (a, d) = (run(true)?, run(false)?);
    for (i, (x, y)) in a.iter().zip(&d).enumerate() {
        let r = max_rel(x, y)?;
        assert!(r < 1e-6, "gradient {i}: relative difference {r:e}");
    }
    Ok(())
}

fn f32_works(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(2, 8, DType::F32, dev, 206)?;
    let y0 = Var::from_tensor(&seeded_normal((16, 2), 216, DType::F32, dev)?)?;
    let w = seeded_normal((2, 16, 2), 217, DType::F32, dev)?;
    let opts = SolveOptions::default().tolerances(1e-6, 1e-6);
    let d = direct_grads(&field, &y0, &[0.0, 1.0], &opts, &w)?;
    let a = adjoint_grads(
        &field,
        &y0,
        &[0.0, 1.0],
        &opts,
        &AdjointOptions::default(),
        &w,
    )?;
    for (i, (x, y)) in a.iter().zip(&d).enumerate() {
        let r = max_rel(x, y)?;
        assert!(r < 1e-3, "f32 gradient {i}: relative difference {r:e}");
    }
    Ok(())
}

fn mixed_dtypes_are_refused(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(2, 4, DType::F32, dev, 207)?;
    let y0 = Tensor::zeros((1, 2), DType::F64, dev)?;
    let e = odeint_adjoint(
        &field,
        &y0,
        &[0.0, 1.0],
        &SolveOptions::default(),
        &AdjointOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("dtype"), "{e}");
    Ok(())
}

candle_core::test_device!(analytic_linear, analytic_cpu, analytic_cuda, analytic_metal);
candle_core::test_device!(
    adjoint_matches_direct,
    vs_direct_cpu,
    vs_direct_cuda,
    vs_direct_metal
);
candle_core::test_device!(
    many_output_times,
    many_times_cpu,
    many_times_cuda,
    many_times_metal
);
candle_core::test_device!(
    finite_differences,
    finite_differences_cpu,
    finite_differences_cuda,
    finite_differences_metal
);
candle_core::test_device!(
    upstream_and_chained,
    chained_cpu,
    chained_cuda,
    chained_metal
);
candle_core::test_device!(f32_works, f32_cpu, f32_cuda, f32_metal);
candle_core::test_device!(
    mixed_dtypes_are_refused,
    mixed_dtypes_cpu,
    mixed_dtypes_cuda,
    mixed_dtypes_metal
);
candle_core::test_device!(
    adams_matches_direct,
    adams_matches_direct_cpu,
    adams_matches_direct_cuda,
    adams_matches_direct_metal
);

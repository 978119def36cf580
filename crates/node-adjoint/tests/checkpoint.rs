//! Checkpointed backprop (`odeint_checkpointed`): the gradients of backprop through the
//! solver, exactly, whatever the number of stored states; the replay's costs; the errors.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{
    odeint_adjoint_with_times, odeint_checkpointed, odeint_checkpointed_with_times, AdjointOptions,
    AdjointSolution, CheckpointOptions, ParamVectorField,
};
use node_solvers::{odeint, Method, SolveOptions, SolverError};
use time_mlp::{max_rel, scalar, seeded_normal, Mlp};

#[path = "common/time_mlp.rs"]
mod time_mlp;

/// `[dL/dy0, dL/dθ...]` of `L = Σ w ⊙ ys`.
fn grads_of(ys: &Tensor, w: &Tensor, y0: &Var, field: &Mlp) -> Result<Vec<Tensor>> {
    let g = (ys * w)?.sum_all()?.backward()?;
    let mut out = vec![g.get(y0).expect("y0 has a gradient").clone()];
    for p in field.params() {
        out.push(g.get(&p).expect("every parameter has a gradient").clone());
    }
    Ok(out)
}

fn checkpointed(
    field: &Mlp,
    y0: &Var,
    ts: &[f64],
    opts: &SolveOptions,
    n: usize,
) -> Result<AdjointSolution> {
    let ck = CheckpointOptions::default().checkpoints(n);
    Ok(odeint_checkpointed(field, y0.as_tensor(), ts, opts, &ck)?)
}

fn matches_backprop(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(3, 16, DType::F64, dev, 401)?;
    let y0 = Var::from_tensor(&seeded_normal((5, 3), 406, DType::F64, dev)?)?; // a batch of 5
                                                                               // Outputs inside steps (dense output) and on the last step's end; reverse time too.
    let forward = [0.0, 0.3, 0.7, 1.0, 2.5];
    let reverse = [2.5, 1.2, 0.0];
    let cases = [
        (SolveOptions::default().tolerances(1e-8, 1e-8), &forward[..]),
        (
            SolveOptions::default()
                .method(Method::Bosh3)
                .tolerances(1e-5, 1e-5),
            &forward[..],
        ),
        (
            SolveOptions::default().method(Method::Rk4).fixed_steps(25),
            &forward[..],
        ),
        (
            SolveOptions::default()
                .method(Method::Tsit5)
                .tolerances(1e-9, 1e-9),
            &reverse[..],
        ),
    ];
    for (opts, ts) in cases {
        let m = opts.method;
        let w = seeded_normal((ts.len(), 5, 3), 450, DType::F64, dev)?;
        let direct = odeint(&field, y0.as_tensor(), ts, &opts)?;
        let want = grads_of(&direct.ys, &w, &y0, &field)?;
        let steps = direct.stats.accepted_steps;
        assert!(
            steps >= 10,
            "{m}: {steps} steps are too few to thin the states"
        );
        for n in [1, 2, 5, 1000] {
            let sol = checkpointed(&field, &y0, ts, &opts, n)?;
            // The forward values are odeint's.
            assert_eq!(max_rel(&sol.ys, &direct.ys)?, 0.0, "{m}, {n} states");
            let got = grads_of(&sol.ys, &w, &y0, &field)?;
            for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                // Backprop's gradients, up to the order of the floating-point sums.
                let r = max_rel(x, y)?;
                assert!(
                    r < 1e-12,
                    "{m}, {n} states, gradient {i}: relative difference {r:e}"
                );
            }
            let (fwd, bwd) = (sol.stats.forward(), sol.stats.backward());
            assert_eq!(fwd, direct.stats, "{m}: the forward solve is odeint's");
            // The replay takes the accepted steps again, with no rejections and no reads back.
            assert_eq!(bwd.accepted_steps, steps);
            assert_eq!((bwd.rejected_steps, bwd.host_reads), (0, 0));
            if m == Method::Dopri5 {
                // 6 evaluations a step (FSAL), plus f at each stretch's start: one stretch for
                // 1 state, one per step when every step's start is stored.
                let stretches = if n == 1 {
                    1
                } else if n >= steps {
                    steps
                } else {
                    bwd.nfe - 6 * steps
                };
                assert_eq!(bwd.nfe, 6 * steps + stretches, "{n} states");
                assert!(stretches <= n);
            }
        }
    }
    Ok(())
}

fn upstream_and_chained(dev: &Device) -> Result<()> {
    // y0 = 2x feeds a checkpointed solve whose end feeds another: the gradient reaches x
    // through both, as backprop through two odeint calls does.
    let field = Mlp::seeded(2, 8, DType::F64, dev, 402)?;
    let x = Var::from_tensor(&seeded_normal((3, 2), 407, DType::F64, dev)?)?;
    let opts = SolveOptions::default().tolerances(1e-7, 1e-7);
    let ck = CheckpointOptions::default().checkpoints(3);
    let y0 = x.as_tensor().affine(2.0, 0.0)?;
    let y1 = odeint_checkpointed(&field, &y0, &[0.0, 1.0], &opts, &ck)?
        .ys
        .get(1)?;
    let y2 = odeint_checkpointed(&field, &y1, &[1.0, 2.0], &opts, &ck)?
        .ys
        .get(1)?;
    let got = y2.sqr()?.sum_all()?.backward()?;
    let d1 = odeint(&field, &y0, &[0.0, 1.0], &opts)?.ys.get(1)?;
    let d2 = odeint(&field, &d1, &[1.0, 2.0], &opts)?.ys.get(1)?;
    let want = d2.sqr()?.sum_all()?.backward()?;
    let r = max_rel(got.get(&x).expect("x"), want.get(&x).expect("x"))?;
    assert!(r < 1e-12, "dL/dx: relative difference {r:e}");
    for p in field.params() {
        let r = max_rel(got.get(&p).expect("θ"), want.get(&p).expect("θ"))?;
        assert!(r < 1e-12, "dL/dθ: relative difference {r:e}");
    }
    Ok(())
}

fn f32_works(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(3, 8, DType::F32, dev, 403)?;
    let y0 = Var::from_tensor(&seeded_normal((4, 3), 408, DType::F32, dev)?)?;
    let ts = [0.0, 0.5, 1.0];
    let w = seeded_normal((3, 4, 3), 409, DType::F32, dev)?;
    let opts = SolveOptions::default().tolerances(1e-5, 1e-5);
    let want = grads_of(
        &odeint(&field, y0.as_tensor(), &ts, &opts)?.ys,
        &w,
        &y0,
        &field,
    )?;
    let got = grads_of(
        &checkpointed(&field, &y0, &ts, &opts, 2)?.ys,
        &w,
        &y0,
        &field,
    )?;
    for (i, (x, y)) in got.iter().zip(&want).enumerate() {
        let r = max_rel(x, y)?;
        assert!(r < 1e-5, "f32 gradient {i}: relative difference {r:e}");
    }
    Ok(())
}

fn time_gradients(dev: &Device) -> Result<()> {
    // Output times as a tensor: y0 and θ still get backprop's gradients, and dL/dt_i matches
    // central differences of the solve (forward and reverse time) and the adjoint's.
    let field = Mlp::seeded(2, 6, DType::F64, dev, 404)?;
    let y0 = Var::from_tensor(&seeded_normal((3, 2), 410, DType::F64, dev)?)?;
    let opts = SolveOptions::default().tolerances(1e-12, 1e-12);
    let ck = CheckpointOptions::default().checkpoints(3);
    for ts_v in [[0.2f64, 0.7, 1.4, 2.0], [2.0, 1.1, 0.4, 0.0]] {
        let w = seeded_normal((4, 3, 2), 411, DType::F64, dev)?;
        let loss_at = |ts: &[f64]| -> Result<f64> {
            let ys = odeint(&field, y0.as_tensor(), ts, &opts)?.ys;
            scalar(&(ys * &w)?.sum_all()?)
        };
        let ts = Var::from_tensor(&Tensor::new(&ts_v, dev)?)?;
        let sol = odeint_checkpointed_with_times(&field, y0.as_tensor(), &ts, &opts, &ck)?;
        let grads = (&sol.ys * &w)?.sum_all()?.backward()?;
        let direct = odeint(&field, y0.as_tensor(), &ts_v, &opts)?;
        let want = grads_of(&direct.ys, &w, &y0, &field)?;
        let mut got = vec![grads.get(&y0).expect("y0").clone()];
        for p in field.params() {
            got.push(grads.get(&p).expect("θ").clone());
        }
        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
            let r = max_rel(x, y)?;
            assert!(
                r < 1e-12,
                "{ts_v:?}, gradient {i}: relative difference {r:e}"
            );
        }
        let gt = grads.get(&ts).expect("ts").to_vec1::<f64>()?;
        let eps = 1e-6;
        for k in 0..ts_v.len() {
            let (mut plus, mut minus) = (ts_v, ts_v);
            plus[k] += eps;
            minus[k] -= eps;
            let fd = (loss_at(&plus)? - loss_at(&minus)?) / (2.0 * eps);
            assert!(
                (gt[k] - fd).abs() < 1e-6 * (1.0 + fd.abs()),
                "{ts_v:?}, t[{k}]: checkpointed {} vs FD {fd}",
                gt[k]
            );
        }
        let adj = odeint_adjoint_with_times(
            &field,
            y0.as_tensor(),
            &ts,
            &opts,
            &AdjointOptions::default(),
        )?;
        let ga = (&adj.ys * &w)?.sum_all()?.backward()?;
        let ga = ga.get(&ts).expect("ts");
        let r = max_rel(grads.get(&ts).expect("ts"), ga)?;
        assert!(r < 1e-8, "{ts_v:?}: dL/dts against the adjoint's: {r:e}");
        // One more evaluation per output time, and still no read back.
        let (fwd, bwd) = (sol.stats.forward(), sol.stats.backward());
        assert_eq!(bwd.host_reads, 0);
        let plain = checkpointed(&field, &y0, &ts_v, &opts, 3)?;
        (&plain.ys * &w)?.sum_all()?.backward()?;
        assert_eq!(fwd, plain.stats.forward());
        assert_eq!(bwd.nfe, plain.stats.backward().nfe + ts_v.len());
    }
    // A single output time: y(t_0) = y0, whatever t_0.
    let ts = Var::from_tensor(&Tensor::new(&[0.5f64], dev)?)?;
    let sol = odeint_checkpointed_with_times(&field, y0.as_tensor(), &ts, &opts, &ck)?;
    let w = seeded_normal((1, 3, 2), 412, DType::F64, dev)?;
    let grads = (&sol.ys * &w)?.sum_all()?.backward()?;
    assert_eq!(grads.get(&ts).expect("ts").to_vec1::<f64>()?, [0.0]);
    assert_eq!(max_rel(grads.get(&y0).expect("y0"), &w.get(0)?)?, 0.0);
    // Times must be 1-D.
    let ts = Tensor::new(&[[0.0f64, 1.0]], dev)?;
    let e = odeint_checkpointed_with_times(&field, y0.as_tensor(), &ts, &opts, &ck).unwrap_err();
    assert!(
        matches!(SolverError::find(&e), Some(SolverError::InvalidTimes(_))),
        "{e}"
    );
    Ok(())
}

fn errors(dev: &Device) -> Result<()> {
    let field = Mlp::seeded(2, 4, DType::F32, dev, 405)?;
    let y0 = Tensor::zeros((1, 2), DType::F64, dev)?;
    let opts = SolveOptions::default();
    let e = odeint_checkpointed(
        &field,
        &y0,
        &[0.0, 1.0],
        &opts,
        &CheckpointOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("dtype"), "{e}");
    let y0 = y0.to_dtype(DType::F32)?;
    let ck = CheckpointOptions::default().checkpoints(0);
    let e = odeint_checkpointed(&field, &y0, &[0.0, 1.0], &opts, &ck).unwrap_err();
    assert!(
        matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(_))),
        "{e}"
    );
    Ok(())
}

candle_core::test_device!(
    matches_backprop,
    matches_backprop_cpu,
    matches_backprop_cuda,
    matches_backprop_metal
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

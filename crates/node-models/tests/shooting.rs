//! Multiple shooting: the segments' layout, exact start states give the exact solution and
//! no gaps, the batched solve gives the sequential one's values and gradients, the
//! gradients against central differences and between gradient modes, one segment is a
//! plain solve, and the errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::max_abs;
use node_adjoint::{with_params, AdjointOptions, CheckpointOptions, ReversibleOptions};
use node_models::{Gradient, MultipleShooting};
use node_solvers::{odeint, Method, SolveOptions};

/// `dy/dt = y Aᵀ` on states `[batch, 2]`.
fn linear(a: &Var) -> impl node_adjoint::ParamVectorField + Clone + Send + Sync + 'static {
    let at = a.as_tensor().clone();
    with_params(
        move |_t: f64, y: &Tensor| y.matmul(&at.t()?),
        vec![a.clone()],
    )
}

/// A damped rotation.
fn matrix(dev: &Device) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::new(
        &[[-0.3f64, 1.2], [-0.9, -0.1]],
        dev,
    )?)?)
}

#[test]
fn segments_and_their_layout() -> Result<()> {
    let ranges = |k: usize, n: usize| MultipleShooting::new(k).segments(n).unwrap();
    assert_eq!(ranges(5, 11), vec![0..6, 5..11]);
    assert_eq!(ranges(3, 11), vec![0..4, 3..7, 6..10, 9..11]);
    assert_eq!(ranges(10, 11), vec![0..11]);
    assert_eq!(ranges(20, 11), vec![0..11]);
    assert_eq!(ranges(1, 3), vec![0..2, 1..3]);
    assert_eq!(ranges(1, 2), vec![0..2]);
    assert_eq!(
        MultipleShooting::new(3).start_indices(11)?,
        vec![0, 3, 6, 9]
    );
    assert!(MultipleShooting::new(0).segments(5).is_err());
    assert!(MultipleShooting::new(2).segments(1).is_err());

    // The observations in the solution's order, and the start states, of observations
    // numbered by their row.
    let dev = Device::Cpu;
    let obs = Tensor::arange(0f64, 7.0, &dev)?.reshape((7, 1))?;
    let ms = MultipleShooting::new(3);
    let gathered = ms.gather(&obs)?.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(gathered, vec![0.0, 1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0]);
    let starts = ms.starts_from(&obs)?.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(starts, vec![0.0, 3.0]);
    Ok(())
}

/// Start states on the exact solution: every segment is the exact solution and the gaps
/// vanish, batched or not, evenly spaced or not.
fn exact_starts_case(dev: &Device) -> Result<()> {
    let rate = 0.7;
    let a = Var::from_tensor(&Tensor::new(&[[-rate]], dev)?)?;
    let f = linear(&a);
    let y0 = Tensor::new(&[[1.0f64], [-2.0], [0.5]], dev)?;
    let exact = |t: f64| y0.affine((-rate * t).exp(), 0.0);
    let even: Vec<f64> = (0..13).map(|i| 0.25 * i as f64).collect();
    let mut uneven = even.clone();
    uneven[4] = 1.1;
    uneven[9] = 2.3;
    let opts = SolveOptions::default().tolerances(1e-9, 1e-11);
    for ts in [&even, &uneven] {
        let truth = Tensor::stack(
            &ts.iter()
                .map(|&t| exact(t))
                .collect::<Result<Vec<_>, _>>()?,
            0,
        )?;
        for batched in [false, true] {
            let ms = MultipleShooting::new(4).batched(batched);
            let sol = ms.solve(&f, &ms.starts_from(&truth)?, ts, &opts, &Gradient::Backprop)?;
            assert_eq!(sol.ys.dims(), &[15, 3, 1]);
            assert_eq!(sol.segments.len(), 3);
            let err = max_abs(&(&sol.ys - ms.gather(&truth)?)?)?;
            assert!(err < 1e-8, "batched {batched}: error {err:e}");
            let gap = max_abs(sol.gaps.as_ref().expect("three segments"))?;
            assert!(gap < 1e-8, "batched {batched}: gap {gap:e}");
            // Evenly spaced, the three segments are one solve; unevenly, each its own.
            let solves = if batched && ts == &even { 1 } else { 3 };
            assert_eq!(sol.stats.len(), solves, "batched {batched}");
        }
    }
    Ok(())
}

/// The loss a fit minimises: the data's mean square error plus the weighted gaps.
fn loss(
    ms: &MultipleShooting,
    a: &Var,
    starts: &Tensor,
    ts: &[f64],
    target: &Tensor,
    opts: &SolveOptions,
    gradient: &Gradient,
) -> Result<Tensor> {
    let sol = ms.solve(&linear(a), starts, ts, opts, gradient)?;
    let data = (&sol.ys - ms.gather(target)?)?.sqr()?.mean_all()?;
    Ok((data + sol.continuity_loss()?.affine(10.0, 0.0)?)?)
}

/// With fixed steps the batched solve takes each segment's steps: the same loss and the
/// same gradients as the segments solved one by one (the last, shorter, one on its own).
fn batched_matches_sequential_case(dev: &Device) -> Result<()> {
    let ts: Vec<f64> = (0..11).map(|i| 0.1 * i as f64).collect();
    let target = Tensor::stack(
        &ts.iter()
            .map(|&t| Tensor::new(&[[t.cos(), t.sin()], [1.0 - t, 0.5 * t]], dev))
            .collect::<candle_core::Result<Vec<_>>>()?,
        0,
    )?;
    let opts = SolveOptions::default().method(Method::Rk4).step_size(0.05);
    let run = |batched: bool| -> Result<(f64, Tensor, Tensor, usize)> {
        let a = matrix(dev)?;
        let ms = MultipleShooting::new(3).batched(batched);
        let starts = Var::from_tensor(&ms.starts_from(&target)?.affine(0.9, 0.1)?)?;
        let sol = ms.solve(&linear(&a), &starts, &ts, &opts, &Gradient::Backprop)?;
        let l = loss(&ms, &a, &starts, &ts, &target, &opts, &Gradient::Backprop)?;
        let grads = l.backward()?;
        Ok((
            l.to_scalar::<f64>()?,
            grads.get(&a).expect("dL/dA").clone(),
            grads.get(&starts).expect("dL/dstarts").clone(),
            sol.stats.len(),
        ))
    };
    let (l1, ga1, gs1, n1) = run(false)?;
    let (l2, ga2, gs2, n2) = run(true)?;
    assert_eq!(
        (n1, n2),
        (4, 2),
        "four segments; three batched, the last alone"
    );
    assert!((l1 - l2).abs() < 1e-13 * l1.abs(), "{l1} vs {l2}");
    assert!(max_abs(&(&ga1 - &ga2)?)? < 1e-12 * max_abs(&ga1)?);
    assert!(max_abs(&(&gs1 - &gs2)?)? < 1e-12 * max_abs(&gs1)?);
    assert_eq!(gs1.dims(), &[4, 2, 2]);
    Ok(())
}

/// The adjoint's and backprop's gradients of the fit's loss (to the field's matrix and to
/// the start states) against central differences; checkpointed and reversible backprop's
/// against backprop's.
fn gradients_case(dev: &Device) -> Result<()> {
    let ts: Vec<f64> = (0..9).map(|i| 0.2 * i as f64).collect();
    let target = Tensor::stack(
        &ts.iter()
            .map(|&t| Tensor::new(&[[(2.0 * t).cos(), t.sin()]], dev))
            .collect::<candle_core::Result<Vec<_>>>()?,
        0,
    )?;
    let ms = MultipleShooting::new(3).batched(true);
    let opts = SolveOptions::default().tolerances(1e-10, 1e-12);
    let adjoint = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-10, 1e-12));
    let a = matrix(dev)?;
    let starts0 = ms.starts_from(&target)?.affine(1.1, -0.05)?;
    let starts = Var::from_tensor(&starts0)?;
    // dL/dA and dL/dstarts, flattened, for one gradient mode.
    let grads_of = |gradient: &Gradient| -> Result<(Vec<f64>, Vec<f64>)> {
        let grads = loss(&ms, &a, &starts, &ts, &target, &opts, gradient)?.backward()?;
        let flat = |v: &Var| -> Result<Vec<f64>> {
            Ok(grads
                .get(v)
                .expect("a gradient")
                .flatten_all()?
                .to_vec1::<f64>()?)
        };
        Ok((flat(&a)?, flat(&starts)?))
    };
    let (ga, gs) = grads_of(&adjoint)?;
    let (ga_b, gs_b) = grads_of(&Gradient::Backprop)?;
    // Checkpointed backprop replays backprop's steps: its gradients, to round-off, with
    // fewer stored states than steps. Reversible backprop differentiates the method made
    // reversible: another discretization, as close as the tolerances.
    let (ga_c, gs_c) = grads_of(&Gradient::Checkpoint(
        CheckpointOptions::default().checkpoints(3),
    ))?;
    let (ga_r, gs_r) = grads_of(&Gradient::Reversible(ReversibleOptions::default()))?;
    for (got, want, tol, what) in [
        (&ga_c, &ga_b, 1e-10, "checkpointed dL/dA"),
        (&gs_c, &gs_b, 1e-10, "checkpointed dL/dstarts"),
        (&ga_r, &ga_b, 1e-6, "reversible dL/dA"),
        (&gs_r, &gs_b, 1e-6, "reversible dL/dstarts"),
    ] {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: {g} vs {w}");
        }
    }

    let h = 1e-5;
    let value = |a_shift: Option<(usize, f64)>, s_shift: Option<(usize, f64)>| -> Result<f64> {
        let mut av = a.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let mut sv = starts0.flatten_all()?.to_vec1::<f64>()?;
        if let Some((i, d)) = a_shift {
            av[i] += d;
        }
        if let Some((i, d)) = s_shift {
            sv[i] += d;
        }
        let a = Var::from_tensor(&Tensor::from_vec(av, (2, 2), dev)?)?;
        let s = Tensor::from_vec(sv, starts0.dims(), dev)?;
        Ok(loss(&ms, &a, &s, &ts, &target, &opts, &Gradient::Backprop)?.to_scalar::<f64>()?)
    };
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
            "{what}: {got} vs {want}"
        );
    };
    for i in 0..4 {
        let fd = (value(Some((i, h)), None)? - value(Some((i, -h)), None)?) / (2.0 * h);
        close(ga[i], fd, &format!("dL/dA[{i}] adjoint"));
        close(ga_b[i], fd, &format!("dL/dA[{i}] backprop"));
    }
    for i in 0..gs.len() {
        let fd = (value(None, Some((i, h)))? - value(None, Some((i, -h)))?) / (2.0 * h);
        close(gs[i], fd, &format!("dL/dstarts[{i}] adjoint"));
        close(gs_b[i], fd, &format!("dL/dstarts[{i}] backprop"));
    }
    Ok(())
}

/// One segment is a plain solve from the first start state, without gaps.
fn single_segment_case(dev: &Device) -> Result<()> {
    let a = matrix(dev)?;
    let f = linear(&a);
    let ts = [0.0, 0.3, 0.7, 1.5];
    let y0 = Tensor::new(&[[1.0f64, -0.5]], dev)?;
    let opts = SolveOptions::default().tolerances(1e-8, 1e-10);
    let sol =
        MultipleShooting::new(3).solve(&f, &y0.unsqueeze(0)?, &ts, &opts, &Gradient::Backprop)?;
    let plain = odeint(&f, &y0, &ts, &opts)?;
    assert_eq!(max_abs(&(&sol.ys - &plain.ys)?)?, 0.0);
    assert!(sol.gaps.is_none());
    assert_eq!(sol.continuity_loss()?.to_scalar::<f64>()?, 0.0);
    assert_eq!(sol.nfe_forward(), plain.stats.nfe);
    Ok(())
}

/// Start states of the wrong count or rank, and bad segments, are refused with a message.
fn errors_case(dev: &Device) -> Result<()> {
    let a = matrix(dev)?;
    let f = linear(&a);
    let ts: Vec<f64> = (0..7).map(|i| i as f64).collect();
    let opts = SolveOptions::default();
    let ms = MultipleShooting::new(2);
    let wrong = Tensor::zeros((2, 1, 2), DType::F64, dev)?;
    let err = ms
        .solve(&f, &wrong, &ts, &opts, &Gradient::Backprop)
        .expect_err("3 segments, 2 starts");
    assert!(err.to_string().contains("[3, ...state]"), "{err}");
    // Scalar states have no dimension to batch along.
    let scalars = Tensor::zeros(3, DType::F64, dev)?;
    let decay = with_params(|_t: f64, y: &Tensor| y.neg(), vec![a.clone()]);
    let err = ms
        .clone()
        .batched(true)
        .solve(&decay, &scalars, &ts, &opts, &Gradient::Backprop)
        .expect_err("batched needs a batch dimension");
    assert!(err.to_string().contains("[S, batch, ...]"), "{err}");
    let starts = Tensor::zeros((3, 1, 2), DType::F64, dev)?;
    let err = MultipleShooting::new(0)
        .solve(&f, &starts, &ts, &opts, &Gradient::Backprop)
        .expect_err("no intervals");
    assert!(err.to_string().contains("intervals = 0"), "{err}");
    // The solver's own errors come through: a time grid that goes back.
    let mut back = ts.clone();
    back[4] = 2.5;
    assert!(ms
        .solve(&f, &starts, &back, &opts, &Gradient::Backprop)
        .is_err());
    Ok(())
}

candle_core::test_device!(
    exact_starts_case,
    exact_starts_cpu,
    exact_starts_cuda,
    exact_starts_metal
);
candle_core::test_device!(
    batched_matches_sequential_case,
    batched_matches_sequential_cpu,
    batched_matches_sequential_cuda,
    batched_matches_sequential_metal
);
candle_core::test_device!(
    gradients_case,
    gradients_cpu,
    gradients_cuda,
    gradients_metal
);
candle_core::test_device!(
    single_segment_case,
    single_segment_cpu,
    single_segment_cuda,
    single_segment_metal
);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);

/// Independent segments (`independent(true)`): each of the batched segments keeps its own
/// steps, so the adaptive solve gives the values of the segments solved one by one (a
/// shared step does not: one step sequence for all), in the same two solves as `batched`;
/// the adjoint's gradients are backprop's; checkpointing is refused.
fn independent_case(dev: &Device) -> Result<()> {
    let ts: Vec<f64> = (0..11).map(|i| 0.3 * i as f64).collect();
    let target = Tensor::stack(
        &ts.iter()
            .map(|&t| Tensor::new(&[[(2.0 * t).cos(), t.sin()]], dev))
            .collect::<candle_core::Result<Vec<_>>>()?,
        0,
    )?;
    let opts = SolveOptions::default().tolerances(1e-7, 1e-9);
    let a = matrix(dev)?;
    let run = |ms: &MultipleShooting, gradient: &Gradient| -> Result<(Tensor, usize, Vec<f64>)> {
        let starts = Var::from_tensor(&ms.starts_from(&target)?.affine(0.9, 0.1)?)?;
        let sol = ms.solve(&linear(&a), &starts, &ts, &opts, gradient)?;
        let l = loss(ms, &a, &starts, &ts, &target, &opts, gradient)?;
        let grads = l.backward()?;
        let mut flat = grads
            .get(&a)
            .expect("dL/dA")
            .flatten_all()?
            .to_vec1::<f64>()?;
        flat.extend(
            grads
                .get(&starts)
                .expect("dL/dstarts")
                .flatten_all()?
                .to_vec1::<f64>()?,
        );
        Ok((sol.ys, sol.stats.len(), flat))
    };
    let (seq, n_seq, g_seq) = run(&MultipleShooting::new(3), &Gradient::Backprop)?;
    let ind = MultipleShooting::new(3).independent(true);
    assert!(ind.batched);
    let (ys, n, g) = run(&ind, &Gradient::Backprop)?;
    let (shared, _, _) = run(&MultipleShooting::new(3).batched(true), &Gradient::Backprop)?;
    assert_eq!(
        (n_seq, n),
        (4, 2),
        "four segments; three together, the last alone"
    );
    let d = max_abs(&(&ys - &seq)?)?;
    assert!(d < 1e-14, "independent against one by one: {d:e}");
    let d_shared = max_abs(&(&shared - &seq)?)?;
    assert!(
        d_shared > 1e-12,
        "a shared step gives other values: {d_shared:e}"
    );
    let scale = g_seq.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (x, y) in g.iter().zip(&g_seq) {
        assert!((x - y).abs() <= 1e-10 * scale, "backprop: {x} vs {y}");
    }
    let adjoint = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-10, 1e-12));
    let tight = SolveOptions::default().tolerances(1e-10, 1e-12);
    let grads = |gradient: &Gradient| -> Result<Vec<f64>> {
        let starts = Var::from_tensor(&ind.starts_from(&target)?.affine(0.9, 0.1)?)?;
        let grads = loss(&ind, &a, &starts, &ts, &target, &tight, gradient)?.backward()?;
        let mut flat = grads
            .get(&a)
            .expect("dL/dA")
            .flatten_all()?
            .to_vec1::<f64>()?;
        flat.extend(
            grads
                .get(&starts)
                .expect("dL/dstarts")
                .flatten_all()?
                .to_vec1::<f64>()?,
        );
        Ok(flat)
    };
    let (ga, gb) = (grads(&adjoint)?, grads(&Gradient::Backprop)?);
    let scale = gb.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (x, y) in ga.iter().zip(&gb) {
        assert!((x - y).abs() <= 1e-6 * scale, "adjoint: {x} vs {y}");
    }
    let starts = ind.starts_from(&target)?;
    let err = ind
        .solve(
            &linear(&a),
            &starts,
            &ts,
            &opts,
            &Gradient::Checkpoint(CheckpointOptions::default()),
        )
        .expect_err("checkpointing");
    assert!(err.to_string().contains("backprop or the adjoint"), "{err}");
    Ok(())
}

candle_core::test_device!(
    independent_case,
    independent_cpu,
    independent_cuda,
    independent_metal
);

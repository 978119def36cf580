//! Independent problems in one batch (`odeint_independent`): each sample takes the steps
//! `odeint` takes on it alone and reaches its values, with its own output times and
//! direction; a sample's solution does not depend on its batch-mates (where a shared step
//! does); exact solutions; gradients against central differences; counts; the errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::{max_abs_diff, solver_error};
use node_solvers::{odeint, odeint_independent, Method, SolveOptions, SolverError, TimeInvariant};

/// A time-dependent, nonlinear field on `[B, 2]` with a rate `λ` per sample (`[B, 1]`):
/// `a' = λ (cos t − a) + c`, `c' = −a − 0.3 c² sin t`. `t` is `[B]`.
fn field(t: &Tensor, y: &Tensor, lam: &Tensor) -> candle_core::Result<Tensor> {
    let b = y.dim(0)?;
    let t = t.reshape((b, 1))?;
    let a = y.narrow(1, 0, 1)?;
    let c = y.narrow(1, 1, 1)?;
    let da = ((t.cos()? - &a)?.broadcast_mul(lam)? + &c)?;
    let dc = (a.neg()? - (c.sqr()? * t.sin()?)?.affine(0.3, 0.0)?)?;
    Tensor::cat(&[da, dc], 1)
}

const LAMBDAS: [f64; 4] = [0.5, 3.0, 20.0, 200.0];

/// Each sample's own times: different spans, one backwards.
fn sample_times() -> Vec<Vec<f64>> {
    vec![
        vec![0.0, 0.5, 1.3, 2.0, 4.0],
        vec![1.0, 0.8, 0.5, 0.2, 0.0],
        vec![-1.0, -0.9, -0.5, 0.0, 0.25],
        vec![2.0, 2.1, 2.2, 2.6, 3.0],
    ]
}

fn start(dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(
        Tensor::new(&[[1.0f64, 0.0], [-0.5, 0.8], [0.3, -0.2], [2.0, 1.0]], dev)?
            .to_dtype(dtype)?,
    )
}

fn lambdas(idx: &[usize], dev: &Device) -> Result<Tensor> {
    let v: Vec<f64> = idx.iter().map(|&i| LAMBDAS[i]).collect();
    Ok(Tensor::from_vec(v, (idx.len(), 1), dev)?)
}

/// Sample `i` solved alone by `odeint`.
fn alone(i: usize, opts: &SolveOptions, dev: &Device) -> Result<node_solvers::Solution> {
    let lam = lambdas(&[i], dev)?;
    let f = |t: f64, y: &Tensor| field(&Tensor::new(&[t], dev)?, y, &lam);
    let y0 = start(DType::F64, dev)?.narrow(0, i, 1)?;
    Ok(odeint(&f, &y0, &sample_times()[i], opts)?)
}

fn matches_solves_alone(dev: &Device) -> Result<()> {
    let lam = lambdas(&[0, 1, 2, 3], dev)?;
    let f = |t: &Tensor, y: &Tensor| field(t, y, &lam);
    let y0 = start(DType::F64, dev)?;
    for method in [Method::Dopri5, Method::Tsit5, Method::Bosh3, Method::Dopri8] {
        for controller in [
            node_solvers::StepController::Integral,
            node_solvers::StepController::PI_DEFAULT,
        ] {
            let opts = SolveOptions::default()
                .method(method)
                .tolerances(1e-7, 1e-9)
                .controller(controller);
            let sol = odeint_independent(&f, &y0, &sample_times(), &opts)?;
            assert_eq!(sol.ys.dims(), &[5, 4, 2]);
            let mut most = 0;
            for i in 0..4 {
                let one = alone(i, &opts, dev)?;
                let s = sol.samples[i];
                assert_eq!(
                    (s.accepted_steps, s.rejected_steps),
                    (one.stats.accepted_steps, one.stats.rejected_steps),
                    "{method} {controller:?} sample {i}: its own steps"
                );
                let got = sol.ys.narrow(1, i, 1)?;
                let d = max_abs_diff(&got, &one.ys)?;
                assert!(
                    d < 1e-12,
                    "{method} {controller:?} sample {i}: {d:e} from the solve alone"
                );
                most = most.max(s.accepted_steps + s.rejected_steps);
            }
            // Every batch step evaluates every sample; rejections may fall on different steps.
            assert!(
                sol.batch_steps >= most,
                "{method}: {} < {most}",
                sol.batch_steps
            );
            assert!(sol.batch_steps <= 4 * most);
            // One read per batch step and two for the first steps.
            assert_eq!(sol.host_reads, sol.batch_steps + 2);
            if method == Method::Dopri5 {
                // f(y0), the first step's trial, six stages a step (FSAL).
                assert_eq!(sol.nfe, 2 + 6 * sol.batch_steps);
            }
        }
    }
    Ok(())
}

candle_core::test_device!(
    matches_solves_alone,
    matches_solves_alone_cpu,
    matches_solves_alone_cuda,
    matches_solves_alone_metal
);

/// A sample's solution is the same, bit for bit, in any batch; with `odeint`'s shared step it
/// is not, and the easy sample takes the hard one's steps.
fn batch_mates_do_not_matter(dev: &Device) -> Result<()> {
    let ts = vec![vec![0.0, 0.5, 1.0]];
    let opts = SolveOptions::default().tolerances(1e-6, 1e-8);
    let y0_all = start(DType::F64, dev)?;
    let solve = |idx: &[usize]| -> Result<(Tensor, Vec<usize>)> {
        let lam = lambdas(idx, dev)?;
        let f = |t: &Tensor, y: &Tensor| field(t, y, &lam);
        let rows: Vec<Tensor> = idx
            .iter()
            .map(|&i| y0_all.narrow(0, i, 1))
            .collect::<candle_core::Result<_>>()?;
        let sol = odeint_independent(&f, &Tensor::cat(&rows, 0)?, &ts, &opts)?;
        let steps = sol.samples.iter().map(|s| s.accepted_steps).collect();
        Ok((sol.ys, steps))
    };
    let (alone, steps_alone) = solve(&[0])?;
    for idx in [&[0usize, 3][..], &[3, 0], &[2, 1, 0, 3]] {
        let (ys, steps) = solve(idx)?;
        let at = idx.iter().position(|&i| i == 0).unwrap_or(0);
        let row = ys.narrow(1, at, 1)?;
        assert_eq!(
            row.flatten_all()?.to_vec1::<f64>()?,
            alone.flatten_all()?.to_vec1::<f64>()?,
            "sample 0 among {idx:?}"
        );
        assert_eq!(steps[at], steps_alone[0]);
    }
    // One shared step: the stiff sample (λ = 200) sets the steps of the easy one (λ = 0.5).
    let lam = lambdas(&[0, 3], dev)?;
    let shared = |t: f64, y: &Tensor| field(&Tensor::new(&[t, t], dev)?, y, &lam);
    let y0 = Tensor::cat(&[y0_all.narrow(0, 0, 1)?, y0_all.narrow(0, 3, 1)?], 0)?;
    let joint = odeint(&shared, &y0, &ts[0], &opts)?;
    assert!(
        joint.stats.accepted_steps > 4 * steps_alone[0],
        "shared steps {} against the easy sample's own {}",
        joint.stats.accepted_steps,
        steps_alone[0]
    );
    assert!(max_abs_diff(&joint.ys.narrow(1, 0, 1)?, &alone)? > 0.0);
    Ok(())
}

candle_core::test_device!(
    batch_mates_do_not_matter,
    batch_mates_cpu,
    batch_mates_cuda,
    batch_mates_metal
);

/// `y' = −λ y` against `y0 e^(−λ (t − t0))` at every output, each sample's own times, f64
/// and f32; a time-invariant `VectorField` through [`TimeInvariant`].
fn exact_decay(dev: &Device) -> Result<()> {
    for (dtype, tol, bound) in [(DType::F64, 1e-9, 1e-7), (DType::F32, 1e-5, 2e-4)] {
        let lam = Tensor::new(&[[1.0f64], [4.0], [0.2]], dev)?.to_dtype(dtype)?;
        let f = TimeInvariant(|_t: f64, y: &Tensor| y.broadcast_mul(&lam)?.neg());
        let y0 = Tensor::new(&[[1.0f64], [2.0], [-1.0]], dev)?.to_dtype(dtype)?;
        let ts = vec![
            vec![0.0, 0.3, 1.0, 2.5],
            vec![5.0, 4.0, 3.5, 3.0],
            vec![-2.0, 0.0, 2.0, 10.0],
        ];
        let opts = SolveOptions::default().tolerances(tol, tol);
        let sol = odeint_independent(&f, &y0, &ts, &opts)?;
        let ys = sol.ys.to_dtype(DType::F64)?.to_vec3::<f64>()?;
        for (i, &(l, a)) in [(1.0f64, 1.0f64), (4.0, 2.0), (0.2, -1.0)]
            .iter()
            .enumerate()
        {
            for (j, &t) in ts[i].iter().enumerate() {
                let exact = a * (-l * (t - ts[i][0])).exp();
                let err = (ys[j][i][0] - exact).abs() / exact.abs().max(1.0);
                assert!(err < bound, "{dtype:?} sample {i} t = {t}: {err:e}");
            }
        }
    }
    Ok(())
}

candle_core::test_device!(
    exact_decay,
    exact_decay_cpu,
    exact_decay_cuda,
    exact_decay_metal
);

/// Backprop through the steps: the gradients of a weighted sum of every output to `y0` and
/// to the rates `λ` against central differences of the solve (its steps held fixed by a
/// fixed first step and tolerances loose enough that the perturbations change no decision).
fn gradients(dev: &Device) -> Result<()> {
    let ts = sample_times();
    let opts = SolveOptions::default().tolerances(1e-8, 1e-10);
    let w = Tensor::new(&[0.3f64, -1.1, 0.7, 0.5, 1.3], dev)?.reshape((5, 1, 1))?;
    let loss = |y0: &Tensor, lam: &Tensor| -> Result<Tensor> {
        let f = |t: &Tensor, y: &Tensor| field(t, y, lam);
        let sol = odeint_independent(&f, y0, &ts, &opts)?;
        Ok(sol.ys.broadcast_mul(&w)?.sum_all()?)
    };
    let y0 = Var::from_tensor(&start(DType::F64, dev)?)?;
    let lam = Var::from_tensor(&lambdas(&[0, 1, 2, 3], dev)?)?;
    let grads = loss(y0.as_tensor(), lam.as_tensor())?.backward()?;
    let g_y0 = grads.get(y0.as_tensor()).expect("y0's gradient");
    let g_lam = grads.get(lam.as_tensor()).expect("λ's gradient");
    let eps = 1e-6;
    let value =
        |y0: &Tensor, lam: &Tensor| -> Result<f64> { Ok(loss(y0, lam)?.to_scalar::<f64>()?) };
    let bump = |x: &Tensor, k: usize, by: f64| -> Result<Tensor> {
        let mut v = x.flatten_all()?.to_vec1::<f64>()?;
        v[k] += by;
        Ok(Tensor::from_vec(v, x.shape(), dev)?)
    };
    for (k, gk) in g_y0
        .flatten_all()?
        .to_vec1::<f64>()?
        .into_iter()
        .enumerate()
    {
        let fd = (value(&bump(y0.as_tensor(), k, eps)?, lam.as_tensor())?
            - value(&bump(y0.as_tensor(), k, -eps)?, lam.as_tensor())?)
            / (2.0 * eps);
        assert!(
            (fd - gk).abs() < 1e-6 * fd.abs().max(1.0),
            "y0[{k}]: backprop {gk} against {fd}"
        );
    }
    for (k, gk) in g_lam
        .flatten_all()?
        .to_vec1::<f64>()?
        .into_iter()
        .enumerate()
    {
        let e = eps * LAMBDAS[k];
        let fd = (value(y0.as_tensor(), &bump(lam.as_tensor(), k, e)?)?
            - value(y0.as_tensor(), &bump(lam.as_tensor(), k, -e)?)?)
            / (2.0 * e);
        assert!(
            (fd - gk).abs() < 1e-6 * fd.abs().max(1.0),
            "λ[{k}]: backprop {gk} against {fd}"
        );
    }
    Ok(())
}

candle_core::test_device!(gradients, gradients_cpu, gradients_cuda, gradients_metal);

#[test]
fn errors() -> Result<()> {
    let dev = &Device::Cpu;
    let lam = lambdas(&[0, 1, 2, 3], dev)?;
    let f = |t: &Tensor, y: &Tensor| field(t, y, &lam);
    let y0 = start(DType::F64, dev)?;
    let opts = SolveOptions::default();
    let err = |ts: &[Vec<f64>], opts: &SolveOptions| {
        odeint_independent(&f, &y0, ts, opts).expect_err("refused")
    };
    // Times: rows, lengths, order, finiteness (naming the sample).
    let e = err(&[vec![0.0, 1.0], vec![0.0, 1.0]], &opts);
    assert!(matches!(solver_error(&e), SolverError::InvalidTimes(m) if m.contains("2 rows")));
    let mut ts = sample_times();
    ts[2].pop();
    let e = err(&ts, &opts);
    assert!(matches!(solver_error(&e), SolverError::InvalidTimes(m) if m.contains("sample 2")));
    let mut ts = sample_times();
    ts[1][3] = 0.5;
    let e = err(&ts, &opts);
    assert!(matches!(
        solver_error(&e),
        SolverError::TimesNotMonotone { index: 3, .. }
    ));
    assert!(e.to_string().contains("sample 1"), "{e}");
    let mut ts = sample_times();
    ts[3][2] = f64::NAN;
    assert!(matches!(
        solver_error(&err(&ts, &opts)),
        SolverError::InvalidTimes(_)
    ));
    // Methods and options it does not take.
    let ts = sample_times();
    for (bad, needle) in [
        (opts.clone().method(Method::Kvaerno5), "explicit"),
        (opts.clone().method(Method::Rodas5P), "explicit"),
        (opts.clone().method(Method::Rk4), "no error estimate"),
        (opts.clone().method(Method::Adams), "Runge–Kutta"),
        (opts.clone().method(Method::Rkc), "Runge–Kutta"),
        (opts.clone().fixed_steps(10), "adaptive steps"),
        (opts.clone().step_ts(vec![0.5]), "step_ts"),
        (
            opts.clone().norm(node_solvers::ErrorNorm::RmsPrefix(1)),
            "seminorm",
        ),
    ] {
        let e = err(&ts, &bad);
        assert!(
            matches!(solver_error(&e), SolverError::InvalidOptions(ref m) if m.contains(needle)),
            "{needle}: {e}"
        );
    }
    // A state without a batch dimension; the field's output of the wrong shape.
    let scalar = Tensor::new(1.0f64, dev)?;
    let e = odeint_independent(&f, &scalar, &[vec![0.0, 1.0]], &opts).expect_err("no batch");
    assert!(matches!(solver_error(&e), SolverError::InvalidOptions(m) if m.contains("batch")));
    let wrong = |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 1);
    let e = odeint_independent(&wrong, &y0, &ts, &opts).expect_err("shape");
    assert!(matches!(
        solver_error(&e),
        SolverError::ShapeMismatch { .. }
    ));
    // One sample blows up: a non-finite value, reported with that sample; the others would
    // have finished.
    let blow = Tensor::new(&[[0.0f64], [0.0], [1.0], [0.0]], dev)?;
    let f_blow = |_t: &Tensor, y: &Tensor| y.sqr()?.broadcast_mul(&blow)?.affine(1.0, 0.0);
    let y1 = Tensor::ones((4, 1), DType::F64, dev)?;
    let e = odeint_independent(&f_blow, &y1, &[vec![0.0, 2.0]], &opts).expect_err("blow-up");
    assert!(
        matches!(
            solver_error(&e),
            SolverError::NonFinite { .. } | SolverError::StepSizeTooSmall { .. }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("sample 2"), "{e}");
    // max_steps counts each sample's own steps: a limit between the stiff sample's count
    // and the others' stops only the stiff one.
    let counts: Vec<usize> = odeint_independent(&f, &y0, &ts, &opts)?
        .samples
        .iter()
        .map(|s| s.accepted_steps + s.rejected_steps)
        .collect();
    let others = counts[..3].iter().copied().max().unwrap_or(0);
    assert!(counts[3] > others + 1, "{counts:?}");
    let few = opts.clone().max_steps(others + 1);
    let e = odeint_independent(&f, &y0, &ts, &few).expect_err("max steps");
    assert!(matches!(
        solver_error(&e),
        SolverError::MaxStepsExceeded { steps, .. } if steps == others + 1
    ));
    assert!(e.to_string().contains("sample 3"), "{e}");
    // One output time: the start, no evaluation.
    let one = odeint_independent(&f, &y0, &[vec![0.0]], &opts)?;
    assert_eq!(one.ys.dims(), &[1, 4, 2]);
    assert_eq!(one.nfe, 0);
    Ok(())
}

/// A given first step and a per-component atol.
#[test]
fn options() -> Result<()> {
    let dev = &Device::Cpu;
    let lam = lambdas(&[0, 1, 2, 3], dev)?;
    let f = |t: &Tensor, y: &Tensor| field(t, y, &lam);
    let y0 = start(DType::F64, dev)?;
    let atol = Tensor::new(&[1e-9f64, 1e-7], dev)?;
    let opts = SolveOptions::default()
        .rtol(1e-6)
        .atol(atol)
        .first_step(1e-3);
    let sol = odeint_independent(&f, &y0, &sample_times(), &opts)?;
    // One read to check the per-component atol, one to check y0 and f(y0), then one a step.
    assert_eq!(sol.host_reads, sol.batch_steps + 2);
    for i in 0..4 {
        let one = alone(i, &opts, dev)?;
        assert_eq!(sol.samples[i].accepted_steps, one.stats.accepted_steps);
        assert!(max_abs_diff(&sol.ys.narrow(1, i, 1)?, &one.ys)? < 1e-12);
    }
    Ok(())
}

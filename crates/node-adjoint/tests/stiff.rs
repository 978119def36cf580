//! Gradients through stiff solves and solves with an implicit method: the adjoint (whose
//! reverse solve is implicit too), with `y` integrated backwards or interpolated from the
//! forward solve, against central differences; Robertson's kinetics, where only the
//! interpolated adjoint works, on one reaction and on a batch; checkpointing's refusal of
//! implicit methods.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use node_adjoint::{
    odeint_adjoint, odeint_checkpointed, with_params, AdjointOptions, AdjointState,
    CheckpointOptions,
};
use node_solvers::problems::Robertson;
use node_solvers::{odeint, Jacobian, Method, SolveOptions, SolverError, WithJacobian};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// `dy/dt = A y`, `A = [[−1, θ0], [0, −40 θ1]]` (eigenvalues −1 and −40θ1; y0 = (1, 1)), a
/// mildly stiff system, over `[0, 0.2]`. The adjoint integrates `y` backwards too, where
/// the fast mode grows as `e^{40 t}`: that is why this horizon is short (`e^8` turns the
/// 1e-11 tolerance into a 3e-8 error). On a truly stiff problem (Robertson's, below) the
/// backward solve of `y` blows up, whatever the method, and only the interpolated adjoint
/// works.
fn field(theta: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let (y1, y2) = (y.narrow(0, 0, 1)?, y.narrow(0, 1, 1)?);
    let d1 = ((&y2 * theta.narrow(0, 0, 1)?)? - &y1)?;
    let d2 = (&y2 * theta.narrow(0, 1, 1)?.affine(-40.0, 0.0)?)?;
    Tensor::cat(&[d1, d2], 0)
}

/// `L = y1(0.05) + 2 y2(0.2) − y1(0.2)`: two output times, so the reverse solve restarts
/// once.
fn loss(ys: &Tensor) -> candle_core::Result<Tensor> {
    let w = Tensor::new(&[[0.0f64, 0.0], [1.0, 0.0], [-1.0, 2.0]], ys.device())?;
    (ys * w)?.sum_all()
}

fn adjoint_case(dev: &Device) -> Result<()> {
    let th0 = [0.5f64, 1.0];
    let y00 = [1.0f64, 1.0];
    let ts = [0.0, 0.05, 0.2];
    let theta = Var::new(&th0, dev)?;
    let tv = theta.clone();
    let f = with_params(
        move |_t: f64, y: &Tensor| field(tv.as_tensor(), y),
        vec![theta.clone()],
    );
    let y0 = Var::new(&y00, dev)?;
    let cases = [
        (Method::Kvaerno3, AdjointState::Backsolve, 1),
        (Method::Kvaerno5, AdjointState::Backsolve, 1),
        (Method::Kvaerno5, AdjointState::Interpolated, 1),
        (Method::Dopri5, AdjointState::Interpolated, 1),
        // Rosenbrock methods, forwards and backwards (the parameter gradients are the
        // reverse solve's integrals).
        (Method::Rodas5P, AdjointState::Backsolve, 1),
        (Method::Rodas4, AdjointState::Interpolated, 1),
        (Method::Rodas5P, AdjointState::Interpolated, 1),
        (Method::Ros34pw2, AdjointState::Backsolve, 1),
        // A W-method keeping its Jacobian for 5 steps, forwards and backwards.
        (Method::Ros34pw2, AdjointState::Backsolve, 5),
    ];
    for (m, state, reuse) in cases {
        let opts = SolveOptions::default()
            .method(m)
            .tolerances(1e-11, 1e-13)
            .jacobian_reuse(reuse);
        let adj = AdjointOptions::default().state(state);
        let sol = odeint_adjoint(&f, y0.as_tensor(), &ts, &opts, &adj)?;
        let l = loss(&sol.ys)?;
        let grads = l.backward()?;
        let g_th = grads.get(&theta).expect("θ").to_vec1::<f64>()?;
        let g_y0 = grads.get(&y0).expect("y0").to_vec1::<f64>()?;

        // Central differences of the forward solve, detached.
        let value = |th: &[f64], y0: &[f64]| -> Result<f64> {
            let tt = Tensor::new(th, dev)?;
            let g = move |_t: f64, y: &Tensor| field(&tt, y);
            let sol = odeint(&g, &Tensor::new(y0, dev)?, &ts, &opts)?;
            Ok(loss(&sol.ys)?.to_scalar::<f64>()?)
        };
        let h = 1e-5;
        for i in 0..2 {
            for (name, got, at_th, at_y) in
                [("θ", g_th[i], true, false), ("y0", g_y0[i], false, true)]
            {
                let (mut th_up, mut th_down, mut y_up, mut y_down) = (th0, th0, y00, y00);
                if at_th {
                    th_up[i] += h;
                    th_down[i] -= h;
                }
                if at_y {
                    y_up[i] += h;
                    y_down[i] -= h;
                }
                let fd = (value(&th_up, &y_up)? - value(&th_down, &y_down)?) / (2.0 * h);
                assert!(
                    (got - fd).abs() < 1e-6 * fd.abs().max(1.0),
                    "{m} {state:?}: dL/d{name}[{i}]: adjoint {got} against {fd}"
                );
            }
        }
    }

    // A reverse solve by another method drops the forward W-method's kept Jacobian (rodas5p
    // would refuse it).
    let opts = SolveOptions::default()
        .method(Method::Ros34pw2)
        .tolerances(1e-8, 1e-10)
        .jacobian_reuse(5);
    let adj = AdjointOptions::default().method(Method::Rodas5P);
    let sol = odeint_adjoint(&f, y0.as_tensor(), &ts, &opts, &adj)?;
    loss(&sol.ys)?.backward()?;

    // Checkpointing replays steps under backprop: refused before solving.
    let opts = SolveOptions::default().method(Method::Kvaerno5);
    let err = odeint_checkpointed(
        &f,
        y0.as_tensor(),
        &ts,
        &opts,
        &CheckpointOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::NotDifferentiable { method: "kvaerno5" })
        ),
        "{err}"
    );
    Ok(())
}

/// Robertson's kinetics with the rates as parameters, scaled: `k = s ⊙ (0.04, 3e7, 1e4)`,
/// so that the three get gradients of comparable size.
fn robertson(s: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let k = (s * Tensor::new(&RATES, s.device())?)?;
    Robertson::field_with_rates(&k, y)
}

/// The textbook rates that the parameters `s` scale.
const RATES: [f64; 3] = [0.04, 3e7, 1e4];

/// Robertson's Jacobian in closed form at the rates `s ⊙ RATES` (read when it is called; it
/// is not differentiated), for states `[3]` or `[B, 3]`, and the count of its calls.
fn robertson_jacobian(
    s: &Var,
) -> (
    impl Fn(f64, &Tensor) -> candle_core::Result<Tensor> + Clone + Send + Sync + 'static,
    Arc<AtomicUsize>,
) {
    let (s, calls) = (s.clone(), Arc::new(AtomicUsize::new(0)));
    let counter = calls.clone();
    let jacobian = move |t: f64, y: &Tensor| {
        counter.fetch_add(1, Ordering::Relaxed);
        let k = (s.as_tensor() * Tensor::new(&RATES, y.device())?)?.to_vec1::<f64>()?;
        Robertson {
            rates: [k[0], k[1], k[2]],
        }
        .jacobian()(t, y)
    };
    (jacobian, calls)
}

/// `L = y1(40) + 10⁴ y2(40) + y3(40)` (y2 is ~10⁻⁵), summed over a batch.
fn robertson_loss(ys: &Tensor) -> candle_core::Result<Tensor> {
    let w = Tensor::new(&[1.0f64, 1e4, 1.0], ys.device())?;
    ys.get(1)?.broadcast_mul(&w)?.sum_all()
}

fn robertson_case(dev: &Device) -> Result<()> {
    let s0 = [1.0f64, 1.0, 1.0];
    // Some y2 to start with, so that central differences keep it positive (below zero the
    // kinetics blow up).
    let y00 = [1.0f64, 2e-4, 0.0];
    let ts = [0.0, 40.0];
    let s = Var::new(&s0, dev)?;
    let sv = s.clone();
    let f = with_params(
        move |_t: f64, y: &Tensor| robertson(sv.as_tensor(), y),
        vec![s.clone()],
    );
    let y0 = Var::new(&y00, dev)?;
    let opts = SolveOptions::default()
        .method(Method::Kvaerno5)
        .tolerances(1e-9, 1e-14);
    // Backwards, y's fast modes grow like e^{10⁴ t}: the reconstructed state leaves the
    // trajectory and the reverse solve fails.
    let backsolve = AdjointOptions {
        max_steps: Some(20_000),
        ..AdjointOptions::default()
    };
    let sol = odeint_adjoint(&f, y0.as_tensor(), &ts, &opts, &backsolve)?;
    let err = robertson_loss(&sol.ys)?.backward().unwrap_err();
    assert!(SolverError::find(&err).is_some(), "{err}");

    let interpolated = AdjointOptions::default().state(AdjointState::Interpolated);
    let sol = odeint_adjoint(&f, y0.as_tensor(), &ts, &opts, &interpolated)?;
    let grads = robertson_loss(&sol.ys)?.backward()?;
    let g_s = grads.get(&s).expect("s").to_vec1::<f64>()?;
    let g_y0 = grads.get(&y0).expect("y0").to_vec1::<f64>()?;
    println!(
        "interpolated: forward {:?}, backward {:?}",
        sol.stats.forward(),
        sol.stats.backward()
    );

    // The Jacobian in closed form (at the current rates; it is not differentiated): the
    // forward solve and the reverse solve (its `−Jᵀ`) take it instead of differences.
    let (jacobian, calls) = robertson_jacobian(&s);
    let exact = WithJacobian::new(f.clone(), jacobian);
    let sol_j = odeint_adjoint(&exact, y0.as_tensor(), &ts, &opts, &interpolated)?;
    let grads_j = robertson_loss(&sol_j.ys)?.backward()?;
    let (fwd, bwd) = (sol_j.stats.forward(), sol_j.stats.backward());
    println!("closed-form Jacobian: forward {fwd:?}, backward {bwd:?}");
    // Every build, forward and backward, was the closed form's (none by differences, which
    // cost 4 evaluations each).
    assert!(fwd.jacobians > 0 && bwd.jacobians > 0);
    assert_eq!(calls.load(Ordering::Relaxed), fwd.jacobians + bwd.jacobians);
    // A wrong Jacobian still gives the gradients (only Newton's speed depends on it) but
    // costs: `J` given untransposed in the reverse solve took 356 370 evaluations and
    // 25 496 rejected steps. The right one costs no more than the differences.
    let bwd_fd = sol.stats.backward();
    assert!(bwd.nfe * 10 < bwd_fd.nfe * 11, "{bwd:?} against {bwd_fd:?}");
    let g_s_j = grads_j.get(&s).expect("s").to_vec1::<f64>()?;
    let g_y0_j = grads_j.get(&y0).expect("y0").to_vec1::<f64>()?;
    // Rodas5P forwards and backwards, with the closed form: the reverse solve's parameter
    // gradients are integrals outside its Jacobian's blocks.
    let rodas = opts.clone().method(Method::Rodas5P);
    let sol_r = odeint_adjoint(&exact, y0.as_tensor(), &ts, &rodas, &interpolated)?;
    let grads_r = robertson_loss(&sol_r.ys)?.backward()?;
    println!(
        "rodas5p: forward {:?}, backward {:?}",
        sol_r.stats.forward(),
        sol_r.stats.backward()
    );
    let g_s_r = grads_r.get(&s).expect("s").to_vec1::<f64>()?;
    let g_y0_r = grads_r.get(&y0).expect("y0").to_vec1::<f64>()?;

    // Central differences of the forward solve, at tighter tolerances.
    let fd_opts = opts.clone().tolerances(1e-11, 1e-16);
    let value = |s: &[f64], y0: &[f64]| -> Result<f64> {
        let st = Tensor::new(s, dev)?;
        let g = move |_t: f64, y: &Tensor| robertson(&st, y);
        let sol = odeint(&g, &Tensor::new(y0, dev)?, &ts, &fd_opts)?;
        Ok(robertson_loss(&sol.ys)?.to_scalar::<f64>()?)
    };
    for i in 0..3 {
        for (name, got, got_j, got_r, wrt_s) in [
            ("s", g_s[i], g_s_j[i], g_s_r[i], true),
            ("y0", g_y0[i], g_y0_j[i], g_y0_r[i], false),
        ] {
            let h = if !wrt_s && i == 1 { 1e-5 } else { 1e-4 };
            let (mut s_up, mut s_down, mut y_up, mut y_down) = (s0, s0, y00, y00);
            if wrt_s {
                s_up[i] += h;
                s_down[i] -= h;
            } else {
                y_up[i] += h;
                y_down[i] -= h;
            }
            let fd = (value(&s_up, &y_up)? - value(&s_down, &y_down)?) / (2.0 * h);
            println!(
                "dL/d{name}[{i}]: {got} (closed-form Jacobian {got_j}, rodas5p {got_r}) against {fd}"
            );
            for (jac, got) in [
                ("differences", got),
                ("closed form", got_j),
                ("rodas5p", got_r),
            ] {
                assert!(
                    (got - fd).abs() < 1e-4 * fd.abs().max(1e-2),
                    "dL/d{name}[{i}]: interpolated adjoint ({jac}) {got} against {fd}"
                );
            }
        }
    }

    Ok(())
}

/// A batch of Robertson reactions from different starts, with shared rates: a batched
/// forward solve makes the interpolated adjoint's reverse Newton matrix a block per
/// reaction too (`Jacobian::Blocks`), instead of one dense matrix over the whole batch. The
/// gradients are those of the dense solve; the reverse solve costs a fraction.
fn robertson_batch_case(dev: &Device) -> Result<()> {
    let b = 32;
    let starts: Vec<[f64; 3]> = (0..b)
        .map(|i| {
            let x = i as f64 / b as f64;
            [1.0 - 0.5 * x, 2e-4 * (1.0 + x), 0.5 * x]
        })
        .collect();
    let s = Var::new(&[1.0f64, 1.0, 1.0], dev)?;
    let sv = s.clone();
    let f = with_params(
        move |_t: f64, y: &Tensor| robertson(sv.as_tensor(), y),
        vec![s.clone()],
    );
    // Blocks `[B, 3, 3]` for a `[B, 3]` state.
    let (jacobian, calls) = robertson_jacobian(&s);
    let exact = WithJacobian::new(f.clone(), jacobian);
    let flat: Vec<f64> = starts.iter().flatten().copied().collect();
    let y0 = Var::from_tensor(&Tensor::from_vec(flat, (b, 3), dev)?)?;
    let ts = [0.0, 40.0];
    let opts = SolveOptions::default()
        .method(Method::Kvaerno5)
        .tolerances(1e-9, 1e-14);
    let interpolated = AdjointOptions::default().state(AdjointState::Interpolated);
    let mut runs = vec![];
    for (name, jac, closed) in [
        ("dense", Jacobian::Dense, false),
        ("batched", Jacobian::Batched, false),
        ("batched, closed form", Jacobian::Batched, true),
    ] {
        let opts = opts.clone().jacobian(jac);
        let sol = if closed {
            odeint_adjoint(&exact, y0.as_tensor(), &ts, &opts, &interpolated)?
        } else {
            odeint_adjoint(&f, y0.as_tensor(), &ts, &opts, &interpolated)?
        };
        let grads = robertson_loss(&sol.ys)?.backward()?;
        let g_s = grads.get(&s).expect("s").to_vec1::<f64>()?;
        let g_y0 = grads
            .get(&y0)
            .expect("y0")
            .flatten_all()?
            .to_vec1::<f64>()?;
        let (fwd, bwd) = (sol.stats.forward(), sol.stats.backward());
        println!("{name}: forward {fwd:?}\n  backward {bwd:?}\n  dL/ds {g_s:?}");
        runs.push((g_s, g_y0, fwd, bwd));
    }
    let (dense, batched, closed) = (&runs[0], &runs[1], &runs[2]);
    // A dense reverse Jacobian over 96 components costs 97 evaluations per build, blocks 4
    // (the step sequences are close to the same: 93 evaluations more per build for the
    // dense one; 50 leaves room for a few more steps).
    assert!(
        batched.3.nfe + 50 * batched.3.jacobians < dense.3.nfe,
        "batched backward {:?} against dense {:?}",
        batched.3,
        dense.3
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        closed.2.jacobians + closed.3.jacobians
    );
    // The three solves' gradients differ by their reverse solves' errors (a few 1e-6
    // relative on one reaction, see `robertson_case`).
    for (name, run) in [("batched", batched), ("closed form", closed)] {
        for (got, want) in run
            .0
            .iter()
            .chain(&run.1)
            .zip(dense.0.iter().chain(&dense.1))
        {
            assert!(
                (got - want).abs() < 1e-4 * want.abs().max(1e-2),
                "{name}: {got} against the dense solve's {want}"
            );
        }
    }
    Ok(())
}

candle_core::test_device!(adjoint_case, adjoint_cpu, adjoint_cuda, adjoint_metal);
candle_core::test_device!(
    robertson_case,
    robertson_cpu,
    robertson_cuda,
    robertson_metal
);
candle_core::test_device!(
    robertson_batch_case,
    robertson_batch_cpu,
    robertson_batch_cuda,
    robertson_batch_metal
);

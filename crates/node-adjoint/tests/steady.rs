//! Gradients of steady states by the implicit function theorem
//! (`odeint_steady_state_adjoint`): against the closed form of `dy/dt = a − b ⊙ y`, and on
//! an equilibrium model `dy/dt = tanh(W y + c) − y` (a batch) against central differences
//! of the steady-state solve and against backprop through a long `odeint`; backwards in time
//! to a repeller; the counts; the errors.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{odeint_steady_state_adjoint, with_params};
use node_solvers::{
    odeint, odeint_steady_state, Method, SolveOptions, SolverError, SteadyStateOptions,
};

/// `dy/dt = a − b ⊙ y` (forwards, `b > 0`) or `b ⊙ y − a` (backwards in time, a repeller):
/// both rest at `y* = a / b`, so for `L = Σ w_i y*_i`, `dL/da = w / b` and
/// `dL/db = −w a / b²`.
fn closed_form_case(dev: &Device) -> Result<()> {
    let (a0, b0) = ([1.0f64, -2.0, 0.5], [2.0f64, 0.5, 4.0]);
    let w = Tensor::new(&[1.0f64, -3.0, 2.0], dev)?;
    for backwards in [false, true] {
        let a = Var::new(&a0, dev)?;
        let b = Var::new(&b0, dev)?;
        let (av, bv) = (a.clone(), b.clone());
        let sign = if backwards { -1.0 } else { 1.0 };
        let f = with_params(
            move |_t: f64, y: &Tensor| (av.as_tensor() - y.mul(bv.as_tensor())?)?.affine(sign, 0.0),
            vec![a.clone(), b.clone()],
        );
        let y0 = Var::new(&[0.0f64, 0.0, 0.0], dev)?;
        let opts = SolveOptions::default().tolerances(1e-10, 1e-12);
        let ss = SteadyStateOptions::new(if backwards { -1e3 } else { 1e3 });
        let sol = odeint_steady_state_adjoint(&f, y0.as_tensor(), 0.0, &opts, &ss)?;
        let grads = (&sol.y * &w)?.sum_all()?.backward()?;
        let ga = grads.get(&a).expect("a").to_vec1::<f64>()?;
        let gb = grads.get(&b).expect("b").to_vec1::<f64>()?;
        let gy0 = grads.get(&y0).expect("y0").to_vec1::<f64>()?;
        let wv = w.to_vec1::<f64>()?;
        println!(
            "backwards {backwards}: t = {:.2}, forward {:?}, backward {:?}",
            sol.t,
            sol.stats.forward(),
            sol.stats.backward()
        );
        for i in 0..3 {
            let (want_a, want_b) = (wv[i] / b0[i], -wv[i] * a0[i] / (b0[i] * b0[i]));
            // λ stops at 100 times the solve's tolerances (1e-8 relative): the gradients
            // are that close.
            assert!(
                (ga[i] - want_a).abs() < 1e-7 * want_a.abs().max(1.0),
                "dL/da[{i}] = {} not {want_a}",
                ga[i]
            );
            assert!(
                (gb[i] - want_b).abs() < 1e-7 * want_b.abs().max(1.0),
                "dL/db[{i}] = {} not {want_b}",
                gb[i]
            );
            assert_eq!(gy0[i], 0.0);
        }
        let back = sol.stats.backward();
        assert!(
            back.accepted_steps > 0 && back.nfe > back.accepted_steps,
            "{back:?}"
        );
    }
    // A loss of a tiny scale (a mean over a large batch): the adjoint's solve is scaled to
    // unit size, so the gradients keep their relative accuracy (unscaled, λ = 0 passed the
    // stopping test at once and every gradient was 0).
    {
        let a = Var::new(&a0, dev)?;
        let b = Var::new(&b0, dev)?;
        let (av, bv) = (a.clone(), b.clone());
        let f = with_params(
            move |_t: f64, y: &Tensor| av.as_tensor() - y.mul(bv.as_tensor())?,
            vec![a.clone(), b.clone()],
        );
        let y0 = Tensor::new(&[0.0f64, 0.0, 0.0], dev)?;
        let opts = SolveOptions::default().tolerances(1e-6, 1e-6);
        let sol = odeint_steady_state_adjoint(&f, &y0, 0.0, &opts, &SteadyStateOptions::new(1e3))?;
        let grads = ((&sol.y * &w)?.sum_all()? * 1e-9)?.backward()?;
        let ga = grads.get(&a).expect("a").to_vec1::<f64>()?;
        let wv = w.to_vec1::<f64>()?;
        for i in 0..3 {
            let want = 1e-9 * wv[i] / b0[i];
            assert!(
                (ga[i] - want).abs() < 1e-3 * want.abs(),
                "tiny loss: dL/da[{i}] = {} not {want}",
                ga[i]
            );
        }
    }
    // Fixed steps, and a step grid (from t0 = 5; the adjoint's solve runs from 0 on the
    // grid shifted to start there): the same gradients.
    let a = Var::new(&a0, dev)?;
    let b = Var::new(&b0, dev)?;
    let (av, bv) = (a.clone(), b.clone());
    let f = with_params(
        move |_t: f64, y: &Tensor| av.as_tensor() - y.mul(bv.as_tensor())?,
        vec![a.clone(), b.clone()],
    );
    let y0 = Tensor::new(&[0.0f64, 0.0, 0.0], dev)?;
    let grid: Vec<f64> = (0..=4000).map(|i| 5.0 + i as f64 * 0.025).collect();
    for opts in [
        SolveOptions::default().method(Method::Rk4).step_size(0.05),
        SolveOptions::default().method(Method::Rk4).step_grid(grid),
    ] {
        let ss = SteadyStateOptions::new(105.0).tolerances(1e-9, 1e-11);
        let sol = odeint_steady_state_adjoint(&f, &y0, 5.0, &opts, &ss)?;
        let grads = (&sol.y * &w)?.sum_all()?.backward()?;
        let ga = grads.get(&a).expect("a").to_vec1::<f64>()?;
        let gb = grads.get(&b).expect("b").to_vec1::<f64>()?;
        let wv = w.to_vec1::<f64>()?;
        for i in 0..3 {
            let (want_a, want_b) = (wv[i] / b0[i], -wv[i] * a0[i] / (b0[i] * b0[i]));
            assert!(
                (ga[i] - want_a).abs() < 1e-7 * want_a.abs().max(1.0)
                    && (gb[i] - want_b).abs() < 1e-7 * want_b.abs().max(1.0),
                "{:?}: {ga:?} {gb:?}",
                opts.step
            );
        }
    }
    Ok(())
}

/// `dy/dt = tanh(y Wᵀ + c) − y` on a batch of 4 starts of 3 components (they all come to the
/// same rest: `W` is a contraction), `L = Σ v ⊙ y*`: the gradients to `W` and `c` match
/// central differences of the (detached) steady-state solve, and backprop through `odeint`
/// to `t = 40`, where the transient has died out, to the solves' accuracy.
fn equilibrium_case(dev: &Device) -> Result<()> {
    let w0 = [0.3f64, -0.2, 0.1, 0.25, 0.1, -0.3, -0.1, 0.4, 0.2];
    let c0 = [0.5f64, -1.0, 0.8];
    let w = Var::from_tensor(&Tensor::new(&w0, dev)?.reshape((3, 3))?)?;
    let c = Var::new(&c0, dev)?;
    let field = |w: &Tensor, c: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        y.matmul(&w.t()?)?.broadcast_add(c)?.tanh()? - y
    };
    let (wv, cv) = (w.clone(), c.clone());
    let f = with_params(
        move |_t: f64, y: &Tensor| field(wv.as_tensor(), cv.as_tensor(), y),
        vec![w.clone(), c.clone()],
    );
    let y0 = Tensor::new(
        &[
            [0.0f64, 0.0, 0.0],
            [1.0, -1.0, 0.5],
            [-2.0, 0.3, 1.0],
            [0.5, 0.5, -0.5],
        ],
        dev,
    )?;
    let v = Tensor::new(&[1.0f64, -0.5, 2.0], dev)?;
    let loss = |y: &Tensor| -> candle_core::Result<Tensor> { y.broadcast_mul(&v)?.sum_all() };
    let opts = SolveOptions::default().tolerances(1e-10, 1e-12);
    let ss = SteadyStateOptions::new(1e3);
    let sol = odeint_steady_state_adjoint(&f, &y0, 0.0, &opts, &ss)?;
    let grads = loss(&sol.y)?.backward()?;
    let gw = grads.get(&w).expect("W").flatten_all()?.to_vec1::<f64>()?;
    let gc = grads.get(&c).expect("c").to_vec1::<f64>()?;
    println!(
        "equilibrium: t = {:.2}, forward {:?}, backward {:?}",
        sol.t,
        sol.stats.forward(),
        sol.stats.backward()
    );

    // Central differences of the steady state.
    let value = |w: &[f64], c: &[f64]| -> Result<f64> {
        let wt = Tensor::new(w, dev)?.reshape((3, 3))?;
        let ct = Tensor::new(c, dev)?;
        let g = move |_t: f64, y: &Tensor| field(&wt, &ct, y);
        let s = odeint_steady_state(&g, &y0, 0.0, &opts, &ss)?;
        Ok(loss(&s.y)?.to_scalar::<f64>()?)
    };
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for i in 0..9 {
        let (mut up, mut down) = (w0, w0);
        up[i] += h;
        down[i] -= h;
        let fd = (value(&up, &c0)? - value(&down, &c0)?) / (2.0 * h);
        worst = worst.max((gw[i] - fd).abs());
    }
    for i in 0..3 {
        let (mut up, mut down) = (c0, c0);
        up[i] += h;
        down[i] -= h;
        let fd = (value(&w0, &up)? - value(&w0, &down)?) / (2.0 * h);
        worst = worst.max((gc[i] - fd).abs());
    }
    println!("equilibrium: worst difference to central differences {worst:e}");
    assert!(worst < 1e-6, "against central differences: {worst:e}");

    // Backprop through a solve long enough to be at rest (e^{−40 · 0.5} of the start).
    let long = odeint(&f, &y0, &[0.0, 40.0], &opts)?;
    let grads = loss(&long.last()?)?.backward()?;
    let bw = grads.get(&w).expect("W").flatten_all()?.to_vec1::<f64>()?;
    let bc = grads.get(&c).expect("c").to_vec1::<f64>()?;
    let gap = gw
        .iter()
        .zip(&bw)
        .chain(gc.iter().zip(&bc))
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    println!("equilibrium: backprop through odeint to t = 40 differs by {gap:e}");
    assert!(gap < 1e-6, "against backprop: {gap:e}");
    Ok(())
}

fn errors_case(dev: &Device) -> Result<()> {
    // Parameters of another dtype than the state.
    let p = Var::new(&[1.0f32], dev)?;
    let pv = p.clone();
    let f = with_params(
        move |_t: f64, y: &Tensor| {
            y.broadcast_mul(&pv.as_tensor().to_dtype(DType::F64)?)?
                .neg()
        },
        vec![p.clone()],
    );
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let opts = SolveOptions::default();
    let err = odeint_steady_state_adjoint(&f, &y0, 0.0, &opts, &SteadyStateOptions::new(10.0))
        .unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::InvalidOptions(_))
        ),
        "{err}"
    );
    // No steady state by t_max: refused in the forward solve.
    let q = Var::new(&[1.0f64], dev)?;
    let qv = q.clone();
    let grow = with_params(
        move |_t: f64, y: &Tensor| y.broadcast_mul(qv.as_tensor()),
        vec![q.clone()],
    );
    let err = odeint_steady_state_adjoint(&grow, &y0, 0.0, &opts, &SteadyStateOptions::new(5.0))
        .unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::NoSteadyState { .. })
        ),
        "{err}"
    );
    Ok(())
}

candle_core::test_device!(
    closed_form_case,
    closed_form_cpu,
    closed_form_cuda,
    closed_form_metal
);
candle_core::test_device!(
    equilibrium_case,
    equilibrium_cpu,
    equilibrium_cuda,
    equilibrium_metal
);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);

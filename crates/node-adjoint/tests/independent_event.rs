//! The adjoint of a batch of independent problems each stopped at its own event
//! (`odeint_independent_event_adjoint`): event times, states and gradients (to `y0`, the
//! field's parameters and the event function's) against backprop through
//! `odeint_independent_event`, with samples of their own spans (one backwards), one that
//! reaches its end without an event and one whose event lies at its start; the errors.

#[path = "common/time_mlp.rs"]
mod time_mlp;

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use node_adjoint::{odeint_independent_event_adjoint, with_batch_params};
use node_solvers::{odeint_independent_event, EventOptions, Method, SolveOptions, SolverError};
use time_mlp::max_rel;

/// A ball with quadratic drag and a wind that varies in time, `[B, 2]` = (height, velocity),
/// a drag coefficient per sample (`[B, 1]`): `h' = v`, `v' = −9.81 − k v |v| + w sin t`.
fn field(t: &Tensor, y: &Tensor, k: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let b = y.dim(0)?;
    let v = y.narrow(1, 1, 1)?;
    let wind = t.reshape((b, 1))?.sin()?.broadcast_mul(w)?;
    let dv = (((v.abs()? * &v)?.broadcast_mul(k)?.neg()? - 9.81)? + wind)?;
    Tensor::cat(&[v, dv], 1)
}

/// The ground `h = 0` and a speed limit `v = −v_max` (`v_max` trained, shared).
fn conditions(y: &Tensor, vmax: &Tensor) -> candle_core::Result<Tensor> {
    let h = y.narrow(1, 0, 1)?;
    let v = y.narrow(1, 1, 1)?;
    Tensor::cat(&[h, v.broadcast_add(vmax)?], 1)
}

fn spans() -> Vec<[f64; 2]> {
    vec![
        [0.0, 10.0],
        [1.0, 20.0],
        [-2.0, 10.0],
        [0.0, 1.0],
        [0.0, -5.0],
        // Its crossing, 1e-20 after the start, is within the time's precision of it.
        [1000.0, 1010.0],
    ]
}

fn start(dev: &Device) -> Result<Var> {
    Ok(Var::new(
        &[
            [2.0f64, 0.0],
            [10.0, 3.0],
            [30.0, -1.0],
            [50.0, 0.0],
            [1.0, 0.0],
            [1e-20, -1.0],
        ],
        dev,
    )?)
}

fn against_backprop(dev: &Device) -> Result<()> {
    let k = Var::new(&[[0.05f64], [0.2], [0.02], [0.1], [0.3], [0.1]], dev)?;
    let w = Var::new(&[0.7f64], dev)?;
    let vmax = Var::new(&[13.0f64], dev)?;
    let weights = Tensor::new(
        &[
            [0.3f64, -0.7],
            [1.1, 0.4],
            [-0.5, 0.9],
            [0.8, 0.2],
            [0.6, -1.2],
            [0.4, 0.5],
        ],
        dev,
    )?;
    let tmul = Tensor::new(&[1.0f64, -0.5, 2.0, 0.7, 1.5, 0.9], dev)?;
    let (kf, wf) = (k.clone(), w.clone());
    let f = with_batch_params(
        move |t: &Tensor, y: &Tensor| field(t, y, kf.as_tensor(), wf.as_tensor()),
        vec![k.clone(), w.clone()],
    );
    let g = |_t: &Tensor, y: &Tensor| conditions(y, vmax.as_tensor());
    let ev = EventOptions::default();
    let loss = |time: &Tensor, y: &Tensor| -> Result<Tensor> {
        Ok(((time * &tmul)?.sum_all()? + (y * &weights)?.sum_all()?)?)
    };
    for (rtol, tol) in [(1e-10, 1e-7), (1e-6, 1e-3)] {
        let opts = SolveOptions::default().tolerances(rtol, rtol * 1e-2);
        let y0 = start(dev)?;
        let adj =
            odeint_independent_event_adjoint(&f, y0.as_tensor(), &spans(), &g, &opts, &ev, &opts)?;
        let bp = odeint_independent_event(&f, y0.as_tensor(), &spans(), &g, &opts, &ev)?;
        assert_eq!(adj.t, bp.t);
        assert_eq!(adj.event, bp.event);
        // Ground, ground, the speed limit, none, ground backwards, ground at its start.
        assert_eq!(
            adj.event,
            vec![Some(0), Some(0), Some(1), None, Some(0), Some(0)]
        );
        assert_eq!(adj.t[5], 1000.0);
        assert!(max_rel(&adj.y, &bp.y)? < 1e-14);
        let ga = loss(&adj.time, &adj.y)?.backward()?;
        let gb = loss(&bp.time, &bp.y)?.backward()?;
        assert!(adj.stats.backward().nfe > 0);
        for (var, what) in [
            (&y0, "y0"),
            (&k, "drag"),
            (&w, "wind"),
            (&vmax, "speed limit"),
        ] {
            let a = ga.get(var.as_tensor()).expect("an adjoint gradient");
            let b = gb.get(var.as_tensor()).expect("a backprop gradient");
            let d = max_rel(a, b)?;
            assert!(
                d < tol,
                "rtol {rtol}: {what}'s gradient {d} off: {a} against {b}"
            );
        }
    }
    Ok(())
}

candle_core::test_device!(
    against_backprop,
    against_backprop_cpu,
    against_backprop_cuda,
    against_backprop_metal
);

fn solver_error(e: &candle_core::Error) -> SolverError {
    SolverError::find(e)
        .unwrap_or_else(|| panic!("not a solver error: {e}"))
        .clone()
}

#[test]
fn errors() -> Result<()> {
    let dev = &Device::Cpu;
    let k = Var::new(&[[0.05f64], [0.2], [0.02], [0.1], [0.3], [0.1]], dev)?;
    let w = Var::new(&[0.7f64], dev)?;
    let vmax = Tensor::new(&[13.0f64], dev)?;
    let (kf, wf) = (k.clone(), w.clone());
    let f = with_batch_params(
        move |t: &Tensor, y: &Tensor| field(t, y, kf.as_tensor(), wf.as_tensor()),
        vec![k.clone(), w.clone()],
    );
    let g = |_t: &Tensor, y: &Tensor| conditions(y, &vmax);
    let y0 = start(dev)?;
    let opts = SolveOptions::default();
    let ev = EventOptions::default();
    // The reverse solve's method is refused before anything runs.
    for bad in [
        opts.clone().method(Method::Kvaerno5),
        opts.clone().method(Method::Rk4).fixed_steps(10),
    ] {
        let e =
            odeint_independent_event_adjoint(&f, y0.as_tensor(), &spans(), &g, &opts, &ev, &bad)
                .expect_err("a reverse method it cannot take");
        assert!(matches!(solver_error(&e), SolverError::InvalidOptions(_)));
    }
    // The forward solve's errors.
    let e =
        odeint_independent_event_adjoint(&f, y0.as_tensor(), &spans()[..2], &g, &opts, &ev, &opts)
            .expect_err("two spans for six samples");
    assert!(matches!(solver_error(&e), SolverError::InvalidTimes(_)));
    Ok(())
}

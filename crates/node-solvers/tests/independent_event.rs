//! A batch of independent problems, each stopped at its own event
//! (`odeint_independent_event`): each sample's event time, condition, state, steps and
//! gradients are those of `odeint_event` on it alone; exact landing times and their
//! gradients; crossing directions and conditions zero at the start; counts; the errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::{max_abs_diff, solver_error};
use node_solvers::{
    independent_event_gradients, locate_independent_event, odeint_event, odeint_independent_event,
    Crossing, EventOptions, Method, SolveOptions, SolverError,
};

const G: f64 = 9.81;

/// A falling ball with quadratic drag, `[B, 2]` = (height, velocity), a drag coefficient per
/// sample (`[B, 1]`): `h' = v`, `v' = −g − k v |v|`.
fn drag(y: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
    let v = y.narrow(1, 1, 1)?;
    let dv = ((v.abs()? * &v)?.broadcast_mul(k)?.neg()? - G)?;
    Tensor::cat(&[v, dv], 1)
}

/// Two conditions a sample: the ground (`h = 0`) and a speed limit (`v = −v_max`, per sample).
fn conditions(y: &Tensor, vmax: &Tensor) -> candle_core::Result<Tensor> {
    let h = y.narrow(1, 0, 1)?;
    let v = y.narrow(1, 1, 1)?;
    Tensor::cat(&[h, v.broadcast_add(vmax)?], 1)
}

/// Five balls: heights, velocities, drags, speed limits and spans of their own (one span ends
/// before any event, one runs backwards in time).
struct Balls {
    y0: Vec<[f64; 2]>,
    k: Vec<f64>,
    vmax: Vec<f64>,
    spans: Vec<[f64; 2]>,
}

fn balls() -> Balls {
    Balls {
        y0: vec![
            [2.0, 0.0],
            [10.0, 3.0],
            [30.0, -1.0],
            [50.0, 0.0],
            [1.0, 0.0],
        ],
        k: vec![0.05, 0.2, 0.02, 0.1, 0.3],
        vmax: vec![100.0, 100.0, 15.0, 100.0, 100.0],
        spans: vec![
            [0.0, 10.0],
            [1.0, 20.0],
            [-2.0, 10.0],
            [0.0, 1.0],
            [0.0, -5.0],
        ],
    }
}

impl Balls {
    /// `y0` (`[5, 2]`), the drags and the speed limits (`[5, 1]` each) as tensors.
    fn tensors(&self, dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        let flat: Vec<f64> = self.y0.iter().flatten().copied().collect();
        Ok((
            Tensor::from_vec(flat, (self.y0.len(), 2), dev)?,
            column(&self.k, dev)?,
            column(&self.vmax, dev)?,
        ))
    }
}

fn column(v: &[f64], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, (v.len(), 1), dev)?)
}

fn matches_event_alone(dev: &Device) -> Result<()> {
    let p = balls();
    let (y0, k, vmax) = p.tensors(dev)?;
    let (y0, k) = (Var::from_tensor(&y0)?, Var::from_tensor(&k)?);
    let f = |_t: &Tensor, y: &Tensor| drag(y, k.as_tensor());
    let g = |_t: &Tensor, y: &Tensor| conditions(y, &vmax);
    let ev = EventOptions::default();
    let weights = Tensor::new(
        &[
            [0.3f64, -0.7],
            [1.1, 0.4],
            [-0.5, 0.9],
            [0.8, 0.2],
            [0.6, -1.2],
        ],
        dev,
    )?;
    // adaptive_heun: a Hermite dense output, which needs f(t1, y1) kept with the step.
    for (method, rtol) in [
        (Method::Dopri5, 1e-8),
        (Method::Tsit5, 1e-8),
        (Method::Bosh3, 1e-8),
        (Method::AdaptiveHeun, 1e-5),
    ] {
        let opts = SolveOptions::default()
            .method(method)
            .tolerances(rtol, rtol * 1e-2);
        let sol = odeint_independent_event(&f, y0.as_tensor(), &p.spans, &g, &opts, &ev)?;
        assert_eq!(sol.y.dims(), &[5, 2]);
        assert_eq!(sol.time.dims(), &[5]);
        // Ground for the slow balls, the speed limit for the third, nothing in the fourth's
        // short span, the ground backwards in time for the fifth.
        assert_eq!(sol.event, vec![Some(0), Some(0), Some(1), None, Some(0)]);
        assert_eq!(sol.t[3], 1.0);
        assert!(sol.t[4] < 0.0);
        let loss = |time: &Tensor, y: &Tensor| -> Result<Tensor> {
            Ok((time.sum_all()? + (y * &weights)?.sum_all()?)?)
        };
        let grads = loss(&sol.time, &sol.y)?.backward()?;
        let times = sol.time.to_vec1::<f64>()?;
        for (i, &time) in times.iter().enumerate() {
            let ki = Var::from_tensor(&k.as_tensor().narrow(0, i, 1)?.detach())?;
            let vi = vmax.narrow(0, i, 1)?;
            let yi = Var::from_tensor(&y0.as_tensor().narrow(0, i, 1)?.detach())?;
            let fi = |_t: f64, y: &Tensor| drag(y, ki.as_tensor());
            let gi = |_t: f64, y: &Tensor| conditions(y, &vi);
            let [t0, t_max] = p.spans[i];
            let one = odeint_event(&fi, yi.as_tensor(), t0, t_max, &gi, &opts, &ev)?;
            assert_eq!(sol.t[i], one.t, "{method} sample {i}: its event time");
            assert_eq!(time, one.t, "{method} sample {i}: the time tensor");
            assert_eq!(sol.event[i], one.event, "{method} sample {i}");
            let s = sol.samples[i];
            assert_eq!(
                (s.accepted_steps, s.rejected_steps),
                (one.stats.accepted_steps, one.stats.rejected_steps),
                "{method} sample {i}: its own steps"
            );
            assert_eq!(
                sol.y.narrow(0, i, 1)?.to_vec2::<f64>()?,
                one.y.to_vec2::<f64>()?,
                "{method} sample {i}: the state at its event"
            );
            // The same gradients as the solve alone.
            let l1 = (one.time.sum_all()? + (&one.y * weights.narrow(0, i, 1)?)?.sum_all()?)?;
            let g1 = l1.backward()?;
            for (batch, own, what) in [
                (
                    grads.get(y0.as_tensor()).map(|g| g.narrow(0, i, 1)),
                    g1.get(yi.as_tensor()).cloned(),
                    "y0",
                ),
                (
                    grads.get(k.as_tensor()).map(|g| g.narrow(0, i, 1)),
                    g1.get(ki.as_tensor()).cloned(),
                    "drag",
                ),
            ] {
                let batch = batch.expect("a batch gradient")?;
                let own = own.expect("a gradient alone");
                let d = max_abs_diff(&batch, &own)?;
                assert!(d < 1e-12, "{method} sample {i}: {what}'s gradient {d} off");
            }
        }
    }
    Ok(())
}

candle_core::test_device!(
    matches_event_alone,
    matches_event_alone_cpu,
    matches_event_alone_cuda,
    matches_event_alone_metal
);

/// Balls thrown without drag: `t* = (v0 + s)/g_b` with `s = √(v0² + 2 g_b h0)`, which dopri5
/// integrates exactly (the flight is quadratic in `t`), so the event times and their
/// gradients to `h0`, `v0` and each sample's gravity `g_b` are checked against the closed
/// form to round-off: `∂t*/∂h0 = 1/s`, `∂t*/∂v0 = (1 + v0/s)/g_b`,
/// `∂t*/∂g_b = h0/(s g_b) − t*/g_b`; the velocity at the event `v* = v0 − g_b t* = −s`.
fn ballistic(dev: &Device) -> Result<()> {
    let h0 = [1.0f64, 2.0, 5.0, 0.5];
    let v0 = [0.0f64, 3.0, -2.0, 1.0];
    let gs = [9.81f64, 1.62, 3.71, 24.8];
    let flat: Vec<f64> = h0.iter().zip(&v0).flat_map(|(h, v)| [*h, *v]).collect();
    let y0 = Var::from_tensor(&Tensor::from_vec(flat, (4, 2), dev)?)?;
    let gv = Var::from_tensor(&column(&gs, dev)?)?;
    let f = |_t: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        let v = y.narrow(1, 1, 1)?;
        Tensor::cat(&[v.clone(), gv.as_tensor().neg()?], 1)
    };
    let height = |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 1);
    let opts = SolveOptions::default();
    let sol = odeint_independent_event(
        &f,
        y0.as_tensor(),
        &[[0.0, 100.0]],
        &height,
        &opts,
        &EventOptions::default(),
    )?;
    // Loss: Σ t* + Σ v* (so each v* = −s contributes its own gradient).
    let v_end = sol.y.narrow(1, 1, 1)?;
    let grads = (sol.time.sum_all()? + v_end.sum_all()?)?.backward()?;
    let gy0 = grads
        .get(y0.as_tensor())
        .expect("y0's gradient")
        .to_vec2::<f64>()?;
    let gg = grads
        .get(gv.as_tensor())
        .expect("g's gradient")
        .to_vec2::<f64>()?;
    let vs = v_end.to_vec2::<f64>()?;
    for i in 0..4 {
        let (h, v, g) = (h0[i], v0[i], gs[i]);
        let s = (v * v + 2.0 * g * h).sqrt();
        let t = (v + s) / g;
        assert!(
            (sol.t[i] - t).abs() < 1e-12 * t,
            "sample {i}: {} against {t}",
            sol.t[i]
        );
        assert!(
            (vs[i][0] + s).abs() < 1e-12 * s,
            "sample {i}: v* {}",
            vs[i][0]
        );
        // v* = −s: ∂/∂h0 = −g/s, ∂/∂v0 = −v/s, ∂/∂g = −h/s.
        let want = [
            1.0 / s - g / s,
            (1.0 + v / s) / g - v / s,
            h / (s * g) - t / g - h / s,
        ];
        let got = [gy0[i][0], gy0[i][1], gg[i][0]];
        for (w, (a, what)) in want.iter().zip(got.iter().zip(["h0", "v0", "g"])) {
            assert!(
                (a - w).abs() < 1e-10 * w.abs().max(1.0),
                "sample {i}: ∂L/∂{what} {a} against {w}"
            );
        }
    }
    // f32: the same times to its precision.
    let f32_f = |_t: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        let v = y.narrow(1, 1, 1)?;
        Tensor::cat(&[v.clone(), gv.as_tensor().to_dtype(DType::F32)?.neg()?], 1)
    };
    let sol = odeint_independent_event(
        &f32_f,
        &y0.as_tensor().to_dtype(DType::F32)?,
        &[[0.0, 100.0]],
        &height,
        &SolveOptions::default().tolerances(1e-5, 1e-6),
        &EventOptions::default(),
    )?;
    assert_eq!(sol.time.dtype(), DType::F32);
    for i in 0..4 {
        let s = (v0[i] * v0[i] + 2.0 * gs[i] * h0[i]).sqrt();
        let t = (v0[i] + s) / gs[i];
        assert!(
            (sol.t[i] - t).abs() < 1e-5 * t,
            "f32 sample {i}: {} against {t}",
            sol.t[i]
        );
    }
    Ok(())
}

candle_core::test_device!(ballistic, ballistic_cpu, ballistic_cuda, ballistic_metal);

/// Harmonic oscillators `y = (cos ωt, −sin ωt)`, a frequency per sample, watched on the first
/// component: rising crossings only, falling ones only, and a sample starting on the surface.
fn directions(dev: &Device) -> Result<()> {
    let omega = [1.0f64, 2.5, 7.0];
    let w = column(&omega, dev)?;
    let f = |_t: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        let a = y.narrow(1, 0, 1)?;
        let b = y.narrow(1, 1, 1)?;
        Tensor::cat(&[b.broadcast_mul(&w)?, a.broadcast_mul(&w)?.neg()?], 1)
    };
    let g = |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 1);
    let opts = SolveOptions::default().tolerances(1e-10, 1e-12);
    let y0 = Tensor::new(&[[1.0f64, 0.0], [1.0, 0.0], [1.0, 0.0]], dev)?;
    let pi = std::f64::consts::PI;
    for (crossing, first) in [
        (Crossing::Either, 0.5 * pi),
        (Crossing::Falling, 0.5 * pi),
        (Crossing::Rising, 1.5 * pi),
    ] {
        let ev = EventOptions::default().crossing(crossing);
        let sol = odeint_independent_event(&f, &y0, &[[0.0, 20.0]], &g, &opts, &ev)?;
        for (i, om) in omega.iter().enumerate() {
            let want = first / om;
            assert!(
                (sol.t[i] - want).abs() < 1e-8,
                "{crossing:?} ω = {om}: {} against {want}",
                sol.t[i]
            );
        }
    }
    // Starting on the surface (y = (−sin ωt, −cos ωt)): it watches once g is non-zero, and
    // stops at the next crossing, π/ω; a sample beside it starting off the surface is not
    // affected.
    let y0 = Tensor::new(&[[0.0f64, -1.0], [1.0, 0.0], [0.0, -1.0]], dev)?;
    let sol =
        odeint_independent_event(&f, &y0, &[[0.0, 20.0]], &g, &opts, &EventOptions::default())?;
    for (i, want) in [pi / omega[0], 0.5 * pi / omega[1], pi / omega[2]]
        .iter()
        .enumerate()
    {
        assert!(
            (sol.t[i] - want).abs() < 1e-8,
            "sample {i}: {} against {want}",
            sol.t[i]
        );
    }
    // The returned time is on the side the crossing starts from: g keeps its old sign there.
    let y = sol.y.narrow(1, 0, 1)?.to_vec2::<f64>()?;
    assert!(y[0][0] <= 0.0 && y[1][0] >= 0.0 && y[2][0] <= 0.0, "{y:?}");
    Ok(())
}

candle_core::test_device!(
    directions,
    directions_cpu,
    directions_cuda,
    directions_metal
);

/// Counts: a search for a crossing reads its trials with the batch's later steps, so only
/// the searches left when no sample steps any more read on their own (once per iteration
/// for all of them); one read more for the gradients' rates; `locate_independent_event` has
/// neither the rate's read nor its evaluation.
#[test]
fn counts() -> Result<()> {
    let dev = &Device::Cpu;
    let p = balls();
    let (y0, k, vmax) = p.tensors(dev)?;
    let f = |_t: &Tensor, y: &Tensor| drag(y, &k);
    let g = |_t: &Tensor, y: &Tensor| conditions(y, &vmax);
    let opts = SolveOptions::default().max_step(0.05).first_step(0.05);
    let ev = EventOptions::default();
    let found = locate_independent_event(&f, &y0, &p.spans, &g, &opts, &ev)?;
    // Reads: one for g(t0, y0), one to check the first step, one a batch step; the rest are
    // searches for crossings with no sample left stepping to read with.
    let alone_reads = found.host_reads - found.batch_steps - 2;
    let mut searching_alone = vec![];
    for i in 0..5 {
        let ki = k.narrow(0, i, 1)?;
        let vi = vmax.narrow(0, i, 1)?;
        let fi = |_t: f64, y: &Tensor| drag(y, &ki);
        let gi = |_t: f64, y: &Tensor| conditions(y, &vi);
        let yi = y0.narrow(0, i, 1)?;
        let [t0, t_max] = p.spans[i];
        let one = node_solvers::locate_event(&fi, &yi, t0, t_max, &gi, &opts, &ev)?;
        let s = found.samples[i];
        assert_eq!(s.accepted_steps, one.stats.accepted_steps, "sample {i}");
        searching_alone
            .push(one.stats.host_reads - one.stats.accepted_steps - one.stats.rejected_steps - 2);
    }
    // Ball 1 lands last (48 steps; the others stop within 36), so its search is the only one
    // that reads on its own: the others' trials ride on the batch's steps.
    assert!(found.samples[1].accepted_steps > 40);
    assert_eq!(
        alone_reads, searching_alone[1],
        "reads of searches alone, against {searching_alone:?} for each ball alone"
    );
    // Three balls in free fall from nearly the same height, on the same steps (the flight is
    // exact, so every step is `max_step`): all cross in one step, and locate in as many
    // reads as the slowest of them alone.
    let free = |_t: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        let v = y.narrow(1, 1, 1)?;
        Tensor::cat(&[v.clone(), (v.zeros_like()? - G)?], 1)
    };
    let height = |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 1);
    let near = Tensor::new(&[[1.0f64, 0.0], [1.01, 0.0], [1.02, 0.0]], dev)?;
    let found3 = locate_independent_event(&free, &near, &[[0.0, 5.0]], &height, &opts, &ev)?;
    let mut each = vec![];
    for i in 0..3 {
        let fi = |_t: f64, y: &Tensor| {
            let v = y.narrow(1, 1, 1)?;
            Tensor::cat(&[v.clone(), (v.zeros_like()? - G)?], 1)
        };
        let hi = |_t: f64, y: &Tensor| y.narrow(1, 0, 1);
        let one =
            node_solvers::locate_event(&fi, &near.narrow(0, i, 1)?, 0.0, 5.0, &hi, &opts, &ev)?;
        assert_eq!(one.t, found3.t[i]);
        each.push(one.stats.host_reads - one.stats.accepted_steps - one.stats.rejected_steps - 2);
    }
    assert!(found3
        .samples
        .iter()
        .all(|s| s.accepted_steps == found3.batch_steps));
    assert_eq!(
        found3.host_reads - found3.batch_steps - 2,
        *each.iter().max().expect("three"),
        "reads locating in one step, against {each:?} alone"
    );
    // Without a gradient, the differentiable solve computes nothing more.
    let sol = odeint_independent_event(&f, &y0, &p.spans, &g, &opts, &ev)?;
    assert_eq!((sol.host_reads, sol.nfe), (found.host_reads, found.nfe));
    // With one: an evaluation and a read more.
    let y0v = Var::from_tensor(&y0)?;
    let sol = odeint_independent_event(&f, y0v.as_tensor(), &p.spans, &g, &opts, &ev)?;
    assert_eq!(
        (sol.host_reads, sol.nfe),
        (found.host_reads + 1, found.nfe + 1)
    );
    // The dopri5 batch: 6 evaluations a step, one for f(t0, y0).
    assert_eq!(found.nfe, 1 + 6 * found.batch_steps);
    Ok(())
}

#[test]
fn errors() -> Result<()> {
    let dev = &Device::Cpu;
    let p = balls();
    let (y0, k, vmax) = p.tensors(dev)?;
    let f = |_t: &Tensor, y: &Tensor| drag(y, &k);
    let g = |_t: &Tensor, y: &Tensor| conditions(y, &vmax);
    let opts = SolveOptions::default();
    let ev = EventOptions::default();
    let err = |r: candle_core::Result<node_solvers::IndependentEventSolution>| {
        solver_error(&r.expect_err("an error"))
    };
    // Spans: neither one nor one per sample; an empty one, named.
    assert!(matches!(
        err(odeint_independent_event(
            &f,
            &y0,
            &p.spans[..2],
            &g,
            &opts,
            &ev
        )),
        SolverError::InvalidTimes(_)
    ));
    let mut spans = p.spans.clone();
    spans[2] = [1.0, 1.0];
    let e = odeint_independent_event(&f, &y0, &spans, &g, &opts, &ev).expect_err("empty span");
    assert!(format!("{e:#}").contains("sample 2"), "{e:#}");
    // Options.
    assert!(matches!(
        err(odeint_independent_event(
            &f,
            &y0,
            &p.spans,
            &g,
            &opts,
            &ev.time_tol(-1.0)
        )),
        SolverError::InvalidOptions(_)
    ));
    assert!(matches!(
        err(odeint_independent_event(
            &f,
            &y0,
            &p.spans,
            &g,
            &opts.clone().method(Method::Kvaerno5),
            &ev
        )),
        SolverError::InvalidOptions(_)
    ));
    // Event functions: no batch dimension, no condition, an integer dtype, a changing count.
    let whole = |_t: &Tensor, y: &Tensor| y.sum_all();
    assert!(matches!(
        err(odeint_independent_event(
            &f, &y0, &p.spans, &whole, &opts, &ev
        )),
        SolverError::OutputMismatch(_)
    ));
    let none = |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 0);
    assert!(matches!(
        err(odeint_independent_event(
            &f, &y0, &p.spans, &none, &opts, &ev
        )),
        SolverError::OutputMismatch(_)
    ));
    let ints = |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 1)?.to_dtype(DType::U32);
    assert!(matches!(
        err(odeint_independent_event(
            &f, &y0, &p.spans, &ints, &opts, &ev
        )),
        SolverError::OutputMismatch(_)
    ));
    let calls = std::cell::Cell::new(0);
    let growing = |_t: &Tensor, y: &Tensor| {
        calls.set(calls.get() + 1);
        if calls.get() == 1 {
            y.narrow(1, 0, 1)
        } else {
            Ok(y.clone())
        }
    };
    assert!(matches!(
        err(odeint_independent_event(
            &f, &y0, &p.spans, &growing, &opts, &ev
        )),
        SolverError::OutputMismatch(_)
    ));
    // A sample whose g is NaN at the start, named.
    let nan_at_3 = |_t: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        let mask = Tensor::new(&[[0.0f64], [0.0], [0.0], [f64::NAN], [0.0]], y.device())?;
        y.narrow(1, 0, 1)? + mask
    };
    let e = odeint_independent_event(&f, &y0, &p.spans, &nan_at_3, &opts, &ev).expect_err("NaN");
    assert!(matches!(solver_error(&e), SolverError::NonFinite { .. }));
    assert!(format!("{e:#}").contains("sample 3"), "{e:#}");
    // A crossing g does not move through has no time derivative: named by its sample.
    let yv = Var::new(&[[0.0f64, 1.0], [0.0, 0.0]], dev)?;
    let f2 = |_t: &Tensor, y: &Tensor| y.ones_like();
    let flat_at_1 = |_t: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        let scale = Tensor::new(&[[1.0f64], [0.0]], y.device())?;
        y.narrow(1, 0, 1)?.broadcast_mul(&scale)
    };
    let e = independent_event_gradients(
        &f2,
        &flat_at_1,
        &[1.0, 1.0],
        &[Some(0), Some(0)],
        yv.as_tensor(),
    )
    .expect_err("not transversal");
    assert!(matches!(
        solver_error(&e),
        SolverError::EventNotTransversal { t: 1.0, .. }
    ));
    assert!(format!("{e:#}").contains("sample 1"), "{e:#}");
    // A condition out of range.
    assert!(matches!(
        solver_error(
            &independent_event_gradients(
                &f2,
                &flat_at_1,
                &[1.0, 1.0],
                &[Some(0), Some(1)],
                yv.as_tensor()
            )
            .expect_err("out of range")
        ),
        SolverError::InvalidOptions(_)
    ));
    Ok(())
}

/// Every crossing of every sample (`odeint_independent_events`): damped oscillators with a
/// frequency, damping and span of their own (one backwards), watched on both components:
/// each sample's crossings (times, conditions, states), its state at `t_max` and its steps
/// are `odeint_events`' on it alone, bit for bit, and so are the gradients of the sum of
/// every event time and state to `y0` and the frequencies.
fn every_crossing_alone(dev: &Device) -> Result<()> {
    let omega = Var::new(&[[1.0f64], [2.5], [7.0], [0.7]], dev)?;
    let damp = Tensor::new(&[[0.1f64], [0.0], [0.3], [0.05]], dev)?;
    let y0 = Var::new(&[[1.0f64, 0.0], [0.5, 0.5], [0.0, 1.0], [-1.0, 0.2]], dev)?;
    let spans = [[0.0, 10.0], [1.0, 6.0], [0.0, -4.0], [2.0, 9.0]];
    let field = |y: &Tensor, w: &Tensor, c: &Tensor| -> candle_core::Result<Tensor> {
        let (a, b) = (y.narrow(1, 0, 1)?, y.narrow(1, 1, 1)?);
        let da = b.broadcast_mul(w)?;
        let db = (a.broadcast_mul(w)?.neg()? - b.broadcast_mul(c)?)?;
        Tensor::cat(&[da, db], 1)
    };
    let f = |_t: &Tensor, y: &Tensor| field(y, omega.as_tensor(), &damp);
    let g = |_t: &Tensor, y: &Tensor| Ok(y.clone());
    let opts = SolveOptions::default().tolerances(1e-9, 1e-11);
    let ev = EventOptions::default();
    let sol = node_solvers::odeint_independent_events(&f, y0.as_tensor(), &spans, &g, &opts, &ev)?;
    let counts: Vec<usize> = sol.events.iter().map(Vec::len).collect();
    assert!(counts.iter().all(|&n| n >= 3), "{counts:?}");
    let loss = |events: &[node_solvers::RecordedEvent], y: &Tensor| -> Result<Tensor> {
        let mut l = y.sum_all()?;
        for (k, e) in events.iter().enumerate() {
            l = (l + e.time.affine(1.0 + 0.1 * k as f64, 0.0)? + e.y.sum_all()?)?;
        }
        Ok(l)
    };
    let mut total = sol.y.sum_all()?.zeros_like()?;
    for (i, events) in sol.events.iter().enumerate() {
        total = (total + loss(events, &sol.y.narrow(0, i, 1)?)?)?;
    }
    let grads = total.backward()?;
    // Alone: odeint_events on each sample.
    let own = sol.samples.clone();
    let plain = node_solvers::odeint_independent(
        &f,
        &y0.as_tensor().detach(),
        &spans.iter().map(|s| s.to_vec()).collect::<Vec<_>>(),
        &opts,
    )?;
    assert_eq!(own, plain.samples, "watching adds no steps");
    for i in 0..4 {
        let wi = Var::from_tensor(&omega.as_tensor().narrow(0, i, 1)?.detach())?;
        let ci = damp.narrow(0, i, 1)?;
        let yi = Var::from_tensor(&y0.as_tensor().narrow(0, i, 1)?.detach())?;
        let fi = |_t: f64, y: &Tensor| field(y, wi.as_tensor(), &ci);
        let gi = |_t: f64, y: &Tensor| Ok(y.clone());
        let [t0, t_max] = spans[i];
        let one = node_solvers::odeint_events(&fi, yi.as_tensor(), t0, t_max, &gi, &opts, &ev)?;
        assert_eq!(one.events.len(), counts[i], "sample {i}: its crossings");
        for (a, b) in sol.events[i].iter().zip(&one.events) {
            assert_eq!((a.t, a.event), (b.t, b.event), "sample {i}");
            assert_eq!(
                a.y.to_vec2::<f64>()?,
                b.y.to_vec2::<f64>()?,
                "sample {i} at {}",
                a.t
            );
            assert_eq!(a.time.to_scalar::<f64>()?, b.t);
        }
        assert_eq!(
            sol.y.narrow(0, i, 1)?.to_vec2::<f64>()?,
            one.y.to_vec2::<f64>()?
        );
        let g1 = loss(&one.events, &one.y)?.backward()?;
        for (batch, alone, what) in [
            (
                grads.get(y0.as_tensor()).map(|g| g.narrow(0, i, 1)),
                g1.get(yi.as_tensor()),
                "y0",
            ),
            (
                grads.get(omega.as_tensor()).map(|g| g.narrow(0, i, 1)),
                g1.get(wi.as_tensor()),
                "ω",
            ),
        ] {
            let d = max_abs_diff(
                &batch.expect("a batch gradient")?,
                alone.expect("a gradient alone"),
            )?;
            assert!(d < 1e-11, "sample {i}: {what}'s gradient {d} off");
        }
    }
    Ok(())
}

candle_core::test_device!(
    every_crossing_alone,
    every_crossing_alone_cpu,
    every_crossing_alone_cuda,
    every_crossing_alone_metal
);

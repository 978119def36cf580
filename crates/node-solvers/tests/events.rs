//! `odeint_event` and `odeint_events`: event times against exact solutions, their gradients against analytic
//! derivatives and central differences, what an event costs, and the typed errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::max_abs_diff;
use node_solvers::{
    differentiable_start, event_gradients, odeint, odeint_event, odeint_events, Crossing,
    EventOptions, Method, SolveOptions, SolverError,
};
use std::f64::consts::PI;

fn tight() -> SolveOptions {
    SolveOptions::default().tolerances(1e-11, 1e-12)
}

fn solver_error<T: std::fmt::Debug>(r: candle_core::Result<T>) -> SolverError {
    let e = r.expect_err("expected an error");
    SolverError::find(&e)
        .unwrap_or_else(|| panic!("not a SolverError: {e}"))
        .clone()
}

/// `x'' = −x` as `y = [x, v]`: from `[1, 0]`, `x = cos t`, `v = −sin t`.
fn oscillator(_t: f64, y: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::cat(&[y.narrow(0, 1, 1)?, y.narrow(0, 0, 1)?.neg()?], 0)
}

fn position(_t: f64, y: &Tensor) -> candle_core::Result<Tensor> {
    y.narrow(0, 0, 1)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
}

fn oscillator_crossings(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let ev = EventOptions::default();
    let sol = odeint_event(&oscillator, &y0, 0.0, 10.0, &position, &tight(), &ev)?;
    // cos t first reaches zero at π/2.
    assert_eq!(sol.event, Some(0));
    assert!((sol.t - PI / 2.0).abs() < 1e-9, "t = {}", sol.t);
    let y = sol.y.to_vec1::<f64>()?;
    // Stopped on the side it came from (x ≥ 0), at v = −1.
    assert!(y[0] >= 0.0 && y[0] < 1e-9, "x = {}", y[0]);
    assert!((y[1] + 1.0).abs() < 1e-9);
    assert_eq!(scalar(&sol.time)?, sol.t);
    // Only rising crossings: the falling one at π/2 is passed, the rising one at 3π/2 stops.
    let rising = ev.crossing(Crossing::Rising);
    let sol = odeint_event(&oscillator, &y0, 0.0, 10.0, &position, &tight(), &rising)?;
    assert!((sol.t - 1.5 * PI).abs() < 1e-9, "t = {}", sol.t);
    assert!(sol.y.to_vec1::<f64>()?[0] <= 0.0);
    let falling = ev.crossing(Crossing::Falling);
    let sol = odeint_event(&oscillator, &y0, 0.0, 10.0, &position, &tight(), &falling)?;
    assert!((sol.t - PI / 2.0).abs() < 1e-9);
    // Reverse time: cos t = 0 at −π/2.
    let sol = odeint_event(&oscillator, &y0, 0.0, -10.0, &position, &tight(), &ev)?;
    assert!((sol.t + PI / 2.0).abs() < 1e-9, "t = {}", sol.t);
    // A coarse time tolerance stops the search early, on the old side, within it.
    let coarse = ev.time_tol(1e-3);
    let sol = odeint_event(&oscillator, &y0, 0.0, 10.0, &position, &tight(), &coarse)?;
    assert!(
        sol.t <= PI / 2.0 + 1e-12 && sol.t > PI / 2.0 - 1e-3,
        "t = {}",
        sol.t
    );
    Ok(())
}

fn first_of_several_elements(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    // x + 0.5 = 0 at 2π/3; v + 0.5 = 0 at π/6 (sin t = 1/2): the second element comes first.
    let g = |_t: f64, y: &Tensor| (y + 0.5)?.reshape((1, 2));
    let sol = odeint_event(
        &oscillator,
        &y0,
        0.0,
        10.0,
        &g,
        &tight(),
        &Default::default(),
    )?;
    assert_eq!(sol.event, Some(1));
    assert!((sol.t - PI / 6.0).abs() < 1e-9, "t = {}", sol.t);
    Ok(())
}

fn zero_at_the_start_is_not_an_event(dev: &Device) -> Result<()> {
    // v = −sin t is exactly 0 at t0: it starts watching once negative and stops at π.
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let velocity = |_t: f64, y: &Tensor| y.narrow(0, 1, 1);
    let sol = odeint_event(
        &oscillator,
        &y0,
        0.0,
        10.0,
        &velocity,
        &tight(),
        &Default::default(),
    )?;
    assert!((sol.t - PI).abs() < 1e-9, "t = {}", sol.t);
    Ok(())
}

fn no_event_before_t_max(dev: &Device) -> Result<()> {
    // x never reaches 5: the solve ends at t_max with the same steps, evaluations and state
    // as `odeint`, and one more read (g at t0): g(t1, y1) rides along with the error ratio.
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let far = |_t: f64, y: &Tensor| y.narrow(0, 0, 1)? - 5.0;
    let opts = SolveOptions::default();
    let sol = odeint_event(&oscillator, &y0, 0.0, 3.0, &far, &opts, &Default::default())?;
    let plain = odeint(&oscillator, &y0, &[0.0, 3.0], &opts)?;
    assert_eq!(sol.event, None);
    assert_eq!(sol.t, 3.0);
    assert_eq!(max_abs_diff(&sol.y, &plain.last()?)?, 0.0);
    assert_eq!(sol.stats.nfe, plain.stats.nfe);
    assert_eq!(sol.stats.accepted_steps, plain.stats.accepted_steps);
    assert_eq!(sol.stats.rejected_steps, plain.stats.rejected_steps);
    assert_eq!(sol.stats.host_reads, plain.stats.host_reads + 1);
    // With an event, the reads beyond that are the search's few iterations.
    let sol = odeint_event(
        &oscillator,
        &y0,
        0.0,
        3.0,
        &position,
        &opts,
        &Default::default(),
    )?;
    let steps = sol.stats.accepted_steps + sol.stats.rejected_steps;
    let search = sol.stats.host_reads - (steps + 2 + 1);
    assert!(
        (1..=12).contains(&search),
        "{search} reads to locate the crossing"
    );
    Ok(())
}

fn fixed_steps(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let opts = SolveOptions::default().method(Method::Rk4).step_size(0.01);
    let sol = odeint_event(
        &oscillator,
        &y0,
        0.0,
        10.0,
        &position,
        &opts,
        &Default::default(),
    )?;
    // π/2 lies in the 158th step; RK4's error at h = 0.01 is ~1e-9 there, its Hermite dense
    // output's about as small.
    assert_eq!(sol.stats.accepted_steps, 158);
    assert!((sol.t - PI / 2.0).abs() < 1e-8, "t = {}", sol.t);
    Ok(())
}

/// `[dL/dh0, dL/dv0, dL/dG]` of a scalar `L` of the free fall.
fn free_fall_grads(l: &Tensor, y0: &Var, gravity: &Var) -> Result<[f64; 3]> {
    let grads = l.backward()?;
    let dy = grads.get(y0).expect("y0 has a gradient").to_vec1::<f64>()?;
    let dg = grads
        .get(gravity)
        .expect("G has a gradient")
        .to_vec1::<f64>()?;
    Ok([dy[0], dy[1], dg[0]])
}

/// Free fall `y = [h, v]`, `y' = [v, −G]` with the gravity `G` a parameter, stopping at the
/// ground (`h = 0`). Exactly: with `s = √(v0² + 2 G h0)`, `t* = (v0 + s)/G` and `v(t*) = −s`.
fn free_fall_gradients(dev: &Device) -> Result<()> {
    let (h0, v0, gr) = (2.0f64, 1.0f64, 9.81f64);
    let y0 = Var::new(&[h0, v0], dev)?;
    let gravity = Var::new(&[gr], dev)?;
    let field = |_t: f64, y: &Tensor| Tensor::cat(&[y.narrow(0, 1, 1)?, gravity.neg()?], 0);
    let ev = EventOptions::default().crossing(Crossing::Falling);
    let sol = odeint_event(&field, &y0, 0.0, 10.0, &position, &tight(), &ev)?;
    let s = (v0 * v0 + 2.0 * gr * h0).sqrt();
    assert!((sol.t - (v0 + s) / gr).abs() < 1e-12, "t = {}", sol.t);
    assert!((sol.y.to_vec1::<f64>()?[1] + s).abs() < 1e-11);
    let got = free_fall_grads(&sol.time, &y0, &gravity)?;
    // dt*/dh0 = 1/s; dt*/dv0 = (1 + v0/s)/G; dt*/dG = h0/(s G) − (v0 + s)/G².
    let want = [
        1.0 / s,
        (1.0 + v0 / s) / gr,
        h0 / (s * gr) - (v0 + s) / (gr * gr),
    ];
    for (got, want) in got.iter().zip(want) {
        assert!((got - want).abs() < 1e-9, "dt*: {got} vs {want}");
    }
    // v(t*) = −s: dv/dh0 = −G/s, dv/dv0 = −v0/s, dv/dG = −h0/s. The state's gradient carries
    // the event time's (v0 − G t held at fixed t would give 0, 1, −t*).
    let got = free_fall_grads(&sol.y.narrow(0, 1, 1)?.sum_all()?, &y0, &gravity)?;
    let want = [-gr / s, -v0 / s, -h0 / s];
    for (got, want) in got.iter().zip(want) {
        assert!((got - want).abs() < 1e-9, "dv*: {got} vs {want}");
    }
    Ok(())
}

fn free_fall_f32(dev: &Device) -> Result<()> {
    let y0 = Var::new(&[2.0f32, 1.0], dev)?;
    let field = |_t: f64, y: &Tensor| {
        let v = y.narrow(0, 1, 1)?;
        Tensor::cat(&[v.clone(), (v.zeros_like()? - 9.81)?], 0)
    };
    let opts = SolveOptions::default().tolerances(1e-6, 1e-6);
    let sol = odeint_event(
        &field,
        &y0,
        0.0,
        10.0,
        &position,
        &opts,
        &Default::default(),
    )?;
    let s = (1.0f64 + 2.0 * 9.81 * 2.0).sqrt();
    assert!((sol.t - (1.0 + s) / 9.81).abs() < 1e-5, "t = {}", sol.t);
    assert_eq!(sol.time.dtype(), DType::F32);
    let dh = sol
        .time
        .backward()?
        .get(&y0)
        .expect("gradient")
        .to_vec1::<f32>()?;
    assert!(
        (dh[0] as f64 - 1.0 / s).abs() < 1e-4 / s,
        "{} vs {}",
        dh[0],
        1.0 / s
    );
    Ok(())
}

/// A nonlinear field `tanh(W y + b)` and an event `y₀ + y₁ = c` with its own parameter `c`:
/// the gradients of `L = t* + wᵀ y(t*)` against central differences of the whole solve.
fn gradients_match_central_differences(dev: &Device) -> Result<()> {
    let w0 = [0.3, -0.9, 0.8, 0.2];
    let b0 = [0.5, 0.4];
    let y00 = [0.1, -0.2];
    let c0 = 1.1;
    let weights = [0.7, -0.4];
    let opts = tight();
    let loss = |w: &[f64], b: &[f64], y0: &[f64], c: f64| -> Result<f64> {
        let w = Tensor::new(w, dev)?.reshape((2, 2))?;
        let b = Tensor::new(b, dev)?;
        let f = |_t: f64, y: &Tensor| {
            y.unsqueeze(0)?
                .matmul(&w.t()?)?
                .squeeze(0)?
                .broadcast_add(&b)?
                .tanh()
        };
        let g = |_t: f64, y: &Tensor| y.sum_keepdim(0)? - c;
        let y0 = Tensor::new(y0, dev)?;
        let sol = odeint_event(&f, &y0, 0.0, 20.0, &g, &opts, &Default::default())?;
        assert_eq!(sol.event, Some(0));
        let y = sol.y.to_vec1::<f64>()?;
        Ok(sol.t + weights[0] * y[0] + weights[1] * y[1])
    };
    // Autograd.
    let w = Var::new(&w0, dev)?;
    let b = Var::new(&b0, dev)?;
    let y0 = Var::new(&y00, dev)?;
    let c = Var::new(&[c0], dev)?;
    let wm = w.reshape((2, 2))?;
    let f = |_t: f64, y: &Tensor| {
        y.unsqueeze(0)?
            .matmul(&wm.t()?)?
            .squeeze(0)?
            .broadcast_add(&b)?
            .tanh()
    };
    let g = |_t: f64, y: &Tensor| y.sum_keepdim(0)?.broadcast_sub(&c);
    let sol = odeint_event(&f, &y0, 0.0, 20.0, &g, &opts, &Default::default())?;
    let l = (sol.time.reshape(1)? + (&sol.y * Tensor::new(&weights, dev)?)?.sum_keepdim(0)?)?;
    let grads = l.backward()?;
    let got: Vec<f64> = [&w, &b, &y0, &c]
        .iter()
        .map(|v| grads.get(v).expect("gradient").to_vec1::<f64>())
        .collect::<candle_core::Result<Vec<_>>>()?
        .concat();
    // Central differences, each parameter in turn.
    let eps = 1e-6;
    let mut want = vec![];
    let mut all: Vec<f64> = [&w0[..], &b0[..], &y00[..], &[c0][..]].concat();
    for i in 0..all.len() {
        let mut at = |d: f64| -> Result<f64> {
            all[i] += d;
            let r = loss(&all[0..4], &all[4..6], &all[6..8], all[8]);
            all[i] -= d;
            r
        };
        want.push((at(eps)? - at(-eps)?) / (2.0 * eps));
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        // Solver tolerance 1e-11 over a difference step 1e-6: ~1e-5 of noise at most.
        assert!(
            (g - w).abs() < 2e-5 * w.abs().max(1.0),
            "param {i}: {g} vs {w}"
        );
    }
    Ok(())
}

/// A start time given as a tensor (`differentiable_start`) on a non-autonomous field: the
/// event time, the event state and the state at a fixed time get their gradients to it,
/// against central differences; a start time of two elements or a NaN is refused.
fn start_time_gradients(dev: &Device) -> Result<()> {
    // A forced oscillator: x'' = −x + 0.5 sin 2t, from [x, v] = [1, 0] at t0 = 0.3.
    let f = |t: f64, y: &Tensor| {
        let force = Tensor::new(&[0.0, 0.5 * (2.0 * t).sin()], y.device())?;
        oscillator(t, y)? + force
    };
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let opts = tight();
    let t00 = 0.3;
    // L = t_event + 0.7 v(t_event) + x(2.5), a state at a fixed time.
    let loss = |t0: f64| -> Result<f64> {
        let sol = odeint_event(&f, &y0, t0, 20.0, &position, &opts, &Default::default())?;
        let v = sol.y.to_vec1::<f64>()?[1];
        let x = odeint(&f, &y0, &[t0, 2.5], &opts)?
            .last()?
            .to_vec1::<f64>()?[0];
        Ok(sol.t + 0.7 * v + x)
    };
    let t0 = Var::new(t00, dev)?;
    let (t, y0s) = differentiable_start(&f, t0.as_tensor(), &y0)?;
    assert_eq!(t, t00);
    assert_eq!(max_abs_diff(&y0s, &y0)?, 0.0);
    let sol = odeint_event(&f, &y0s, t, 20.0, &position, &opts, &Default::default())?;
    let x = odeint(&f, &y0s, &[t, 2.5], &opts)?.last()?;
    let l = ((sol.time.reshape(())? + sol.y.get(1)?.affine(0.7, 0.0)?)? + x.get(0)?)?;
    let got = l.backward()?.get(&t0).expect("dL/dt0").to_scalar::<f64>()?;
    let eps = 1e-6;
    let want = (loss(t00 + eps)? - loss(t00 - eps)?) / (2.0 * eps);
    assert!(
        (got - want).abs() < 2e-5 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    // Without the shift, t0 gets no gradient at all: the check above is not vacuous.
    assert!(want.abs() > 0.1, "{want}");

    let two = Tensor::new(&[0.0f64, 1.0], dev)?;
    assert!(matches!(
        solver_error(differentiable_start(&f, &two, &y0)),
        SolverError::InvalidTimes(_)
    ));
    let nan = Tensor::new(f64::NAN, dev)?;
    assert!(matches!(
        solver_error(differentiable_start(&f, &nan, &y0)),
        SolverError::InvalidTimes(_)
    ));
    Ok(())
}

fn errors(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let opts = SolveOptions::default();
    let ev = EventOptions::default();
    let run = |g: &dyn Fn(f64, &Tensor) -> candle_core::Result<Tensor>| {
        odeint_event(&oscillator, &y0, 0.0, 10.0, &g, &opts, &ev)
    };
    let empty = |_t: f64, y: &Tensor| y.narrow(0, 0, 0);
    assert!(matches!(
        solver_error(run(&empty)),
        SolverError::OutputMismatch(_)
    ));
    let integer = |_t: f64, y: &Tensor| y.to_dtype(DType::I64);
    assert!(matches!(
        solver_error(run(&integer)),
        SolverError::OutputMismatch(_)
    ));
    let growing = |t: f64, y: &Tensor| {
        if t < 0.5 {
            y.narrow(0, 0, 1)
        } else {
            Ok(y.clone())
        }
    };
    assert!(matches!(
        solver_error(run(&growing)),
        SolverError::OutputMismatch(_)
    ));
    let nan_at_start = |_t: f64, y: &Tensor| y.narrow(0, 0, 1)? * f64::NAN;
    assert_eq!(
        solver_error(run(&nan_at_start)),
        SolverError::NonFinite { t: 0.0 }
    );
    let nan_later = |t: f64, y: &Tensor| {
        let x = y.narrow(0, 0, 1)?;
        if t > 1.0 {
            x * f64::NAN
        } else {
            Ok(x)
        }
    };
    match solver_error(run(&nan_later)) {
        SolverError::NonFinite { t } => assert!(t > 1.0, "t = {t}"),
        e => panic!("expected NonFinite, got {e}"),
    }
    assert!(matches!(
        solver_error(odeint_event(
            &oscillator,
            &y0,
            1.0,
            1.0,
            &position,
            &opts,
            &ev
        )),
        SolverError::TimesNotMonotone { .. }
    ));
    assert!(matches!(
        solver_error(odeint_event(
            &oscillator,
            &y0,
            0.0,
            1.0,
            &position,
            &opts,
            &ev.time_tol(-1.0)
        )),
        SolverError::InvalidOptions(_)
    ));
    // A crossing the event function does not move through has no time derivative.
    let y = Var::new(&[0.0f64, 0.0], dev)?;
    let flat = |_t: f64, y: &Tensor| y.narrow(0, 0, 1)?.affine(0.0, 0.0);
    assert!(matches!(
        solver_error(event_gradients(&oscillator, &flat, 1.0, 0, y.as_tensor())),
        SolverError::EventNotTransversal { t: 1.0, .. }
    ));
    assert!(matches!(
        solver_error(event_gradients(
            &oscillator,
            &position,
            1.0,
            3,
            y.as_tensor()
        )),
        SolverError::InvalidOptions(_)
    ));
    Ok(())
}

candle_core::test_device!(
    oscillator_crossings,
    oscillator_crossings_cpu,
    oscillator_crossings_cuda,
    oscillator_crossings_metal
);
candle_core::test_device!(
    first_of_several_elements,
    several_cpu,
    several_cuda,
    several_metal
);
candle_core::test_device!(
    zero_at_the_start_is_not_an_event,
    zero_start_cpu,
    zero_start_cuda,
    zero_start_metal
);
candle_core::test_device!(
    no_event_before_t_max,
    no_event_cpu,
    no_event_cuda,
    no_event_metal
);
candle_core::test_device!(
    fixed_steps,
    fixed_steps_cpu,
    fixed_steps_cuda,
    fixed_steps_metal
);
candle_core::test_device!(
    free_fall_gradients,
    free_fall_gradients_cpu,
    free_fall_gradients_cuda,
    free_fall_gradients_metal
);
candle_core::test_device!(
    free_fall_f32,
    free_fall_f32_cpu,
    free_fall_f32_cuda,
    free_fall_f32_metal
);
candle_core::test_device!(
    gradients_match_central_differences,
    central_differences_cpu,
    central_differences_cuda,
    central_differences_metal
);
fn recording_every_crossing(dev: &Device) -> Result<()> {
    // x = cos t, v = −sin t on [0, 10]: x crosses at (k + ½)π, v at kπ (k ≥ 1). All of them,
    // in time order, each where it is; the solve takes odeint's steps to t = 10.
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let both = |_t: f64, y: &Tensor| Ok(y.clone());
    let sol = odeint_events(
        &oscillator,
        &y0,
        0.0,
        10.0,
        &both,
        &tight(),
        &EventOptions::default(),
    )?;
    let mut want: Vec<(f64, usize)> = (0..3).map(|k| ((k as f64 + 0.5) * PI, 0)).collect();
    want.extend((1..=3).map(|k| (k as f64 * PI, 1)));
    want.sort_by(|a, b| a.0.total_cmp(&b.0));
    let got: Vec<(f64, usize)> = sol.events.iter().map(|e| (e.t, e.event)).collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((t, i), (tw, iw)) in got.iter().zip(&want) {
        assert_eq!(i, iw, "{got:?}");
        assert!((t - tw).abs() < 1e-9, "{t} vs {tw}");
    }
    for e in &sol.events {
        let v = e.y.to_vec1::<f64>()?[e.event];
        assert!(v.abs() < 1e-9, "g = {v} at the crossing at {}", e.t);
        assert_eq!(scalar(&e.time)?, e.t);
    }
    let plain = odeint(&oscillator, &y0, &[0.0, 10.0], &tight())?;
    assert_eq!(max_abs_diff(&sol.y, &plain.ys.get(1)?)?, 0.0);
    assert_eq!(sol.stats.accepted_steps, plain.stats.accepted_steps);
    assert_eq!(sol.stats.rejected_steps, plain.stats.rejected_steps);

    // Two elements crossing within one step (loose tolerance, crossings 0.01 apart): both
    // are located, in time order.
    let close = |_t: f64, y: &Tensor| {
        let x = y.narrow(0, 0, 1)?;
        Tensor::cat(&[x.clone(), x.affine(1.0, -0.01)?], 0)
    };
    let loose = SolveOptions::default().tolerances(1e-5, 1e-5);
    let sol = odeint_events(
        &oscillator,
        &y0,
        0.0,
        3.0,
        &close,
        &loose,
        &EventOptions::default(),
    )?;
    let got: Vec<(f64, usize)> = sol.events.iter().map(|e| (e.t, e.event)).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].1, got[1].1), (1, 0), "{got:?}");
    assert!((got[0].0 - 0.01f64.acos()).abs() < 1e-4 && (got[1].0 - 0.5 * PI).abs() < 1e-4);

    // Directions: cos t rises through zero at 3π/2, falls at π/2 and 5π/2.
    for (crossing, want) in [
        (Crossing::Rising, vec![1.5 * PI]),
        (Crossing::Falling, vec![0.5 * PI, 2.5 * PI]),
    ] {
        let opts = EventOptions::default().crossing(crossing);
        let sol = odeint_events(&oscillator, &y0, 0.0, 10.0, &position, &tight(), &opts)?;
        let got: Vec<f64> = sol.events.iter().map(|e| e.t).collect();
        assert_eq!(got.len(), want.len(), "{crossing:?}: {got:?}");
        for (t, tw) in got.iter().zip(&want) {
            assert!((t - tw).abs() < 1e-9, "{crossing:?}: {t} vs {tw}");
        }
    }
    // Reverse time: from t = 10 back to 0, latest first.
    let y10 = plain.ys.get(1)?;
    let sol = odeint_events(
        &oscillator,
        &y10,
        10.0,
        0.0,
        &position,
        &tight(),
        &EventOptions::default(),
    )?;
    let got: Vec<f64> = sol.events.iter().map(|e| e.t).collect();
    let want = [2.5 * PI, 1.5 * PI, 0.5 * PI];
    assert_eq!(got.len(), 3, "{got:?}");
    for (t, tw) in got.iter().zip(want) {
        assert!((t - tw).abs() < 1e-8, "{t} vs {tw}");
    }
    // None on the way: no events, and the state at t_max.
    let far = |_t: f64, y: &Tensor| y.narrow(0, 0, 1)?.affine(1.0, 5.0);
    let sol = odeint_events(
        &oscillator,
        &y0,
        0.0,
        10.0,
        &far,
        &tight(),
        &EventOptions::default(),
    )?;
    assert!(sol.events.is_empty());
    assert_eq!(max_abs_diff(&sol.y, &plain.ys.get(1)?)?, 0.0);
    Ok(())
}

fn recorded_event_gradients(dev: &Device) -> Result<()> {
    // x'' = −ω² x from (1, 0): x = cos ωt crosses zero at t_k = (k + ½)π/ω, so
    // dt_k/dω = −t_k/ω, for every recorded crossing (backprop through the solver).
    let omega = Var::new(&[1.3f64], dev)?;
    let om = omega.clone();
    let field = move |_t: f64, y: &Tensor| {
        let w2 = om.as_tensor().sqr()?;
        Tensor::cat(
            &[
                y.narrow(0, 1, 1)?,
                y.narrow(0, 0, 1)?.broadcast_mul(&w2)?.neg()?,
            ],
            0,
        )
    };
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let sol = odeint_events(
        &field,
        &y0,
        0.0,
        7.0,
        &position,
        &tight(),
        &EventOptions::default(),
    )?;
    assert_eq!(sol.events.len(), 3);
    for (k, e) in sol.events.iter().enumerate() {
        let tk = (k as f64 + 0.5) * PI / 1.3;
        assert!((e.t - tk).abs() < 1e-9);
        let g = e.time.backward()?;
        let d = g.get(&omega).expect("dt/dω").to_vec1::<f64>()?[0];
        assert!(
            (d + tk / 1.3).abs() < 1e-6,
            "crossing {k}: dt/dω = {d} vs {}",
            -tk / 1.3
        );
    }
    Ok(())
}

candle_core::test_device!(errors, errors_cpu, errors_cuda, errors_metal);
candle_core::test_device!(
    recording_every_crossing,
    recording_cpu,
    recording_cuda,
    recording_metal
);
candle_core::test_device!(
    recorded_event_gradients,
    recorded_gradients_cpu,
    recorded_gradients_cuda,
    recorded_gradients_metal
);
candle_core::test_device!(
    start_time_gradients,
    start_time_gradients_cpu,
    start_time_gradients_cuda,
    start_time_gradients_metal
);

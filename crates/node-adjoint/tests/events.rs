//! `odeint_event_adjoint` and `odeint_event_checkpointed`: the event time's and state's
//! gradients by the adjoint and by checkpointed backprop, against analytic derivatives and
//! against backprop through the solver (`odeint_event`); and the same for every crossing of
//! a solve (`odeint_events_adjoint`, `odeint_events_checkpointed` against `odeint_events`).

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use node_adjoint::{
    odeint_event_adjoint, odeint_event_checkpointed, odeint_events_adjoint,
    odeint_events_checkpointed, with_params, AdjointOptions, AdjointState, CheckpointOptions,
};
use node_solvers::{
    odeint_event, odeint_events, Crossing, EventOptions, RecordedEvent, SolveOptions,
};

fn tight() -> SolveOptions {
    SolveOptions::default().tolerances(1e-11, 1e-12)
}

fn height(_t: f64, y: &Tensor) -> candle_core::Result<Tensor> {
    y.narrow(0, 0, 1)
}

/// Free fall `y = [h, v]`, `y' = [v, −G]` until `h = 0`. With `s = √(v0² + 2 G h0)`:
/// `t* = (v0 + s)/G`, `v(t*) = −s`.
fn free_fall(dev: &Device) -> Result<()> {
    let (h0, v0, gr) = (2.0f64, 1.0f64, 9.81f64);
    let y0 = Var::new(&[h0, v0], dev)?;
    let gravity = Var::new(&[gr], dev)?;
    let gv = gravity.clone();
    let field = with_params(
        move |_t, y: &Tensor| Tensor::cat(&[y.narrow(0, 1, 1)?, gv.neg()?], 0),
        vec![gravity.clone()],
    );
    let ev = EventOptions::default().crossing(Crossing::Falling);
    let adj = AdjointOptions::default();
    let sol = odeint_event_adjoint(&field, &y0, 0.0, 10.0, &height, &tight(), &ev, &adj)?;
    let s = (v0 * v0 + 2.0 * gr * h0).sqrt();
    assert_eq!(sol.event, Some(0));
    assert!((sol.t - (v0 + s) / gr).abs() < 1e-12, "t = {}", sol.t);
    // L = t* + v(t*): dL/dh0 = 1/s − G/s; dL/dv0 = (1 + v0/s)/G − v0/s;
    // dL/dG = h0/(s G) − (v0 + s)/G² − h0/s.
    let l = (sol.time.reshape(1)? + sol.y.narrow(0, 1, 1)?)?;
    let grads = l.backward()?;
    let dy = grads.get(&y0).expect("y0 gradient").to_vec1::<f64>()?;
    let dg = grads.get(&gravity).expect("G gradient").to_vec1::<f64>()?;
    let want = [
        1.0 / s - gr / s,
        (1.0 + v0 / s) / gr - v0 / s,
        h0 / (s * gr) - (v0 + s) / (gr * gr) - h0 / s,
    ];
    for (got, want) in [dy[0], dy[1], dg[0]].iter().zip(want) {
        assert!((got - want).abs() < 1e-8, "{got} vs {want}");
    }
    // One forward solve: the adjoint op is anchored on the located state.
    assert!(sol.stats.forward().accepted_steps > 0);
    assert!(sol.stats.backward().nfe > 0);
    // Checkpointed backprop: the same analytic gradients, from 2 stored states.
    let ck = CheckpointOptions::default().checkpoints(2);
    let sol = odeint_event_checkpointed(&field, &y0, 0.0, 10.0, &height, &tight(), &ev, &ck)?;
    assert!((sol.t - (v0 + s) / gr).abs() < 1e-12, "t = {}", sol.t);
    let grads = (sol.time.reshape(1)? + sol.y.narrow(0, 1, 1)?)?.backward()?;
    let dy = grads.get(&y0).expect("y0 gradient").to_vec1::<f64>()?;
    let dg = grads.get(&gravity).expect("G gradient").to_vec1::<f64>()?;
    for (got, want) in [dy[0], dy[1], dg[0]].iter().zip(want) {
        assert!((got - want).abs() < 1e-8, "checkpointed: {got} vs {want}");
    }
    // The replay takes the forward's accepted steps again, the event's step included.
    let (fwd, bwd) = (sol.stats.forward(), sol.stats.backward());
    assert_eq!(bwd.accepted_steps, fwd.accepted_steps);
    Ok(())
}

/// `tanh(W y + b)` with an event `y₀ + y₁ = c` of its own parameter: the adjoint's gradients
/// equal backprop's.
fn matches_backprop(dev: &Device) -> Result<()> {
    let w = Var::new(&[[0.3f64, -0.9], [0.8, 0.2]], dev)?;
    let b = Var::new(&[0.5f64, 0.4], dev)?;
    let c = Var::new(&[1.1f64], dev)?;
    let y0 = Var::new(&[0.1f64, -0.2], dev)?;
    let (wc, bc) = (w.clone(), b.clone());
    let field = with_params(
        move |_t, y: &Tensor| {
            y.unsqueeze(0)?
                .matmul(&wc.t()?)?
                .squeeze(0)?
                .broadcast_add(&bc)?
                .tanh()
        },
        vec![w.clone(), b.clone()],
    );
    let g = |_t: f64, y: &Tensor| y.sum_keepdim(0)?.broadcast_sub(&c);
    let weights = Tensor::new(&[0.7f64, -0.4], dev)?;
    let loss = |time: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        time.reshape(1)? + (y * &weights)?.sum_keepdim(0)?
    };
    let ev = EventOptions::default();
    let bp = odeint_event(&field, &y0, 0.0, 20.0, &g, &tight(), &ev)?;
    let adj = odeint_event_adjoint(
        &field,
        &y0,
        0.0,
        20.0,
        &g,
        &tight(),
        &ev,
        &AdjointOptions::default(),
    )?;
    assert_eq!(adj.t, bp.t);
    assert_eq!(adj.stats.forward().accepted_steps, bp.stats.accepted_steps);
    let gb = loss(&bp.time, &bp.y)?.backward()?;
    let ga = loss(&adj.time, &adj.y)?.backward()?;
    // Checkpointed backprop, from 3 stored states: backprop's gradients up to the order of
    // the floating-point sums.
    let ck = CheckpointOptions::default().checkpoints(3);
    let cp = odeint_event_checkpointed(&field, &y0, 0.0, 20.0, &g, &tight(), &ev, &ck)?;
    assert_eq!(cp.t, bp.t);
    assert_eq!((&cp.y - &bp.y)?.abs()?.max(0)?.to_scalar::<f64>()?, 0.0);
    assert!(
        bp.stats.accepted_steps > 6,
        "too few steps to thin the states"
    );
    let gc = loss(&cp.time, &cp.y)?.backward()?;
    // Both solves at 1e-11: the adjoint's gradients agree with backprop's far below 1e-7.
    let vars = [("W", &w), ("b", &b), ("c", &c), ("y0", &y0)];
    assert_grads_match(
        &gb,
        &[(&ga, "adjoint", 1e-7), (&gc, "checkpointed", 1e-12)],
        &vars,
    )
}

/// Each of `others`' gradients of `vars` is backprop's `gb`, within its relative bound.
fn assert_grads_match(
    gb: &GradStore,
    others: &[(&GradStore, &str, f64)],
    vars: &[(&str, &Var)],
) -> Result<()> {
    for &(other, what, bound) in others {
        for &(name, v) in vars {
            let x = gb
                .get(v)
                .expect("backprop")
                .flatten_all()?
                .to_vec1::<f64>()?;
            let y = other.get(v).expect(what).flatten_all()?.to_vec1::<f64>()?;
            for (p, q) in x.iter().zip(&y) {
                assert!(
                    (p - q).abs() < bound * p.abs().max(1.0),
                    "{what} {name}: {p} vs {q}"
                );
            }
        }
    }
    Ok(())
}

fn all_crossings_match_backprop(dev: &Device) -> Result<()> {
    // A damped oscillator x'' = −ω² x − c x' from y0, its position crossing the level a (a
    // parameter of the event function) several times before t = 8. The loss reads every
    // crossing's time and state and the end state.
    let omega = Var::new(&[2.1f64], dev)?;
    let damp = Var::new(&[0.15f64], dev)?;
    let level = Var::new(&[0.05f64], dev)?;
    let y0 = Var::new(&[1.0f64, 0.3], dev)?;
    let (om, dm) = (omega.clone(), damp.clone());
    let field = with_params(
        move |_t, y: &Tensor| {
            let (x, v) = (y.narrow(0, 0, 1)?, y.narrow(0, 1, 1)?);
            let acc = (x.broadcast_mul(&om.as_tensor().sqr()?)? + v.broadcast_mul(&dm)?)?.neg()?;
            Tensor::cat(&[v, acc], 0)
        },
        vec![omega.clone(), damp.clone()],
    );
    let g = |_t: f64, y: &Tensor| y.narrow(0, 0, 1)?.broadcast_sub(&level);
    let loss = |events: &[RecordedEvent], y_end: &Tensor| -> candle_core::Result<Tensor> {
        let mut l = (y_end * Tensor::new(&[0.4f64, -0.2], dev)?)?.sum_all()?;
        for (k, e) in events.iter().enumerate() {
            let w = 0.3 + 0.1 * k as f64;
            l = (l + e.time.affine(w, 0.0)?)?;
            l = (l + e.y.narrow(0, 1, 1)?.sum_all()?.affine(-w, 0.0)?)?;
        }
        Ok(l)
    };
    let ev = EventOptions::default();
    let bp = odeint_events(&field, &y0, 0.0, 8.0, &g, &tight(), &ev)?;
    assert!(bp.events.len() >= 4, "{} crossings", bp.events.len());
    let adj = odeint_events_adjoint(
        &field,
        &y0,
        0.0,
        8.0,
        &g,
        &tight(),
        &ev,
        &AdjointOptions::default(),
    )?;
    // The interpolated adjoint reads y from a second, dense solve to the located times.
    let interpolated = AdjointOptions::default().state(AdjointState::Interpolated);
    let ai = odeint_events_adjoint(&field, &y0, 0.0, 8.0, &g, &tight(), &ev, &interpolated)?;
    let ck = CheckpointOptions::default().checkpoints(3);
    let cp = odeint_events_checkpointed(&field, &y0, 0.0, 8.0, &g, &tight(), &ev, &ck)?;
    for other in [&adj.events, &ai.events, &cp.events] {
        let same: Vec<bool> = other
            .iter()
            .zip(&bp.events)
            .map(|(a, b)| a.t == b.t)
            .collect();
        assert_eq!(same, vec![true; bp.events.len()], "the same crossings");
    }
    assert_eq!((&cp.y - &bp.y)?.abs()?.max(0)?.to_scalar::<f64>()?, 0.0);
    let gb = loss(&bp.events, &bp.y)?.backward()?;
    let ga = loss(&adj.events, &adj.y)?.backward()?;
    let gi = loss(&ai.events, &ai.y)?.backward()?;
    let gc = loss(&cp.events, &cp.y)?.backward()?;
    let vars = [("ω", &omega), ("c", &damp), ("a", &level), ("y0", &y0)];
    assert_grads_match(
        &gb,
        &[
            (&ga, "adjoint", 1e-7),
            (&gi, "interpolated adjoint", 1e-7),
            (&gc, "checkpointed", 1e-11),
        ],
        &vars,
    )
}

candle_core::test_device!(free_fall, free_fall_cpu, free_fall_cuda, free_fall_metal);
candle_core::test_device!(
    all_crossings_match_backprop,
    all_crossings_cpu,
    all_crossings_cuda,
    all_crossings_metal
);
candle_core::test_device!(
    matches_backprop,
    matches_backprop_cpu,
    matches_backprop_cuda,
    matches_backprop_metal
);

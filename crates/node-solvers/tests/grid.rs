//! Step grids (`SolveOptions::step_grid`) and traced solves (`odeint_traced`,
//! `locate_event_traced`): a grid takes exactly the steps it lists, and a traced solve replays
//! bit for bit from its stored states.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{fitted_slope, max_abs_diff};
use node_solvers::problems::{Riccati, Rotation};
use node_solvers::{
    locate_event_traced, odeint, odeint_traced, EventOptions, Method, SolveOptions, SolverError,
    StepTrace,
};

fn rotation_y0(dev: &Device) -> Result<Tensor> {
    Ok(Tensor::new(&[[1.0f64, 0.0], [0.0, 2.0], [-1.5, 0.5]], dev)?)
}

/// A grid of `n` equal steps, computed as `fixed_steps(n)` computes its times.
fn uniform(t0: f64, t1: f64, n: usize) -> Vec<f64> {
    (0..=n)
        .map(|i| {
            if i == n {
                t1
            } else {
                t0 + (t1 - t0) * (i as f64 / n as f64)
            }
        })
        .collect()
}

fn uniform_grid_is_fixed_steps(dev: &Device) -> Result<()> {
    let p = Rotation {
        decay: 0.2,
        freq: 3.0,
    };
    let y0 = rotation_y0(dev)?;
    // Outputs between grid points come from dense output, in both.
    let ts = [0.0, 0.37, 1.0, 1.5];
    for m in [Method::Rk4, Method::Bosh3, Method::Dopri5] {
        let fixed = odeint(
            &p.field(),
            &y0,
            &ts,
            &SolveOptions::default().method(m).fixed_steps(12),
        )?;
        let opts = SolveOptions::default()
            .method(m)
            .step_grid(uniform(0.0, 1.5, 12));
        let grid = odeint(&p.field(), &y0, &ts, &opts)?;
        assert_eq!(max_abs_diff(&fixed.ys, &grid.ys)?, 0.0, "{m}");
        assert_eq!(fixed.stats, grid.stats, "{m}");
    }
    Ok(())
}

fn graded_grid_converges_at_the_method_order(dev: &Device) -> Result<()> {
    // Steps growing quadratically, t_i = T (i/n)²: the global error still falls as h^p with
    // the largest step h.
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let t_end = 2.0;
    let exact = Riccati.exact(&y0, 0.0, t_end)?;
    for (m, order) in [
        (Method::Heun2, 2.0),
        (Method::Rk4, 4.0),
        (Method::Dopri5, 5.0),
    ] {
        let (mut hs, mut errs) = (vec![], vec![]);
        for n in [16usize, 32, 64, 128] {
            let grid: Vec<f64> = (0..=n)
                .map(|i| t_end * (i as f64 / n as f64).powi(2))
                .collect();
            let opts = SolveOptions::default().method(m).step_grid(grid);
            let sol = odeint(&Riccati.field(), &y0, &[0.0, t_end], &opts)?;
            assert_eq!(sol.stats.accepted_steps, n);
            hs.push(1.0 / n as f64);
            errs.push(max_abs_diff(&sol.last()?, &exact)?);
        }
        let slope = fitted_slope(&hs, &errs);
        // As in tests/convergence.rs: below p means a wrong step; above, up to p + 1, is the
        // pre-asymptotic range (rk4's error ratios here: 25, 22, 20 on the way to 16).
        assert!(
            slope > order - 0.3 && slope < order + 1.0,
            "{m}: slope {slope} on a graded grid, order {order} (errors {errs:?})"
        );
    }
    Ok(())
}

fn reverse_time_grid(dev: &Device) -> Result<()> {
    let p = Rotation {
        decay: 0.1,
        freq: 1.0,
    };
    let y0 = rotation_y0(dev)?;
    let grid = uniform(2.0, -1.0, 300);
    let opts = SolveOptions::default().method(Method::Rk4).step_grid(grid);
    let sol = odeint(&p.field(), &y0, &[2.0, 0.5, -1.0], &opts)?;
    for (i, t) in [(1, 0.5), (2, -1.0)] {
        let err = max_abs_diff(&sol.ys.get(i)?, &p.exact(&y0, 2.0, t)?)?;
        assert!(err < 1e-7, "t = {t}: error {err:e}");
    }
    Ok(())
}

/// Replays every segment of `trace` from its stored state and checks it lands on the solve's
/// values exactly: the next stored state, and every output inside the segment.
fn check_replay<F>(
    f: &F,
    trace: &StepTrace,
    ts: &[f64],
    ys: &Tensor,
    opts: &SolveOptions,
) -> Result<()>
where
    F: Fn(f64, &Tensor) -> candle_core::Result<Tensor>,
{
    let dir = (ts[ts.len() - 1] - ts[0]).signum();
    let segments: Vec<_> = trace.segments().collect();
    assert_eq!(segments.len(), trace.states.len());
    for (k, range) in segments.iter().enumerate() {
        let (t_s, t_e) = (trace.times[range.start], trace.times[range.end]);
        let inside: Vec<usize> = (1..ts.len())
            .filter(|&j| (ts[j] - t_s) * dir > 0.0 && (ts[j] - t_e) * dir <= 0.0)
            .collect();
        let mut seg_ts = vec![t_s];
        seg_ts.extend(inside.iter().map(|&j| ts[j]));
        if seg_ts[seg_ts.len() - 1] != t_e {
            seg_ts.push(t_e);
        }
        let grid = &trace.times[range.start..=range.end];
        let replay = odeint(f, &trace.states[k], &seg_ts, &opts.clone().step_grid(grid))?;
        assert_eq!(replay.stats.accepted_steps, range.len());
        for (i, &j) in inside.iter().enumerate() {
            let d = max_abs_diff(&replay.ys.get(i + 1)?, &ys.get(j)?)?;
            assert_eq!(d, 0.0, "segment {k}: output {j} replays {d:e} off");
        }
        let end = replay.last()?;
        let want = match trace.states.get(k + 1) {
            Some(s) => s.clone(),
            None => ys.get(ts.len() - 1)?,
        };
        assert_eq!(max_abs_diff(&end, &want)?, 0.0, "segment {k}: end state");
    }
    Ok(())
}

fn traced_solves_replay_exactly(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[0.8f64, -0.5, 1.2], dev)?;
    let ts = [0.0, 0.3, 1.1, 2.0, 2.05, 4.0];
    for (m, tol) in [
        (Method::Dopri5, 1e-9),
        (Method::Bosh3, 1e-6),
        (Method::Fehlberg2, 1e-5),
    ] {
        let opts = SolveOptions::default().method(m).tolerances(tol, tol);
        let plain = odeint(&Riccati.field(), &y0, &ts, &opts)?;
        let n = plain.stats.accepted_steps;
        for max_states in [1, 3, 8, 1000] {
            let (sol, trace) = odeint_traced(&Riccati.field(), &y0, &ts, &opts, max_states)?;
            // Tracing changes nothing about the solve.
            assert_eq!(max_abs_diff(&sol.ys, &plain.ys)?, 0.0);
            assert_eq!(sol.stats, plain.stats);
            assert_eq!(trace.steps(), n, "{m}");
            assert_eq!(trace.times[0], 0.0);
            assert_eq!(trace.times[n], 4.0);
            // The smallest power-of-two spacing that fits: ⌈n / stride⌉ states.
            let s = trace.stride;
            assert!(s.is_power_of_two());
            assert_eq!(
                trace.states.len(),
                n.div_ceil(s),
                "{m}, {max_states} states"
            );
            assert!(trace.states.len() <= max_states);
            assert!(
                s == 1 || n.div_ceil(s / 2) > max_states,
                "{m}: stride {s} not minimal"
            );
            assert_eq!(max_abs_diff(&trace.states[0], &y0)?, 0.0);
            check_replay(&Riccati.field(), &trace, &ts, &sol.ys, &opts)?;
        }
        assert!(n > 8, "{m}: {n} steps are too few to thin the states");
    }
    // Reverse time, and a fixed-step solve (its trace is its grid).
    let p = Rotation {
        decay: 0.1,
        freq: 2.0,
    };
    let y0 = rotation_y0(dev)?;
    let ts = [1.0, 0.2, -0.7];
    let opts = SolveOptions::default().tolerances(1e-8, 1e-8);
    let (sol, trace) = odeint_traced(&p.field(), &y0, &ts, &opts, 4)?;
    check_replay(&p.field(), &trace, &ts, &sol.ys, &opts)?;
    let opts = SolveOptions::default().method(Method::Rk4).fixed_steps(10);
    let (sol, trace) = odeint_traced(&p.field(), &y0, &ts, &opts, 4)?;
    assert_eq!(
        (trace.steps(), trace.stride, trace.states.len()),
        (10, 4, 3)
    );
    assert_eq!(trace.times, uniform(1.0, -0.7, 10));
    check_replay(&p.field(), &trace, &ts, &sol.ys, &opts)?;
    Ok(())
}

fn traced_f32(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[0.8f32, -0.5, 1.2], dev)?;
    let ts = [0.0, 1.5, 3.0];
    let opts = SolveOptions::default().tolerances(1e-5, 1e-6);
    let (sol, trace) = odeint_traced(&Riccati.field(), &y0, &ts, &opts, 2)?;
    assert_eq!(trace.states[0].dtype(), DType::F32);
    check_replay(&Riccati.field(), &trace, &ts, &sol.ys, &opts)?;
    Ok(())
}

fn traced_event_replays_to_the_event(dev: &Device) -> Result<()> {
    // A damped rotation until its first component, e^{−0.1 t} cos t, falls through zero at
    // t* = π/2: the trace runs to the end of the event's step, and
    // replaying the last stretch with t* as an output gives the located state exactly.
    let p = Rotation {
        decay: 0.1,
        freq: 1.0,
    };
    let y0 = Tensor::new(&[1.0f64, 0.0], dev)?;
    let g = |_t: f64, y: &Tensor| y.narrow(0, 0, 1);
    let opts = SolveOptions::default().tolerances(1e-9, 1e-9);
    let ev = EventOptions::default();
    let (found, trace) = locate_event_traced(&p.field(), &y0, 0.0, 10.0, &g, &opts, &ev, 2)?;
    assert_eq!(found.event, Some(0));
    assert!((found.t - std::f64::consts::FRAC_PI_2).abs() < 1e-9);
    assert_eq!(trace.steps(), found.stats.accepted_steps);
    let last = trace.times[trace.steps()];
    assert!(
        last > found.t,
        "the trace ends at {last}, before the event at {}",
        found.t
    );
    let range = trace.segments().last().expect("a stretch");
    let t_s = trace.times[range.start];
    let grid = &trace.times[range.start..=range.end];
    let k = trace.states.len() - 1;
    let replay = odeint(
        &p.field(),
        &trace.states[k],
        &[t_s, found.t, last],
        &opts.clone().step_grid(grid),
    )?;
    assert_eq!(max_abs_diff(&replay.ys.get(1)?, &found.y)?, 0.0);
    // Without an event before t_max the trace ends at t_max.
    let (found, trace) = locate_event_traced(&p.field(), &y0, 0.0, 1.0, &g, &opts, &ev, 2)?;
    assert_eq!((found.event, trace.times[trace.steps()]), (None, 1.0));
    Ok(())
}

fn grid_errors(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let f = |_t: f64, y: &Tensor| y.neg();
    let err = |grid: Vec<f64>, ts: &[f64]| -> SolverError {
        let opts = SolveOptions::default().step_grid(grid);
        let e = odeint(&f, &y0, ts, &opts).expect_err("a bad grid must fail");
        SolverError::find(&e)
            .cloned()
            .expect("a typed solver error")
    };
    let cases: [(Vec<f64>, &[f64], &str); 6] = [
        (vec![0.0], &[0.0, 1.0], "2 times or more"),
        (
            vec![0.0, 0.5, 0.5, 1.0],
            &[0.0, 1.0],
            "not strictly monotone",
        ),
        (
            vec![0.0, 0.7, 0.5, 1.0],
            &[0.0, 1.0],
            "not strictly monotone",
        ),
        (vec![0.0, f64::NAN, 1.0], &[0.0, 1.0], "time 1 is NaN"),
        (vec![0.0, 0.5, 0.9], &[0.0, 1.0], "runs from 0 to 0.9"),
        (
            vec![0.0, 0.5, 1.0],
            &[1.0, 0.0],
            "runs from 0 to 1, the solve from 1 to 0",
        ),
    ];
    for (grid, ts, want) in cases {
        match err(grid.clone(), ts) {
            SolverError::InvalidOptions(msg) => {
                assert!(msg.contains(want), "grid {grid:?}: {msg:?} lacks {want:?}")
            }
            e => panic!("grid {grid:?}: {e:?}"),
        }
    }
    let opts = SolveOptions::default()
        .step_grid(uniform(0.0, 1.0, 20))
        .max_steps(10);
    let e = odeint(&f, &y0, &[0.0, 1.0], &opts).expect_err("too many steps");
    assert!(matches!(
        SolverError::find(&e),
        Some(SolverError::MaxStepsExceeded { steps: 20, .. })
    ));
    let e =
        odeint_traced(&f, &y0, &[0.0, 1.0], &SolveOptions::default(), 0).expect_err("max_states 0");
    assert!(matches!(
        SolverError::find(&e),
        Some(SolverError::InvalidOptions(_))
    ));
    Ok(())
}

candle_core::test_device!(
    uniform_grid_is_fixed_steps,
    uniform_grid_is_fixed_steps_cpu,
    uniform_grid_is_fixed_steps_cuda,
    uniform_grid_is_fixed_steps_metal
);
candle_core::test_device!(
    graded_grid_converges_at_the_method_order,
    graded_grid_converges_at_the_method_order_cpu,
    graded_grid_converges_at_the_method_order_cuda,
    graded_grid_converges_at_the_method_order_metal
);
candle_core::test_device!(
    reverse_time_grid,
    reverse_time_grid_cpu,
    reverse_time_grid_cuda,
    reverse_time_grid_metal
);
candle_core::test_device!(
    traced_solves_replay_exactly,
    traced_solves_replay_exactly_cpu,
    traced_solves_replay_exactly_cuda,
    traced_solves_replay_exactly_metal
);
candle_core::test_device!(
    traced_f32,
    traced_f32_cpu,
    traced_f32_cuda,
    traced_f32_metal
);
candle_core::test_device!(
    grid_errors,
    grid_errors_cpu,
    grid_errors_cuda,
    grid_errors_metal
);
candle_core::test_device!(
    traced_event_replays_to_the_event,
    traced_event_replays_to_the_event_cpu,
    traced_event_replays_to_the_event_cuda,
    traced_event_replays_to_the_event_metal
);

//! Adaptive solves: accuracy against exact solutions, dense output, reverse time,
//! per-component tolerances, dtypes and batches.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use node_solvers::problems::{Exponential, Riccati, Rotation};
use node_solvers::{odeint, Method, SolveOptions, StepController};

fn rotation_y0(dev: &Device, dtype: DType) -> Result<Tensor> {
    // A batch of 4 independent initial conditions, shape [4, 2].
    Ok(
        Tensor::new(&[[1.0f64, 0.0], [0.0, 2.0], [-1.5, 0.5], [0.3, -0.7]], dev)?
            .to_dtype(dtype)?,
    )
}

fn error_tracks_tolerance(dev: &Device) -> Result<()> {
    let p = Rotation {
        decay: 0.1,
        freq: 2.0,
    };
    let y0 = rotation_y0(dev, DType::F64)?;
    let ts: Vec<f64> = (0..=20).map(|i| i as f64 * 0.25).collect();
    // The global error of a local-error controller is a problem-dependent multiple of the
    // tolerance. dopri5 and tsit5 must stay within 10× (measured ≤ 10× here, torchdiffeq's
    // dopri5 8–10× on the same problem); the other pairs within torchdiffeq's own measured
    // multiple on this problem and tolerances: adaptive_heun 21×, bosh3 1495×, dopri8 1632×.
    // fehlberg2's error is not controlled by either implementation (its estimate measures the
    // discarded first-order solution): torchdiffeq 2069–2110×, ours 2132× at 1e-4.
    for (m, bound) in [
        (Method::AdaptiveHeun, 21.0),
        (Method::Fehlberg2, 2500.0),
        (Method::Bosh3, 1495.0),
        (Method::Dopri5, 10.0),
        (Method::Tsit5, 10.0),
        (Method::Dopri8, 1632.0),
    ] {
        let mut prev = f64::INFINITY;
        for tol in [1e-4, 1e-6, 1e-8] {
            if m.order() <= 2 && tol < 1e-6 {
                continue; // second-order pairs need ~10^5 steps for 1e-8
            }
            let opts = SolveOptions::default().method(m).tolerances(tol, tol);
            let sol = odeint(&p.field(), &y0, &ts, &opts)?;
            let mut err: f64 = 0.0;
            for (i, &t) in ts.iter().enumerate() {
                err = err.max(max_abs_diff(&sol.ys.get(i)?, &p.exact(&y0, 0.0, t)?)?);
            }
            // Local error control gives a global error of a small multiple of the tolerance
            // on this non-stiff problem (5 time units, |y| ≤ 2): measured ≤ 6× for every pair.
            assert!(
                err < bound * tol,
                "{m} tol {tol:e}: global error {err:e} > {bound} tol"
            );
            assert!(
                err < prev,
                "{m}: error did not fall when tightening to {tol:e}"
            );
            prev = err;
        }
    }
    Ok(())
}

fn outputs_cost_no_evaluations(dev: &Device) -> Result<()> {
    // Only the final time clips a step, so interior output times come from dense output and
    // the step sequence (hence NFE) is identical with 2 or 41 output times.
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let many: Vec<f64> = (0..=40).map(|i| i as f64 * 0.05).collect();
    for m in Method::ALL.into_iter().filter(|m| m.is_adaptive()) {
        let opts = SolveOptions::default().method(m).tolerances(1e-6, 1e-8);
        let few = odeint(&p.field(), &y0, &[0.0, 2.0], &opts)?;
        let dense = odeint(&p.field(), &y0, &many, &opts)?;
        assert_eq!(few.stats, dense.stats, "{m}");
        for (i, &t) in many.iter().enumerate() {
            let e = max_abs_diff(&dense.ys.get(i)?, &p.exact(&y0, 0.0, t)?)?;
            // fehlberg2's global error is ~1000× its tolerance (see error_tracks_tolerance);
            // so is implicit Euler's, a first-order method whose estimate (the difference
            // to forward Euler) is of second order (3.4e-5 measured). kvaerno5's dense output
            // is the cubic Hermite (as diffrax's): third order inside the long steps of a
            // fifth-order method (8.0e-5 measured, against 3.6e-6 at the steps' ends).
            // kencarp4's and kencarp5's are Kennedy and Carpenter's, also of third order
            // (2.3e-5 and 2.3e-4 measured inside 10 and 7 steps, 3.9e-6 and 9.5e-6 at the
            // end). rkc's error is its solution's, not the interpolant's: a second-order
            // method whose estimate is its own local error takes 109 steps, each within the
            // tolerance, to a global error of 2.7e-5 (1.1e-5 at t = 0.2 where a solve to
            // 0.2 ends a step there; measured).
            let bound = match m {
                Method::Fehlberg2 | Method::ImplicitEuler => 1e-3,
                Method::Kvaerno5 | Method::KenCarp4 | Method::Rkc => 1e-4,
                Method::KenCarp5 => 5e-4,
                _ => 1e-5,
            };
            assert!(e < bound, "{m}: dense output error {e:e} at t = {t}");
        }
    }
    Ok(())
}

fn reverse_time(dev: &Device) -> Result<()> {
    let p = Riccati;
    let y2 = Tensor::new(&[0.6f64, 0.3], dev)?;
    let ts = [2.0, 1.3, 0.4, -0.5];
    for m in [Method::Dopri5, Method::Tsit5, Method::Bosh3] {
        let sol = odeint(&p.field(), &y2, &ts, &SolveOptions::default().method(m))?;
        for (i, &t) in ts.iter().enumerate() {
            let e = max_abs_diff(&sol.ys.get(i)?, &p.exact(&y2, 2.0, t)?)?;
            // |y| grows to 3.6 going backwards; torchdiffeq's dopri5 error on the same solve
            // is 2.1e-6 at the default tolerances.
            assert!(e < 1e-5, "{m}: reverse-time error {e:e} at t = {t}");
        }
    }
    // Fixed steps backwards keep their order: halving h cuts RK4's error ~16×.
    let mut errs = vec![];
    for h in [0.02, 0.01] {
        let opts = SolveOptions::default().method(Method::Rk4).step_size(h);
        let sol = odeint(&p.field(), &y2, &ts, &opts)?;
        errs.push(max_abs_diff(&sol.last()?, &p.exact(&y2, 2.0, -0.5)?)?);
    }
    assert!(errs[0] / errs[1] > 12.0, "rk4 reverse errors {errs:?}");
    Ok(())
}

fn per_component_atol(dev: &Device) -> Result<()> {
    // Component 0 decays to ~1e-9 (atol matters), component 1 stays O(1).
    let y0 = Tensor::new(&[1.0f64, 1.0], dev)?;
    let rates = Tensor::new(&[-20.0f64, -0.1], dev)?;
    let f = |_t: f64, y: &Tensor| y.mul(&rates);
    let ts = [0.0, 1.0];
    let base = SolveOptions::default().rtol(1e-6);
    let tight = odeint(&f, &y0, &ts, &base.clone().atol(1e-12))?;
    let same = odeint(
        &f,
        &y0,
        &ts,
        &base.clone().atol(Tensor::new(&[1e-12f64, 1e-12], dev)?),
    )?;
    // The same steps; the tensor atol costs one read more (its check).
    let mut same_stats = same.stats;
    same_stats.host_reads -= 1;
    assert_eq!(
        tight.stats, same_stats,
        "a constant per-component atol equals the scalar one"
    );
    let loose = odeint(
        &f,
        &y0,
        &ts,
        &base.clone().atol(Tensor::new(&[1e-4f64, 1e-12], dev)?),
    )?;
    assert!(
        loose.stats.nfe < tight.stats.nfe,
        "a loose atol on the vanishing component saves evaluations ({} vs {})",
        loose.stats.nfe,
        tight.stats.nfe
    );
    let exact1 = (-0.1f64).exp();
    let got = loose.last()?.to_vec1::<f64>()?;
    assert!(
        (got[1] - exact1).abs() < 1e-5,
        "the tight component stays accurate"
    );
    // A tolerance shaped like the batch dimension broadcasts: [2] against a state [3, 2].
    let yb = Tensor::ones((3, 2), DType::F64, dev)?;
    let fb = |_t: f64, y: &Tensor| y.neg();
    odeint(
        &fb,
        &yb,
        &ts,
        &base.atol(Tensor::new(&[1e-8f64, 1e-6], dev)?),
    )?;
    Ok(())
}

fn f32_and_f64(dev: &Device) -> Result<()> {
    let p = Rotation {
        decay: 0.2,
        freq: 1.0,
    };
    for (dtype, tol, bound) in [(DType::F64, 1e-8, 1e-6), (DType::F32, 1e-5, 1e-4)] {
        let y0 = rotation_y0(dev, dtype)?;
        let opts = SolveOptions::default().tolerances(tol, tol);
        let sol = odeint(&p.field(), &y0, &[0.0, 3.0], &opts)?;
        assert_eq!(sol.ys.dtype(), dtype);
        assert_eq!(sol.ys.dims(), &[2, 4, 2]);
        let exact = p.exact(&y0.to_dtype(DType::F64)?, 0.0, 3.0)?;
        let e = max_abs_diff(&sol.last()?.to_dtype(DType::F64)?, &exact)?;
        assert!(e < bound, "{dtype:?}: error {e:e}");
    }
    Ok(())
}

fn batch_matches_single(dev: &Device) -> Result<()> {
    // Each row of a batch ends within tolerance of the same row solved alone.
    let p = Exponential { rate: -0.7 };
    let y0 = Tensor::new(&[[1.0f64, 2.0], [3.0, -1.0], [0.5, 0.25]], dev)?;
    let opts = SolveOptions::default();
    let batch = odeint(&p.field(), &y0, &[0.0, 1.5], &opts)?.last()?;
    for r in 0..3 {
        let single = odeint(&p.field(), &y0.get(r)?, &[0.0, 1.5], &opts)?.last()?;
        assert!(max_abs_diff(&batch.get(r)?, &single)? < 1e-7);
    }
    Ok(())
}

fn step_counts_snapshot(dev: &Device) -> Result<()> {
    // Snapshots of evaluation and step counts catch controller regressions (values recorded
    // from this implementation; torchdiffeq counts the same way: 2 evaluations for the
    // initial step, then 6 per dopri5 step).
    let p = Rotation {
        decay: 0.1,
        freq: 2.0,
    };
    let y0 = rotation_y0(dev, DType::F64)?;
    let ts = [0.0, 10.0];
    let run = |c: StepController| -> Result<_> {
        let opts = SolveOptions::default().tolerances(1e-6, 1e-8).controller(c);
        Ok(odeint(&p.field(), &y0, &ts, &opts)?.stats)
    };
    let pi = run(StepController::PI_DEFAULT)?;
    let integral = run(StepController::default())?;
    assert_eq!(pi.nfe, 2 + 6 * (pi.accepted_steps + pi.rejected_steps));
    // torchdiffeq's dopri5 takes exactly 650 evaluations on this solve.
    assert_eq!(integral.nfe, 650);
    assert_eq!(
        (pi.nfe, pi.accepted_steps, pi.rejected_steps),
        SNAPSHOT_PI,
        "PI controller counts changed"
    );
    assert_eq!(
        (
            integral.nfe,
            integral.accepted_steps,
            integral.rejected_steps
        ),
        SNAPSHOT_INTEGRAL,
        "integral controller counts changed"
    );
    Ok(())
}

fn host_reads_one_per_step(dev: &Device) -> Result<()> {
    // A GPU waits at every read back to the host: an adaptive solve reads its error ratio once
    // per step (accepted or rejected), plus two reads to pick the first step; output times in
    // between (dense output) and the stages read nothing.
    let p = Rotation {
        decay: 0.1,
        freq: 2.0,
    };
    let y0 = rotation_y0(dev, DType::F32)?;
    let ts: Vec<f64> = (0..=160).map(|i| i as f64 / 16.0).collect();
    let opts = SolveOptions::default().tolerances(1e-5, 1e-7);
    let s = odeint(&p.field(), &y0, &ts, &opts)?.stats;
    // More outputs than steps: most outputs fall inside a step.
    assert!(s.accepted_steps > 10 && s.accepted_steps < ts.len() / 2);
    assert_eq!(s.host_reads, 2 + s.accepted_steps + s.rejected_steps);

    // Rejections count as steps: a first step far too large is rejected before any is taken.
    let s = odeint(&p.field(), &y0, &ts, &opts.clone().first_step(5.0))?.stats;
    assert!(s.rejected_steps > 0);
    // A given first step is checked for a finite state and slope instead (one read).
    assert_eq!(s.host_reads, 1 + s.accepted_steps + s.rejected_steps);

    // A per-component atol is checked once.
    let atol = Tensor::new(&[1e-7f32, 1e-6], dev)?;
    let s = odeint(&p.field(), &y0, &ts, &opts.clone().atol(atol))?.stats;
    assert_eq!(s.host_reads, 3 + s.accepted_steps + s.rejected_steps);

    // A fixed-step solve reads once in all, to check its outputs.
    let opts = SolveOptions::default().method(Method::Rk4).fixed_steps(200);
    let s = odeint(&p.field(), &y0, &ts, &opts)?.stats;
    assert_eq!((s.accepted_steps, s.host_reads), (200, 1));
    // Without the check, none (what recording the solve into a CUDA graph needs); the
    // result is the same.
    let checked = odeint(&p.field(), &y0, &ts, &opts)?.ys;
    let sol = odeint(&p.field(), &y0, &ts, &opts.clone().check_finite(false))?;
    assert_eq!((sol.stats.accepted_steps, sol.stats.host_reads), (200, 0));
    let gap = (sol.ys - checked)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(gap, 0.0);
    Ok(())
}

/// The count above is taken in the solver's one reading function; no other read may hide in
/// the solver's code (outside its unit tests).
#[test]
fn no_host_read_outside_the_counted_one() -> Result<()> {
    // Every `.rs` file under `src/`, submodules' folders included: the crate's, or, for a
    // test binary run on another machine from the package's folder, `./src`.
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let src = if built.is_dir() {
        built
    } else {
        std::path::PathBuf::from("src")
    };
    let mut files = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.iter().any(|p| p.ends_with("fused/cuda.rs")));
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        let reads = ["to_scalar", "to_vec0", "to_vec1", "to_vec2", "to_vec3"]
            .iter()
            .map(|r| code.matches(&format!(".{r}")).count())
            .sum::<usize>();
        let allowed = usize::from(path.ends_with("rk.rs"));
        assert_eq!(
            reads,
            allowed,
            "{}: reads to the host outside `Evaluator::read`",
            path.display()
        );
    }
    Ok(())
}

const SNAPSHOT_PI: (usize, usize, usize) = (632, 104, 1);
const SNAPSHOT_INTEGRAL: (usize, usize, usize) = (650, 91, 17);

candle_core::test_device!(
    error_tracks_tolerance,
    error_tracks_tolerance_cpu,
    error_tracks_tolerance_cuda,
    error_tracks_tolerance_metal
);
candle_core::test_device!(
    outputs_cost_no_evaluations,
    dense_outputs_free_cpu,
    dense_outputs_free_cuda,
    dense_outputs_free_metal
);
candle_core::test_device!(
    reverse_time,
    reverse_time_cpu,
    reverse_time_cuda,
    reverse_time_metal
);
candle_core::test_device!(
    per_component_atol,
    per_component_atol_cpu,
    per_component_atol_cuda,
    per_component_atol_metal
);
candle_core::test_device!(f32_and_f64, dtypes_cpu, dtypes_cuda, dtypes_metal);
candle_core::test_device!(batch_matches_single, batch_cpu, batch_cuda, batch_metal);
candle_core::test_device!(
    step_counts_snapshot,
    step_counts_cpu,
    step_counts_cuda,
    step_counts_metal
);
candle_core::test_device!(
    host_reads_one_per_step,
    host_reads_cpu,
    host_reads_cuda,
    host_reads_metal
);

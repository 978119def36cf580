//! The Rosenbrock methods (`rodas4`, `rodas4p`, `rodas5p`, `ros34pw2`): stiff problems against reference values,
//! the time derivative of non-autonomous stiff problems, dense output, adaptive accuracy,
//! evaluation and Jacobian counts, the Jacobian options, f32, reverse time, events, and
//! their errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::{brusselator_at_10, fitted_slope, max_abs_diff, worst_riccati_error};
use node_solvers::problems::{Riccati, Robertson};
use node_solvers::{
    odeint, odeint_event, EventOptions, Jacobian, Method, SolveOptions, SolverError, WithJacobian,
};

const RODAS: [Method; 4] = [
    Method::Rodas4,
    Method::Rodas4P,
    Method::Rodas5P,
    Method::Ros34pw2,
];

/// Largest relative error of a `[3]` or `[B, 3]` Robertson state against `want`.
fn worst_rel_error(y: &Tensor, want: &[f64; 3]) -> Result<f64> {
    let y = y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(y.iter()
        .enumerate()
        .map(|(i, v)| (v - want[i % 3]).abs() / want[i % 3].abs())
        .fold(0.0, f64::max))
}

/// Robertson's kinetics to t = 10⁵ against the reference values, with the field's own
/// Jacobian and with differences: a fresh Jacobian at every step start, and per attempted
/// step `s − 1` stage evaluations and two for `∂f/∂t`.
fn robertson_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?;
    let [(t40, at40), (t5, at5)] = Robertson::REFERENCE;
    let exact = WithJacobian::new(p.field(), p.jacobian());
    // Measured: rodas4 227 steps at 1e-6 (kvaerno3: 850), rodas5p 309 at 1e-8 (kvaerno5:
    // 168, with 3571 evaluations against rodas5p's 3118).
    for (m, rtol, bound, most_steps) in [
        (Method::Rodas4, 1e-6, 1e-4, 300),
        (Method::Rodas4P, 1e-6, 1e-4, 300),
        (Method::Rodas5P, 1e-8, 1e-5, 400),
        (Method::Ros34pw2, 1e-6, 1e-4, 1000),
    ] {
        let s = m.tableau().expect("a tableau").stages();
        let opts = SolveOptions::default().method(m).tolerances(rtol, 1e-14);
        let own = odeint(&exact, &y0, &[0.0, t40, t5], &opts)?;
        let fd = odeint(&p.field(), &y0, &[0.0, t40, t5], &opts)?;
        println!(
            "{m}: own Jacobian {:?}, differences {:?}",
            own.stats, fd.stats
        );
        for sol in [&own, &fd] {
            let worst = worst_rel_error(&sol.ys.get(1)?, &at40)?
                .max(worst_rel_error(&sol.ys.get(2)?, &at5)?);
            assert!(
                worst < bound,
                "{m}: relative error {worst:e} ({:?})",
                sol.stats
            );
            assert!(
                sol.stats.accepted_steps < most_steps,
                "{m}: {:?}",
                sol.stats
            );
        }
        let st = own.stats;
        let attempts = st.accepted_steps + st.rejected_steps;
        // One Jacobian per step start: retried steps keep theirs.
        assert!(
            st.jacobians >= st.accepted_steps && st.jacobians <= attempts,
            "{m}: {st:?}"
        );
        // Per attempt s − 1 stages and two for ∂f/∂t; per accepted step but the last, the
        // next start's f0; and the first step's two (f0 and Hairer's trial step).
        assert_eq!(
            st.nfe,
            (s + 1) * attempts + st.accepted_steps - 1 + 2,
            "{m}: {st:?}"
        );
        // Differences add 3 evaluations per Jacobian, and one at y.
        let st = fd.stats;
        let attempts = st.accepted_steps + st.rejected_steps;
        assert_eq!(
            st.nfe,
            4 * st.jacobians + (s + 1) * attempts + st.accepted_steps - 1 + 2,
            "{m}: {st:?}"
        );
    }
    Ok(())
}

/// Prothero–Robinson, `y' = λ (y − φ(t)) + φ'(t)` with `φ = sin`, `λ = −10⁶`, from `y = φ(0)`:
/// the solution is `φ` and the field depends on `t` through the stiff term. Steps of 0.1
/// (10⁵ times the stiff time scale) follow `φ` because the methods are stiffly accurate and
/// take `∂f/∂t` into account; without it (`d = 0`) the error would be of the order of
/// `h φ'`.
fn prothero_robinson_case(dev: &Device) -> Result<()> {
    let lambda = -1e6;
    let f = move |t: f64, y: &Tensor| y.affine(lambda, t.cos() - lambda * t.sin());
    let y0 = Tensor::new(&[0.0f64], dev)?;
    let t1: f64 = 2.0;
    let want = Tensor::new(&[t1.sin()], dev)?;
    // ros34pw2, third order, takes more steps at rtol 1e-8 (measured 1410 against the Rodas
    // methods' fewer than 400).
    for m in RODAS {
        let most_steps = if m == Method::Ros34pw2 { 1600 } else { 400 };
        let opts = SolveOptions::default().method(m).fixed_steps(20);
        let e = max_abs_diff(&odeint(&f, &y0, &[0.0, t1], &opts)?.last()?, &want)?;
        println!("{m}: 20 steps, error {e:e}");
        assert!(e < 1e-8, "{m}: error {e:e}");
        // Adaptive, from a start off the slow solution: a transient of 10⁻⁶, then long steps.
        let y0 = Tensor::new(&[1.0f64], dev)?;
        let opts = SolveOptions::default().method(m).tolerances(1e-8, 1e-10);
        let sol = odeint(&f, &y0, &[0.0, t1], &opts)?;
        let e = max_abs_diff(&sol.last()?, &want)?;
        println!("{m}: adaptive {:?}, error {e:e}", sol.stats);
        assert!(e < 1e-7, "{m}: error {e:e}");
        assert!(
            sol.stats.accepted_steps < most_steps,
            "{m}: {:?}",
            sol.stats
        );
    }
    Ok(())
}

/// The dense output between steps: third order for rodas4 and fourth for rodas5p, observed
/// on Riccati with fixed steps.
fn dense_output_case(dev: &Device) -> Result<()> {
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let ts = [0.0, 0.377, 1.113, 1.5];
    for (m, want) in [
        (Method::Rodas4, 3.0),
        (Method::Rodas4P, 3.0),
        (Method::Rodas5P, 4.0),
        (Method::Ros34pw2, 3.0),
    ] {
        let mut hs = vec![];
        let mut errs = vec![];
        for n in [16, 32, 64] {
            let opts = SolveOptions::default().method(m).fixed_steps(n);
            let sol = odeint(&p.field(), &y0, &ts, &opts)?;
            hs.push(1.5 / n as f64);
            errs.push(worst_riccati_error(&sol.ys, &y0, &ts)?);
        }
        let slope = fitted_slope(&hs, &errs);
        println!("{m}: dense output order {slope:.2} ({errs:?})");
        assert!(
            slope > want - 0.3,
            "{m}: dense output order {slope:.2} < {want}"
        );
    }
    Ok(())
}

/// Adaptive solves meet their tolerance on Riccati, forwards and backwards in time, in f64
/// and f32, and a Brusselator solve follows a tight dopri5 one in far fewer steps.
fn adaptive_case(dev: &Device) -> Result<()> {
    let p = Riccati;
    for m in RODAS {
        let start = Tensor::new(&[1.0f64, 0.5], dev)?;
        // Backwards from where the forward solution ends (from [1, 0.5] at t = 2 the
        // solution would grow to 11 at t = 0).
        let end = p.exact(&start, 0.0, 2.0)?;
        for (t0, t1, y0) in [(0.0, 2.0, &start), (2.0, 0.0, &end)] {
            let mut last = f64::INFINITY;
            for rtol in [1e-4, 1e-6, 1e-8] {
                let opts = SolveOptions::default().method(m).tolerances(rtol, rtol);
                let sol = odeint(&p.field(), y0, &[t0, t1], &opts)?;
                let e = max_abs_diff(&sol.last()?, &p.exact(y0, t0, t1)?)?;
                println!(
                    "{m} {t0} → {t1} rtol {rtol:e}: error {e:e}, {:?}",
                    sol.stats
                );
                assert!(e < 30.0 * rtol, "{m}: error {e:e} at rtol {rtol:e}");
                assert!(e < last, "{m}: error {e:e} did not fall with rtol {rtol:e}");
                last = e;
            }
        }
        let y0 = Tensor::new(&[1.0f32, 0.5], dev)?;
        let opts = SolveOptions::default().method(m).tolerances(1e-4, 1e-6);
        let sol = odeint(&p.field(), &y0, &[0.0, 2.0], &opts)?;
        assert_eq!(sol.ys.dtype(), DType::F32);
        let e = max_abs_diff(&sol.last()?, &p.exact(&y0, 0.0, 2.0)?)?;
        assert!(e < 1e-3, "{m} f32: error {e:e}");
    }
    let (b, y0, tight) = brusselator_at_10(64, dev)?;
    let ts = [0.0, 10.0];
    let dopri5 = odeint(
        &b.field(),
        &y0,
        &ts,
        &SolveOptions::default().tolerances(1e-6, 1e-6),
    )?;
    let f = WithJacobian::new(b.field(), b.jacobian());
    // Fewer steps than dopri5 by 5 for the Rodas methods, by 3 for ros34pw2 (third order at
    // rtol 1e-6: measured 313 steps against dopri5's 1021).
    for m in RODAS {
        let fewer = if m == Method::Ros34pw2 { 3 } else { 5 };
        let opts = SolveOptions::default().method(m).tolerances(1e-6, 1e-6);
        let sol = odeint(&f, &y0, &ts, &opts)?;
        let e = max_abs_diff(&sol.last()?, &tight)?;
        println!(
            "Brusselator {m}: {:?}, error {e:e}; dopri5 {:?}",
            sol.stats, dopri5.stats
        );
        assert!(e < 1e-4, "{m}: Brusselator error {e:e}");
        assert!(
            fewer * sol.stats.accepted_steps < dopri5.stats.accepted_steps,
            "{m}: {:?} against dopri5 {:?}",
            sol.stats,
            dopri5.stats
        );
    }
    Ok(())
}

/// Independent systems with batched Jacobian blocks give what each system gives alone; an
/// event is located on the dense output.
fn batched_and_event_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let [(t40, at40), _] = Robertson::REFERENCE;
    let one = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?;
    let four = one.unsqueeze(0)?.repeat((4, 1))?;
    for m in RODAS {
        let opts = SolveOptions::default().method(m).tolerances(1e-7, 1e-14);
        let dense = odeint(&p.field(), &one, &[0.0, t40], &opts)?;
        let batched = odeint(
            &p.field(),
            &four,
            &[0.0, t40],
            &opts.clone().jacobian(Jacobian::Batched),
        )?;
        let worst = worst_rel_error(&batched.last()?, &at40)?;
        assert!(worst < 1e-5, "{m}: batched relative error {worst:e}");
        // The same steps and evaluations (each batched build: 3 evaluations and one at y,
        // whatever the batch), and the same solution up to rounding: the error norm sums 12
        // components against 3 (measured 5.3e-14, 1.9e-15 and 0 apart at t = 40; 5.3e-12
        // when `∂f/∂t`, zero here, was weighed from f0, f1 and f2 apart and kept rounding).
        println!("{m}: single {:?}, batched {:?}", dense.stats, batched.stats);
        assert_eq!(dense.stats.nfe, batched.stats.nfe, "{m}");
        assert_eq!(
            dense.stats.accepted_steps, batched.stats.accepted_steps,
            "{m}"
        );
        let gap = max_abs_diff(&batched.last()?.get(2)?, &dense.last()?)?;
        assert!(gap < 1e-12, "{m}: batched and single differ by {gap:e}");
    }
    // y' = −λ (y − cos t) crosses zero at π/2 + 1/λ + O(1/λ³).
    let lambda = 1e6;
    let f = move |t: f64, y: &Tensor| y.affine(-lambda, lambda * t.cos());
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let down = |_t: f64, y: &Tensor| Ok(y.clone());
    let want = std::f64::consts::FRAC_PI_2 + 1.0 / lambda;
    // The crossing is located on the dense output, whose error inside the long steps of a
    // method that keeps its order on this forced problem is the larger one (measured:
    // rodas4 5.1e-11 in 1911 steps, rodas4p 1.6e-8 in 14 with its third-order dense output,
    // rodas5p 6.0e-10 in 17 with its fourth-order one).
    for (m, bound) in [
        (Method::Rodas4, 1e-9),
        (Method::Rodas4P, 1e-7),
        (Method::Rodas5P, 1e-8),
        (Method::Ros34pw2, 1e-7),
    ] {
        let opts = SolveOptions::default().method(m).tolerances(1e-10, 1e-12);
        let sol = odeint_event(&f, &y0, 0.0, 3.0, &down, &opts, &EventOptions::default())?;
        println!("{m} event: t = {} ({:?})", sol.t, sol.stats);
        assert_eq!(sol.event, Some(0), "{m}");
        assert!(
            (sol.t - want).abs() < bound,
            "{m}: event at {} not {want}",
            sol.t
        );
    }
    Ok(())
}

/// Components outside the Jacobian's blocks are integrals (an adjoint's parameter
/// gradients, a CNF's log-density): `[y, q]` with Riccati's `y' = f(t, y)` and `q' = f(t, y)`,
/// so `q(t) = q0 + y(t) − y0`. With the whole Jacobian a Rosenbrock step keeps that
/// invariant exactly (each stage's `q` part equals its `y` part), so `q` has `y`'s error. The
/// rows of the Jacobian that the blocks leave out enter each stage as a forward difference
/// along the stage (one more evaluation), whose `O(√ε)` relative error leaves a gap of
/// order `h √ε` (measured: rodas5p 7.5e-10, 4.2e-10, 1.9e-10 at 16, 32, 64 steps, rodas4
/// 1.0e-10 to 3.0e-11). Without those rows the integrals converge at order 1 (rodas4: errors
/// 1.5e-3, 7.0e-4, 3.4e-4 at 32, 64, 128 steps).
fn integrals_case(dev: &Device) -> Result<()> {
    let f = |t: f64, y: &Tensor| -> candle_core::Result<Tensor> {
        let fy = y.narrow(0, 0, 2)?.sqr()?.affine(-t.cos(), 0.0)?;
        Tensor::cat(&[&fy, &fy], 0)
    };
    let y0 = Tensor::new(&[1.0f64, 0.5, 0.25, -1.0], dev)?;
    let (t0, t1) = (0.0, 2.0);
    let yz = Tensor::new(&[1.0f64, 0.5], dev)?;
    let y1 = Riccati.exact(&yz, t0, t1)?;
    let q1 = ((&y1 - &yz)? + Tensor::new(&[0.25f64, -1.0], dev)?)?;
    let exact = Tensor::cat(&[&y1, &q1], 0)?;
    // max |q − q0 − (y − y0)| at the end.
    let gap = |y: &Tensor| -> Result<f64> {
        let shift = (y.narrow(0, 2, 2)? - y.narrow(0, 0, 2)?)?;
        let want = (y0.narrow(0, 2, 2)? - y0.narrow(0, 0, 2)?)?;
        max_abs_diff(&shift, &want)
    };
    for m in RODAS {
        let s = m.tableau().expect("a tableau").stages();
        for (jac, columns) in [
            (Jacobian::DensePrefix(2), 2),
            (Jacobian::Blocks { count: 2, size: 1 }, 1),
        ] {
            for n in [16, 32, 64] {
                let opts = SolveOptions::default()
                    .method(m)
                    .fixed_steps(n)
                    .jacobian(jac);
                let sol = odeint(&f, &y0, &[t0, t1], &opts)?;
                let y = sol.last()?;
                let (e_y, e_q) = (
                    max_abs_diff(&y.narrow(0, 0, 2)?, &y1)?,
                    max_abs_diff(&y.narrow(0, 2, 2)?, &q1)?,
                );
                let g = gap(&y)?;
                println!("{m} {jac:?} {n} steps: error of y {e_y:e}, of q {e_q:e}, gap {g:e}");
                assert!(g < 1e-9, "{m} {jac:?} {n} steps: gap {g:e}");
                // Per step: s − 1 stages, s differences along them, 2 for ∂f/∂t, the
                // Jacobian's differences (one per column, and one at y), and the next f0.
                assert_eq!(
                    sol.stats.nfe,
                    n * ((s - 1) + s + 2 + (columns + 1) + 1),
                    "{m} {jac:?}"
                );
            }
            // Adaptive, with the error measured on y alone (the adjoint's seminorm).
            let opts = SolveOptions::default()
                .method(m)
                .tolerances(1e-8, 1e-8)
                .jacobian(jac)
                .norm(node_solvers::ErrorNorm::RmsPrefix(2));
            let sol = odeint(&f, &y0, &[t0, t1], &opts)?;
            let e = max_abs_diff(&sol.last()?, &exact)?;
            println!("{m} {jac:?}: adaptive {:?}, error {e:e}", sol.stats);
            assert!(e < 1e-6, "{m} {jac:?}: error {e:e}");
        }
    }
    Ok(())
}

/// Typed errors: a state that carries a gradient, and a field that turns non-finite.
fn errors_case(dev: &Device) -> Result<()> {
    let p = Robertson::default();
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?;
    for m in RODAS {
        let opts = SolveOptions::default().method(m);
        let v = Var::from_tensor(&y0)?;
        let err = odeint(&p.field(), v.as_tensor(), &[0.0, 1.0], &opts).unwrap_err();
        assert!(
            matches!(
                SolverError::find(&err),
                Some(SolverError::NotDifferentiable { .. })
            ),
            "{err}"
        );
        // √y of a state driven below zero: NaN stages shrink the step to nothing.
        let f = |_t: f64, y: &Tensor| (y.sqrt()? - 1.0)?.affine(1.0, -1.0);
        let y0 = Tensor::new(&[0.5f64], dev)?;
        let err = odeint(&f, &y0, &[0.0, 10.0], &opts).unwrap_err();
        println!("{m}: {err}");
        assert!(SolverError::find(&err).is_some(), "{err}");
    }
    Ok(())
}

/// ros34pw2 is a W-method: kept for up to `jacobian_reuse` steps, its Jacobian serves many
/// steps and the solves stay as accurate, third order with fixed steps and within the
/// tolerance adaptively, on Robertson and on the Brusselator with a Jacobian by differences
/// (129 evaluations each), where the evaluations fall several times.
fn jacobian_reuse_case(dev: &Device) -> Result<()> {
    let m = Method::Ros34pw2;
    // Fixed steps on Riccati, a Jacobian every fourth step: third order still.
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let (mut hs, mut errs) = (vec![], vec![]);
    for n in [32, 64, 128] {
        let opts = SolveOptions::default()
            .method(m)
            .fixed_steps(n)
            .jacobian_reuse(4);
        let sol = odeint(&p.field(), &y0, &[0.0, 1.5], &opts)?;
        assert_eq!(sol.stats.jacobians, n.div_ceil(4), "{:?}", sol.stats);
        hs.push(1.5 / n as f64);
        errs.push(max_abs_diff(&sol.last()?, &p.exact(&y0, 0.0, 1.5)?)?);
    }
    let slope = fitted_slope(&hs, &errs);
    println!("ros34pw2, a Jacobian every 4 steps: order {slope:.2} ({errs:?})");
    assert!(slope > 2.7, "order {slope:.2}");
    // Any matrix in place of J: zero, or an unrelated constant one. ros34pw2 keeps its third
    // order (measured 3.02 for both); rodas4, not a W-method, falls below first order with
    // J = 0 (measured 0.80).
    let unrelated = Tensor::new(&[[1.0f64, 2.0], [-0.5, 0.3]], dev)?;
    for (m, what, matrix, low, high) in [
        (Method::Ros34pw2, "0", unrelated.zeros_like()?, 2.7, 3.5),
        (Method::Ros34pw2, "unrelated", unrelated.clone(), 2.7, 3.5),
        (Method::Rodas4, "0", unrelated.zeros_like()?, 0.0, 1.5),
    ] {
        let jm = matrix.clone();
        let f = WithJacobian::new(p.field(), move |_t: f64, _y: &Tensor| Ok(jm.clone()));
        let (mut hs, mut errs) = (vec![], vec![]);
        for n in [32, 64, 128] {
            let opts = SolveOptions::default().method(m).fixed_steps(n);
            let sol = odeint(&f, &y0, &[0.0, 1.5], &opts)?;
            hs.push(1.5 / n as f64);
            errs.push(max_abs_diff(&sol.last()?, &p.exact(&y0, 0.0, 1.5)?)?);
        }
        let slope = fitted_slope(&hs, &errs);
        println!("{m} with J = {what}: order {slope:.2} ({errs:?})");
        assert!(
            (low..high).contains(&slope),
            "{m}: order {slope:.2} with an approximate Jacobian"
        );
    }

    let rob = Robertson::default();
    let y0 = Tensor::new(&[1.0f64, 0.0, 0.0], dev)?;
    let [(t40, at40), (t5, at5)] = Robertson::REFERENCE;
    let opts = SolveOptions::default().method(m).tolerances(1e-6, 1e-14);
    let fresh = odeint(&rob.field(), &y0, &[0.0, t40, t5], &opts)?;
    let kept = odeint(
        &rob.field(),
        &y0,
        &[0.0, t40, t5],
        &opts.clone().jacobian_reuse(20),
    )?;
    println!("Robertson: fresh {:?}, kept {:?}", fresh.stats, kept.stats);
    let worst =
        worst_rel_error(&kept.ys.get(1)?, &at40)?.max(worst_rel_error(&kept.ys.get(2)?, &at5)?);
    assert!(worst < 1e-4, "relative error {worst:e}");
    assert!(
        4 * kept.stats.jacobians < fresh.stats.jacobians,
        "{:?} against {:?}",
        kept.stats,
        fresh.stats
    );
    assert!(kept.stats.nfe < fresh.stats.nfe);

    let (b, y0, tight) = brusselator_at_10(64, dev)?;
    let ts = [0.0, 10.0];
    let opts = SolveOptions::default().method(m).tolerances(1e-5, 1e-5);
    let fresh = odeint(&b.field(), &y0, &ts, &opts)?;
    let kept = odeint(&b.field(), &y0, &ts, &opts.clone().jacobian_reuse(10))?;
    let (e_fresh, e_kept) = (
        max_abs_diff(&fresh.last()?, &tight)?,
        max_abs_diff(&kept.last()?, &tight)?,
    );
    println!(
        "Brusselator: fresh {:?} error {e_fresh:e}, kept {:?} error {e_kept:e}",
        fresh.stats, kept.stats
    );
    assert!(e_kept < 1e-3, "error {e_kept:e}");
    assert!(
        3 * kept.stats.nfe < fresh.stats.nfe,
        "{:?} against {:?}",
        kept.stats,
        fresh.stats
    );

    // Only a W-method may keep its Jacobian; 0 steps is no option.
    for (m, reuse, want) in [
        (Method::Rodas5P, 2, "needs a fresh Jacobian every step"),
        (Method::Ros34pw2, 0, "jacobian_reuse must be >= 1"),
    ] {
        let opts = SolveOptions::default().method(m).jacobian_reuse(reuse);
        let err = odeint(&rob.field(), &y0_of(dev)?, &[0.0, 1.0], &opts).unwrap_err();
        assert!(
            matches!(
                SolverError::find(&err),
                Some(SolverError::InvalidOptions(_))
            ) && err.to_string().contains(want),
            "{m}: {err}"
        );
    }
    // The ESDIRK methods ignore it.
    let opts = SolveOptions::default()
        .method(Method::Kvaerno3)
        .jacobian_reuse(5);
    odeint(&rob.field(), &y0_of(dev)?, &[0.0, 1.0], &opts)?;
    Ok(())
}

fn y0_of(dev: &Device) -> Result<Tensor> {
    Ok(Tensor::new(&[1.0f64, 0.0, 0.0], dev)?)
}

candle_core::test_device!(
    robertson_case,
    robertson_cpu,
    robertson_cuda,
    robertson_metal
);
candle_core::test_device!(
    prothero_robinson_case,
    prothero_robinson_cpu,
    prothero_robinson_cuda,
    prothero_robinson_metal
);
candle_core::test_device!(
    dense_output_case,
    dense_output_cpu,
    dense_output_cuda,
    dense_output_metal
);
candle_core::test_device!(adaptive_case, adaptive_cpu, adaptive_cuda, adaptive_metal);
candle_core::test_device!(
    batched_and_event_case,
    batched_and_event_cpu,
    batched_and_event_cuda,
    batched_and_event_metal
);
candle_core::test_device!(
    integrals_case,
    integrals_cpu,
    integrals_cuda,
    integrals_metal
);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);
candle_core::test_device!(
    jacobian_reuse_case,
    jacobian_reuse_cpu,
    jacobian_reuse_cuda,
    jacobian_reuse_metal
);

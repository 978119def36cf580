//! The Runge–Kutta–Chebyshev method `rkc`: its stability polynomial and bound, one step
//! against the polynomial, second order on a nonlinear non-autonomous problem, the spectral
//! radius estimate, and diffusion (stiff) solved in far fewer evaluations than an explicit
//! method of fixed stages needs.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::{brusselator_at_10, fitted_slope, max_abs_diff};
use node_solvers::problems::Riccati;
use node_solvers::rkc::{max_stages, stability_bound, stability_polynomial, stages_for};
use node_solvers::{
    odeint, odeint_dense, odeint_event, odeint_reversible, odeint_traced, EventOptions, Method,
    SolveOptions, SolverError,
};

#[test]
fn stability_polynomial_and_bound() {
    for s in 2..=300 {
        let beta = stability_bound(s);
        // RKC's stage rule keeps h ρ within the bound; β ≈ 0.653 s² for large s.
        assert!(beta >= (s * s - 1) as f64 / 1.54, "s = {s}: β = {beta}");
        assert!(beta <= 0.66 * (s * s) as f64, "s = {s}: β = {beta}");
        // Stable and damped on [−β, 0): |R| ≤ 1, and below 1 away from 0.
        for k in 1..=400 {
            let z = -beta * k as f64 / 400.0;
            let r = stability_polynomial(s, z);
            assert!(r.abs() <= 1.0 + 1e-12, "s = {s}, z = {z}: R = {r}");
            if z < -1.0 {
                assert!(
                    r.abs() < 1.0 - 1e-3,
                    "s = {s}, z = {z}: R = {r} (not damped)"
                );
            }
        }
        // Unstable a little beyond it (where `w0 + w1 z` leaves [−1, 1] the damped polynomial
        // still has |R| = 0.95 for even s, 0.36–0.41 for odd s up to 5; measured, the last
        // stable z is −1.19β for s = 3, −1.06β for s = 5, within 1.02β for the others).
        let r = stability_polynomial(s, -1.25 * beta);
        assert!(r.abs() > 1.0, "s = {s}: R(−1.25β) = {r}");
        // Second order: R(z) = 1 + z + z²/2 + O(z³).
        for z in [-1e-2f64, -1e-3] {
            let e = (stability_polynomial(s, z) - (1.0 + z + z * z / 2.0)).abs();
            assert!(
                e < 2.0 * (s * s) as f64 * z.abs().powi(3),
                "s = {s}, z = {z}: {e:e}"
            );
        }
    }
    assert_eq!(stages_for(0.0), 2);
    assert_eq!(stability_bound(1), 2.0);
    assert_eq!(stability_polynomial(1, -0.5), 0.5);
    for h_rho in [0.5, 3.0, 100.0, 1e4, 1e6] {
        let s = stages_for(h_rho);
        assert!(h_rho <= stability_bound(s), "h ρ = {h_rho}, s = {s}");
        // Within 1% (and one stage) of the fewest stable stages: RKC's rule takes
        // h ρ ≤ (s² − 1)/1.54 where β(s) ≈ 0.653 s² (1241 stages for 1e6, 1238 would do).
        let fewest = (2..).find(|&k| stability_bound(k) >= h_rho).unwrap();
        assert!(
            s - fewest <= (s / 100).max(1),
            "h ρ = {h_rho}: {s} stages, {fewest} would do"
        );
    }
    // RKC's bound on the stages from round-off.
    assert_eq!(max_stages(1e-6, DType::F64), 21222);
    assert_eq!(max_stages(1e-3, DType::F32), 29);
    assert_eq!(max_stages(1e-9, DType::F32), 2);
}

fn one_step_case(dev: &Device) -> Result<()> {
    // y' = λy: one step is the stability polynomial, with the stages the given spectral
    // radius asks for; s + 1 evaluations (the start, s − 1 stages, the end).
    for (lambda, h) in [(-50.0f64, 0.3), (-1.0, 0.1), (-4000.0, 0.25)] {
        let y0 = Tensor::new(&[1.0f64], dev)?;
        let f = move |_t: f64, y: &Tensor| y.affine(lambda, 0.0);
        let opts = SolveOptions::default()
            .method(Method::Rkc)
            .fixed_steps(1)
            .spectral_radius(-lambda);
        let sol = odeint(&f, &y0, &[0.0, h], &opts)?;
        let s = stages_for(-lambda * h);
        let got = sol.last()?.to_vec1::<f64>()?[0];
        let want = stability_polynomial(s, lambda * h);
        assert!((got - want).abs() < 1e-13, "λ = {lambda}: {got} vs {want}");
        assert_eq!(sol.stats.nfe, s + 1, "λ = {lambda}");
        assert_eq!(sol.stats.most_stages, s);
        // A fixed-step solve with a given radius reads once: its outputs' check.
        assert_eq!(sol.stats.host_reads, 1);
    }
    Ok(())
}

fn order_case(dev: &Device) -> Result<()> {
    // Riccati's y' = −y² cos t: nonlinear and non-autonomous (the stages' times matter).
    // Each member of the family (a stage count) is of second order with its own error
    // constant: a radius given as 20/h keeps 6 stages on every grid.
    let p = Riccati;
    let y0 = Tensor::new(&[1.0f64, 0.5], dev)?;
    let exact = p.exact(&y0, 0.0, 2.0)?;
    let mut hs = vec![];
    let mut errs = vec![];
    for n in [16, 32, 64, 128] {
        let h = 2.0 / n as f64;
        let opts = SolveOptions::default()
            .method(Method::Rkc)
            .fixed_steps(n)
            .spectral_radius(20.0 / h);
        let sol = odeint(&p.field(), &y0, &[0.0, 2.0], &opts)?;
        assert_eq!(sol.stats.nfe, 1 + 6 * n);
        assert_eq!(sol.stats.most_stages, 6);
        hs.push(h);
        errs.push(max_abs_diff(&sol.last()?, &exact)?);
    }
    let slope = fitted_slope(&hs, &errs);
    assert!(
        (1.95..2.1).contains(&slope),
        "order {slope:.2}, errors {errs:?}"
    );
    // The estimated radius: the same order.
    let mut est = vec![];
    for n in [16, 32, 64] {
        let opts = SolveOptions::default().method(Method::Rkc).fixed_steps(n);
        est.push(max_abs_diff(
            &odeint(&p.field(), &y0, &[0.0, 2.0], &opts)?.last()?,
            &exact,
        )?);
    }
    let slope = fitted_slope(&hs[..3], &est);
    assert!(
        (1.9..2.3).contains(&slope),
        "estimated ρ: order {slope:.2}, {est:?}"
    );
    Ok(())
}

/// Diffusion `u' = D u_xx` on `n` interior points of `[0, 1]`, zero at the ends: its
/// eigenvalues are `−(4D/Δx²) sin²(kπΔx/2)`, `k = 1..n`, with eigenvectors `sin(kπx_i)`.
struct Heat {
    n: usize,
    d: f64,
}

impl Heat {
    fn dx(&self) -> f64 {
        1.0 / (self.n + 1) as f64
    }

    fn eigenvalue(&self, k: usize) -> f64 {
        let s = (k as f64 * std::f64::consts::PI * self.dx() / 2.0).sin();
        -4.0 * self.d / self.dx().powi(2) * s * s
    }

    fn mode(&self, k: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        let v: Vec<f64> = (1..=self.n)
            .map(|i| (k as f64 * std::f64::consts::PI * i as f64 * self.dx()).sin())
            .collect();
        Ok(Tensor::from_vec(v, self.n, dev)?.to_dtype(dtype)?)
    }

    /// `u(0)`: modes 1 and 3, and a small high one.
    fn initial(&self, dtype: DType, dev: &Device) -> Result<Tensor> {
        let a = self.mode(1, dtype, dev)?;
        let b = self.mode(3, dtype, dev)?.affine(0.5, 0.0)?;
        let c = self.mode(self.n - 2, dtype, dev)?.affine(0.1, 0.0)?;
        Ok(((a + b)? + c)?)
    }

    fn exact(&self, t: f64, dtype: DType, dev: &Device) -> Result<Tensor> {
        let part = |k: usize, w: f64| -> Result<Tensor> {
            Ok(self
                .mode(k, dtype, dev)?
                .affine(w * (self.eigenvalue(k) * t).exp(), 0.0)?)
        };
        Ok(((part(1, 1.0)? + part(3, 0.5)?)? + part(self.n - 2, 0.1)?)?)
    }

    fn field(&self) -> impl Fn(f64, &Tensor) -> candle_core::Result<Tensor> + '_ {
        move |_t, u| {
            let z = Tensor::zeros(1, u.dtype(), u.device())?;
            let p = Tensor::cat(&[&z, u, &z], 0)?;
            let n = self.n;
            let lap = ((p.narrow(0, 0, n)? + p.narrow(0, 2, n)?)? - u.affine(2.0, 0.0)?)?;
            lap.affine(self.d / self.dx().powi(2), 0.0)
        }
    }
}

fn diffusion_case(dev: &Device) -> Result<()> {
    let heat = Heat { n: 200, d: 1.0 };
    let rho = -heat.eigenvalue(heat.n);
    let y0 = heat.initial(DType::F64, dev)?;
    let ts = [0.0, 0.01, 0.05, 0.1];
    let tol = 1e-6;
    let rkc = SolveOptions::default()
        .method(Method::Rkc)
        .tolerances(tol, tol);
    let sol = odeint(&heat.field(), &y0, &ts, &rkc)?;
    for (i, &t) in ts.iter().enumerate() {
        let e = max_abs_diff(&sol.ys.get(i)?, &heat.exact(t, DType::F64, dev)?)?;
        // A global error of a few tolerances (second order, errors accumulate).
        assert!(e < 20.0 * tol, "t = {t}: error {e:e}");
    }
    // dopri5 is held to its stability interval (|hλ| ≤ 3.3): 1.6e5 · 0.1 / 3.3 ≈ 5000
    // steps of 6 evaluations and rejections (36,542 evaluations, measured); rkc takes 186
    // steps of about 10 stages (1,844).
    let dopri = odeint(
        &heat.field(),
        &y0,
        &ts,
        &SolveOptions::default().tolerances(tol, tol),
    )?;
    assert!(
        dopri.stats.nfe > 10 * sol.stats.nfe,
        "rkc {:?} against dopri5 {:?}",
        sol.stats,
        dopri.stats
    );
    // With the radius given: no power iterations, the same accuracy.
    let given = odeint(&heat.field(), &y0, &ts, &rkc.clone().spectral_radius(rho))?;
    let e = max_abs_diff(&given.last()?, &heat.exact(0.1, DType::F64, dev)?)?;
    assert!(e < 20.0 * tol, "given ρ: error {e:e}");
    assert!(given.stats.nfe < sol.stats.nfe, "{:?}", given.stats);
    assert!(given.stats.host_reads < sol.stats.host_reads);
    // Fixed steps far beyond the explicit limit (h ρ = 1600): stable, 30 stages each.
    let fixed = odeint(
        &heat.field(),
        &y0,
        &[0.0, 0.1],
        &SolveOptions::default()
            .method(Method::Rkc)
            .fixed_steps(10)
            .spectral_radius(rho),
    )?;
    let e = max_abs_diff(&fixed.last()?, &heat.exact(0.1, DType::F64, dev)?)?;
    assert!(e < 1e-3, "fixed steps: error {e:e}");
    assert_eq!(fixed.stats.nfe, 1 + 10 * stages_for(0.01 * rho));
    assert_eq!(fixed.stats.most_stages, stages_for(0.01 * rho));
    // The adaptive solve's stages: more than two where dopri5 is held by stability; the
    // other methods report none.
    assert!(given.stats.most_stages > 2, "{:?}", given.stats);
    assert_eq!(dopri.stats.most_stages, 0);
    // f32 at a loose tolerance.
    let y32 = heat.initial(DType::F32, dev)?;
    let sol = odeint(
        &heat.field(),
        &y32,
        &[0.0, 0.1],
        &SolveOptions::default()
            .method(Method::Rkc)
            .tolerances(1e-3, 1e-4),
    )?;
    assert_eq!(sol.ys.dtype(), DType::F32);
    let e = max_abs_diff(&sol.last()?, &heat.exact(0.1, DType::F32, dev)?)?;
    assert!(e < 2e-3, "f32: error {e:e}");
    Ok(())
}

fn spectral_radius_case(dev: &Device) -> Result<()> {
    // The power method finds the largest eigenvalue of the diffusion from a smooth start
    // (the estimate, 1.2 times it, is what makes the first step's stages): so the first
    // step of a solve with a tiny tolerance, limited by accuracy, is stable whatever its
    // stages; check the estimate through the evaluations of a one-step fixed solve.
    let heat = Heat { n: 100, d: 0.5 };
    let rho = -heat.eigenvalue(heat.n);
    let smooth = heat.mode(1, DType::F64, dev)?;
    let h = 0.05;
    let sol = odeint(
        &heat.field(),
        &smooth,
        &[0.0, h],
        &SolveOptions::default().method(Method::Rkc).fixed_steps(1),
    )?;
    // nfe = 1 (start) + power iterations + s (stages and end).
    let iterations = sol.stats.nfe - 1 - stages_for(h * 1.2 * rho);
    assert!(
        (2..=20).contains(&iterations),
        "{:?}: s for 1.2ρ would be {}",
        sol.stats,
        stages_for(h * 1.2 * rho)
    );
    let e = max_abs_diff(
        &sol.last()?,
        &smooth.affine((heat.eigenvalue(1) * h).exp(), 0.0)?,
    )?;
    assert!(e < 1e-3, "error {e:e}");
    // A field that does not depend on the state: radius 0, 2 stages a step.
    let y0 = Tensor::new(&[0.0f64, 1.0], dev)?;
    let f = |t: f64, y: &Tensor| y.ones_like()?.affine(t.cos(), 0.0);
    let sol = odeint(
        &f,
        &y0,
        &[0.0, 1.0],
        &SolveOptions::default().method(Method::Rkc).fixed_steps(4),
    )?;
    // Start, 2 power iterations, then 2 evaluations per step.
    assert_eq!(sol.stats.nfe, 1 + 2 + 4 * 2);
    let got = sol.last()?.to_vec1::<f64>()?;
    // Second order in t: over 4 steps of 1/4, an error of 6e-3 (measured).
    assert!((got[0] - 1f64.sin()).abs() < 1e-2, "{got:?}");
    Ok(())
}

fn brusselator_case(dev: &Device) -> Result<()> {
    // Reaction with diffusion (eigenvalues to −4α(N+1)² ≈ −1330 for N = 128): the stiff
    // benchmark of tests/stiff.rs, at the same tolerance.
    let (b, y0, end) = brusselator_at_10(128, dev)?;
    let opts = SolveOptions::default()
        .method(Method::Rkc)
        .tolerances(1e-6, 1e-6);
    let sol = odeint(&b.field(), &y0, &[0.0, 10.0], &opts)?;
    let e = max_abs_diff(&sol.last()?, &end)?;
    assert!(e < 1e-4, "error {e:e}, {:?}", sol.stats);
    let dopri = odeint(
        &b.field(),
        &y0,
        &[0.0, 10.0],
        &SolveOptions::default().tolerances(1e-6, 1e-6),
    )?;
    assert!(
        2 * sol.stats.nfe < dopri.stats.nfe,
        "rkc {:?}, dopri5 {:?}",
        sol.stats,
        dopri.stats
    );
    Ok(())
}

fn features_case(dev: &Device) -> Result<()> {
    let heat = Heat { n: 50, d: 1.0 };
    let y0 = heat.initial(DType::F64, dev)?;
    let opts = SolveOptions::default()
        .method(Method::Rkc)
        .tolerances(1e-7, 1e-7);
    // Reverse time: from the solution at 0.05 back towards the start is unstable for any
    // method (diffusion backwards); go forward and check the output times instead.
    let ts: Vec<f64> = (0..=20).map(|i| i as f64 * 0.005).collect();
    let many = odeint(&heat.field(), &y0, &ts, &opts)?;
    let two = odeint(&heat.field(), &y0, &[0.0, 0.1], &opts)?;
    assert_eq!(many.stats, two.stats, "outputs cost no evaluations");
    for (i, &t) in ts.iter().enumerate() {
        let e = max_abs_diff(&many.ys.get(i)?, &heat.exact(t, DType::F64, dev)?)?;
        assert!(e < 1e-5, "t = {t}: {e:e}");
    }
    // A dense solution: the outputs, bit for bit, at the output times (the same Hermite
    // interpolant), and the step ends exactly.
    let (sol, dense) = odeint_dense(&heat.field(), &y0, &[0.0, 0.1], &opts)?;
    assert_eq!(sol.stats, two.stats);
    for (i, &t) in ts.iter().enumerate() {
        let d = max_abs_diff(&dense.evaluate(t)?, &many.ys.get(i)?)?;
        assert!(d < 1e-15, "t = {t}: dense {d:e} from the output");
    }
    let ends = dense.step_times();
    assert_eq!(ends.len(), sol.stats.accepted_steps + 1);
    assert_eq!(max_abs_diff(&dense.evaluate(0.1)?, &sol.last()?)?, 0.0);
    // Reverse time: Riccati from t = 2 back to −0.5, where |y| grows to 3.6 and errors
    // made on the way grow with it (up to 36×). Per-step control of the local error of a
    // second-order method gives global errors of tol^(2/3) here: 1.3e-2, 6.5e-4 and 3.0e-5
    // at tolerances 1e-5, 1e-7 and 1e-9 (measured; fixed steps converge at order 2, 1.07e-3
    // and 2.7e-4 with 400 and 800); dopri5 at 1e-7 has 3.1e-6.
    let p = Riccati;
    let y2 = Tensor::new(&[0.6f64, 0.3], dev)?;
    let back = [2.0, 1.3, 0.4, -0.5];
    let tight = SolveOptions::default()
        .method(Method::Rkc)
        .tolerances(1e-9, 1e-9);
    let sol = odeint(&p.field(), &y2, &back, &tight)?;
    for (i, &t) in back.iter().enumerate() {
        let e = max_abs_diff(&sol.ys.get(i)?, &p.exact(&y2, 2.0, t)?)?;
        assert!(e < 1e-4, "backwards, t = {t}: {e:e}");
    }
    // f32 at a tolerance below its round-off (rtol 1e-8): the error estimate is formed from
    // the step's increment, not from `y1 − y`, whose round-off alone (~1e-7 |y|) would
    // reject step after step (measured before the change: 100,000 steps reached at
    // t = 0.0016; at 1e-7, 91 rejected steps where there are 8; torchdiffeq's spiral demo
    // in f32 at its default tolerances stopped with a step size underflow).
    let y32 = Tensor::new(&[1.0f32, 0.5], dev)?;
    let sol = odeint(
        &p.field(),
        &y32,
        &[0.0, 2.0],
        &SolveOptions::default()
            .method(Method::Rkc)
            .tolerances(1e-8, 1e-9),
    )?;
    assert!(sol.stats.rejected_steps <= 20, "{:?}", sol.stats);
    let exact = p.exact(&y32.to_dtype(DType::F64)?, 0.0, 2.0)?;
    let e = max_abs_diff(&sol.last()?.to_dtype(DType::F64)?, &exact)?;
    assert!(e < 1e-5, "f32 at 1e-8: {e:e}, {:?}", sol.stats);
    // A given first step and a largest one: at 1e-5 rkc takes 82 steps; capped at 0.01,
    // 252 (and an error of 2.6e-3 against 1.3e-2).
    let capped = odeint(
        &p.field(),
        &y2,
        &[2.0, -0.5],
        &SolveOptions::default()
            .method(Method::Rkc)
            .tolerances(1e-5, 1e-5)
            .first_step(1e-3)
            .max_step(0.01),
    )?;
    assert!(capped.stats.accepted_steps >= 250, "{:?}", capped.stats);
    assert!(capped.last_step <= 0.01);
    let e = max_abs_diff(&capped.last()?, &p.exact(&y2, 2.0, -0.5)?)?;
    assert!(e < 5e-3, "max_step 0.01: {e:e}");
    // An event: the first mode's amplitude (the middle value) falls to 0.5.
    let mid = heat.n / 2;
    let g = move |_t: f64, y: &Tensor| y.narrow(0, mid, 1)?.affine(1.0, -0.5);
    let ev = odeint_event(
        &heat.field(),
        &y0,
        0.0,
        1.0,
        &g,
        &opts,
        &EventOptions::default(),
    )?;
    assert_eq!(ev.event, Some(0));
    let at = heat.exact(ev.t, DType::F64, dev)?.to_vec1::<f64>()?[mid];
    assert!((at - 0.5).abs() < 1e-5, "event at {}: {at}", ev.t);
    // Jumps: a source switched on at t = 0.03.
    let src = heat.mode(1, DType::F64, dev)?;
    let jumpy = |t: f64, y: &Tensor| {
        let d = heat.field()(t, y)?;
        if t >= 0.03 {
            d + &src
        } else {
            Ok(d)
        }
    };
    let sol = odeint(&jumpy, &y0, &[0.0, 0.1], &opts.clone().jump_ts([0.03]))?;
    // The first mode with the source: a' = λ a + 1 after 0.03.
    let l1 = heat.eigenvalue(1);
    let a3 = (l1 * 0.03).exp();
    let a = a3 * (l1 * 0.07).exp() + ((l1 * 0.07).exp() - 1.0) / l1;
    let got = sol.last()?.to_vec1::<f64>()?;
    let want_mid = a * (std::f64::consts::PI * (mid + 1) as f64 * heat.dx()).sin()
        + heat.exact(0.1, DType::F64, dev)?.to_vec1::<f64>()?[mid]
        - (l1 * 0.1).exp() * (std::f64::consts::PI * (mid + 1) as f64 * heat.dx()).sin();
    assert!(
        (got[mid] - want_mid).abs() < 1e-5,
        "{} vs {want_mid}",
        got[mid]
    );
    Ok(())
}

fn errors_case(dev: &Device) -> Result<()> {
    let y0 = Tensor::new(&[1.0f64], dev)?;
    let f = |_t: f64, y: &Tensor| y.neg();
    let rkc = SolveOptions::default().method(Method::Rkc);
    let err = odeint_traced(&f, &y0, &[0.0, 1.0], &rkc, 8).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::InvalidOptions(_))
        ) && msg.contains("rkc")
            && msg.contains("replay"),
        "{msg}"
    );
    let err =
        odeint_reversible(&f, &y0, &[0.0, 1.0], &rkc.clone().fixed_steps(4), 0.999).unwrap_err();
    assert!(err.to_string().contains("Runge–Kutta–Chebyshev"), "{err}");
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let err = odeint(&f, &y0, &[0.0, 1.0], &rkc.clone().spectral_radius(bad)).unwrap_err();
        assert!(err.to_string().contains("spectral_radius"), "{err}");
    }
    // A fixed step that needs more than MAX_STAGES stages (h ρ = 1e12: 1.2e6 of them).
    let err = odeint(
        &f,
        &y0,
        &[0.0, 1.0],
        &rkc.clone().fixed_steps(1).spectral_radius(1e12),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("stages") && err.to_string().contains("implicit method"),
        "{err}"
    );
    assert_eq!(stages_for(f64::INFINITY), 1 + 1e15 as usize);
    // A blow-up is reported, not returned: y' = y² from 1 is infinite at t = 1.
    let g = |_t: f64, y: &Tensor| y.sqr();
    let err = odeint(&g, &y0, &[0.0, 2.0], &rkc).unwrap_err();
    assert!(
        matches!(
            SolverError::find(&err),
            Some(SolverError::StepSizeTooSmall { .. } | SolverError::NonFinite { .. })
        ),
        "{err}"
    );
    // A too-small radius given for fixed steps: unstable (|R| ≈ 1e7 a step for the highest
    // mode), overflows, caught at the end.
    let heat = Heat { n: 50, d: 1.0 };
    let err = odeint(
        &heat.field(),
        &heat.initial(DType::F64, dev)?,
        &[0.0, 50.0],
        &rkc.clone().fixed_steps(100).spectral_radius(1.0),
    )
    .unwrap_err();
    assert!(
        matches!(SolverError::find(&err), Some(SolverError::NonFinite { .. })),
        "{err}"
    );
    Ok(())
}

candle_core::test_device!(one_step_case, one_step_cpu, one_step_cuda, one_step_metal);
candle_core::test_device!(order_case, order_cpu, order_cuda, order_metal);
candle_core::test_device!(
    diffusion_case,
    diffusion_cpu,
    diffusion_cuda,
    diffusion_metal
);
candle_core::test_device!(
    spectral_radius_case,
    spectral_radius_cpu,
    spectral_radius_cuda,
    spectral_radius_metal
);
candle_core::test_device!(
    brusselator_case,
    brusselator_cpu,
    brusselator_cuda,
    brusselator_metal
);
candle_core::test_device!(features_case, features_cpu, features_cuda, features_metal);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);

//! The stochastic adjoint (`sdeint_adjoint`): gradients against the closed form of
//! geometric Brownian motion, against backprop through `sdeint` on a nonlinear SDE with
//! general noise (the gap closing with the step), tensor params, counts and errors.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{
    sdeint_adjoint, with_additive_sde_params, with_sde_params, ParamSdeField, SdeAdjointOptions,
    TensorParam,
};
use node_solvers::{
    sdeint, Noise, SdeAdaptive, SdeErrorEstimate, SdeMethod, SdeOptions, SolverError,
    VirtualBrownianTree,
};

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// max |a − b| / max(|b|, 1e-3 max |b|), elementwise over the vectors.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3 * scale))
        .fold(0.0, f64::max)
}

/// `dy = μ y dt + σ y ∘ dW`, elementwise, μ and σ trained.
fn gbm(mu: &Var, sigma: &Var) -> impl ParamSdeField + Clone + Send + Sync + 'static {
    let (m, s) = (mu.as_tensor().clone(), sigma.as_tensor().clone());
    with_sde_params(
        move |_t: f64, y: &Tensor| y.broadcast_mul(&m),
        move |_t: f64, y: &Tensor| y.broadcast_mul(&s),
        vec![mu.clone(), sigma.clone()],
    )
}

const MU0: f64 = 0.3;
const SIGMA0: f64 = 0.6;

/// GBM: `y(t) = y0 exp(μ t + σ W(t))`. For `L = Σ y(1) + Σ y(½)²`:
/// `dL/dμ = Σ y(1) + Σ y(½)²`, `dL/dσ = Σ y(1) W(1) + 2 Σ y(½)² W(½)`,
/// `dL/dy0 = y(1)/y0 + 2 y(½)²/y0`: `[dμ, dσ, dy0...]`.
fn gbm_exact_gradients(bm: &VirtualBrownianTree, y0: &[f64]) -> Result<Vec<f64>> {
    let w1 = host(&bm.value(1.0)?)?;
    let wh = host(&bm.value(0.5)?)?;
    let (mut d_mu, mut d_sigma) = (0.0, 0.0);
    let mut d_y0 = vec![0.0; y0.len()];
    for i in 0..y0.len() {
        let y1 = y0[i] * (MU0 + SIGMA0 * w1[i]).exp();
        let yh = y0[i] * (0.5 * MU0 + SIGMA0 * wh[i]).exp();
        d_mu += y1 + yh * yh;
        d_sigma += y1 * w1[i] + 2.0 * yh * yh * wh[i];
        d_y0[i] = (y1 + 2.0 * yh * yh) / y0[i];
    }
    Ok([d_mu, d_sigma].into_iter().chain(d_y0).collect())
}

/// The gradients of that loss, `[dμ, dσ, dy0...]`, by the adjoint (with these reverse
/// options) or by backprop (`None`), and the adjoint's counts.
fn gbm_gradients_by(
    bm: &VirtualBrownianTree,
    y0: &[f64],
    opts: &SdeOptions,
    adjoint: Option<&SdeAdjointOptions>,
) -> Result<(Vec<f64>, Option<node_adjoint::SdeAdjointStats>)> {
    let dev = bm.device();
    let mu = Var::new(MU0, dev)?;
    let sigma = Var::new(SIGMA0, dev)?;
    let y0 = Var::new(y0, dev)?;
    let sde = gbm(&mu, &sigma);
    let ts = [0.0, 0.5, 1.0];
    let (ys, stats) = match adjoint {
        Some(adj) => {
            let sol = sdeint_adjoint(&sde, y0.as_tensor(), &ts, bm, opts, adj)?;
            (sol.ys, Some(sol.stats))
        }
        None => (sdeint(&sde, y0.as_tensor(), &ts, bm, opts)?.ys, None),
    };
    let loss = (ys.get(2)?.sum_all()? + ys.get(1)?.sqr()?.sum_all()?)?;
    let g = loss.backward()?;
    let mut out = host(g.get(mu.as_tensor()).expect("dμ"))?;
    out.extend(host(g.get(sigma.as_tensor()).expect("dσ"))?);
    out.extend(host(g.get(y0.as_tensor()).expect("dy0"))?);
    Ok((out, stats))
}

/// The adjoint's gradients of GBM approach the closed form as the step falls (order 1), and
/// stay within the same distance of backprop through the solver.
fn gbm_gradients(dev: &Device) -> Result<()> {
    let n = 200;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-12), n, 21, DType::F64, dev)?;
    let y0: Vec<f64> = (0..n).map(|i| 0.5 + i as f64 / n as f64).collect();
    let exact = gbm_exact_gradients(&bm, &y0)?;
    let default = SdeAdjointOptions::default();
    let mut errs = Vec::new();
    for k in [5, 7, 9] {
        let dt = 2f64.powi(-k);
        let opts = SdeOptions::default().method(SdeMethod::Heun).dt(dt);
        let adj = gbm_gradients_by(&bm, &y0, &opts, Some(&default))?.0;
        let bp = gbm_gradients_by(&bm, &y0, &opts, None)?.0;
        let (e_adj, e_bp, gap) = (rel(&adj, &exact), rel(&bp, &exact), rel(&adj, &bp));
        eprintln!("dt 2^-{k}: adjoint off exact {e_adj:.2e}, backprop {e_bp:.2e}, apart {gap:.2e}");
        // The reverse solve's error is of the forward solve's order: both modes are within
        // a few step sizes (relative) of the exact gradient. Measured: 1.06 dt (adjoint),
        // 0.73 dt (backprop) at 2^-5; 0.95 and 0.65 at 2^-7; 1.06 and 0.75 at 2^-9.
        assert!(
            e_adj < 20.0 * dt && e_bp < 20.0 * dt,
            "dt 2^-{k}: {e_adj} {e_bp}"
        );
        errs.push(e_adj);
    }
    // Order 1: 4× smaller for each 4× smaller step, give or take.
    assert!(
        errs[1] < errs[0] / 2.5 && errs[2] < errs[1] / 2.5,
        "{errs:?}"
    );
    Ok(())
}

/// Adaptive steps forwards and backwards: the adjoint's gradients of GBM approach the
/// closed form as the tolerances fall, as backprop's through the adaptive solve do. The
/// reverse solve controls its own steps (one error read per attempt).
fn adaptive_gradients(dev: &Device) -> Result<()> {
    let n = 200;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-7, n, 27, DType::F64, dev)?;
    let y0: Vec<f64> = (0..n).map(|i| 0.5 + i as f64 / n as f64).collect();
    let exact = gbm_exact_gradients(&bm, &y0)?;
    let default = SdeAdjointOptions::default();
    let mut errs = Vec::new();
    for tol in [1e-3, 1e-5] {
        let opts = SdeOptions::default()
            .method(SdeMethod::Heun)
            .dt(0.01)
            .adaptive(SdeAdaptive::new(tol, tol).dt_min(1e-7));
        let (adj, stats) = gbm_gradients_by(&bm, &y0, &opts, Some(&default))?;
        let bp = gbm_gradients_by(&bm, &y0, &opts, None)?.0;
        let (e_adj, e_bp) = (rel(&adj, &exact), rel(&bp, &exact));
        let (f, b) = stats.map(|s| (s.forward(), s.backward())).expect("stats");
        eprintln!(
            "tol {tol:e}: adjoint off exact {e_adj:.2e}, backprop {e_bp:.2e}; steps {} + {} \
             rejected forwards, {} + {} backwards",
            f.steps, f.rejected_steps, b.steps, b.rejected_steps
        );
        // Two intervals backwards: one read per attempt and one output check each.
        assert_eq!(b.host_reads, b.steps + b.rejected_steps + 2);
        assert!(f.rejected_steps > 0 && b.steps > 0);
        errs.push((e_adj, e_bp));
    }
    assert!(errs[1].0 < errs[0].0 / 10.0, "{errs:?}");
    assert!(errs[1].1 < errs[0].1 / 10.0, "{errs:?}");
    // Heun's embedded Euler–Maruyama estimate, forwards and backwards.
    let embedded = SdeOptions::default()
        .method(SdeMethod::Heun)
        .dt(0.01)
        .adaptive(
            SdeAdaptive::new(1e-4, 1e-4)
                .dt_min(1e-7)
                .estimate(SdeErrorEstimate::Embedded),
        );
    let (adj, stats) = gbm_gradients_by(&bm, &y0, &embedded, Some(&default))?;
    let (f, b) = stats.map(|s| (s.forward(), s.backward())).expect("stats");
    let e = rel(&adj, &exact);
    eprintln!(
        "embedded, tol 1e-4: adjoint off exact {e:.2e}; drift evaluations {} forwards, {} \
         backwards",
        f.drift_evals, b.drift_evals
    );
    assert_eq!(f.drift_evals, 2 * (f.steps + f.rejected_steps));
    assert!(e < errs[0].0 / 5.0, "{e}");
    // Fixed steps forwards, adaptive ones backwards.
    let opts = SdeOptions::default()
        .method(SdeMethod::Heun)
        .dt(2f64.powi(-7));
    let adj = SdeAdjointOptions {
        adaptive: Some(SdeAdaptive::new(1e-5, 1e-5).dt_min(1e-7)),
        ..SdeAdjointOptions::default()
    };
    let (g, stats) = gbm_gradients_by(&bm, &y0, &opts, Some(&adj))?;
    let stats = stats.expect("stats");
    assert_eq!(stats.forward().rejected_steps, 0);
    assert!(stats.backward().host_reads > 2);
    let e = rel(&g, &exact);
    assert!(e < 20.0 * 2f64.powi(-7), "{e}");
    Ok(())
}

/// A nonlinear SDE with general noise and a small network in both terms:
/// `dy = (1 + t/2) tanh(y W₁ + b) dt + (σ ⊙ tanh(y W₂)) ∘ dW`, `y [B, 2]`, `W [B, 3]` mixed
/// through `[B, 2, 3]`; the loss a sum of squares at three output times. Returns the
/// gradients of every parameter and of `y0`, flat, by the adjoint or by backprop.
fn nonlinear_gradients(
    method: SdeMethod,
    adjoint: bool,
    dt: f64,
    dev: &Device,
) -> Result<(Vec<f64>, node_adjoint::SdeAdjointStats)> {
    let (b, d, m) = (16, 2, 3);
    let bm = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-12), (b, m), 5, DType::F64, dev)?;
    let w1 = Var::new(&[[0.5f64, -0.8], [0.9, 0.2]], dev)?;
    let bias = Var::new(&[0.1f64, -0.2], dev)?;
    let w2 = Var::new(
        &[
            [0.4f64, -0.3, 0.2, 0.6, -0.5, 0.1],
            [-0.2, 0.5, 0.3, -0.4, 0.2, 0.7],
        ],
        dev,
    )?;
    let sigma = Var::new(0.5f64, dev)?;
    let y0_host: Vec<f64> = (0..b * d)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
        .collect();
    let y0 = Var::from_tensor(&Tensor::from_vec(y0_host, (b, d), dev)?)?;
    let (w1t, bt, w2t, st) = (
        w1.as_tensor().clone(),
        bias.as_tensor().clone(),
        w2.as_tensor().clone(),
        sigma.as_tensor().clone(),
    );
    let sde = with_sde_params(
        move |t: f64, y: &Tensor| {
            y.matmul(&w1t)?
                .broadcast_add(&bt)?
                .tanh()?
                .affine(1.0 + 0.5 * t, 0.0)
        },
        move |_t: f64, y: &Tensor| {
            y.matmul(&w2t)?
                .tanh()?
                .broadcast_mul(&st)?
                .reshape((y.dim(0)?, 2, 3))
        },
        vec![w1.clone(), bias.clone(), w2.clone(), sigma.clone()],
    );
    let opts = SdeOptions::default()
        .method(method)
        .dt(dt)
        .noise(Noise::General);
    let ts = [0.0, 0.25, 0.7, 1.0];
    let (ys, stats) = if adjoint {
        let sol = sdeint_adjoint(
            &sde,
            y0.as_tensor(),
            &ts,
            &bm,
            &opts,
            &SdeAdjointOptions::default(),
        )?;
        (sol.ys, sol.stats)
    } else {
        let ys = sdeint(&sde, y0.as_tensor(), &ts, &bm, &opts)?.ys;
        (ys, node_adjoint::SdeAdjointStats::default())
    };
    let target = Tensor::new(&[1.0f64, -1.0], dev)?;
    let loss = ys
        .narrow(0, 1, 3)?
        .broadcast_sub(&target)?
        .sqr()?
        .sum_all()?;
    let g = loss.backward()?;
    let mut out = Vec::new();
    for v in [&w1, &bias, &w2, &sigma, &y0] {
        out.extend(host(g.get(v.as_tensor()).expect("a gradient"))?);
    }
    Ok((out, stats))
}

/// The adjoint's gradients approach backprop's as the step falls.
fn nonlinear_general_noise(dev: &Device) -> Result<()> {
    let mut gaps = Vec::new();
    for k in [4, 6, 8] {
        let dt = 2f64.powi(-k);
        let (adj, _) = nonlinear_gradients(SdeMethod::Midpoint, true, dt, dev)?;
        let (bp, _) = nonlinear_gradients(SdeMethod::Midpoint, false, dt, dev)?;
        let gap = rel(&adj, &bp);
        eprintln!("dt 2^-{k}: adjoint off backprop by {gap:.2e}");
        gaps.push(gap);
    }
    // Measured: 3.7e-2, 1.6e-2, 5.0e-3. General noise that does not commute gives the
    // forward solve strong order 1/2, so the gap falls by less than 4 per 4× smaller step.
    assert!(gaps[2] < 0.02, "{gaps:?}");
    assert!(
        gaps[1] < gaps[0] / 2.0 && gaps[2] < gaps[1] / 2.0,
        "{gaps:?}"
    );
    Ok(())
}

/// Additive noise solved forwards by ShARK (a path with Lévy area): the adjoint's
/// gradients approach backprop's through the same solve as the step falls. The drift is a
/// small network, the diffusion `σ (1 + t)` with `σ` trained.
fn additive_noise_shark(dev: &Device) -> Result<()> {
    let (b, d) = (16, 2);
    let bm = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-12), (b, d), 7, DType::F64, dev)?
        .with_levy_area();
    let w = Var::new(&[[0.5f64, -0.8], [0.9, 0.2]], dev)?;
    let bias = Var::new(&[0.1f64, -0.2], dev)?;
    let sigma = Var::new(&[0.5f64, 0.3], dev)?;
    let y0_host: Vec<f64> = (0..b * d)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
        .collect();
    let y0 = Var::from_tensor(&Tensor::from_vec(y0_host, (b, d), dev)?)?;
    let ones = Tensor::ones((b, d), DType::F64, dev)?;
    let (wt, bt, st) = (
        w.as_tensor().clone(),
        bias.as_tensor().clone(),
        sigma.as_tensor().clone(),
    );
    let sde = with_additive_sde_params(
        move |_t: f64, y: &Tensor| y.matmul(&wt)?.broadcast_add(&bt)?.tanh(),
        move |t: f64| ones.broadcast_mul(&st)?.affine(1.0 + t, 0.0),
        vec![w.clone(), bias.clone(), sigma.clone()],
    );
    let ts = [0.0, 0.4, 1.0];
    let gradients = |adjoint: bool, dt: f64| -> Result<Vec<f64>> {
        let opts = SdeOptions::default().method(SdeMethod::Shark).dt(dt);
        let ys = if adjoint {
            let adj = SdeAdjointOptions::default();
            sdeint_adjoint(&sde, y0.as_tensor(), &ts, &bm, &opts, &adj)?.ys
        } else {
            sdeint(&sde, y0.as_tensor(), &ts, &bm, &opts)?.ys
        };
        let loss = ys.narrow(0, 1, 2)?.sqr()?.sum_all()?;
        let g = loss.backward()?;
        let mut out = Vec::new();
        for v in [&w, &bias, &sigma, &y0] {
            out.extend(host(g.get(v.as_tensor()).expect("a gradient"))?);
        }
        Ok(out)
    };
    let mut gaps = Vec::new();
    for k in [4, 6, 8] {
        let dt = 2f64.powi(-k);
        let (adj, bp) = (gradients(true, dt)?, gradients(false, dt)?);
        // The gap over the whole gradient (a few entries near zero make `rel` noisy).
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let diff: Vec<f64> = adj.iter().zip(&bp).map(|(x, y)| x - y).collect();
        gaps.push(norm(&diff) / norm(&bp));
    }
    // Measured: 4.4e-3, 1.3e-3, 1.8e-4 (the reverse solve is Heun's, of order 1).
    eprintln!("ShARK forward: adjoint off backprop by {gaps:?}");
    assert!(gaps[2] < 1e-3, "{gaps:?}");
    assert!(
        gaps[1] < gaps[0] / 2.5 && gaps[2] < gaps[1] / 2.5,
        "{gaps:?}"
    );
    Ok(())
}

/// Reversible Heun: the walk back gives backprop's gradients of the same discrete solve, up
/// to round-off, at any step; one evaluation of each term per step backwards.
fn reversible_heun_is_exact(dev: &Device) -> Result<()> {
    for k in [3, 6] {
        let dt = 2f64.powi(-k);
        let (adj, stats) = nonlinear_gradients(SdeMethod::ReversibleHeun, true, dt, dev)?;
        let (bp, _) = nonlinear_gradients(SdeMethod::ReversibleHeun, false, dt, dev)?;
        let gap = rel(&adj, &bp);
        eprintln!("reversible Heun, dt 2^-{k}: walk back off backprop by {gap:.2e}");
        assert!(gap < 1e-10, "dt 2^-{k}: {gap:e}");
        let (f, b) = (stats.forward(), stats.backward());
        assert_eq!(f.steps, b.steps);
        assert_eq!(b.drift_evals, b.steps + 1);
        assert_eq!(f.drift_evals, f.steps + 1);
    }
    Ok(())
}

/// A tensor of the caller's graph as the diffusion's scale: its source gets the gradient the
/// plain `Var` gets.
#[test]
fn tensor_params_reach_their_source() -> Result<()> {
    let dev = Device::Cpu;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-4, 8, 2, DType::F64, &dev)?;
    let y0 = Tensor::ones(8, DType::F64, &dev)?;
    let opts = SdeOptions::default().method(SdeMethod::Heun).dt(0.01);
    let mu = Var::new(0.2f64, &dev)?;
    // Direct: σ a Var.
    let sigma = Var::new(0.7f64, &dev)?;
    let direct = gbm(&mu, &sigma);
    let sol = sdeint_adjoint(
        &direct,
        &y0,
        &[0.0, 1.0],
        &bm,
        &opts,
        &SdeAdjointOptions::default(),
    )?;
    let g = sol.ys.get(1)?.sum_all()?.backward()?;
    let want = host(g.get(sigma.as_tensor()).expect("dσ"))?[0];
    // Through a graph: σ = 2 u, u the Var; the SDE sees a TensorParam of σ.
    let u = Var::new(0.35f64, &dev)?;
    let s = u.as_tensor().affine(2.0, 0.0)?;
    let sp = TensorParam::new(&s)?;
    let (m, st) = (mu.as_tensor().clone(), sp.as_tensor().clone());
    let sde = with_sde_params(
        move |_t: f64, y: &Tensor| y.broadcast_mul(&m),
        move |_t: f64, y: &Tensor| y.broadcast_mul(&st),
        vec![mu.clone()],
    )
    .with_tensor_params(vec![sp]);
    let sol = sdeint_adjoint(
        &sde,
        &y0,
        &[0.0, 1.0],
        &bm,
        &opts,
        &SdeAdjointOptions::default(),
    )?;
    let g = sol.ys.get(1)?.sum_all()?.backward()?;
    let got = host(g.get(u.as_tensor()).expect("du"))?[0];
    // dL/du = 2 dL/dσ.
    assert!(
        (got - 2.0 * want).abs() < 1e-12 * want.abs(),
        "{got} vs {}",
        2.0 * want
    );
    Ok(())
}

#[test]
fn counts() -> Result<()> {
    let dev = Device::Cpu;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-4, 4, 2, DType::F64, &dev)?;
    let y0 = Tensor::ones(4, DType::F64, &dev)?;
    let (mu, sigma) = (Var::new(0.2f64, &dev)?, Var::new(0.5f64, &dev)?);
    // Forward: 10 Heun steps, 2 drift and 2 diffusion evaluations each. Backward: 20
    // midpoint steps (dt 0.05), two augmented increments each.
    let opts = SdeOptions::default().method(SdeMethod::Heun).dt(0.1);
    let adj = SdeAdjointOptions {
        method: Some(SdeMethod::Midpoint),
        dt: Some(0.05),
        ..SdeAdjointOptions::default()
    };
    let sol = sdeint_adjoint(&gbm(&mu, &sigma), &y0, &[0.0, 0.3, 1.0], &bm, &opts, &adj)?;
    let f = sol.stats.forward();
    assert_eq!((f.steps, f.drift_evals, f.diffusion_evals), (10, 20, 20));
    assert_eq!(sol.stats.backward().steps, 0);
    sol.ys.sum_all()?.backward()?;
    let b = sol.stats.backward();
    assert_eq!((b.steps, b.drift_evals, b.diffusion_evals), (20, 40, 40));
    Ok(())
}

#[test]
fn errors() -> Result<()> {
    let dev = Device::Cpu;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-4, 4, 2, DType::F64, &dev)?;
    let y0 = Tensor::ones(4, DType::F64, &dev)?;
    let (mu, sigma) = (Var::new(0.2f64, &dev)?, Var::new(0.5f64, &dev)?);
    let sde = gbm(&mu, &sigma);
    let ts = [0.0, 1.0];
    let default = SdeAdjointOptions::default();
    let invalid = |e: candle_core::Error| {
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(_))),
            "{e}"
        )
    };
    for method in [SdeMethod::EulerMaruyama, SdeMethod::ItoMilstein] {
        let opts = SdeOptions::default().method(method);
        let e = sdeint_adjoint(&sde, &y0, &ts, &bm, &opts, &default).expect_err("Itô");
        assert!(e.to_string().contains("Stratonovich"), "{e}");
        invalid(e);
    }
    let opts = SdeOptions::default().method(SdeMethod::Heun).dt(0.1);
    let bad = SdeAdjointOptions {
        method: Some(SdeMethod::StratonovichMilstein),
        ..SdeAdjointOptions::default()
    };
    invalid(sdeint_adjoint(&sde, &y0, &ts, &bm, &opts, &bad).expect_err("reverse Milstein"));
    let bad = SdeAdjointOptions {
        dt: Some(-1.0),
        ..SdeAdjointOptions::default()
    };
    invalid(sdeint_adjoint(&sde, &y0, &ts, &bm, &opts, &bad).expect_err("negative step"));
    // Parameters of another dtype than the state.
    let mu32 = Var::new(0.2f32, &dev)?;
    let sde32 = gbm(&mu32, &sigma);
    invalid(sdeint_adjoint(&sde32, &y0, &ts, &bm, &opts, &default).expect_err("dtype"));
    // The StratonovichMilstein forward runs, with Heun backwards.
    let opts = SdeOptions::default()
        .method(SdeMethod::StratonovichMilstein)
        .dt(0.1);
    let sol = sdeint_adjoint(&sde, &y0, &ts, &bm, &opts, &default)?;
    sol.ys.sum_all()?.backward()?;
    assert_eq!(sol.stats.backward().drift_evals, 20);
    Ok(())
}

candle_core::test_device!(
    additive_noise_shark,
    additive_noise_shark_cpu,
    additive_noise_shark_cuda,
    additive_noise_shark_metal
);
candle_core::test_device!(
    gbm_gradients,
    gbm_gradients_cpu,
    gbm_gradients_cuda,
    gbm_gradients_metal
);
candle_core::test_device!(
    adaptive_gradients,
    adaptive_gradients_cpu,
    adaptive_gradients_cuda,
    adaptive_gradients_metal
);
candle_core::test_device!(
    reversible_heun_is_exact,
    reversible_heun_is_exact_cpu,
    reversible_heun_is_exact_cuda,
    reversible_heun_is_exact_metal
);
candle_core::test_device!(
    nonlinear_general_noise,
    nonlinear_general_noise_cpu,
    nonlinear_general_noise_cuda,
    nonlinear_general_noise_metal
);

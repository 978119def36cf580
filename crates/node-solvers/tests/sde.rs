//! SDE solves (`sdeint`) and the virtual Brownian tree: the tree's statistics and
//! consistency, strong convergence orders against exact solutions along the same path,
//! reverse-time solves, general noise, gradients, counts and errors; adaptive steps in
//! `sde/adaptive.rs`; the Lévy area and the methods for additive noise in
//! `sde/additive.rs`.

#[path = "sde/adaptive.rs"]
mod adaptive;
#[path = "sde/additive.rs"]
mod additive;
mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::{fitted_slope, solver_error};
use node_solvers::{
    sdeint, BrownianPath, Calculus, Noise, SdeField, SdeMethod, SdeOptions, SolverError,
    VirtualBrownianTree,
};

fn mean_abs(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a - b)?
        .abs()?
        .to_dtype(DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()?)
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Mean and variance of a sample.
fn moments(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    (m, x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n)
}

fn tree_statistics(dev: &Device) -> Result<()> {
    let n = 40_000;
    // A coarse tree (leaves of 1/8): 0.3 and 0.7 fall inside leaves, 0.5 is a node.
    let bm = VirtualBrownianTree::new(0.0, 1.0, 0.125, n, 11, DType::F64, dev)?;
    assert!(host(&bm.value(0.0)?)?.iter().all(|&v| v == 0.0));
    let pieces = [(0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.0)];
    let incs: Vec<Vec<f64>> = pieces
        .iter()
        .map(|&(s, t)| host(&bm.increment(s, t)?))
        .collect::<Result<_>>()?;
    for (&(s, t), x) in pieces.iter().zip(&incs) {
        let (m, v) = moments(x);
        // Standard errors: √(v/n) ≈ 0.003 for the mean, v √(2/n) ≈ 0.0014 for the variance.
        assert!(m.abs() < 0.015, "mean {m} of W({t}) - W({s})");
        assert!(
            (v - (t - s)).abs() < 0.01,
            "variance {v} of W({t}) - W({s}), expected {}",
            t - s
        );
    }
    // Disjoint increments are uncorrelated (standard error of the correlation: 1/√n).
    for i in 0..pieces.len() {
        for j in i + 1..pieces.len() {
            let (_, vi) = moments(&incs[i]);
            let (_, vj) = moments(&incs[j]);
            let c = incs[i]
                .iter()
                .zip(&incs[j])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                / n as f64
                / (vi * vj).sqrt();
            assert!(c.abs() < 0.02, "correlation {c} of pieces {i} and {j}");
        }
    }
    // The pieces add up to the whole, and a reverse increment is the forward one negated.
    let whole = host(&bm.increment(0.0, 1.0)?)?;
    let back = host(&bm.increment(1.0, 0.0)?)?;
    for k in 0..n {
        let sum: f64 = incs.iter().map(|x| x[k]).sum();
        assert!((sum - whole[k]).abs() < 1e-12);
        assert_eq!(back[k], -whole[k]);
    }
    Ok(())
}

fn tree_is_a_function_of_the_seed(dev: &Device) -> Result<()> {
    let times = [0.9, 0.1, 0.37, 0.5, 0.0371, 0.99, 1.0];
    let make = |seed| VirtualBrownianTree::new(0.0, 1.0, 1e-6, (3, 4), seed, DType::F64, dev);
    let a = make(5)?;
    let forward: Vec<Vec<f64>> = times
        .iter()
        .map(|&t| host(&a.value(t)?))
        .collect::<Result<_>>()?;
    // A fresh tree queried in the reverse order gives the same values.
    let b = make(5)?;
    for (i, &t) in times.iter().enumerate().rev() {
        assert_eq!(host(&b.value(t)?)?, forward[i], "W({t})");
    }
    // Asking again after other queries too.
    assert_eq!(host(&a.value(0.37)?)?, forward[2]);
    // Another seed, another path.
    let c = make(6)?;
    assert_ne!(host(&c.value(0.37)?)?, forward[2]);
    // f32 holds the f64 path rounded.
    let d = VirtualBrownianTree::new(0.0, 1.0, 1e-6, (3, 4), 5, DType::F32, dev)?;
    let w32 = host(&d.value(0.37)?)?;
    for (x, y) in w32.iter().zip(&forward[2]) {
        assert!((x - y).abs() < 1e-6 * y.abs().max(1.0));
    }
    Ok(())
}

#[test]
fn tree_errors() -> Result<()> {
    let dev = Device::Cpu;
    let new = |t0, t1, tol, dtype| VirtualBrownianTree::new(t0, t1, tol, 4, 0, dtype, &dev);
    for (t0, t1, tol, dtype) in [
        (1.0, 1.0, 0.1, DType::F64),
        (1.0, 0.0, 0.1, DType::F64),
        (0.0, f64::INFINITY, 0.1, DType::F64),
        (0.0, 1.0, 0.0, DType::F64),
        (0.0, 1.0, 2.0, DType::F64),
        (0.0, 1.0, 1e-30, DType::F64),
        (0.0, 1.0, 0.1, DType::U32),
    ] {
        let err = new(t0, t1, tol, dtype).expect_err("invalid tree");
        assert!(
            matches!(solver_error(&err), SolverError::InvalidOptions(_)),
            "{err}"
        );
    }
    let bm = new(0.0, 1.0, 1e-3, DType::F64)?;
    for t in [-0.1, 1.5, f64::NAN] {
        let err = bm.value(t).expect_err("outside the span");
        assert!(matches!(solver_error(&err), SolverError::InvalidTimes(_)));
        assert!(bm.increment(0.5, t).is_err());
    }
    Ok(())
}

/// Geometric Brownian motion `dy = μ y dt + σ y dW`, elementwise: the exact solution along
/// the path is `y0 exp((μ − σ²/2) t + σ W(t))` read as Itô, `y0 exp(μ t + σ W(t))` read as
/// Stratonovich.
const MU: f64 = 0.4;
const SIGMA: f64 = 0.9;

fn gbm() -> impl SdeField {
    (
        |_t: f64, y: &Tensor| y.affine(MU, 0.0),
        |_t: f64, y: &Tensor| y.affine(SIGMA, 0.0),
    )
}

fn gbm_exact(y0: &Tensor, w: &Tensor, t: f64, calculus: Calculus) -> Result<Tensor> {
    let drift = match calculus {
        Calculus::Ito => MU - SIGMA * SIGMA / 2.0,
        Calculus::Stratonovich => MU,
    };
    Ok((y0 * w.affine(SIGMA, drift * t)?.exp()?)?)
}

/// The strong error `E|y_N − y(1)|` over 4000 paths at steps 2^-3 .. 2^-7 and its fitted
/// order. The tree resolves every step end exactly, so each step size sees the same paths.
fn strong_order(method: SdeMethod, dev: &Device) -> Result<(f64, Vec<f64>)> {
    let n = 4000;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-10), n, 1, DType::F64, dev)?;
    let y0 = Tensor::ones(n, DType::F64, dev)?;
    let exact = gbm_exact(&y0, &bm.value(1.0)?, 1.0, method.calculus())?;
    let (mut hs, mut errs) = (Vec::new(), Vec::new());
    for k in 3..=7 {
        let h = 2f64.powi(-k);
        let opts = SdeOptions::default().method(method).dt(h);
        let y1 = sdeint(&gbm(), &y0, &[0.0, 1.0], &bm, &opts)?.last()?;
        hs.push(h);
        errs.push(mean_abs(&y1, &exact)?);
    }
    Ok((fitted_slope(&hs, &errs), errs))
}

fn strong_orders(dev: &Device) -> Result<()> {
    // The methods that take the Lévy area are measured in `sde/additive.rs`.
    for method in SdeMethod::ALL.into_iter().filter(|m| !m.needs_levy_area()) {
        let (slope, errs) = strong_order(method, dev)?;
        let want = method.strong_order();
        eprintln!("{method}: strong order {slope:.3}, errors {errs:.3?}");
        // Measured: Euler–Maruyama 0.49, the Milsteins 0.98 (Itô) and 0.96, Heun and the
        // midpoint 0.94 (the same scheme on this linear SDE), reversible Heun 0.92.
        assert!(
            (slope - want).abs() < 0.15,
            "{method}: fitted strong order {slope:.3}, expected {want} (errors {errs:?})"
        );
        assert!(errs[4] < errs[0] / 3.0, "{method}: {errs:?}");
    }
    Ok(())
}

/// Additive noise, `dy = −y dt + σ dW` (Ornstein–Uhlenbeck): Euler–Maruyama has strong
/// order 1 there. The reference is Heun at 2^-12 along the same path.
#[test]
fn additive_noise_euler_maruyama_has_order_one() -> Result<()> {
    let dev = Device::Cpu;
    let n = 2000;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-12), n, 3, DType::F64, &dev)?;
    let sde = (
        |_t: f64, y: &Tensor| y.neg(),
        |_t: f64, y: &Tensor| y.ones_like()?.affine(SIGMA, 0.0),
    );
    let y0 = Tensor::ones(n, DType::F64, &dev)?;
    let fine = SdeOptions::default()
        .method(SdeMethod::Heun)
        .dt(2f64.powi(-12));
    let reference = sdeint(&sde, &y0, &[0.0, 1.0], &bm, &fine)?.last()?;
    let (mut hs, mut errs) = (Vec::new(), Vec::new());
    for k in 3..=7 {
        let h = 2f64.powi(-k);
        let y1 = sdeint(&sde, &y0, &[0.0, 1.0], &bm, &SdeOptions::default().dt(h))?.last()?;
        hs.push(h);
        errs.push(mean_abs(&y1, &reference)?);
    }
    let slope = fitted_slope(&hs, &errs);
    assert!(
        (slope - 1.0).abs() < 0.15,
        "order {slope:.3}, errors {errs:?}"
    );
    Ok(())
}

/// A Stratonovich solve backwards along the same path undoes the forward one: from the exact
/// `y(1)`, Heun back to 0 lands on `y0` with an error of order 1.
fn reverse_time(dev: &Device) -> Result<()> {
    let n = 2000;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-10), n, 4, DType::F64, dev)?;
    let y0 = Tensor::ones(n, DType::F64, dev)?;
    let y1 = gbm_exact(&y0, &bm.value(1.0)?, 1.0, Calculus::Stratonovich)?;
    let (mut hs, mut errs) = (Vec::new(), Vec::new());
    for k in 3..=7 {
        let h = 2f64.powi(-k);
        let opts = SdeOptions::default().method(SdeMethod::Heun).dt(h);
        let sol = sdeint(&gbm(), &y1, &[1.0, 0.5, 0.0], &bm, &opts)?;
        // The middle output is the exact solution at 0.5 too, up to the same error.
        let mid = gbm_exact(&y0, &bm.value(0.5)?, 0.5, Calculus::Stratonovich)?;
        assert!(mean_abs(&sol.ys.get(1)?, &mid)? < 4.0 * h);
        hs.push(h);
        errs.push(mean_abs(&sol.last()?, &y0)?);
    }
    let slope = fitted_slope(&hs, &errs);
    assert!(
        (slope - 1.0).abs() < 0.15,
        "order {slope:.3}, errors {errs:?}"
    );
    Ok(())
}

/// `n` start values spread evenly over `(0.5, 1.5)`: the same on every run.
fn spread(n: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f64> = (0..n).map(|i| 0.5 + (i as f64 + 0.5) / n as f64).collect();
    Ok(Tensor::from_vec(v, n, dev)?)
}

/// General noise: the diffusion as a diagonal `[B, D, D]` matrix gives the diagonal solve;
/// one Brownian motion shared by every component (`W` of shape `[1]`) gives the scalar-noise
/// GBM, whose exact solution is known.
fn general_noise(dev: &Device) -> Result<()> {
    let (b, d) = (500, 3);
    let y0 = spread(b * d, dev)?.reshape((b, d))?;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 2f64.powi(-10), (b, d), 8, DType::F64, dev)?;
    let eye = Tensor::eye(d, DType::F64, dev)?;
    let matrix = (
        |_t: f64, y: &Tensor| y.affine(MU, 0.0),
        |_t: f64, y: &Tensor| {
            y.affine(SIGMA, 0.0)?
                .unsqueeze(2)?
                .broadcast_mul(&eye.unsqueeze(0)?)
        },
    );
    for method in [
        SdeMethod::EulerMaruyama,
        SdeMethod::Heun,
        SdeMethod::Midpoint,
    ] {
        let opts = SdeOptions::default().method(method).dt(1.0 / 32.0);
        let diag = sdeint(&gbm(), &y0, &[0.0, 0.5, 1.0], &bm, &opts)?;
        let general = sdeint(
            &matrix,
            &y0,
            &[0.0, 0.5, 1.0],
            &bm,
            &opts.clone().noise(Noise::General),
        )?;
        assert!(mean_abs(&diag.ys, &general.ys)? < 1e-14, "{method}");
    }
    // Scalar noise: g = σ y as [B, D, 1], W of shape [1] or [B, 1].
    let scalar = (
        |_t: f64, y: &Tensor| y.affine(MU, 0.0),
        |_t: f64, y: &Tensor| y.affine(SIGMA, 0.0)?.unsqueeze(2),
    );
    for w_shape in [vec![1], vec![b, 1]] {
        let bm = VirtualBrownianTree::new(
            0.0,
            1.0,
            2f64.powi(-12),
            w_shape.clone(),
            9,
            DType::F64,
            dev,
        )?;
        let opts = SdeOptions::default()
            .method(SdeMethod::Heun)
            .dt(2f64.powi(-9))
            .noise(Noise::General);
        let y1 = sdeint(&scalar, &y0, &[0.0, 1.0], &bm, &opts)?.last()?;
        // [1] and [B, 1] both broadcast to the state: one motion per row (or in all).
        let w = bm.value(1.0)?.broadcast_as((b, d))?.contiguous()?;
        let exact = gbm_exact(&y0, &w, 1.0, Calculus::Stratonovich)?;
        let err = mean_abs(&y1, &exact)?;
        assert!(err < 5e-3, "W of shape {w_shape:?}: error {err}");
    }
    Ok(())
}

/// Backprop through the solve: for a fixed path the solution is a smooth function of the
/// parameters, and its gradient matches central differences of the solver.
fn gradients(dev: &Device) -> Result<()> {
    let n = 64;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-3, n, 2, DType::F64, dev)?;
    let y0 = Var::from_tensor(&spread(n, dev)?)?;
    let mu = Var::new(MU, dev)?;
    let sigma = Var::new(SIGMA, dev)?;
    let loss = |y0: &Tensor, mu: &Tensor, sigma: &Tensor, method| -> Result<Tensor> {
        let sde = (
            |t: f64, y: &Tensor| y.broadcast_mul(mu)?.affine(1.0 + t.sin(), 0.0),
            |_t: f64, y: &Tensor| y.tanh()?.broadcast_mul(sigma),
        );
        let opts = SdeOptions::default().method(method).dt(0.05);
        let ys = sdeint(&sde, y0, &[0.0, 0.5, 1.0], &bm, &opts)?.ys;
        Ok(ys.sqr()?.sum_all()?)
    };
    for method in SdeMethod::ALL.into_iter().filter(|m| !m.needs_levy_area()) {
        let l = loss(y0.as_tensor(), mu.as_tensor(), sigma.as_tensor(), method)?;
        let grads = l.backward()?;
        let g =
            |v: &Var| -> Result<Vec<f64>> { host(grads.get(v.as_tensor()).expect("a gradient")) };
        let eps = 1e-6;
        let fd = |dm: f64, ds: f64, dy: Option<usize>| -> Result<f64> {
            let shift = |sign: f64| -> Result<f64> {
                let y = match dy {
                    Some(i) => {
                        let mut e = vec![0.0; n];
                        e[i] = sign * eps;
                        (y0.as_tensor() + Tensor::new(e, dev)?)?
                    }
                    None => y0.as_tensor().clone(),
                };
                let m = mu.as_tensor().affine(1.0, sign * dm)?;
                let s = sigma.as_tensor().affine(1.0, sign * ds)?;
                Ok(loss(&y, &m, &s, method)?.to_scalar::<f64>()?)
            };
            Ok((shift(1.0)? - shift(-1.0)?) / (2.0 * eps))
        };
        let checks = [
            ("mu", g(&mu)?[0], fd(eps, 0.0, None)?),
            ("sigma", g(&sigma)?[0], fd(0.0, eps, None)?),
            ("y0[5]", g(&y0)?[5], fd(0.0, 0.0, Some(5))?),
        ];
        for (name, got, want) in checks {
            assert!(
                (got - want).abs() < 1e-6 * want.abs().max(1.0),
                "{method}: d loss / d {name} = {got}, central differences {want}"
            );
        }
    }
    Ok(())
}

/// Drift and diffusion evaluations per step of the methods without a carried state.
const EVALS_PER_STEP: [(SdeMethod, usize, usize); 5] = [
    (SdeMethod::EulerMaruyama, 1, 1),
    (SdeMethod::ItoMilstein, 1, 2),
    (SdeMethod::StratonovichMilstein, 1, 3),
    (SdeMethod::Heun, 2, 2),
    (SdeMethod::Midpoint, 2, 2),
];

#[test]
fn counts() -> Result<()> {
    let dev = Device::Cpu;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-4, 5, 0, DType::F64, &dev)?;
    let y0 = Tensor::ones(5, DType::F64, &dev)?;
    // [0, 0.3] in 3 steps of 0.1, [0.3, 1] in 7.
    let ts = [0.0, 0.3, 1.0];
    for (method, drift, diffusion) in EVALS_PER_STEP {
        let opts = SdeOptions::default().method(method).dt(0.1);
        let sol = sdeint(&gbm(), &y0, &ts, &bm, &opts)?;
        assert_eq!(sol.stats.steps, 10, "{method}");
        assert_eq!(sol.stats.drift_evals, 10 * drift, "{method}");
        assert_eq!(sol.stats.diffusion_evals, 10 * diffusion, "{method}");
        assert_eq!(sol.stats.host_reads, 1, "{method}");
        assert_eq!(sol.ys.dims(), [3, 5]);
        assert_eq!(host(&sol.ys.get(0)?)?, vec![1.0; 5]);
        let unchecked = sdeint(&gbm(), &y0, &ts, &bm, &opts.clone().check_finite(false))?;
        assert_eq!(unchecked.stats.host_reads, 0);
    }
    // Reversible Heun: one evaluation of each term per step, and one at the start; the
    // carried state at the end holds the last output.
    let opts = SdeOptions::default()
        .method(SdeMethod::ReversibleHeun)
        .dt(0.1);
    let sol = sdeint(&gbm(), &y0, &ts, &bm, &opts)?;
    assert_eq!((sol.stats.drift_evals, sol.stats.diffusion_evals), (11, 11));
    let carried = sol.reversible.expect("the carried state");
    assert_eq!(host(&carried.y)?, host(&sol.ys.get(2)?)?);
    assert_eq!(carried.y_hat.dims(), [5]);
    assert!(
        sdeint(&gbm(), &y0, &ts, &bm, &opts.clone().method(SdeMethod::Heun))?
            .reversible
            .is_none()
    );
    // The step ends, interval by interval.
    let grid = node_solvers::step_times(&ts, 0.1)?;
    assert_eq!(grid.len(), 2);
    assert_eq!((grid[0].len(), grid[1].len()), (4, 8));
    assert_eq!(
        (grid[0][0], grid[0][3], grid[1][0], grid[1][7]),
        (0.0, 0.3, 0.3, 1.0)
    );
    let back = node_solvers::step_times(&[1.0, 0.3], 0.1)?;
    let fwd_rev: Vec<f64> = grid[1].iter().rev().copied().collect();
    assert_eq!(
        back[0], fwd_rev,
        "the same times, rounded alike, walked either way"
    );
    // One output time: nothing to do.
    let sol = sdeint(&gbm(), &y0, &[0.2], &bm, &SdeOptions::default())?;
    assert_eq!(sol.stats.steps, 0);
    assert_eq!(sol.ys.dims(), [1, 5]);
    Ok(())
}

#[test]
fn method_names() -> Result<()> {
    for m in SdeMethod::ALL {
        assert_eq!(m.to_string().parse::<SdeMethod>()?, m);
    }
    assert_eq!("Euler".parse::<SdeMethod>()?, SdeMethod::EulerMaruyama);
    assert_eq!("milstein".parse::<SdeMethod>()?, SdeMethod::ItoMilstein);
    let err = "dopri5"
        .parse::<SdeMethod>()
        .expect_err("not an SDE method");
    assert!(err.to_string().contains("euler_maruyama"), "{err}");
    Ok(())
}

#[test]
fn errors() -> Result<()> {
    let dev = Device::Cpu;
    let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-3, 4, 0, DType::F64, &dev)?;
    let y0 = Tensor::ones(4, DType::F64, &dev)?;
    let opts = SdeOptions::default().dt(0.1);
    let expect = |r: candle_core::Result<node_solvers::SdeSolution>| -> SolverError {
        solver_error(&r.expect_err("an error"))
    };
    // Options.
    for bad in [
        opts.clone().dt(0.0),
        opts.clone().dt(f64::NAN),
        opts.clone().max_steps(0),
        opts.clone()
            .method(SdeMethod::ItoMilstein)
            .noise(Noise::General),
    ] {
        let e = expect(sdeint(&gbm(), &y0, &[0.0, 1.0], &bm, &bad));
        assert!(matches!(e, SolverError::InvalidOptions(_)), "{e}");
    }
    // Times: outside the path's span, not monotone.
    let e = expect(sdeint(&gbm(), &y0, &[0.0, 1.5], &bm, &opts));
    assert!(matches!(e, SolverError::InvalidTimes(_)), "{e}");
    let e = expect(sdeint(&gbm(), &y0, &[0.5, -0.5], &bm, &opts));
    assert!(matches!(e, SolverError::InvalidTimes(_)), "{e}");
    let e = expect(sdeint(&gbm(), &y0, &[0.0, 0.5, 0.4], &bm, &opts));
    assert!(
        matches!(e, SolverError::TimesNotMonotone { index: 2, .. }),
        "{e}"
    );
    // Too many steps, before any is taken.
    let e = expect(sdeint(
        &gbm(),
        &y0,
        &[0.0, 1.0],
        &bm,
        &opts.clone().max_steps(9),
    ));
    assert!(
        matches!(e, SolverError::MaxStepsExceeded { steps: 10, .. }),
        "{e}"
    );
    // The path: another shape, dtype.
    let other = VirtualBrownianTree::new(0.0, 1.0, 1e-3, 3, 0, DType::F64, &dev)?;
    let e = expect(sdeint(&gbm(), &y0, &[0.0, 1.0], &other, &opts));
    assert!(matches!(e, SolverError::InvalidOptions(_)), "{e}");
    let other = VirtualBrownianTree::new(0.0, 1.0, 1e-3, 4, 0, DType::F32, &dev)?;
    let e = expect(sdeint(&gbm(), &y0, &[0.0, 1.0], &other, &opts));
    assert!(matches!(e, SolverError::InvalidOptions(_)), "{e}");
    let general = opts.clone().noise(Noise::General);
    // General noise on a [2, 2] state: W of shape [3, m] has the wrong batch.
    let rows = VirtualBrownianTree::new(0.0, 1.0, 1e-3, (3, 2), 0, DType::F64, &dev)?;
    let e = expect(sdeint(
        &gbm(),
        &y0.reshape((2, 2))?,
        &[0.0, 1.0],
        &rows,
        &general,
    ));
    assert!(matches!(e, SolverError::InvalidOptions(_)), "{e}");
    // Terms of the wrong shape.
    let wide = (
        |_t: f64, y: &Tensor| y.affine(MU, 0.0),
        |_t: f64, y: &Tensor| Tensor::cat(&[y, y], 0),
    );
    let e = expect(sdeint(&wide, &y0, &[0.0, 1.0], &bm, &opts));
    assert!(matches!(e, SolverError::OutputMismatch(_)), "{e}");
    let narrow = (
        |_t: f64, y: &Tensor| y.narrow(0, 0, 2),
        |_t: f64, y: &Tensor| y.affine(SIGMA, 0.0),
    );
    let e = expect(sdeint(&narrow, &y0, &[0.0, 1.0], &bm, &opts));
    assert!(matches!(e, SolverError::OutputMismatch(_)), "{e}");
    // General noise expects [..S, m].
    let e = expect(sdeint(
        &gbm(),
        &y0,
        &[0.0, 1.0],
        &other_shape(&dev)?,
        &general,
    ));
    assert!(matches!(e, SolverError::OutputMismatch(_)), "{e}");
    // A blow-up: dy = y² dt + y dW reaches infinity; the error names the first bad output.
    let blow = (
        |_t: f64, y: &Tensor| y.sqr()?.affine(50.0, 0.0),
        |_t: f64, y: &Tensor| y.affine(0.1, 0.0),
    );
    let e = expect(sdeint(
        &blow,
        &y0,
        &[0.0, 0.01, 0.5, 1.0],
        &bm,
        &opts.clone().dt(0.01),
    ));
    assert!(matches!(e, SolverError::NonFinite { t } if t == 0.5), "{e}");
    // A non-float state.
    let e = expect(sdeint(
        &gbm(),
        &y0.to_dtype(DType::U32)?,
        &[0.0, 1.0],
        &bm,
        &opts,
    ));
    assert!(matches!(e, SolverError::InvalidOptions(_)), "{e}");
    Ok(())
}

/// A path of shape `[2]`: for a state of shape `[4]`, general noise with `m = 2`.
fn other_shape(dev: &Device) -> Result<VirtualBrownianTree> {
    Ok(VirtualBrownianTree::new(
        0.0,
        1.0,
        1e-3,
        2,
        0,
        DType::F64,
        dev,
    )?)
}

/// f32 states: the same solve in f32 stays within f32 rounding of the f64 one.
fn f32_state(dev: &Device) -> Result<()> {
    let n = 100;
    let opts = SdeOptions::default().method(SdeMethod::Heun).dt(1.0 / 64.0);
    let solve = |dtype| -> Result<Tensor> {
        let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-3, n, 5, dtype, dev)?;
        let y0 = Tensor::ones(n, dtype, dev)?;
        Ok(sdeint(&gbm(), &y0, &[0.0, 1.0], &bm, &opts)?.last()?)
    };
    let (a, b) = (solve(DType::F32)?, solve(DType::F64)?);
    assert_eq!(a.dtype(), DType::F32);
    let rel = (a.to_dtype(DType::F64)? - &b)?
        .abs()?
        .div(&b.abs()?)?
        .max_all()?
        .to_scalar::<f64>()?;
    assert!(rel < 1e-5, "f32 off f64 by {rel}");
    Ok(())
}

candle_core::test_device!(
    tree_statistics,
    tree_statistics_cpu,
    tree_statistics_cuda,
    tree_statistics_metal
);
candle_core::test_device!(
    tree_is_a_function_of_the_seed,
    tree_seed_cpu,
    tree_seed_cuda,
    tree_seed_metal
);
candle_core::test_device!(
    strong_orders,
    strong_orders_cpu,
    strong_orders_cuda,
    strong_orders_metal
);
candle_core::test_device!(
    reverse_time,
    reverse_time_cpu,
    reverse_time_cuda,
    reverse_time_metal
);
candle_core::test_device!(
    general_noise,
    general_noise_cpu,
    general_noise_cuda,
    general_noise_metal
);
candle_core::test_device!(gradients, gradients_cpu, gradients_cuda, gradients_metal);
candle_core::test_device!(f32_state, f32_state_cpu, f32_state_cuda, f32_state_metal);

/// Reversible Heun's stability region is a segment of the imaginary axis: on
/// `dy = −10 y dt` at `h = 0.01` (`λh = −0.1`) its error grows by about 4% a step, where
/// Heun's decays with the solution.
#[test]
fn reversible_heun_is_not_damped() -> Result<()> {
    let dev = Device::Cpu;
    let bm = VirtualBrownianTree::new(0.0, 2.0, 1e-3, 1, 0, DType::F64, &dev)?;
    let sde = (
        |_t: f64, y: &Tensor| y.affine(-10.0, 0.0),
        |_t: f64, y: &Tensor| y.zeros_like(),
    );
    let y0 = Tensor::new(&[1.0f64], &dev)?;
    let solve = |method| -> Result<f64> {
        let opts = SdeOptions::default().method(method).dt(0.01);
        Ok(host(&sdeint(&sde, &y0, &[0.0, 2.0], &bm, &opts)?.last()?)?[0].abs())
    };
    // 200 steps: Heun ≈ e^{-20}; reversible Heun ≈ 1.04^200 (measured 2.9e3).
    assert!(solve(SdeMethod::Heun)? < 1e-8);
    let grown = solve(SdeMethod::ReversibleHeun)?;
    assert!(grown > 1e3 && grown < 1e4, "{grown}");
    Ok(())
}

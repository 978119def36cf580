//! The latent SDE (Li et al. 2020; torchsde's `examples/latent_sde.py`): the KL terms
//! against their closed forms, the prior's stationary law, the adjoint's gradients against
//! backprop's, and errors.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use node_adjoint::SdeAdjointOptions;
use node_models::latent_sde::{laplace_log_likelihood, LatentSde, LatentSdeConfig, SdeGradient};
use node_models::{init, Rng};
use node_solvers::{SdeAdaptive, SdeField, SdeMethod, SolverError};

fn model(cfg: LatentSdeConfig, dtype: DType, dev: &Device) -> Result<(LatentSde, VarMap)> {
    let varmap = VarMap::new();
    let m = LatentSde::new(cfg, VarBuilder::from_varmap(&varmap, dtype, dev))?;
    init::pytorch_default(&varmap, &mut Rng::new(3))?;
    m.init()?;
    Ok((m, varmap))
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn set(varmap: &VarMap, name: &str, v: f64) -> Result<()> {
    let data = varmap.data().lock().unwrap();
    let var = &data[name];
    var.set(&var.ones_like()?.affine(v, 0.0)?)?;
    Ok(())
}

#[test]
fn kl_terms() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = LatentSdeConfig {
        hidden: 8,
        theta: 2.0,
        mu: 0.5,
        sigma: 0.4,
        ..Default::default()
    };
    let (m, varmap) = model(cfg, DType::F64, &dev)?;
    // q(y0) = p(y0) after init.
    assert!(scalar(&m.initial_kl()?)?.abs() < 1e-15);
    // KL(N(0.2, e^-1) ‖ N(0.5, 0.04)): p's variance σ²/2θ = 0.16/4.
    set(&varmap, "qy0.mean", 0.2)?;
    set(&varmap, "qy0.logvar", -1.0)?;
    let (qv, pv) = ((-1.0f64).exp(), 0.04f64);
    let want = 0.5 * (pv / qv).ln() + (qv + 0.09) / (2.0 * pv) - 0.5;
    assert!((scalar(&m.initial_kl()?)? - want).abs() < 1e-12);
    // The drift's second component is Girsanov's integrand ½((f − h)/σ)²; with the last
    // layer at zero f = 0, so it is ½(θ(μ − y)/σ)².
    let aug = Tensor::new(&[[0.1f64, 7.0], [-0.3, 0.0]], &dev)?;
    let d = m.posterior().drift(0.3, &aug)?.to_vec2::<f64>()?;
    for (row, y) in d.iter().zip([0.1, -0.3]) {
        assert_eq!(row[0], 0.0);
        let u = 2.0 * (0.5 - y) / 0.4;
        assert!((row[1] - 0.5 * u * u).abs() < 1e-12, "{row:?}");
    }
    let g = m.posterior().diffusion(0.3, &aug)?;
    assert_eq!(g.dims(), [2, 2, 1]);
    assert_eq!(g.flatten_all()?.to_vec1::<f64>()?, [0.4, 0.0, 0.4, 0.0]);
    Ok(())
}

/// Sampling the posterior without a graph gives the training solve's values, bit for bit.
#[test]
fn samples_are_the_forward_values() -> Result<()> {
    let dev = Device::Cpu;
    let (m, varmap) = model(
        LatentSdeConfig {
            hidden: 8,
            ..Default::default()
        },
        DType::F32,
        &dev,
    )?;
    {
        let data = varmap.data().lock().unwrap();
        let w = &data["net.fc3.weight"];
        w.set(&Rng::new(4).normal_tensor(w.dims(), 0.0, 0.3, DType::F32, &dev)?)?;
    }
    let eps = Rng::new(1).normal_tensor(&[16, 1], 0.0, 1.0, DType::F32, &dev)?;
    let ts = [0.0, 0.4, 1.0];
    let trained = m.forward(&ts, &eps, 3, &SdeGradient::Backprop)?.ys;
    let sampled = m.sample_posterior(&ts, &eps, 3)?;
    assert!(!sampled.track_op());
    assert_eq!(trained.to_vec2::<f32>()?, sampled.to_vec2::<f32>()?);
    Ok(())
}

#[test]
fn laplace_likelihood() -> Result<()> {
    let dev = Device::Cpu;
    let zs = Tensor::new(&[[0.0f64, 1.0], [2.0, 2.0]], &dev)?; // [T = 2, B = 2]
    let ys = Tensor::new(&[0.5f64, 1.0], &dev)?;
    let s = 0.25;
    // Sample 0: |0.5 − 0| + |1 − 2| = 1.5; sample 1: 0.5 + 1 = 1.5.
    let want = 2.0 * -(2.0f64 * s).ln() - 1.5 / s;
    assert!((scalar(&laplace_log_likelihood(&zs, &ys, s)?)? - want).abs() < 1e-12);
    Ok(())
}

/// The prior starts in its stationary law N(μ, σ²/2θ) and stays there.
#[test]
fn prior_is_stationary() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = LatentSdeConfig {
        hidden: 4,
        theta: 1.5,
        mu: -0.2,
        sigma: 0.6,
        ..Default::default()
    };
    let (m, _) = model(cfg, DType::F64, &dev)?;
    let n = 4000;
    let eps = Rng::new(5).normal_tensor(&[n, 1], 0.0, 1.0, DType::F64, &dev)?;
    let zs = m.sample_prior(&[0.0, 0.7, 2.0], &eps, 9)?;
    let var = 0.36 / 3.0;
    for i in 0..3 {
        let z = zs.get(i)?.to_vec1::<f64>()?;
        let mean = z.iter().sum::<f64>() / n as f64;
        let v = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: √(var/n) ≈ 0.0055 for the mean, var √(2/n) ≈ 0.0027 for the
        // variance; the midpoint method's bias on the variance at dt = 0.01 is far less.
        assert!((mean + 0.2).abs() < 0.03, "mean {mean} at output {i}");
        assert!(
            (v - var).abs() < 0.015,
            "variance {v} at output {i}, expected {var}"
        );
    }
    Ok(())
}

/// The gradients of the negative ELBO on four observations, flat over the sorted
/// variables, with `method` at `dt` (or adaptive steps), differentiated as `gradient` says.
fn elbo_gradients(
    method: SdeMethod,
    gradient: &SdeGradient,
    dt: f64,
    adaptive: Option<SdeAdaptive>,
) -> Result<Vec<f64>> {
    let dev = Device::Cpu;
    let ts = [0.0, 0.3, 0.55, 0.8, 1.2];
    let ys = Tensor::new(&[0.8f64, 0.2, -0.5, -0.9], &dev)?;
    let eps = Rng::new(2).normal_tensor(&[32, 1], 0.0, 1.0, DType::F64, &dev)?;
    let cfg = LatentSdeConfig {
        hidden: 16,
        method,
        dt,
        adaptive,
        ..Default::default()
    };
    let (m, varmap) = model(cfg, DType::F64, &dev)?;
    // A drift that is not zero, and q(y0) away from p(y0).
    {
        let data = varmap.data().lock().unwrap();
        let w = &data["net.fc3.weight"];
        w.set(&Rng::new(4).normal_tensor(w.dims(), 0.0, 0.3, DType::F64, &dev)?)?;
    }
    set(&varmap, "qy0.mean", 0.3)?;
    let out = m.forward(&ts, &eps, 17, gradient)?;
    let zs = out.ys.narrow(0, 1, 4)?;
    let loss = (out.kl - laplace_log_likelihood(&zs, &ys, 0.05)?)?;
    let g = loss.backward()?;
    let mut flat = Vec::new();
    for v in node_adjoint::sorted_vars(&varmap) {
        let gv = g
            .get(v.as_tensor())
            .expect("every parameter has a gradient");
        flat.extend(gv.flatten_all()?.to_vec1::<f64>()?);
    }
    Ok(flat)
}

/// max |a − b| over the largest |b|.
fn gap_of(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// The adjoint's gradients of the negative ELBO approach backprop's as the step falls, and
/// with adaptive steps as the tolerances fall.
#[test]
fn adjoint_matches_backprop() -> Result<()> {
    let grads = |gradient: &SdeGradient, dt: f64, adaptive: Option<SdeAdaptive>| {
        elbo_gradients(SdeMethod::Midpoint, gradient, dt, adaptive)
    };
    let adjoint = SdeGradient::Adjoint(SdeAdjointOptions::default());
    let gap = |adaptive: Option<SdeAdaptive>, dt: f64| -> Result<f64> {
        let a = grads(&adjoint, dt, adaptive)?;
        let b = grads(&SdeGradient::Backprop, dt, adaptive)?;
        Ok(gap_of(&a, &b))
    };
    let gaps = [gap(None, 0.02)?, gap(None, 0.005)?];
    eprintln!("adjoint off backprop (relative to the largest gradient): {gaps:?}");
    // Measured: 2.7e-6 at dt = 0.02, 1.7e-7 at 0.005. The noise is additive, so the
    // midpoint method's reverse solve retraces the forward one to second order.
    assert!(gaps[1] < 1e-5 && gaps[1] < gaps[0] / 4.0, "{gaps:?}");
    let adaptive = |tol: f64| Some(SdeAdaptive::new(tol, tol));
    let gaps = [gap(adaptive(1e-3), 0.01)?, gap(adaptive(1e-5), 0.01)?];
    eprintln!("adaptive steps, adjoint off backprop: {gaps:?}");
    // Measured: 1.9e-4 and 1.0e-5. Controlling the local error `O(h^{3/2})` of an order-1
    // method to `tol` leaves a global error of about `tol^{2/3}`: 22 times less for 100
    // times tighter tolerances.
    assert!(gaps[1] < 3e-5 && gaps[1] < gaps[0] / 10.0, "{gaps:?}");
    Ok(())
}

/// The noise is additive, so ShARK (strong order 3/2, on a tree with Lévy area) solves the
/// latent SDE: two drift evaluations per step and one of the diffusion, and the adjoint
/// (whose reverse solve is Heun's, blind to the area) close to backprop.
#[test]
fn shark_solves_it() -> Result<()> {
    let adjoint = SdeGradient::Adjoint(SdeAdjointOptions::default());
    let shark =
        |gradient: &SdeGradient, dt: f64| elbo_gradients(SdeMethod::Shark, gradient, dt, None);
    let gaps = [
        gap_of(
            &shark(&adjoint, 0.02)?,
            &shark(&SdeGradient::Backprop, 0.02)?,
        ),
        gap_of(
            &shark(&adjoint, 0.005)?,
            &shark(&SdeGradient::Backprop, 0.005)?,
        ),
    ];
    // Measured: 4.0e-5 and 3.9e-5 (Heun forwards and backwards: 6.7e-8 and 3.6e-9, the
    // reverse retracing its own forward solve). The tree's tolerance follows the step
    // (dt/2), so the path changes with it and the gap need not fall with the step here;
    // node-adjoint's tests/sde.rs shows it falling on a fixed path.
    eprintln!("ShARK: adjoint off backprop {gaps:?}");
    assert!(gaps[0] < 1e-4 && gaps[1] < 1e-4, "{gaps:?}");

    let dev = Device::Cpu;
    let cfg = LatentSdeConfig {
        hidden: 4,
        method: SdeMethod::Shark,
        dt: 0.1,
        ..Default::default()
    };
    let (m, _) = model(cfg, DType::F32, &dev)?;
    let eps = Rng::new(1).normal_tensor(&[8, 1], 0.0, 1.0, DType::F32, &dev)?;
    let out = m.forward(&[0.0, 0.5, 1.0], &eps, 3, &SdeGradient::Backprop)?;
    assert_eq!(out.forward.steps, 10);
    assert_eq!(out.forward.drift_evals, 20);
    assert_eq!(out.forward.diffusion_evals, 11);
    let prior = m.sample_prior(&[0.0, 1.0], &eps, 3)?;
    assert_eq!(prior.dims(), [2, 8]);
    Ok(())
}

#[test]
fn errors() -> Result<()> {
    let dev = Device::Cpu;
    let (m, _) = model(
        LatentSdeConfig {
            hidden: 4,
            ..Default::default()
        },
        DType::F32,
        &dev,
    )?;
    let eps = Tensor::zeros((4, 1), DType::F32, &dev)?;
    let bp = SdeGradient::Backprop;
    for ts in [&[0.0][..], &[0.0, 0.5, 0.5], &[1.0, 0.0]] {
        let e = m.forward(ts, &eps, 0, &bp).expect_err("bad times");
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidTimes(_))),
            "{e}"
        );
    }
    let e = m
        .forward(
            &[0.0, 1.0],
            &Tensor::zeros((4, 2), DType::F32, &dev)?,
            0,
            &bp,
        )
        .expect_err("eps of the wrong shape");
    assert!(e.to_string().contains("[B, 1]"), "{e}");
    let vb = VarBuilder::zeros(DType::F32, &dev);
    for cfg in [
        LatentSdeConfig {
            sigma: 0.0,
            ..Default::default()
        },
        LatentSdeConfig {
            theta: f64::NAN,
            ..Default::default()
        },
        LatentSdeConfig {
            hidden: 0,
            ..Default::default()
        },
        LatentSdeConfig {
            dt: -1.0,
            ..Default::default()
        },
        LatentSdeConfig {
            method: SdeMethod::ItoMilstein,
            ..Default::default()
        },
    ] {
        let e = LatentSde::new(cfg.clone(), vb.clone()).expect_err("bad config");
        assert!(
            matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(_))),
            "{cfg:?}: {e}"
        );
    }
    Ok(())
}

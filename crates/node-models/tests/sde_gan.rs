//! The SDE-GAN (Kidger et al. 2021; torchsde's `examples/sde_gan.py`): shapes, the
//! generator's gradients through the discriminator's CDE against finite differences, the
//! exact adjoint of reversible Heun against backprop, clipping, weight averaging, the
//! Ornstein–Uhlenbeck data against its moments, the marginal distances, and errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::check_finite_differences;
use node_adjoint::SdeAdjointOptions;
use node_models::sde_gan::{marginal_w1, ou_dataset, SdeGan, SdeGanConfig};
use node_models::{init, Gradient, Rng, SdeGradient};
use node_solvers::{Method, SdeMethod, SolverError};

fn small() -> SdeGanConfig {
    SdeGanConfig {
        initial_noise: 3,
        noise: 2,
        hidden: 4,
        width: 5,
        ..Default::default()
    }
}

fn gan(cfg: SdeGanConfig, dtype: DType, dev: &Device) -> Result<(SdeGan, VarMap)> {
    let varmap = VarMap::new();
    let g = SdeGan::new(cfg, VarBuilder::from_varmap(&varmap, dtype, dev))?;
    init::pytorch_default(&varmap, &mut Rng::new(5))?;
    g.init(3.0, 0.5)?;
    Ok((g, varmap))
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

fn solver_error(e: &candle_core::Error) -> SolverError {
    SolverError::find(e)
        .unwrap_or_else(|| panic!("not a solver error: {e}"))
        .clone()
}

#[test]
fn shapes_and_time_channel() -> Result<()> {
    let dev = Device::Cpu;
    let (g, _) = gan(small(), DType::F32, &dev)?;
    let ts = [0.0, 1.0, 2.0, 3.0, 4.0];
    let v = Rng::new(1).normal_tensor(&[6, 3], 0.0, 1.0, DType::F32, &dev)?;
    let out = g.generator().forward(&ts, &v, 9, &SdeGradient::Backprop)?;
    assert_eq!(out.ys.dims(), [6, 5, 2]);
    let times = host(&out.ys.narrow(2, 0, 1)?)?;
    for (k, t) in times.iter().enumerate() {
        assert_eq!(*t, ts[k % 5]);
    }
    // Reversible Heun: one drift evaluation per step and one at the start.
    assert_eq!(out.forward.drift_evals, 5);
    // The same noise and path give the same samples without a graph.
    let sampled = g.generator().sample(&ts, &v, 9)?;
    assert_eq!(host(&sampled)?, host(&out.ys)?);
    let (scores, stats) = g
        .discriminator()
        .scores(&out.ys, &ts, &Gradient::Backprop)?;
    assert_eq!(scores.dims(), [6]);
    // Midpoint, steps of 1 over [0, 4]: two evaluations per step.
    assert_eq!(stats.nfe_forward, 8);
    Ok(())
}

/// GeneralShARK in the generator (general noise, on a tree with Lévy area): two drift and
/// three diffusion evaluations per step, the initial states those of reversible Heun's
/// generator (the paths after differ: a tree with the area draws its own), and backprop
/// through it.
#[test]
fn general_shark_generator() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = SdeGanConfig {
        method: SdeMethod::GeneralShark,
        dt: 0.5,
        ..small()
    };
    let (g, _) = gan(cfg, DType::F64, &dev)?;
    let ts = [0.0, 1.0, 2.0];
    let v = Rng::new(1).normal_tensor(&[6, 3], 0.0, 1.0, DType::F64, &dev)?;
    let out = g.generator().forward(&ts, &v, 9, &SdeGradient::Backprop)?;
    assert_eq!(out.ys.dims(), [6, 3, 2]);
    assert_eq!(out.forward.steps, 4);
    assert_eq!(
        (out.forward.drift_evals, out.forward.diffusion_evals),
        (8, 12)
    );
    let reversible = gan(small(), DType::F64, &dev)?.0;
    let other = reversible
        .generator()
        .forward(&ts, &v, 9, &SdeGradient::Backprop)?;
    let first = |ys: &Tensor| host(&ys.narrow(1, 0, 1)?);
    assert_eq!(first(&out.ys)?, first(&other.ys)?);
    // Backprop through it reaches every generator variable.
    out.ys.sqr()?.sum_all()?.backward()?;
    Ok(())
}

/// The loss `D(G(v)) − D(real)` as a function of every variable, in f64.
fn gan_loss(
    g: &SdeGan,
    ts: &[f64],
    v: &Tensor,
    real: &Tensor,
    sde: &SdeGradient,
    cde: &Gradient,
) -> candle_core::Result<Tensor> {
    let fake = g.generator().forward(ts, v, 11, sde)?;
    let (f, _) = g.discriminator().scores(&fake.ys, ts, cde)?;
    let (r, _) = g.discriminator().scores(real, ts, cde)?;
    f.mean_all()? - r.mean_all()?
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    // Backprop through the generator's solve and the discriminator's CDE: every variable's
    // gradient, the generator's reaching it through the interpolated generated path.
    let dev = Device::Cpu;
    let (g, varmap) = gan(small(), DType::F64, &dev)?;
    let ts = [0.0, 1.0, 2.0, 3.0];
    let mut rng = Rng::new(2);
    let v = rng.normal_tensor(&[4, 3], 0.0, 1.0, DType::F64, &dev)?;
    let (_, data) = ou_dataset(4, 4, 0.0, 3, DType::F64, &dev)?;
    let loss = || {
        gan_loss(
            &g,
            &ts,
            &v,
            &data,
            &SdeGradient::Backprop,
            &Gradient::Backprop,
        )
    };
    let checked = check_finite_differences(&varmap, loss, |n| vec![0, n / 2, n - 1], 1e-6, 1e-6)?;
    // Three entries of each weight and bias of the twelve layers (seven in the generator).
    assert_eq!(checked, 3 * 2 * 12);
    Ok(())
}

fn adjoint_is_exact(dev: &Device) -> Result<()> {
    // With reversible Heun the adjoint walks the steps back: backprop's gradients to
    // round-off, for every variable of both networks.
    let (g, varmap) = gan(small(), DType::F64, dev)?;
    let ts: Vec<f64> = (0..8).map(|i| i as f64).collect();
    let v = Rng::new(4).normal_tensor(&[5, 3], 0.0, 1.0, DType::F64, dev)?;
    let (_, data) = ou_dataset(5, 8, 0.3, 6, DType::F64, dev)?;
    let grads = |sde: &SdeGradient| -> Result<Vec<Vec<f64>>> {
        let loss = gan_loss(&g, &ts, &v, &data, sde, &Gradient::Backprop)?;
        let store = loss.backward()?;
        node_adjoint::sorted_vars(&varmap)
            .iter()
            .map(|var| host(store.get(var).expect("a gradient")))
            .collect()
    };
    let bp = grads(&SdeGradient::Backprop)?;
    let adj = grads(&SdeGradient::Adjoint(SdeAdjointOptions::default()))?;
    let mut worst: f64 = 0.0;
    for (a, b) in adj.iter().flatten().zip(bp.iter().flatten()) {
        worst = worst.max((a - b).abs() / (1.0 + b.abs()));
    }
    assert!(worst < 1e-10, "adjoint off backprop by {worst:e}");
    Ok(())
}

candle_core::test_device!(
    adjoint_is_exact,
    adjoint_is_exact_cpu,
    adjoint_is_exact_cuda,
    adjoint_is_exact_metal
);

#[test]
fn clipping_and_averaging() -> Result<()> {
    let dev = Device::Cpu;
    let (g, _) = gan(small(), DType::F64, &dev)?;
    // Push every weight out of bounds, then clip: each within ±1/out, biases untouched.
    for layer in g.discriminator().linear_layers() {
        for t in layer.tensors() {
            Var::from_tensor(&t)?.set(&t.affine(100.0, 0.0)?)?;
        }
    }
    let biases: Vec<Vec<f64>> = g
        .discriminator()
        .linear_layers()
        .iter()
        .map(|l| host(&l.tensors()[1]))
        .collect::<Result<_>>()?;
    g.discriminator().clip_weights()?;
    for (layer, bias) in g.discriminator().linear_layers().iter().zip(&biases) {
        let w = &layer.tensors()[0];
        let lim = 1.0 / w.dim(0)? as f64;
        let w = host(w)?;
        assert!(w.iter().all(|x| x.abs() <= lim), "a weight beyond {lim}");
        assert!(w.iter().any(|x| x.abs() == lim), "nothing was clipped");
        assert_eq!(&host(&layer.tensors()[1])?, bias);
    }
    // Averaging: the first model copied, then the running mean.
    let (a, _) = gan(small(), DType::F64, &dev)?;
    let (b, bmap) = gan(small(), DType::F64, &dev)?;
    init::pytorch_default(&bmap, &mut Rng::new(77))?;
    let first = |m: &SdeGan| -> Result<f64> { Ok(host(m.generator_vars()?[0].as_tensor())?[0]) };
    let (g0, b0) = (first(&g)?, first(&b)?);
    a.average_in(&g, 0)?;
    assert_eq!(first(&a)?, g0);
    a.average_in(&b, 1)?;
    assert!((first(&a)? - 0.5 * (g0 + b0)).abs() < 1e-15);
    let (other, _) = gan(
        SdeGanConfig {
            hidden: 3,
            ..small()
        },
        DType::F64,
        &dev,
    )?;
    assert!(a.average_in(&other, 2).is_err());
    Ok(())
}

#[test]
fn flipping_negates_the_generator_only() -> Result<()> {
    let dev = Device::Cpu;
    let (g, _) = gan(small(), DType::F64, &dev)?;
    let ts = [0.0, 1.0, 2.0];
    let v = Rng::new(3).normal_tensor(&[3, 3], 0.0, 1.0, DType::F64, &dev)?;
    let (_, data) = ou_dataset(3, 3, 0.0, 4, DType::F64, &dev)?;
    let loss = gan_loss(
        &g,
        &ts,
        &v,
        &data,
        &SdeGradient::Backprop,
        &Gradient::Backprop,
    )?;
    let before = loss.backward()?;
    let mut after = loss.backward()?;
    g.flip_generator_grads(&mut after)?;
    for (vars, sign) in [(g.generator_vars()?, -1.0), (g.discriminator_vars()?, 1.0)] {
        for var in vars {
            let (a, b) = (
                host(after.get(&var).unwrap())?,
                host(before.get(&var).unwrap())?,
            );
            assert!(a.iter().zip(&b).all(|(x, y)| *x == sign * y));
        }
    }
    Ok(())
}

#[test]
fn ou_data_has_the_process_moments() -> Result<()> {
    // dy = (μt − θy) dt + σ(t) dW, σ(t) = 0.4·2t/T, y(0) ~ U(−1, 1): the mean solves
    // m' = μt − θm, m(0) = 0, and the variance v' = −2θv + σ(t)², v(0) = 1/3. Normalised by
    // the sample's moments at t = 0.
    let dev = Device::Cpu;
    let (n, size) = (4096, 16);
    let (ts, x) = ou_dataset(n, size, 0.0, 1, DType::F64, &dev)?;
    assert_eq!(ts, (0..size).map(|i| i as f64).collect::<Vec<_>>());
    assert_eq!(x.dims(), [n, size, 2]);
    let col = |k: usize| -> Result<Vec<f64>> { host(&x.narrow(1, k, 1)?.narrow(2, 1, 1)?) };
    let moments = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|y| (y - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        (m, var)
    };
    let (m0, v0) = moments(&col(0)?);
    assert!(m0.abs() < 1e-12 && (v0 - 1.0).abs() < 1e-12, "{m0} {v0}");
    let (mu, theta, t) = (0.02, 0.1, (size - 1) as f64);
    let mean = mu / theta * (t - (1.0 - (-theta * t).exp()) / theta);
    // The variance by a fine quadrature of e^{−2θ(t−s)} σ(s)².
    let k = 100_000;
    let sigma2 = |s: f64| (0.4 * 2.0 * s / size as f64).powi(2);
    let integral: f64 = (0..k)
        .map(|i| {
            let s = (i as f64 + 0.5) * t / k as f64;
            (-2.0 * theta * (t - s)).exp() * sigma2(s) * t / k as f64
        })
        .sum();
    let var = (-2.0 * theta * t).exp() / 3.0 + integral;
    let std0 = (1.0f64 / 3.0).sqrt();
    let (m, v) = moments(&col(size - 1)?);
    // Normalised by the sample's own moments at 0, which are near (0, 1/3): allow for
    // their sampling error (a few per cent) as well as the final ones'.
    assert!(
        (m - mean / std0).abs() < 0.05 * (mean / std0),
        "mean {m} vs {}",
        mean / std0
    );
    assert!(
        (v - var / (std0 * std0)).abs() < 0.1 * var / (std0 * std0),
        "variance {v} vs {}",
        var / (std0 * std0)
    );
    // Dropped values come back filled in; the seed fixes everything.
    let (_, dropped) = ou_dataset(64, size, 0.3, 2, DType::F64, &dev)?;
    assert!(host(&dropped)?.iter().all(|y| y.is_finite()));
    let (_, again) = ou_dataset(64, size, 0.3, 2, DType::F64, &dev)?;
    assert_eq!(host(&dropped)?, host(&again)?);
    Ok(())
}

#[test]
fn marginal_distances() -> Result<()> {
    let dev = Device::Cpu;
    let a = Rng::new(1).normal_tensor(&[2000, 3], 0.0, 1.0, DType::F64, &dev)?;
    // A copy shifted by 0.5 at every time: W1 = 0.5 exactly.
    let d = marginal_w1(&a, &a.affine(1.0, 0.5)?)?;
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|w| (w - 0.5).abs() < 1e-12), "{d:?}");
    // Two samples of one law: small, against 0.5.
    let b = Rng::new(2).normal_tensor(&[2000, 3], 0.0, 1.0, DType::F64, &dev)?;
    assert!(marginal_w1(&a, &b)?.iter().all(|w| *w < 0.08));
    assert!(marginal_w1(&a, &b.narrow(1, 0, 2)?).is_err());
    Ok(())
}

#[test]
fn errors() -> Result<()> {
    let dev = Device::Cpu;
    let bad = |cfg: SdeGanConfig| {
        let varmap = VarMap::new();
        SdeGan::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).map(|_| ())
    };
    for cfg in [
        SdeGanConfig {
            hidden: 0,
            ..small()
        },
        SdeGanConfig {
            noise: 0,
            ..small()
        },
        SdeGanConfig { dt: 0.0, ..small() },
        SdeGanConfig {
            cde_method: Method::Dopri5,
            ..small()
        },
        SdeGanConfig {
            cde_dt: f64::NAN,
            ..small()
        },
    ] {
        let e = bad(cfg.clone()).expect_err("a bad configuration");
        assert!(
            matches!(solver_error(&e), SolverError::InvalidOptions(_)),
            "{cfg:?}: {e}"
        );
    }
    let (g, _) = gan(small(), DType::F32, &dev)?;
    let ts = [0.0, 1.0, 2.0];
    let v = Tensor::zeros((2, 4), DType::F32, &dev)?;
    let e = g
        .generator()
        .forward(&ts, &v, 0, &SdeGradient::Backprop)
        .expect_err("noise of the wrong width");
    assert!(matches!(solver_error(&e), SolverError::InvalidOptions(_)));
    let v = Tensor::zeros((2, 3), DType::F32, &dev)?;
    let e = g
        .generator()
        .forward(&[0.0, 2.0, 1.0], &v, 0, &SdeGradient::Backprop)
        .expect_err("times out of order");
    assert!(matches!(solver_error(&e), SolverError::InvalidTimes(_)));
    // The adjoint needs a Stratonovich method.
    let (ito, _) = gan(
        SdeGanConfig {
            method: SdeMethod::EulerMaruyama,
            ..small()
        },
        DType::F32,
        &dev,
    )?;
    let adj = SdeGradient::Adjoint(SdeAdjointOptions::default());
    assert!(ito.generator().forward(&ts, &v, 0, &adj).is_err());
    let ys = Tensor::zeros((2, 3, 3), DType::F32, &dev)?;
    let e = g
        .discriminator()
        .scores(&ys, &ts, &Gradient::Backprop)
        .expect_err("too many channels");
    assert!(matches!(solver_error(&e), SolverError::InvalidOptions(_)));
    for (n, size, drop) in [(1, 4, 0.0), (4, 1, 0.0), (4, 4, 1.0), (4, 4, -0.1)] {
        assert!(ou_dataset(n, size, drop, 0, DType::F32, &dev).is_err());
    }
    Ok(())
}

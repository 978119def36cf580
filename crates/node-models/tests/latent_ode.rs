//! The latent ODE: the encoder's recurrence and direction, the ELBO's terms, adjoint gradients
//! against backprop and finite differences, training, the spiral data, and errors.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::{AdjointOptions, CheckpointOptions, ReversibleOptions};
use node_models::latent_ode::{spirals, Encoder, LatentOde, LatentOdeConfig};
use node_models::{init, Adam, AdamConfig, Gradient, Rng};
use node_solvers::{Method, SolveOptions};

fn small() -> LatentOdeConfig {
    LatentOdeConfig {
        obs: 2,
        latent: 3,
        hidden: 5,
        rnn_hidden: 4,
        time_input: false,
        encoder: Encoder::Rnn,
    }
}

/// [`small`] with an ODE-RNN encoder of `method` in steps of at most a `steps`-th of the span.
fn ode_rnn(method: Method, steps: usize) -> LatentOdeConfig {
    LatentOdeConfig {
        encoder: Encoder::OdeRnn { method, steps },
        ..small()
    }
}

fn build(
    cfg: &LatentOdeConfig,
    gradient: Gradient,
    opts: SolveOptions,
    dtype: DType,
    dev: &Device,
) -> Result<(VarMap, LatentOde)> {
    let varmap = VarMap::new();
    let m = LatentOde::new(
        cfg,
        opts,
        gradient,
        VarBuilder::from_varmap(&varmap, dtype, dev),
    )?;
    init::pytorch_default(&varmap, &mut Rng::new(1))?;
    Ok((varmap, m))
}

fn var(varmap: &VarMap, name: &str) -> Tensor {
    varmap.data().lock().unwrap()[name].as_tensor().clone()
}

fn data(dtype: DType, dev: &Device) -> Result<(Tensor, Vec<f64>)> {
    let s = spirals(6, 40, 8, 0.1, &mut Rng::new(2), dtype, dev)?;
    Ok((s.observed, s.ts))
}

#[test]
fn encoder_reads_the_sequence_backwards() -> Result<()> {
    // The RNN, and the ODE-RNN with one Euler step per interval (8 times, 7 intervals).
    for cfg in [small(), ode_rnn(Method::Euler, 7)] {
        let dev = Device::Cpu;
        let (vm, m) = build(
            &cfg,
            Gradient::Backprop,
            SolveOptions::default(),
            DType::F64,
            &dev,
        )?;
        let (x, ts) = data(DType::F64, &dev)?;
        let (mean, logvar) = m.encode(&x, &ts, None)?;
        // h ← tanh(W [xᵢ, h] + b) from the last observation to the first, then h2o; the
        // ODE-RNN first steps h ← h + (tᵢ − tᵢ₊₁) f_h(h).
        let (w, b) = (var(&vm, "rec.i2h.weight"), var(&vm, "rec.i2h.bias"));
        let step = |xi: &Tensor, h: &Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&[xi, h], 1)?
                .matmul(&w.t()?)?
                .broadcast_add(&b)?
                .tanh()?)
        };
        let affine = |h: &Tensor, name: &str| -> Result<Tensor> {
            Ok(h.matmul(&var(&vm, &format!("{name}.weight")).t()?)?
                .broadcast_add(&var(&vm, &format!("{name}.bias")))?)
        };
        let evolve = |h: &Tensor, dt: f64| -> Result<Tensor> {
            if cfg.encoder == Encoder::Rnn {
                return Ok(h.clone());
            }
            let f = affine(&affine(h, "rec.ode.fc1")?.tanh()?, "rec.ode.fc2")?;
            Ok((h + (f * dt)?)?)
        };
        let out = |h: &Tensor| -> Result<Vec<Vec<f64>>> { Ok(affine(h, "rec.h2o")?.to_vec2()?) };
        let t = x.dim(1)?;
        let mut back = Tensor::zeros((6, 4), DType::F64, &dev)?;
        let mut fwd = back.clone();
        for i in 0..t {
            let j = t - 1 - i;
            if i > 0 {
                back = evolve(&back, ts[j] - ts[j + 1])?;
                fwd = evolve(&fwd, ts[i] - ts[i - 1])?;
            }
            back = step(&x.narrow(1, j, 1)?.squeeze(1)?, &back)?;
            fwd = step(&x.narrow(1, i, 1)?.squeeze(1)?, &fwd)?;
        }
        let got = Tensor::cat(&[&mean, &logvar], 1)?.to_vec2::<f64>()?;
        let (want, forwards) = (out(&back)?, out(&fwd)?);
        let gap = |a: &[Vec<f64>], b: &[Vec<f64>]| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
        };
        ensure!(
            gap(&got, &want) < 1e-12,
            "{:?}: {got:?} vs {want:?}",
            cfg.encoder
        );
        ensure!(gap(&got, &forwards) > 1e-4, "the direction must matter");
    }
    Ok(())
}

#[test]
fn elbo_terms_are_the_closed_forms() -> Result<()> {
    // With eps = 0, z₀ = μ: log p(x | z₀) = Σ −½ (log 2πs² + (x − dec(z(tᵢ)))² / s²) over times
    // and coordinates, KL = ½ Σ (σ² + μ² − 1 − log σ²), loss = mean(KL − log p).
    let dev = Device::Cpu;
    let (_, m) = build(
        &small(),
        Gradient::Backprop,
        SolveOptions::default().tolerances(1e-10, 1e-10),
        DType::F64,
        &dev,
    )?;
    let (x, ts) = data(DType::F64, &dev)?;
    let s = 0.3;
    let parts = m.elbo(&x, &ts, None, &Tensor::zeros((6, 3), DType::F64, &dev)?, s)?;
    let (mean, logvar) = m.encode(&x, &ts, None)?;
    let (pred, _, _) = m.decode(&mean, &ts)?;
    let (xs, ps) = (x.to_vec3::<f64>()?, pred.to_vec3::<f64>()?);
    let (mu, lv) = (mean.to_vec2::<f64>()?, logvar.to_vec2::<f64>()?);
    let (kl, lpx) = (parts.kl.to_vec1::<f64>()?, parts.log_px.to_vec1::<f64>()?);
    let mut loss = 0.0;
    for b in 0..6 {
        let want_kl: f64 = (0..3)
            .map(|j| 0.5 * (lv[b][j].exp() + mu[b][j] * mu[b][j] - 1.0 - lv[b][j]))
            .sum();
        let want_lpx: f64 = (0..ts.len())
            .flat_map(|i| (0..2).map(move |d| (i, d)))
            .map(|(i, d)| {
                let r = xs[b][i][d] - ps[b][i][d];
                -0.5 * ((2.0 * std::f64::consts::PI * s * s).ln() + r * r / (s * s))
            })
            .sum();
        ensure!((kl[b] - want_kl).abs() < 1e-12, "KL {} vs {want_kl}", kl[b]);
        ensure!(
            (lpx[b] - want_lpx).abs() < 1e-9 * want_lpx.abs(),
            "log p(x|z0) {} vs {want_lpx}",
            lpx[b]
        );
        loss += (want_kl - want_lpx) / 6.0;
    }
    let got = parts.loss.to_scalar::<f64>()?;
    ensure!((got - loss).abs() < 1e-9 * loss.abs(), "{got} vs {loss}");
    Ok(())
}

fn gradients(
    m: &LatentOde,
    vm: &VarMap,
    x: &Tensor,
    ts: &[f64],
    mask: Option<&Tensor>,
    eps: &Tensor,
) -> Result<Vec<f64>> {
    let grads = m.elbo(x, ts, mask, eps, 0.3)?.loss.backward()?;
    let mut flat = vec![];
    for v in node_adjoint::sorted_vars(vm) {
        let g = grads.get(&v).expect("every parameter gets a gradient");
        flat.extend(g.flatten_all()?.to_vec1::<f64>()?);
    }
    Ok(flat)
}

/// A `[6, 8]` mask observing about half the points, the first of every sequence always.
fn half_mask(dtype: DType, dev: &Device) -> Result<Tensor> {
    let mut rng = Rng::new(10);
    let v: Vec<f64> = (0..48)
        .map(|k| {
            if k % 8 == 0 || rng.uniform() < 0.5 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, (6, 8), dev)?.to_dtype(dtype)?)
}

fn gradient_modes_agree(dev: &Device) -> Result<()> {
    let (x, ts) = data(DType::F64, dev)?;
    let eps = Rng::new(3).normal_tensor(&[6, 3], 0.0, 1.0, DType::F64, dev)?;
    let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
    // The example's model on the full grid, and irregular observations read with their gaps.
    let irregular = LatentOdeConfig {
        time_input: true,
        ..small()
    };
    // An ODE-RNN encoder in fine RK4 steps: its adjoint (the continuous gradient) is
    // backprop's up to their error.
    for (cfg, mask) in [
        (small(), None),
        (irregular, Some(half_mask(DType::F64, dev)?)),
        (ode_rnn(Method::Rk4, 400), Some(half_mask(DType::F64, dev)?)),
    ] {
        let mut all = vec![];
        for gradient in [
            Gradient::Adjoint(AdjointOptions::default().tolerances(1e-10, 1e-10)),
            Gradient::Backprop,
            Gradient::Checkpoint(CheckpointOptions::default().checkpoints(4)),
            Gradient::Reversible(ReversibleOptions::default()),
        ] {
            let (vm, m) = build(&cfg, gradient, opts.clone(), DType::F64, dev)?;
            all.push(gradients(&m, &vm, &x, &ts, mask.as_ref(), &eps)?);
        }
        let scale = all[1].iter().fold(0.0f64, |m, g| m.max(g.abs()));
        ensure!(scale > 1e-3);
        for (a, b) in all[0].iter().zip(&all[1]) {
            ensure!((a - b).abs() <= 1e-6 * scale, "{a} vs {b} (scale {scale})");
        }
        // Reversible backprop differentiates another discretization of the same ODE: the
        // continuous gradient, up to the solves' tolerance.
        for (r, b) in all[3].iter().zip(&all[1]) {
            ensure!(
                (r - b).abs() <= 1e-6 * scale,
                "reversible {r} vs {b} (scale {scale})"
            );
        }
        // Checkpointed backprop, 4 stored states for the 8 output times: backprop's
        // gradients up to the order of the floating-point sums.
        for (c, b) in all[2].iter().zip(&all[1]) {
            ensure!(
                (c - b).abs() <= 1e-12 * scale,
                "checkpointed {c} vs {b} (scale {scale})"
            );
        }
    }
    Ok(())
}

#[test]
fn a_mask_hides_what_it_hides() -> Result<()> {
    // An all-ones mask is no mask; the values at masked-out points change nothing, bit for
    // bit; a mask that hides points changes the loss.
    let dev = Device::Cpu;
    let (x, ts) = data(DType::F64, &dev)?;
    let eps = Rng::new(9).normal_tensor(&[6, 3], 0.0, 1.0, DType::F64, &dev)?;
    let mask = half_mask(DType::F64, &dev)?;
    let hidden = mask.affine(-1.0, 1.0)?.unsqueeze(2)?;
    let garbage = Rng::new(11).normal_tensor(&[6, 8, 2], 0.0, 100.0, DType::F64, &dev)?;
    let x2 = (&x + garbage.broadcast_mul(&hidden)?)?;
    for time_input in [false, true] {
        let cfg = LatentOdeConfig {
            time_input,
            ..small()
        };
        let opts = SolveOptions::default().tolerances(1e-8, 1e-8);
        let (_, m) = build(&cfg, Gradient::Backprop, opts, DType::F64, &dev)?;
        let loss = |x: &Tensor, mask: Option<&Tensor>| -> Result<f64> {
            Ok(m.elbo(x, &ts, mask, &eps, 0.3)?.loss.to_scalar::<f64>()?)
        };
        let ones = Tensor::ones((6, 8), DType::F64, &dev)?;
        ensure!(loss(&x, None)? == loss(&x, Some(&ones))?);
        let masked = loss(&x, Some(&mask))?;
        ensure!(masked == loss(&x2, Some(&mask))?, "time input {time_input}");
        ensure!(masked != loss(&x, None)?);
        ensure!(loss(&x2, None)? != loss(&x, None)?);
    }
    Ok(())
}

#[test]
fn the_time_input_reads_the_gaps() -> Result<()> {
    // The same observations on a grid twice as coarse: encoded alike without the time
    // input, differently with it.
    let dev = Device::Cpu;
    let (x, ts) = data(DType::F64, &dev)?;
    let coarse: Vec<f64> = ts.iter().map(|t| 2.0 * t).collect();
    for time_input in [false, true] {
        let cfg = LatentOdeConfig {
            time_input,
            ..small()
        };
        let (_, m) = build(
            &cfg,
            Gradient::Backprop,
            SolveOptions::default(),
            DType::F64,
            &dev,
        )?;
        let a = m.encode(&x, &ts, None)?.0;
        let b = m.encode(&x, &coarse, None)?.0;
        let gap = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        ensure!((gap > 1e-6) == time_input, "time input {time_input}: {gap}");
    }
    Ok(())
}

#[test]
fn the_ode_rnn_evolves_between_observations() -> Result<()> {
    let dev = Device::Cpu;
    let (x, ts) = data(DType::F64, &dev)?;
    let opts = SolveOptions::default();
    let (vm, m) = build(
        &ode_rnn(Method::Euler, 50),
        Gradient::Backprop,
        opts.clone(),
        DType::F64,
        &dev,
    )?;
    // The RNN encoder on the same variables: the cell, h2o, dynamics and decoder shared.
    let rnn = LatentOde::new(
        &small(),
        opts.clone(),
        Gradient::Backprop,
        VarBuilder::from_varmap(&vm, DType::F64, &dev),
    )?;
    let encode = |m: &LatentOde, ts: &[f64], x: &Tensor, mask: Option<&Tensor>| -> Result<Tensor> {
        Ok(m.encode(x, ts, mask)?.0)
    };
    let diff = |a: &Tensor, b: &Tensor| -> Result<f64> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f64>()?)
    };
    // The ODE reads the gaps: another grid, another encoding (the RNN's is the same).
    let coarse: Vec<f64> = ts.iter().map(|t| 2.0 * t).collect();
    ensure!(diff(&encode(&m, &ts, &x, None)?, &encode(&m, &coarse, &x, None)?)? > 1e-6);
    ensure!(
        diff(
            &encode(&rnn, &ts, &x, None)?,
            &encode(&rnn, &coarse, &x, None)?
        )? == 0.0
    );
    ensure!(diff(&encode(&m, &ts, &x, None)?, &encode(&rnn, &ts, &x, None)?)? > 1e-6);
    // With f_h ≡ 0 the two are the same encoder, bit for bit.
    let zero = |name: &str| -> Result<()> {
        let v = vm.data().lock().unwrap()[name].clone();
        v.set(&v.as_tensor().zeros_like()?)?;
        Ok(())
    };
    zero("rec.ode.fc2.weight")?;
    zero("rec.ode.fc2.bias")?;
    ensure!(diff(&encode(&m, &ts, &x, None)?, &encode(&rnn, &ts, &x, None)?)? == 0.0);

    // Time passes at a point the mask hides: the encoding is that of the grid without it
    // (the same ODE solved across it, here in fine RK4 steps).
    let (_, fine) = build(
        &ode_rnn(Method::Rk4, 400),
        Gradient::Backprop,
        opts,
        DType::F64,
        &dev,
    )?;
    let mut mask = vec![1.0f64; 48];
    for row in 0..6 {
        mask[row * 8 + 3] = 0.0;
    }
    let mask = Tensor::from_vec(mask, (6, 8), &dev)?;
    let kept = [0, 1, 2, 4, 5, 6, 7];
    let idx = Tensor::new(&kept.map(|i| i as u32), &dev)?;
    let x_kept = x.index_select(&idx, 1)?;
    let ts_kept: Vec<f64> = kept.iter().map(|&i| ts[i]).collect();
    let gap = diff(
        &encode(&fine, &ts, &x, Some(&mask))?,
        &encode(&fine, &ts_kept, &x_kept, None)?,
    )?;
    ensure!(gap < 1e-9, "a hidden point changed the encoding by {gap}");
    Ok(())
}

#[test]
fn the_ode_rnn_counts_its_solves() -> Result<()> {
    // 8 times, 7 equal intervals, Euler steps of at most a 50th of the span: ⌈50/7⌉ = 8
    // steps (evaluations) each.
    let dev = Device::Cpu;
    let (x, ts) = data(DType::F64, &dev)?;
    let eps = Rng::new(3).normal_tensor(&[6, 3], 0.0, 1.0, DType::F64, &dev)?;
    for gradient in [
        Gradient::Backprop,
        Gradient::Adjoint(AdjointOptions::default()),
    ] {
        let adjoint = matches!(gradient, Gradient::Adjoint(_));
        let (_, m) = build(
            &ode_rnn(Method::Euler, 50),
            gradient,
            SolveOptions::default(),
            DType::F64,
            &dev,
        )?;
        let parts = m.elbo(&x, &ts, None, &eps, 0.3)?;
        ensure!(
            parts.encoder.nfe_forward == 7 * 8,
            "{}",
            parts.encoder.nfe_forward
        );
        ensure!(parts.encoder.adjoint.len() == if adjoint { 7 } else { 0 });
        parts.loss.backward()?;
        // The adjoint's reverse Euler solves take the forward steps' count each.
        let back = parts.encoder.nfe_backward();
        ensure!(back == if adjoint { 7 * 8 } else { 0 }, "{back}");
    }
    // The RNN has no solves.
    let (_, m) = build(
        &small(),
        Gradient::Backprop,
        SolveOptions::default(),
        DType::F64,
        &dev,
    )?;
    let parts = m.elbo(&x, &ts, None, &eps, 0.3)?;
    ensure!(parts.encoder.nfe_forward == 0 && parts.encoder.adjoint.is_empty());
    Ok(())
}

#[test]
fn forecast_decodes_the_posterior_mean() -> Result<()> {
    // forecast(x, ts, mask, future) = decode(μ(x), [ts₀, future…]) without its first point;
    // past the observations or before them, not both.
    let dev = Device::Cpu;
    let opts = SolveOptions::default().tolerances(1e-8, 1e-8);
    let (_, m) = build(&small(), Gradient::Backprop, opts, DType::F64, &dev)?;
    let (x, ts) = data(DType::F64, &dev)?;
    let mask = half_mask(DType::F64, &dev)?;
    let later: Vec<f64> = (1..=5).map(|k| ts[7] + 0.1 * k as f64).collect();
    let got = m.forecast(&x, &ts, Some(&mask), &later)?;
    let (mean, _) = m.encode(&x, &ts, Some(&mask))?;
    let times: Vec<f64> = [&[ts[0]][..], &later].concat();
    let want = m.decode(&mean, &times)?.0.narrow(1, 1, 5)?;
    ensure!(got.dims() == [6, 5, 2]);
    ensure!(got.to_vec3::<f64>()? == want.to_vec3::<f64>()?);
    ensure!(m.forecast(&x, &ts, None, &[-0.5, -1.0])?.dims() == [6, 2, 2]);
    ensure!(m.forecast(&x, &ts, None, &[]).is_err());
    ensure!(m.forecast(&x, &ts, None, &[1.0, -1.0]).is_err());
    Ok(())
}

candle_core::test_device!(
    gradient_modes_agree,
    gradient_modes_cpu,
    gradient_modes_cuda,
    gradient_modes_metal
);

#[test]
fn adjoint_matches_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    let (x, ts) = data(DType::F64, &dev)?;
    let eps = Rng::new(4).normal_tensor(&[6, 3], 0.0, 1.0, DType::F64, &dev)?;
    // Fixed RK4 steps, forward and reverse: the loss (≈ 2300 here, the untrained decoder far
    // from the spirals) is then a smooth function of the parameters. With adaptive steps,
    // every perturbation changes the step sequence, and at rtol 1e-11 that moved the central
    // differences by up to 5e-5 of the gradient (measured), more than the adjoint's error.
    // Measured with fixed steps: at most 4e-8 apart.
    let rk4 = node_solvers::Method::Rk4;
    let adjoint = Gradient::Adjoint(AdjointOptions::default().method(rk4).step_size(0.005));
    let opts = SolveOptions::default().method(rk4).step_size(0.005);
    let (vm, m) = build(&small(), adjoint, opts, DType::F64, &dev)?;
    let g = gradients(&m, &vm, &x, &ts, None, &eps)?;
    let loss = || -> Result<f64> { Ok(m.elbo(&x, &ts, None, &eps, 0.3)?.loss.to_scalar::<f64>()?) };
    let (h, mut offset, mut checked) = (1e-4, 0, 0);
    for v in node_adjoint::sorted_vars(&vm) {
        let base = v.flatten_all()?.to_vec1::<f64>()?;
        for k in [0, base.len() - 1] {
            let at = |d: f64| -> Result<f64> {
                let mut w = base.clone();
                w[k] += d;
                v.set(&Tensor::from_vec(w, v.shape(), &dev)?)?;
                loss()
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            v.set(&Tensor::from_vec(base.clone(), v.shape(), &dev)?)?;
            let got = g[offset + k];
            ensure!(
                (fd - got).abs() <= 1e-6 * (1.0 + fd.abs()),
                "entry {k} of {:?}: adjoint {got} vs finite differences {fd}",
                v.shape()
            );
            checked += 1;
        }
        offset += base.len();
    }
    ensure!(
        checked == 28,
        "two entries of each of the 14 tensors ({checked})"
    );
    Ok(())
}

#[test]
fn adam_steps_lower_the_loss_on_spirals() -> Result<()> {
    let dev = Device::Cpu;
    let opts = SolveOptions::default().tolerances(1e-5, 1e-6);
    let (vm, m) = build(
        &LatentOdeConfig::default(),
        Gradient::Backprop,
        opts,
        DType::F32,
        &dev,
    )?;
    let s = spirals(64, 100, 30, 0.3, &mut Rng::new(5), DType::F32, &dev)?;
    let (x, ts) = (s.observed, s.ts);
    let cfg = AdamConfig {
        lr: 0.01,
        ..Default::default()
    };
    let mut opt = Adam::new(node_adjoint::sorted_vars(&vm), cfg)?;
    let mut rng = Rng::new(6);
    let eps = Rng::new(7).normal_tensor(&[64, 4], 0.0, 1.0, DType::F32, &dev)?;
    let loss = |m: &LatentOde| -> Result<f32> {
        Ok(m.elbo(&x, &ts, None, &eps, 0.3)?.loss.to_scalar::<f32>()?)
    };
    let first = loss(&m)?;
    for _ in 0..20 {
        let e = rng.normal_tensor(&[64, 4], 0.0, 1.0, DType::F32, &dev)?;
        opt.backward_step(&m.elbo(&x, &ts, None, &e, 0.3)?.loss)?;
    }
    let last = loss(&m)?;
    ensure!(last < 0.8 * first, "loss {first} → {last}");
    Ok(())
}

#[test]
fn spirals_follow_the_example() -> Result<()> {
    let dev = Device::Cpu;
    let s = spirals(50, 500, 100, 0.1, &mut Rng::new(8), DType::F64, &dev)?;
    let (x, ts) = (s.clean, s.ts);
    // The observations are the clean points plus the noise.
    let noise = (&s.observed - &x)?.flatten_all()?.to_vec1::<f64>()?;
    let sd = (noise.iter().map(|v| v * v).sum::<f64>() / noise.len() as f64).sqrt();
    ensure!((sd - 0.1).abs() < 0.005, "noise sd {sd}");
    ensure!(x.dims() == [50, 100, 2]);
    ensure!(ts.len() == 100 && ts[0] == 0.0);
    // The example's grid: linspace(0, 6π, 500), of which the first 100 times.
    ensure!((ts[99] - 6.0 * std::f64::consts::PI * 99.0 / 499.0).abs() < 1e-12);
    // Every clean point lies on one of the two spirals: |p − (5, 0)| = 0.3 t for the
    // counter-clockwise one at some grid time t, |p − (−5, 0)| = 15 / (6π + 1 − t) for the other.
    let grid: Vec<f64> = (0..500)
        .map(|i| 6.0 * std::f64::consts::PI * i as f64 / 499.0)
        .collect();
    let (mut cw, mut cc) = (0, 0);
    for seq in x.to_vec3::<f64>()? {
        let p = &seq[0];
        let on_cc = grid.iter().any(|&t| {
            ((p[0] - 5.0 - 0.3 * t * t.cos()).abs() < 1e-9)
                && ((p[1] - 0.3 * t * t.sin()).abs() < 1e-9)
        });
        let on_cw = grid.iter().any(|&t| {
            let z = 6.0 * std::f64::consts::PI + 1.0 - t;
            let r = 15.0 / z;
            ((p[0] + 5.0 - r * z.cos()).abs() < 1e-9) && ((p[1] - r * z.sin()).abs() < 1e-9)
        });
        ensure!(on_cc != on_cw, "{p:?} on exactly one spiral");
        if on_cc {
            cc += 1
        } else {
            cw += 1
        }
    }
    ensure!(cc > 10 && cw > 10, "both spirals drawn ({cc} / {cw})");
    Ok(())
}

#[test]
fn bad_input_is_an_error() -> Result<()> {
    let dev = Device::Cpu;
    let (_, m) = build(
        &small(),
        Gradient::Backprop,
        SolveOptions::default(),
        DType::F32,
        &dev,
    )?;
    let (x, ts) = data(DType::F32, &dev)?;
    let eps = Tensor::zeros((6, 3), DType::F32, &dev)?;
    let err = |r: candle_core::Result<node_models::latent_ode::ElboParts>| {
        r.map(|_| ()).unwrap_err().to_string()
    };
    ensure!(err(m.elbo(&x.narrow(2, 0, 1)?, &ts, None, &eps, 0.3)).contains("observations must be"));
    ensure!(err(m.elbo(&x, &ts[1..], None, &eps, 0.3)).contains("times for"));
    ensure!(err(m.elbo(&x, &ts, None, &eps.narrow(1, 0, 2)?, 0.3)).contains("eps must be"));
    ensure!(err(m.elbo(&x, &ts, None, &eps, 0.0)).contains("noise_std"));
    let short_mask = Tensor::ones((6, 7), DType::F32, &dev)?;
    ensure!(err(m.elbo(&x, &ts, Some(&short_mask), &eps, 0.3)).contains("the mask must be"));
    let f64_mask = Tensor::ones((6, 8), DType::F64, &dev)?;
    ensure!(err(m.elbo(&x, &ts, Some(&f64_mask), &eps, 0.3)).contains("the mask must be"));
    let mut bad_ts = ts.clone();
    bad_ts.swap(2, 3);
    let e = err(m.elbo(&x, &bad_ts, None, &eps, 0.3));
    ensure!(e.contains("not strictly monotone"), "unordered times: {e}");
    ensure!(m
        .decode(&Tensor::zeros((2, 5), DType::F32, &dev)?, &ts)
        .is_err());
    ensure!(spirals(4, 100, 50, 0.1, &mut Rng::new(0), DType::F32, &dev).is_err());
    let vm = VarMap::new();
    let e = LatentOde::new(
        &LatentOdeConfig {
            latent: 0,
            ..small()
        },
        SolveOptions::default(),
        Gradient::Backprop,
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )
    .unwrap_err()
    .to_string();
    ensure!(e.contains("at least 1"), "{e}");
    for cfg in [ode_rnn(Method::Kvaerno3, 50), ode_rnn(Method::Euler, 0)] {
        let e = LatentOde::new(
            &cfg,
            SolveOptions::default(),
            Gradient::Backprop,
            VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev),
        )
        .unwrap_err()
        .to_string();
        ensure!(e.contains("ODE-RNN takes an explicit method"), "{e}");
    }
    Ok(())
}

//! The RNN baseline: its recurrence and loss, what a mask means (the compacted sequence with
//! its own times), the forecast fed back, gradients against central differences, training,
//! the same numbers on every device, and errors.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_models::latent_ode::spirals;
use node_models::rnn::{Rnn, RnnConfig};
use node_models::{init, Adam, AdamConfig, Rng};

fn config(time_input: bool) -> RnnConfig {
    RnnConfig {
        obs: 2,
        hidden: 5,
        time_input,
    }
}

fn build(cfg: &RnnConfig, dtype: DType, dev: &Device) -> Result<(VarMap, Rnn)> {
    let varmap = VarMap::new();
    let m = Rnn::new(cfg, VarBuilder::from_varmap(&varmap, dtype, dev))?;
    init::pytorch_default(&varmap, &mut Rng::new(1))?;
    Ok((varmap, m))
}

fn var(varmap: &VarMap, name: &str) -> Tensor {
    varmap.data().lock().unwrap()[name].as_tensor().clone()
}

/// Six spiral pieces of 8 points, and 4 grid times after them.
fn data(dtype: DType, dev: &Device) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    let s = spirals(6, 40, 12, 0.1, &mut Rng::new(2), dtype, dev)?;
    Ok((
        s.observed.narrow(1, 0, 8)?,
        s.ts[..8].to_vec(),
        s.ts[8..].to_vec(),
    ))
}

/// A `[6, 8]` mask observing about half the points, at least two of every sequence.
fn half_mask(dev: &Device) -> Result<Tensor> {
    let mut rng = Rng::new(10);
    let v: Vec<f64> = (0..48)
        .map(|k| {
            if k % 8 == 1 || k % 8 == 5 || rng.uniform() < 0.5 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, (6, 8), dev)?)
}

/// The model written out by hand on one sequence `x: [T, 2]` at times `ts`: its loss
/// (noise 0.3) and its forecast at `future`.
fn by_hand(
    vm: &VarMap,
    cfg: &RnnConfig,
    x: &[Vec<f64>],
    ts: &[f64],
    future: &[f64],
) -> Result<(f64, Vec<Vec<f64>>)> {
    let dev = Device::Cpu;
    let (w, b) = (var(vm, "i2h.weight"), var(vm, "i2h.bias"));
    let (wo, bo) = (var(vm, "h2o.weight"), var(vm, "h2o.bias"));
    // h ← tanh(W [x, Δ, h] + b) (Δ only with the time input); x̂ = Wₒ h + bₒ.
    let cell = |xi: &[f64], gap: f64, h: &Tensor| -> Result<Tensor> {
        let mut input = xi.to_vec();
        if cfg.time_input {
            input.push(gap);
        }
        let input = Tensor::cat(&[&Tensor::new(input, &dev)?.unsqueeze(0)?, h], 1)?;
        Ok(input.matmul(&w.t()?)?.broadcast_add(&b)?.tanh()?)
    };
    let out = |h: &Tensor| -> Result<Vec<f64>> {
        Ok(h.matmul(&wo.t()?)?
            .broadcast_add(&bo)?
            .squeeze(0)?
            .to_vec1()?)
    };
    let s2 = 0.09;
    let mut h = Tensor::zeros((1, cfg.hidden), DType::F64, &dev)?;
    let mut loss = 0.0;
    for i in 0..x.len() {
        let next_t = ts.get(i + 1).copied().unwrap_or(future[0]);
        h = cell(&x[i], next_t - ts[i], &h)?;
        if i + 1 < x.len() {
            let p = out(&h)?;
            for d in 0..2 {
                let e = x[i + 1][d] - p[d];
                loss += 0.5 * ((2.0 * std::f64::consts::PI * s2).ln() + e * e / s2);
            }
        }
    }
    let mut forecast = vec![out(&h)?];
    for k in 1..future.len() {
        h = cell(&forecast[k - 1].clone(), future[k] - future[k - 1], &h)?;
        forecast.push(out(&h)?);
    }
    Ok((loss, forecast))
}

fn max_gap(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
}

#[test]
fn is_the_recurrence_it_claims() -> Result<()> {
    let dev = Device::Cpu;
    let (x, ts, future) = data(DType::F64, &dev)?;
    for time_input in [false, true] {
        let cfg = config(time_input);
        let (vm, m) = build(&cfg, DType::F64, &dev)?;
        let loss = m.loss(&x, &ts, None, 0.3)?.to_scalar::<f64>()?;
        let forecast = m.forecast(&x, &ts, None, &future)?.to_vec3::<f64>()?;
        let mut want_loss = 0.0;
        for (b, seq) in x.to_vec3::<f64>()?.iter().enumerate() {
            let (l, f) = by_hand(&vm, &cfg, seq, &ts, &future)?;
            want_loss += l / 6.0;
            ensure!(max_gap(&forecast[b], &f) < 1e-12, "forecast {b}");
        }
        ensure!(
            (loss - want_loss).abs() < 1e-12 * want_loss.abs(),
            "{loss} vs {want_loss}"
        );
    }
    Ok(())
}

#[test]
fn a_mask_is_the_compacted_sequence() -> Result<()> {
    // Each masked sequence is its observed points at their own times: the loss is the mean of
    // theirs and each forecast is theirs (the gaps read are those between observed points);
    // values at masked-out points change nothing, bit for bit; all ones is no mask.
    let dev = Device::Cpu;
    let (x, ts, future) = data(DType::F64, &dev)?;
    let mask = half_mask(&dev)?;
    let hidden = mask.affine(-1.0, 1.0)?.unsqueeze(2)?;
    let garbage = Rng::new(11).normal_tensor(&[6, 8, 2], 0.0, 100.0, DType::F64, &dev)?;
    let x2 = (&x + garbage.broadcast_mul(&hidden)?)?;
    let ones = Tensor::ones((6, 8), DType::F64, &dev)?;
    for time_input in [false, true] {
        let cfg = config(time_input);
        let (vm, m) = build(&cfg, DType::F64, &dev)?;
        let loss = m.loss(&x, &ts, Some(&mask), 0.3)?.to_scalar::<f64>()?;
        let forecast = m.forecast(&x, &ts, Some(&mask), &future)?;
        let (seqs, rows) = (x.to_vec3::<f64>()?, mask.to_vec2::<f64>()?);
        let mut want_loss = 0.0;
        for b in 0..6 {
            let seen: Vec<usize> = (0..8).filter(|&i| rows[b][i] > 0.5).collect();
            let xs: Vec<Vec<f64>> = seen.iter().map(|&i| seqs[b][i].clone()).collect();
            let times: Vec<f64> = seen.iter().map(|&i| ts[i]).collect();
            let (l, f) = by_hand(&vm, &cfg, &xs, &times, &future)?;
            want_loss += l / 6.0;
            let got = forecast.get(b)?.to_vec2::<f64>()?;
            ensure!(max_gap(&got, &f) < 1e-12, "forecast {b}");
        }
        ensure!(
            (loss - want_loss).abs() < 1e-12 * want_loss.abs(),
            "{loss} vs {want_loss}"
        );

        let bits = |x: &Tensor, mask: Option<&Tensor>| -> Result<(f64, Vec<Vec<Vec<f64>>>)> {
            Ok((
                m.loss(x, &ts, mask, 0.3)?.to_scalar::<f64>()?,
                m.forecast(x, &ts, mask, &future)?.to_vec3::<f64>()?,
            ))
        };
        ensure!(bits(&x, Some(&mask))? == bits(&x2, Some(&mask))?);
        ensure!(bits(&x, None)? == bits(&x, Some(&ones))?);
        ensure!(bits(&x, None)? != bits(&x2, None)?);
    }
    Ok(())
}

#[test]
fn the_time_input_reads_the_gaps() -> Result<()> {
    // The same observations on a grid twice as coarse: the same loss without the time input,
    // another with it.
    let dev = Device::Cpu;
    let (x, ts, _) = data(DType::F64, &dev)?;
    let coarse: Vec<f64> = ts.iter().map(|t| 2.0 * t).collect();
    for time_input in [false, true] {
        let (_, m) = build(&config(time_input), DType::F64, &dev)?;
        let a = m.loss(&x, &ts, None, 0.3)?.to_scalar::<f64>()?;
        let b = m.loss(&x, &coarse, None, 0.3)?.to_scalar::<f64>()?;
        ensure!((a != b) == time_input, "time input {time_input}: {a} {b}");
    }
    Ok(())
}

#[test]
fn gradients_match_central_differences() -> Result<()> {
    let dev = Device::Cpu;
    let (x, ts, _) = data(DType::F64, &dev)?;
    let mask = half_mask(&dev)?;
    let (vm, m) = build(&config(true), DType::F64, &dev)?;
    let loss = || -> Result<f64> { Ok(m.loss(&x, &ts, Some(&mask), 0.3)?.to_scalar::<f64>()?) };
    let grads = m.loss(&x, &ts, Some(&mask), 0.3)?.backward()?;
    let h = 1e-6;
    let mut checked = 0;
    for v in node_adjoint::sorted_vars(&vm) {
        let g = grads
            .get(&v)
            .expect("a gradient")
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = v.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        // A few entries of each parameter, spread over it.
        for k in (0..base.len()).step_by(base.len().div_ceil(4)) {
            let at = |d: f64| -> Result<f64> {
                let mut p = base.clone();
                p[k] += d;
                v.set(&Tensor::from_vec(p, v.dims(), &dev)?)?;
                loss()
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            v.set(&Tensor::from_vec(base.clone(), v.dims(), &dev)?)?;
            ensure!(
                (fd - g[k]).abs() <= 1e-6 * (1.0 + g[k].abs()),
                "{fd} vs {}",
                g[k]
            );
            checked += 1;
        }
    }
    ensure!(checked >= 12);
    Ok(())
}

#[test]
fn adam_learns_the_next_point() -> Result<()> {
    // Trained on spirals, its one-step predictions beat repeating the last point.
    let dev = Device::Cpu;
    let s = spirals(32, 100, 30, 0.05, &mut Rng::new(4), DType::F32, &dev)?;
    let (vm, m) = build(&config(true), DType::F32, &dev)?;
    let mut opt = Adam::new(
        node_adjoint::sorted_vars(&vm),
        AdamConfig {
            lr: 0.01,
            ..Default::default()
        },
    )?;
    // The loss of predicting xᵢ₊₁ = xᵢ, in the same units: Σ ½ (log 2πs² + e²/s²) over the
    // 29 pairs and 2 coordinates, averaged over the sequences.
    let s2 = 0.09f64;
    let steps = (s.observed.narrow(1, 1, 29)? - s.observed.narrow(1, 0, 29)?)?;
    let sq = steps.sqr()?.sum_all()?.to_scalar::<f32>()? as f64 / 32.0;
    let repeat = 0.5 * (58.0 * (2.0 * std::f64::consts::PI * s2).ln() + sq / s2);
    let mut losses = vec![];
    for _ in 0..800 {
        let loss = m.loss(&s.observed, &s.ts, None, 0.3)?;
        losses.push(loss.to_scalar::<f32>()? as f64);
        opt.backward_step(&loss)?;
    }
    ensure!(losses[0] > repeat, "{} vs {repeat}", losses[0]);
    ensure!(losses[799] < 0.5 * repeat, "{} vs {repeat}", losses[799]);
    Ok(())
}

fn same_on_every_device(dev: &Device) -> Result<()> {
    // Loss, forecast and gradients on `dev` against the CPU's, in f32, with a mask.
    let (x, ts, future) = data(DType::F32, &Device::Cpu)?;
    let mask = half_mask(&Device::Cpu)?.to_dtype(DType::F32)?;
    let mut results = vec![];
    for d in [&Device::Cpu, dev] {
        let (vm, m) = build(&config(true), DType::F32, d)?;
        let (x, mask) = (x.to_device(d)?, mask.to_device(d)?);
        let loss = m.loss(&x, &ts, Some(&mask), 0.3)?;
        let grads = loss.backward()?;
        let mut flat = vec![loss.to_scalar::<f32>()?];
        for v in node_adjoint::sorted_vars(&vm) {
            flat.extend(
                grads
                    .get(&v)
                    .expect("a gradient")
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        flat.extend(
            m.forecast(&x, &ts, Some(&mask), &future)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        results.push(flat);
    }
    for (a, b) in results[0].iter().zip(&results[1]) {
        ensure!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
    }
    Ok(())
}

candle_core::test_device!(
    same_on_every_device,
    same_on_every_device_cpu,
    same_on_every_device_cuda,
    same_on_every_device_metal
);

#[test]
fn bad_input_is_an_error() -> Result<()> {
    let dev = Device::Cpu;
    let (_, m) = build(&config(true), DType::F32, &dev)?;
    let (x, ts, future) = data(DType::F32, &dev)?;
    let err = |r: candle_core::Result<Tensor>| r.map(|_| ()).unwrap_err().to_string();
    ensure!(err(m.loss(&x.narrow(2, 0, 1)?, &ts, None, 0.3)).contains("observations must be"));
    ensure!(err(m.loss(&x, &ts[1..], None, 0.3)).contains("times for"));
    ensure!(err(m.loss(&x, &ts, None, 0.0)).contains("noise_std"));
    let mut unordered = ts.clone();
    unordered.swap(2, 3);
    ensure!(err(m.loss(&x, &unordered, None, 0.3)).contains("increasing"));
    let short_mask = Tensor::ones((6, 7), DType::F32, &dev)?;
    ensure!(err(m.loss(&x, &ts, Some(&short_mask), 0.3)).contains("the mask must be"));
    let f64_mask = Tensor::ones((6, 8), DType::F64, &dev)?;
    ensure!(err(m.forecast(&x, &ts, Some(&f64_mask), &future)).contains("the mask must be"));
    for bad in [&[][..], &ts[..2], &[future[1], future[0]]] {
        ensure!(err(m.forecast(&x, &ts, None, bad)).contains("forecast times"));
    }
    let vm = VarMap::new();
    let e = Rnn::new(
        &RnnConfig {
            hidden: 0,
            ..config(false)
        },
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )
    .unwrap_err()
    .to_string();
    ensure!(e.contains("at least 1"), "{e}");
    Ok(())
}

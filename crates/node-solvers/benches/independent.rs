//! A batch of independent problems: `odeint_independent` (a step size per sample) against
//! `odeint` on the whole batch (one shared step) and against a loop of `odeint` over the
//! samples. Steps, evaluations, time and error.
//!
//! `cargo bench -p node-solvers --bench independent [-- --reps N]` (CPU).
//!
//! 1. Rates spread over three decades in one batch: `a' = λ (cos t − a) + c`,
//!    `c' = −a − 0.3 c² sin t`, `λ` from 0.1 to 100 over 64 samples, `[0, 2]`, dopri5 at
//!    `rtol = 1e-6, atol = 1e-8`; errors against each sample alone at `1e-12`.
//! 2. Irregular times: 64 samples of a damped rotation, each observed at 10 times of its
//!    own in `[0, 5]`; `odeint_independent` against `odeint` at the union of all times
//!    (640 outputs, each sample's picked out after).
//! 3. The overhead on a batch that needs no per-sample steps: torchdiffeq's `ode_demo` MLP
//!    (2 → 50 → 2, tanh) on 1024 samples over `[0, 1]`.
//! 4. Events: 64 balls with quadratic drag (`v' = −9.81 − k v|v|`, `k` from 0.01 to 1),
//!    dropped from heights 1 to 50, each until it lands: `odeint_independent_event` (one
//!    batched solve, each ball stopping at its own landing) against `odeint_event` on each
//!    ball in turn, dopri5 at 1e-8.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::{reps_arg, time};
use node_solvers::{
    odeint, odeint_event, odeint_independent, odeint_independent_event, EventOptions, SolveOptions,
    TimeInvariant,
};

fn field(t: &Tensor, y: &Tensor, lam: &Tensor) -> Result<Tensor> {
    let b = y.dim(0)?;
    let t = t.reshape((b, 1))?;
    let a = y.narrow(1, 0, 1)?;
    let c = y.narrow(1, 1, 1)?;
    let da = ((t.cos()? - &a)?.broadcast_mul(lam)? + &c)?;
    let dc = (a.neg()? - (c.sqr()? * t.sin()?)?.affine(0.3, 0.0)?)?;
    Tensor::cat(&[da, dc], 1)
}

/// `max |a − b|` over each sample (dimension 1 of `[T, B, …]`), the worst of them.
fn worst(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// A deterministic spread of `n` values in `[0, 1)` (the golden-ratio sequence).
fn spread(n: usize, offset: f64) -> Vec<f64> {
    (0..n)
        .map(|i| (offset + i as f64 * 0.618_033_988_749_895).fract())
        .collect()
}

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let reps = reps_arg(5);
    let dev = Device::Cpu;

    let b = 64;
    let lams: Vec<f64> = (0..b)
        .map(|i| 10f64.powf(-1.0 + 3.0 * i as f64 / (b - 1) as f64))
        .collect();
    let lam = Tensor::from_vec(lams.clone(), (b, 1), &dev)?;
    let y0 = Tensor::from_vec(
        (0..b)
            .flat_map(|i| [1.0 - 0.01 * i as f64, 0.5])
            .collect::<Vec<f64>>(),
        (b, 2),
        &dev,
    )?;
    let ts = vec![vec![0.0, 0.5, 1.0, 2.0]];
    let opts = SolveOptions::default().tolerances(1e-6, 1e-8);
    let per_sample = |t: &Tensor, y: &Tensor| field(t, y, &lam);
    let reference = odeint_independent(
        &per_sample,
        &y0,
        &ts,
        &opts.clone().tolerances(1e-12, 1e-12),
    )?
    .ys;

    println!("## {b} samples, λ from 0.1 to 100, dopri5 at 1e-6 (median of {reps})");
    println!("| solve | steps | NFE (batch) | host reads | time | worst error | easiest sample's error |");
    println!("|---|---|---|---|---|---|---|");
    let shared = |t: f64, y: &Tensor| field(&Tensor::full(t, b, &dev)?, y, &lam);
    let (secs, sol) = time(reps, || odeint(&shared, &y0, &ts[0], &opts))?;
    let easy = worst(&sol.ys.narrow(1, 0, 1)?, &reference.narrow(1, 0, 1)?)?;
    println!(
        "| odeint, one step for all | {} ({}) | {} | {} | {:.1} ms | {:.2e} | {:.2e} |",
        sol.stats.accepted_steps,
        sol.stats.rejected_steps,
        sol.stats.nfe,
        sol.stats.host_reads,
        secs * 1e3,
        worst(&sol.ys, &reference)?,
        easy
    );
    let (secs, sol) = time(reps, || odeint_independent(&per_sample, &y0, &ts, &opts))?;
    let mut steps: Vec<usize> = sol.samples.iter().map(|s| s.accepted_steps).collect();
    steps.sort_unstable();
    println!(
        "| odeint_independent | {} a sample (min / median / max {} / {} / {}), {} batch steps | {} | {} | {:.1} ms | {:.2e} | {:.2e} |",
        steps.iter().sum::<usize>() / b,
        steps[0],
        steps[b / 2],
        steps[b - 1],
        sol.batch_steps,
        sol.nfe,
        sol.host_reads,
        secs * 1e3,
        worst(&sol.ys, &reference)?,
        worst(&sol.ys.narrow(1, 0, 1)?, &reference.narrow(1, 0, 1)?)?
    );
    let (secs, (nfe, ys)) = time(reps, || {
        let mut nfe = 0;
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let li = lam.narrow(0, i, 1)?;
            let f = |t: f64, y: &Tensor| field(&Tensor::new(&[t], &dev)?, y, &li);
            let sol = odeint(&f, &y0.narrow(0, i, 1)?, &ts[0], &opts)?;
            nfe += sol.stats.nfe;
            out.push(sol.ys);
        }
        Ok((nfe, Tensor::cat(&out, 1)?))
    })?;
    println!(
        "| odeint on each sample in turn | as above | {nfe} (of one sample each) | | {:.1} ms | {:.2e} | |",
        secs * 1e3,
        worst(&ys, &reference)?
    );

    // 2. Irregular times.
    let n_obs = 10;
    let rot = |y: &Tensor| -> Result<Tensor> {
        let a = y.narrow(1, 0, 1)?;
        let c = y.narrow(1, 1, 1)?;
        Tensor::cat(
            &[
                (c.clone() - a.affine(0.1, 0.0)?)?,
                (a.neg()? - c.affine(0.1, 0.0)?)?,
            ],
            1,
        )
    };
    let times: Vec<Vec<f64>> = (0..b)
        .map(|i| {
            let mut v: Vec<f64> = spread(n_obs - 1, i as f64 * 0.137)
                .into_iter()
                .map(|u| 0.01 + 4.99 * u)
                .collect();
            v.sort_by(f64::total_cmp);
            v.insert(0, 0.0);
            v
        })
        .collect();
    println!();
    println!("## {b} samples, {n_obs} times of their own each in [0, 5], dopri5 at 1e-6 (median of {reps})");
    println!("| solve | steps | NFE | time |");
    println!("|---|---|---|---|");
    let f_rot = TimeInvariant(|_t: f64, y: &Tensor| rot(y));
    let (secs, sol) = time(reps, || odeint_independent(&f_rot, &y0, &times, &opts))?;
    let own = sol.ys.clone();
    println!(
        "| odeint_independent, own times | {} batch steps | {} | {:.1} ms |",
        sol.batch_steps,
        sol.nfe,
        secs * 1e3
    );
    let mut union: Vec<f64> = times.iter().flatten().copied().collect();
    union.sort_by(f64::total_cmp);
    union.dedup();
    let f_rot_shared = |_t: f64, y: &Tensor| rot(y);
    let (secs, (sol, picked)) = time(reps, || {
        let sol = odeint(&f_rot_shared, &y0, &union, &opts)?;
        // Each sample's own times out of the union's outputs: one gather.
        let idx: Vec<u32> = (0..n_obs)
            .flat_map(|j| {
                let (times, union) = (&times, &union);
                (0..b).map(move |i| {
                    let k = union.partition_point(|&u| u < times[i][j]);
                    (k * b + i) as u32
                })
            })
            .collect();
        let flat = sol.ys.reshape((union.len() * b, 2))?;
        let picked = flat
            .index_select(&Tensor::from_vec(idx, n_obs * b, &dev)?, 0)?
            .reshape((n_obs, b, 2))?;
        Ok((sol, picked))
    })?;
    println!(
        "| odeint at the union of the times ({} outputs) | {} | {} | {:.1} ms |",
        union.len(),
        sol.stats.accepted_steps,
        sol.stats.nfe,
        secs * 1e3
    );
    println!(
        "\nlargest difference between the two: {:.2e}",
        worst(&own, &picked)?
    );

    // 3. The overhead where one step would do: ode_demo's MLP.
    let b = 1024;
    let w1 = Tensor::from_vec(spread(100, 0.3), (50, 2), &dev)?.affine(2.0, -1.0)?;
    let b1 = Tensor::from_vec(spread(50, 0.7), 50, &dev)?.affine(0.2, -0.1)?;
    let w2 = Tensor::from_vec(spread(100, 0.1), (2, 50), &dev)?.affine(0.4, -0.2)?;
    let y0 = Tensor::from_vec(
        spread(2 * b, 0.5)
            .into_iter()
            .map(|u| 2.0 * u - 1.0)
            .collect::<Vec<f64>>(),
        (b, 2),
        &dev,
    )?
    .to_dtype(DType::F32)?;
    let (w1, b1, w2) = (
        w1.to_dtype(DType::F32)?,
        b1.to_dtype(DType::F32)?,
        w2.to_dtype(DType::F32)?,
    );
    let mlp32 = |_t: f64, y: &Tensor| -> Result<Tensor> {
        y.powf(3.0)?
            .matmul(&w1.t()?)?
            .broadcast_add(&b1)?
            .tanh()?
            .matmul(&w2.t()?)
    };
    let ts = vec![vec![0.0, 0.5, 1.0]];
    let opts = SolveOptions::default().tolerances(1e-5, 1e-6);
    println!();
    println!("## ode_demo's MLP on {b} samples (f32), [0, 1], dopri5 at 1e-5 (median of {reps})");
    println!("| solve | steps | NFE | time |");
    println!("|---|---|---|---|");
    let (secs, sol) = time(reps, || odeint(&mlp32, &y0, &ts[0], &opts))?;
    println!(
        "| odeint | {} ({}) | {} | {:.1} ms |",
        sol.stats.accepted_steps,
        sol.stats.rejected_steps,
        sol.stats.nfe,
        secs * 1e3
    );
    let f = TimeInvariant(mlp32);
    let (secs, sol) = time(reps, || odeint_independent(&f, &y0, &ts, &opts))?;
    let most = sol
        .samples
        .iter()
        .map(|s| s.accepted_steps)
        .max()
        .unwrap_or(0);
    println!(
        "| odeint_independent | {} batch steps (a sample's most: {most}) | {} | {:.1} ms |",
        sol.batch_steps,
        sol.nfe,
        secs * 1e3
    );

    // 4. Events: each ball until it lands.
    let b = 64;
    let k = Tensor::from_vec(
        (0..b)
            .map(|i| 10f64.powf(-2.0 + 2.0 * i as f64 / (b - 1) as f64))
            .collect::<Vec<f64>>(),
        (b, 1),
        &dev,
    )?;
    let y0 = Tensor::from_vec(
        spread(b, 0.2)
            .into_iter()
            .flat_map(|u| [1.0 + 49.0 * u, 0.0])
            .collect::<Vec<f64>>(),
        (b, 2),
        &dev,
    )?;
    let fall = |y: &Tensor, k: &Tensor| -> Result<Tensor> {
        let v = y.narrow(1, 1, 1)?;
        let dv = ((v.abs()? * &v)?.broadcast_mul(k)?.neg()? - 9.81)?;
        Tensor::cat(&[v, dv], 1)
    };
    let opts = SolveOptions::default().tolerances(1e-8, 1e-10);
    let ev = EventOptions::default();
    println!();
    println!("## {b} balls with drags of their own, each until it lands, dopri5 at 1e-8 (median of {reps})");
    println!("| solve | steps | NFE | host reads | time |");
    println!("|---|---|---|---|---|");
    let f_batch = |_t: &Tensor, y: &Tensor| fall(y, &k);
    let ground = |_t: &Tensor, y: &Tensor| y.narrow(1, 0, 1);
    let (secs, sol) = time(reps, || {
        odeint_independent_event(&f_batch, &y0, &[[0.0, 100.0]], &ground, &opts, &ev)
    })?;
    println!(
        "| odeint_independent_event | {} batch steps (a ball's most: {}) | {} | {} | {:.1} ms |",
        sol.batch_steps,
        sol.samples
            .iter()
            .map(|s| s.accepted_steps)
            .max()
            .unwrap_or(0),
        sol.nfe,
        sol.host_reads,
        secs * 1e3
    );
    let (secs, (steps, nfe, reads, times)) = time(reps, || {
        let (mut steps, mut nfe, mut reads, mut times) = (0, 0, 0, vec![]);
        for i in 0..b {
            let ki = k.narrow(0, i, 1)?;
            let f = |_t: f64, y: &Tensor| fall(y, &ki);
            let g = |_t: f64, y: &Tensor| y.narrow(1, 0, 1);
            let one = odeint_event(&f, &y0.narrow(0, i, 1)?, 0.0, 100.0, &g, &opts, &ev)?;
            steps += one.stats.accepted_steps;
            nfe += one.stats.nfe;
            reads += one.stats.host_reads;
            times.push(one.t);
        }
        Ok((steps, nfe, reads, times))
    })?;
    println!(
        "| odeint_event on each ball in turn | {steps} in all | {nfe} (of one ball each) | {reads} | {:.1} ms |",
        secs * 1e3
    );
    let diff = sol
        .t
        .iter()
        .zip(&times)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!("\nlargest difference in landing time between the two: {diff:.1e}");
    Ok(())
}

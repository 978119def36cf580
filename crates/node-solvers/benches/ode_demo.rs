//! Time per solve, NFE, time per NFE and solver overhead on torchdiffeq's `ode_demo` dynamics
//! `f(z) = MLP(z³)`, MLP = Linear(2,50)–tanh–Linear(50,2), batch 1024, t 0 → 1, with the exact
//! weights and inputs of the peer script `ode_solve.py` (`fixtures/torchdiffeq`).
//!
//! `cargo bench -p node-solvers --bench ode_demo [-- --reps N] [--device cpu|cuda]`
//! (`scripts/bench-ode-solve-torch.py` times torchdiffeq on the same problem on either device).
//!
//! Overhead = solve time − NFE × (median time of one bare `f` evaluation), i.e. everything
//! the solver itself adds: stage combinations, error norms, dense output, bookkeeping.

mod common;

use candle_core::{DType, Device, Result, Tensor};
use node_solvers::{odeint, Method, SolveOptions};
use std::collections::HashMap;
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median and min seconds of `f`, waiting for the device to finish each run.
fn time<T>(
    dev: &Device,
    reps: usize,
    warmup: usize,
    mut f: impl FnMut() -> Result<T>,
) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        dev.synchronize()?;
        ts.push(s.elapsed().as_secs_f64());
    }
    let min = ts.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok((median(&mut ts), min))
}

fn main() -> Result<()> {
    // As the project's binaries do (see `node_kernels::alloc`).
    node_kernels::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let reps = common::reps_arg(20);
    let dev = match args
        .iter()
        .position(|a| a == "--device")
        .map(|i| args.get(i + 1))
    {
        None => Device::Cpu,
        Some(Some(d)) if d == "cpu" => Device::Cpu,
        Some(Some(d)) if d == "cuda" => Device::new_cuda(0)?,
        Some(d) => candle_core::bail!("--device: expected cpu or cuda, got {d:?}"),
    };
    node_kernels::skip_unused_cuda_events(&dev);
    println!(
        "ode_demo solve, batch 1024, f32, {dev:?}, {} CPU threads, {reps} reps (median / min)",
        candle_core::utils::get_num_threads()
    );
    println!(
        "| variant | NFE | solve ms (median) | solve ms (min) | µs per NFE | bare f µs | overhead | max |Δ| vs torchdiffeq |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, file, opts) in [
        (
            "dopri5 rtol 1e-7 atol 1e-9",
            "ode_solve_dopri5_rtol1e-7_atol1e-9",
            SolveOptions::default()
                .method(Method::Dopri5)
                .tolerances(1e-7, 1e-9),
        ),
        (
            "rk4 (3/8 rule) 100 steps",
            "ode_solve_rk4_100steps",
            SolveOptions::default()
                .method(Method::Rk38)
                .fixed_steps(100),
        ),
        // The Adams methods against the same references (torchdiffeq's dopri5 and rk4
        // solutions): `adams` at dopri5's tolerances, and the fixed-step ones on rk4's grid.
        (
            "adams rtol 1e-7 atol 1e-9",
            "ode_solve_dopri5_rtol1e-7_atol1e-9",
            SolveOptions::default()
                .method(Method::Adams)
                .tolerances(1e-7, 1e-9),
        ),
        (
            "implicit_adams (order 4) 100 steps",
            "ode_solve_rk4_100steps",
            SolveOptions::default()
                .method(Method::ImplicitAdams)
                .fixed_steps(100),
        ),
        (
            "explicit_adams (order 4) 100 steps",
            "ode_solve_rk4_100steps",
            SolveOptions::default()
                .method(Method::ExplicitAdams)
                .fixed_steps(100),
        ),
    ] {
        // The checkout's fixtures, or (for a binary copied elsewhere) ./fixtures.
        let mut path = format!(
            "{}/../../fixtures/torchdiffeq/{file}.npz",
            env!("CARGO_MANIFEST_DIR")
        );
        if !std::path::Path::new(&path).exists() {
            path = format!("fixtures/torchdiffeq/{file}.npz");
        }
        let fx: HashMap<String, Tensor> = Tensor::read_npz(path)?.into_iter().collect();
        let (w1, b1) = (fx["w1"].to_device(&dev)?, fx["b1"].to_device(&dev)?);
        let (w2, b2) = (fx["w2"].to_device(&dev)?, fx["b2"].to_device(&dev)?);
        let z0 = fx["z0"].to_device(&dev)?;
        // z³ as z·z² (Candle's powf is a libm call per element); tanh and the layers from
        // node-kernels.
        let f = |_t: f64, z: &Tensor| {
            let h = node_kernels::tanh(&node_kernels::linear(&(z * z.sqr()?)?, &w1, Some(&b1))?)?;
            node_kernels::linear(&h, &w2, Some(&b2))
        };
        let sol = odeint(&f, &z0, &[0.0, 1.0], &opts)?;
        let nfe = sol.stats.nfe;
        let diff = (sol.last()? - &fx["z1"].to_device(&dev)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let (solve_med, solve_min) = time(&dev, reps, 3, || odeint(&f, &z0, &[0.0, 1.0], &opts))?;
        let (f_med, _) = time(&dev, reps * 20, 20, || f(0.0, &z0))?;
        let overhead = (solve_med - nfe as f64 * f_med) / solve_med;
        println!(
            "| {name} | {nfe} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1}% | {diff:.1e} |",
            solve_med * 1e3,
            solve_min * 1e3,
            solve_med / nfe as f64 * 1e6,
            f_med * 1e6,
            overhead * 100.0
        );
    }
    long_solves(&dev, reps)
}

/// The same field over the demo's whole span, t 0 → 25 (torchdiffeq's `ode_demo` data):
/// where many steps let the Adams methods' two evaluations a step tell.
fn long_solves(dev: &Device, reps: usize) -> Result<()> {
    let path = format!(
        "{}/../../fixtures/torchdiffeq/ode_solve_dopri5_rtol1e-7_atol1e-9.npz",
        env!("CARGO_MANIFEST_DIR")
    );
    let path = if std::path::Path::new(&path).exists() {
        path
    } else {
        "fixtures/torchdiffeq/ode_solve_dopri5_rtol1e-7_atol1e-9.npz".to_string()
    };
    let fx: HashMap<String, Tensor> = Tensor::read_npz(path)?.into_iter().collect();
    let field = |dtype: DType| -> Result<_> {
        let get = |k: &str| fx[k].to_dtype(dtype)?.to_device(dev);
        let (w1, b1, w2, b2) = (get("w1")?, get("b1")?, get("w2")?, get("b2")?);
        Ok(move |_t: f64, z: &Tensor| {
            let h = node_kernels::tanh(&node_kernels::linear(&(z * z.sqr()?)?, &w1, Some(&b1))?)?;
            node_kernels::linear(&h, &w2, Some(&b2))
        })
    };
    let ts = [0.0, 25.0];
    // The reference: dopri8 in f64 at tolerances far below the rows'.
    let f64_field = field(DType::F64)?;
    let z0 = fx["z0"].to_device(dev)?;
    let reference = odeint(
        &f64_field,
        &z0.to_dtype(DType::F64)?,
        &ts,
        &SolveOptions::default()
            .method(Method::Dopri8)
            .tolerances(1e-12, 1e-12),
    )?
    .last()?;
    println!();
    println!("t 0 → 25, batch 1024, f32, {dev:?}: max |Δ| from dopri8 at 1e-12 in f64");
    println!("| method | rtol = atol | NFE | steps (rejected) | solve ms (median) | max |Δ| |");
    println!("|---|---:|---:|---:|---:|---:|");
    let f = field(DType::F32)?;
    for tol in [1e-4, 1e-6, 1e-8] {
        for m in [Method::Dopri5, Method::Tsit5, Method::Dopri8, Method::Adams] {
            let opts = SolveOptions::default().method(m).tolerances(tol, tol);
            let sol = odeint(&f, &z0, &ts, &opts)?;
            let diff = (sol.last()?.to_dtype(DType::F64)? - &reference)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f64>()?;
            let (med, _) = time(dev, reps.div_ceil(4), 1, || odeint(&f, &z0, &ts, &opts))?;
            let s = sol.stats;
            println!(
                "| {m} | {tol:e} | {} | {} ({}) | {:.1} | {diff:.1e} |",
                s.nfe,
                s.accepted_steps + s.rejected_steps,
                s.rejected_steps,
                med * 1e3
            );
        }
    }
    Ok(())
}

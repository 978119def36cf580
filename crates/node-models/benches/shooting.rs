//! One training step of a neural ODE fitted to a long series, by single shooting and by
//! multiple shooting: the field Lotka–Volterra's plus an MLP 2-64-64-2 (tanh) scaled by 0.1
//! (a universal differential equation: dynamics of a trained model's speed), the series of
//! `fit-lotka-volterra` (201 observations over [0, 20], five periods), the loss the data's
//! mean square error plus 10 × the mean square gap, its gradient to the field and the start
//! states. Dopri5 at rtol 1e-5, atol 1e-6; f32. Single shooting is one solve over the whole
//! series; multiple shooting cuts it into 20 segments of 10 intervals, solved in one batched
//! solve (the segments side by side in the batch; with one step for all, or each segment
//! with its own steps: `independent`) or one by one. Backprop through the
//! solver and the adjoint. One warm-up step, then `--reps` timed steps.
//!
//! `cargo bench -p node-models --bench shooting [-- --reps N] [--device cpu|cuda]`

mod common;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use node_adjoint::{with_params, AdjointOptions};
use node_models::{init, Activation, Gradient, Mlp, MultipleShooting, Rng};
use node_solvers::{odeint, Method, SolveOptions};
use std::time::Instant;

/// Lotka–Volterra at the rates (1.5, 1, 3, 1), on `[batch, 2]`.
fn lotka_volterra(_t: f64, y: &Tensor) -> Result<Tensor> {
    let (x, p) = (y.narrow(1, 0, 1)?, y.narrow(1, 1, 1)?);
    let xp = (&x * &p)?;
    Tensor::cat(
        &[(x.affine(1.5, 0.0)? - &xp)?, (xp - p.affine(3.0, 0.0)?)?],
        1,
    )
}

fn main() -> Result<()> {
    node_kernels::keep_freed_memory();
    let (reps, dev) = common::reps_and_device(10)?;
    let n = 201;
    let ts: Vec<f64> = (0..n).map(|i| 20.0 * i as f64 / (n - 1) as f64).collect();
    let y0 = Tensor::new(&[[1.0f32, 1.0]], &dev)?;
    let tight = SolveOptions::default()
        .method(Method::Dopri8)
        .tolerances(1e-7, 1e-8);
    let series = odeint(&lotka_volterra, &y0, &ts, &tight)?.ys;
    let opts = SolveOptions::default().tolerances(1e-5, 1e-6);
    println!(
        "A universal differential equation's training step on a series of {n} observations \
         (Lotka–Volterra + MLP 2-64-64-2, dopri5, f32), on {dev:?}; 1 warm-up + {reps} steps"
    );
    println!("| shooting | gradient | solves | step median ms | step min ms | forward NFE |");
    println!("|---|---|---:|---:|---:|---:|");
    let adjoint = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-5, 1e-6));
    let cases = [
        ("single", MultipleShooting::new(n - 1)),
        (
            "20 segments, batched",
            MultipleShooting::new(10).batched(true),
        ),
        (
            "20 segments, batched, each its own steps",
            MultipleShooting::new(10).independent(true),
        ),
        ("20 segments, one by one", MultipleShooting::new(10)),
    ];
    for (name, shooting) in &cases {
        for (gname, gradient) in [("backprop", &Gradient::Backprop), ("adjoint", &adjoint)] {
            let (median, min, solves, nfe) =
                time_steps(shooting, gradient, &series, &ts, &opts, reps, &dev)?;
            println!("| {name} | {gname} | {solves} | {median:.1} | {min:.1} | {nfe} |");
        }
    }
    Ok(())
}

/// The median and minimum time of one step (loss and gradient), the solves per step and
/// the forward evaluations of the last step.
fn time_steps(
    shooting: &MultipleShooting,
    gradient: &Gradient,
    series: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
    reps: usize,
    dev: &Device,
) -> Result<(f64, f64, usize, usize)> {
    let varmap = VarMap::new();
    let mlp = Mlp::new(
        2,
        2,
        64,
        2,
        Activation::Tanh,
        false,
        VarBuilder::from_varmap(&varmap, DType::F32, dev),
    )?;
    init::pytorch_default(&varmap, &mut Rng::new(0))?;
    let params = mlp.vars()?;
    let net = mlp.clone();
    let f = with_params(
        move |t: f64, y: &Tensor| lotka_volterra(t, y)? + net.forward(y)?.affine(0.1, 0.0)?,
        params,
    );
    let starts = Var::from_tensor(&shooting.starts_from(series)?)?;
    let targets = shooting.gather(series)?;
    let mut times = Vec::new();
    let (mut solves, mut nfe) = (0, 0);
    for i in 0..=reps {
        let start = Instant::now();
        let sol = shooting.solve(&f, &starts, ts, opts, gradient)?;
        let data = (&sol.ys - &targets)?.sqr()?.mean_all()?;
        let loss = (data + sol.continuity_loss()?.affine(10.0, 0.0)?)?;
        let grads = loss.backward()?;
        std::hint::black_box(grads.get(&starts));
        dev.synchronize()?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        (solves, nfe) = (sol.stats.len(), sol.nfe_forward());
    }
    let (median, min) = common::median_min(times);
    Ok((median, min, solves, nfe))
}

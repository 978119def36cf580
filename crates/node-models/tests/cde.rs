//! Neural CDEs: the control paths (through the knots, exact on straight lines, hand-worked
//! pieces, smoothness, causality, convergence order), CDE solves against closed forms, the
//! jumps of linear paths, gradients by every mode and by finite differences (parameters and
//! observations), filling missing values, the spirals, training, and the errors.

mod common;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::{with_params, AdjointOptions, CheckpointOptions, ReversibleOptions};
use node_models::cde::{
    binary_cross_entropy_with_logits, cdeint, fill_missing, spiral_directions, ControlPath,
    Controlled, Interpolation, NeuralCde, NeuralCdeConfig,
};
use node_models::{init, Activation, Adam, AdamConfig, Gradient, Rng};
use node_solvers::{Method, SolveOptions};

fn tight() -> SolveOptions {
    SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(1e-10, 1e-12)
}

/// Uneven knots on `[0, 3]`.
fn uneven(t: usize) -> Vec<f64> {
    (0..t)
        .map(|i| {
            let u = i as f64 / (t - 1) as f64;
            3.0 * (u + 0.15 * (std::f64::consts::PI * u).sin())
        })
        .collect()
}

fn column(x: &Tensor, i: usize) -> Result<Vec<Vec<f64>>> {
    Ok(x.narrow(1, i, 1)?.squeeze(1)?.to_vec2::<f64>()?)
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max)
}

/// Every kind of path takes the observations' values at the knots, and at the last one.
fn paths_pass_through_the_knots(dev: &Device) -> Result<()> {
    let knots = uneven(7);
    let x = Rng::new(1).normal_tensor(&[3, 7, 2], 0.0, 1.0, DType::F64, dev)?;
    for kind in Interpolation::ALL {
        let path = ControlPath::new(&x, &knots, kind)?;
        ensure!(path.batch() == 3 && path.channels() == 2);
        ensure!(path.interval() == (knots[0], knots[6]));
        for (i, &k) in knots.iter().enumerate() {
            let err = max_diff(&path.evaluate(k)?.to_vec2::<f64>()?, &column(&x, i)?);
            ensure!(err < 1e-12, "{kind:?} at knot {i}: off by {err}");
        }
    }
    Ok(())
}

/// On observations of a straight line `α + β t`, every kind of path is that line and its
/// derivative is `β` everywhere, between the knots too (Hermite: all slopes equal, so no
/// cubic term; natural: zero second derivatives solve its system).
fn straight_lines_are_exact(dev: &Device) -> Result<()> {
    let knots = uneven(6);
    let (alpha, beta) = ([0.5, -1.0], [2.0, 0.25]);
    let rows: Vec<f64> = knots
        .iter()
        .flat_map(|&t| [alpha[0] + beta[0] * t, alpha[1] + beta[1] * t])
        .collect();
    let x = Tensor::from_vec(rows, (1, 6, 2), dev)?;
    for kind in Interpolation::ALL {
        let path = ControlPath::new(&x, &knots, kind)?;
        for t in [0.0, 0.3, 1.1, 1.7, 2.999, 3.0] {
            let v = path.evaluate(t)?.to_vec2::<f64>()?;
            let d = path.derivative(t)?.to_vec2::<f64>()?;
            for c in 0..2 {
                ensure!(
                    (v[0][c] - (alpha[c] + beta[c] * t)).abs() < 1e-12,
                    "{kind:?} value at {t}"
                );
                ensure!((d[0][c] - beta[c]).abs() < 1e-12, "{kind:?} slope at {t}");
            }
        }
    }
    Ok(())
}

/// Pieces worked by hand, on `(0, 0), (1, 1), (2, 0)`:
/// - linear: slopes 1 then −1;
/// - Hermite: the first piece has the first slope at both ends, so it is `s`; the second
///   has slopes 1 and −1 at its ends: `1 + s − 4s² + 2s³` (value 0.75 and slope −1.5 at
///   `s = ½`);
/// - natural: `4M₁ = 6(−1 − 1)` gives `M₁ = −3`, so the first piece is `1.5 s − 0.5 s³`
///   (value 0.6875 and slope 1.125 at `s = ½`) and the second its mirror image.
fn hand_worked_pieces(dev: &Device) -> Result<()> {
    let x = Tensor::new(&[[[0.0f64], [1.0], [0.0]]], dev)?;
    let knots = [0.0, 1.0, 2.0];
    let at = |kind, t: f64| -> Result<(f64, f64)> {
        let p = ControlPath::new(&x, &knots, kind)?;
        Ok((
            p.evaluate(t)?.to_vec2::<f64>()?[0][0],
            p.derivative(t)?.to_vec2::<f64>()?[0][0],
        ))
    };
    let cases = [
        (Interpolation::Linear, 0.5, (0.5, 1.0)),
        (Interpolation::Linear, 1.5, (0.5, -1.0)),
        (Interpolation::Linear, 1.0, (1.0, -1.0)),
        (Interpolation::Hermite, 0.5, (0.5, 1.0)),
        (Interpolation::Hermite, 1.0, (1.0, 1.0)),
        (Interpolation::Hermite, 1.5, (0.75, -1.5)),
        (Interpolation::Hermite, 2.0, (0.0, -1.0)),
        (Interpolation::Natural, 0.0, (0.0, 1.5)),
        (Interpolation::Natural, 0.5, (0.6875, 1.125)),
        (Interpolation::Natural, 1.0, (1.0, 0.0)),
        (Interpolation::Natural, 1.5, (0.6875, -1.125)),
        (Interpolation::Natural, 2.0, (0.0, -1.5)),
    ];
    for (kind, t, want) in cases {
        let got = at(kind, t)?;
        ensure!(
            (got.0 - want.0).abs() < 1e-14 && (got.1 - want.1).abs() < 1e-14,
            "{kind:?} at {t}: (value, slope) {got:?}, want {want:?}"
        );
    }
    Ok(())
}

/// Values and slopes against torchcde 0.2.5 (`linear_interpolation_coeffs`,
/// `hermite_cubic_coefficients_with_backward_differences`, `natural_cubic_coeffs`, in f64)
/// on uneven knots. At the knot 0.4 torchcde's linear slope is the interval's before it, ours
/// the one after (either is right; the solve steps to the knots): not compared there.
fn paths_match_torchcde(dev: &Device) -> Result<()> {
    let x = Tensor::new(
        &[[
            [0.3f64, -1.2],
            [1.1, 0.4],
            [-0.5, 0.9],
            [0.7, 2.0],
            [0.2, -0.3],
        ]],
        dev,
    )?;
    let knots = [0.0, 0.4, 1.5, 2.0, 3.1];
    let at = [0.1, 0.4, 0.9, 1.7, 2.5, 3.0];
    type Rows = [[f64; 2]; 6];
    let reference: [(Interpolation, Rows, Rows); 3] = [
        (
            Interpolation::Linear,
            [
                [0.5, -0.8],
                [1.1, 0.4],
                [0.372727272727273, 0.627272727272727],
                [-0.02, 1.34],
                [0.472727272727273, 0.954545454545455],
                [0.245454545454545, -0.09090909090909],
            ],
            [
                [2.0, 4.0],
                [f64::NAN, f64::NAN],
                [-1.454545454545455, 0.454545454545455],
                [2.4, 2.2],
                [-0.454545454545454, -2.09090909090909],
                [-0.454545454545454, -2.09090909090909],
            ],
        ),
        (
            Interpolation::Hermite,
            [
                [0.5, -0.8],
                [1.1, 0.4],
                [0.886626596543952, 1.154695717505635],
                [-0.297527272727273, 1.214327272727273],
                [0.897370398196845, 1.592862509391435],
                [0.269045830202856, -0.055447032306536],
            ],
            [
                [2.0, 4.0],
                [2.0, 4.0],
                [-2.139744552967693, -0.248685199098422],
                [2.862545454545454, 2.409454545454545],
                [-1.020736288504883, -2.941998497370398],
                [-0.902779864763336, -2.764688204357626],
            ],
        ),
        (
            Interpolation::Natural,
            [
                [0.571340106173235, -0.736887274538627],
                [1.1, 0.400000000000001],
                [0.361132007835691, 0.811120576036035],
                [-0.114785863075541, 1.339356523314221],
                [1.034666599954779, 1.67526050886392],
                [0.377675563625724, 0.078670921871724],
            ],
            [
                [2.618280920168038, 4.546976953998565],
                [0.478077734970984, 2.653595190157379],
                [-2.535759175998415, -0.315957905643636],
                [2.633211740363246, 2.549490661074691],
                [-0.597784890897564, -2.274620771421641],
                [-1.754718799895372, -3.758445883253776],
            ],
        ),
    ];
    for (kind, values, slopes) in reference {
        let path = ControlPath::new(&x, &knots, kind)?;
        for (i, &t) in at.iter().enumerate() {
            let v = path.evaluate(t)?.to_vec2::<f64>()?;
            let d = path.derivative(t)?.to_vec2::<f64>()?;
            for c in 0..2 {
                ensure!(
                    (v[0][c] - values[i][c]).abs() < 1e-12,
                    "{kind:?} at {t}, channel {c}: {} vs torchcde's {}",
                    v[0][c],
                    values[i][c]
                );
                let want = slopes[i][c];
                ensure!(
                    want.is_nan() || (d[0][c] - want).abs() < 1e-12,
                    "{kind:?} slope at {t}, channel {c}: {} vs torchcde's {want}",
                    d[0][c]
                );
            }
        }
    }
    Ok(())
}

/// The cubic paths' slopes are continuous at the inner knots (the linear path's jump), the
/// natural spline's second derivative too (central differences of the slope from either
/// side agree) and is zero at both ends.
fn cubic_paths_are_smooth(dev: &Device) -> Result<()> {
    let knots = uneven(8);
    let x = Rng::new(2).normal_tensor(&[2, 8, 3], 0.0, 1.0, DType::F64, dev)?;
    // Either side of a knot, where a slope of second derivative up to ~500 moves by 1e-7.
    let eps = 1e-10;
    for kind in Interpolation::ALL {
        let path = ControlPath::new(&x, &knots, kind)?;
        let slope = |t: f64| -> Result<Vec<Vec<f64>>> { Ok(path.derivative(t)?.to_vec2()?) };
        let mut largest_jump: f64 = 0.0;
        for &k in &knots[1..7] {
            let jump = max_diff(&slope(k - eps)?, &slope(k + eps)?);
            largest_jump = largest_jump.max(jump);
            if kind == Interpolation::Natural {
                // The second derivative from either side: one-sided differences of the slope,
                // exact on each piece's quadratic slope but for rounding.
                let h = 1e-3;
                let (l1, l2) = (slope(k - h)?, slope(k - 2.0 * h)?);
                let (r1, r2) = (slope(k + h)?, slope(k + 2.0 * h)?);
                let at_k = slope(k)?;
                let mut worst: f64 = 0.0;
                for b in 0..2 {
                    for c in 0..3 {
                        let left = (3.0 * at_k[b][c] - 4.0 * l1[b][c] + l2[b][c]) / (2.0 * h);
                        let right = (-3.0 * at_k[b][c] + 4.0 * r1[b][c] - r2[b][c]) / (2.0 * h);
                        worst = worst.max((left - right).abs());
                    }
                }
                ensure!(
                    worst < 1e-8,
                    "natural: second derivative jumps by {worst} at {k}"
                );
            }
        }
        match kind {
            Interpolation::Linear => ensure!(largest_jump > 0.1, "linear: no jump in slope"),
            _ => ensure!(
                largest_jump < 1e-5,
                "{kind:?}: slope jumps by {largest_jump}"
            ),
        }
        if kind == Interpolation::Natural {
            for (end, h) in [(knots[0], 1e-3), (knots[7], -1e-3)] {
                let (s0, s1, s2) = (slope(end)?, slope(end + h)?, slope(end + 2.0 * h)?);
                let mut worst: f64 = 0.0;
                for b in 0..2 {
                    for c in 0..3 {
                        let second = (-3.0 * s0[b][c] + 4.0 * s1[b][c] - s2[b][c]) / (2.0 * h);
                        worst = worst.max(second.abs());
                    }
                }
                ensure!(
                    worst < 1e-8,
                    "natural: second derivative {worst} at the end {end}"
                );
            }
        }
    }
    Ok(())
}

/// Linear and Hermite paths are causal: changing the last observation leaves the path before
/// the knot before it unchanged (from that knot on, the last piece holds). The natural
/// spline's is global and moves.
fn hermite_is_causal(dev: &Device) -> Result<()> {
    let knots = uneven(6);
    let x = Rng::new(3).normal_tensor(&[2, 6, 2], 0.0, 1.0, DType::F64, dev)?;
    let bumped = Tensor::cat(
        &[&x.narrow(1, 0, 5)?, &x.narrow(1, 5, 1)?.affine(1.0, 1.0)?],
        1,
    )?;
    for kind in Interpolation::ALL {
        let (p, q) = (
            ControlPath::new(&x, &knots, kind)?,
            ControlPath::new(&bumped, &knots, kind)?,
        );
        let mut moved: f64 = 0.0;
        for i in 0..50 {
            let t = knots[4] * i as f64 / 50.0;
            moved = moved
                .max(max_diff(
                    &p.evaluate(t)?.to_vec2()?,
                    &q.evaluate(t)?.to_vec2()?,
                ))
                .max(max_diff(
                    &p.derivative(t)?.to_vec2()?,
                    &q.derivative(t)?.to_vec2()?,
                ));
        }
        match kind {
            Interpolation::Natural => ensure!(moved > 1e-3, "natural: did not move"),
            _ => ensure!(
                moved == 0.0,
                "{kind:?}: moved by {moved} before the last knot"
            ),
        }
    }
    Ok(())
}

/// The path's error against `sin` on `[0, π]` (whose second derivative is zero at both ends,
/// as the natural spline's) falls as `hᵖ`: the natural spline `p = 4`; the Hermite cubic with
/// backward differences, whose slopes are first-order, `p = 2`; the linear path `p = 2`.
fn paths_converge_at_their_order(dev: &Device) -> Result<()> {
    let err = |kind, t: usize| -> Result<f64> {
        let knots: Vec<f64> = (0..t)
            .map(|i| std::f64::consts::PI * i as f64 / (t - 1) as f64)
            .collect();
        let vals: Vec<f64> = knots.iter().map(|k| k.sin()).collect();
        let x = Tensor::from_vec(vals, (1, t, 1), dev)?;
        let path = ControlPath::new(&x, &knots, kind)?;
        let mut worst: f64 = 0.0;
        for i in 0..997 {
            let s = std::f64::consts::PI * (i as f64 + 0.5) / 997.0;
            let v = path.evaluate(s)?.to_vec2::<f64>()?[0][0];
            worst = worst.max((v - s.sin()).abs());
        }
        Ok(worst)
    };
    for (kind, order) in [
        (Interpolation::Natural, 4.0),
        (Interpolation::Hermite, 2.0),
        (Interpolation::Linear, 2.0),
    ] {
        let (coarse, fine) = (err(kind, 17)?, err(kind, 33)?);
        let observed = (coarse / fine).log2();
        ensure!(
            (observed - order).abs() < 0.3,
            "{kind:?}: errors {coarse:e} then {fine:e}, order {observed:.2}, want {order}"
        );
    }
    Ok(())
}

/// `dz = −z dt + z dx` (time and one data channel): `z(T) = z₀ exp(−(T − t₀) + x(T) − x(t₀))`
/// whatever the path between the ends, for every kind of path (the solve sees only the
/// path's derivative, so this checks that it integrates to the path's increment).
fn cde_matches_its_closed_form(dev: &Device) -> Result<()> {
    let knots = uneven(9);
    let noise = Rng::new(4).normal_tensor(&[2, 9, 1], 0.0, 1.0, DType::F64, dev)?;
    let time = Tensor::from_slice(&knots, (1, 9, 1), dev)?.repeat((2, 1, 1))?;
    let x = Tensor::cat(&[&time, &noise], 2)?;
    let field = with_params(
        |_t: f64, z: &Tensor| Tensor::cat(&[&z.neg()?, z], 1)?.unsqueeze(1),
        vec![],
    );
    let z0 = Tensor::new(&[[1.0f64], [-0.5]], dev)?;
    let x_v = noise.squeeze(2)?.to_vec2::<f64>()?;
    let z0_v = [1.0, -0.5];
    for kind in Interpolation::ALL {
        let path = ControlPath::new(&x, &knots, kind)?;
        let (zs, _) = cdeint(
            &field,
            &path,
            &z0,
            &[0.0, 3.0],
            &tight(),
            &Gradient::Backprop,
        )?;
        let got = zs.get(1)?.squeeze(1)?.to_vec1::<f64>()?;
        for b in 0..2 {
            let want = z0_v[b] * (-3.0 + x_v[b][8] - x_v[b][0]).exp();
            ensure!(
                (got[b] - want).abs() < 1e-8 * want.abs(),
                "{kind:?}, sequence {b}: {} vs {want}",
                got[b]
            );
        }
    }
    Ok(())
}

/// [`cdeint`] steps to the knots, where the field stops being smooth in `t` (a linear path's
/// slope jumps; a cubic's second or third derivative): as accurate or more than the same
/// solve left to find them, and for the linear and Hermite paths in fewer evaluations.
fn solves_step_to_the_knots(dev: &Device) -> Result<()> {
    let knots = uneven(12);
    let x = Rng::new(5).normal_tensor(&[1, 12, 1], 0.0, 1.0, DType::F64, dev)?;
    let field = with_params(|_t: f64, z: &Tensor| z.unsqueeze(2), vec![]);
    let z0 = Tensor::new(&[[1.0f64]], dev)?;
    let opts = SolveOptions::default().tolerances(1e-8, 1e-10);
    let xv = x.flatten_all()?.to_vec1::<f64>()?;
    // dz = z dx: z(T) = exp(x(T) − x(0)).
    let want = (xv[11] - xv[0]).exp();
    for kind in Interpolation::ALL {
        let path = ControlPath::new(&x, &knots, kind)?;
        let (with, stats) = cdeint(&field, &path, &z0, &[0.0, 3.0], &opts, &Gradient::Backprop)?;
        let plain = node_solvers::odeint(
            &Controlled::new(field.clone(), path.clone())?,
            &z0,
            &[0.0, 3.0],
            &opts,
        )?;
        let err = |z: &Tensor| -> Result<f64> {
            Ok((z.get(1)?.flatten_all()?.to_vec1::<f64>()?[0] - want).abs() / want)
        };
        let (e_knots, e_plain) = (err(&with)?, err(&plain.ys)?);
        ensure!(
            e_knots <= e_plain && e_knots < 1e-7,
            "{kind:?}: error {e_knots:e} stepping to the knots, {e_plain:e} without"
        );
        if kind != Interpolation::Natural {
            ensure!(
                stats.nfe_forward < plain.stats.nfe,
                "{kind:?}: {} evaluations stepping to the knots, {} without",
                stats.nfe_forward,
                plain.stats.nfe
            );
        }
    }
    Ok(())
}

fn small_config(kind: Interpolation) -> NeuralCdeConfig {
    NeuralCdeConfig {
        channels: 3,
        hidden: 3,
        width: 5,
        depth: 1,
        outputs: 1,
        interpolation: kind,
        // Smooth: with ReLU the field is only Lipschitz and backprop through an adaptive
        // solve converges to the adjoint's gradient at a fraction of the solve's order.
        activation: Activation::Softplus,
    }
}

fn build(
    cfg: &NeuralCdeConfig,
    opts: SolveOptions,
    gradient: Gradient,
    dev: &Device,
) -> Result<(VarMap, NeuralCde)> {
    let varmap = VarMap::new();
    let model = NeuralCde::new(
        cfg,
        opts,
        gradient,
        VarBuilder::from_varmap(&varmap, DType::F64, dev),
    )?;
    init::pytorch_default(&varmap, &mut Rng::new(7))?;
    Ok((varmap, model))
}

/// The loss's gradients by the adjoint, by checkpointing and by reversible backprop (another
/// discretization, at the same tight tolerance) agree with backprop's, for every kind of path:
/// the parameters' and, through the path, the observations'.
fn gradient_modes_agree(dev: &Device) -> Result<()> {
    let data = spiral_directions(6, 20, 0.05, 0.0, &mut Rng::new(8), DType::F64, dev)?;
    let x = Var::from_tensor(&data.x)?;
    for kind in Interpolation::ALL {
        let modes = [
            Gradient::Backprop,
            Gradient::Adjoint(AdjointOptions::default().tolerances(1e-10, 1e-12)),
            Gradient::Checkpoint(CheckpointOptions::default().checkpoints(4)),
            Gradient::Reversible(ReversibleOptions::default()),
        ];
        let mut grads: Vec<Vec<f64>> = Vec::new();
        for gradient in modes {
            let (varmap, model) = build(&small_config(kind), tight(), gradient, dev)?;
            let path = model.path(x.as_tensor(), &data.knots)?;
            let (logits, _) = model.forward(&path)?;
            let loss = binary_cross_entropy_with_logits(&logits.squeeze(1)?, &data.labels)?;
            let g = loss.backward()?;
            let mut flat = Vec::new();
            for v in node_adjoint::sorted_vars(&varmap).iter().chain([&x]) {
                flat.extend(
                    g.get(v)
                        .expect("a gradient")
                        .flatten_all()?
                        .to_vec1::<f64>()?,
                );
            }
            grads.push(flat);
        }
        for (name, g) in [
            ("adjoint", &grads[1]),
            ("checkpoint", &grads[2]),
            ("reversible", &grads[3]),
        ] {
            let scale = grads[0].iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = g
                .iter()
                .zip(&grads[0])
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            ensure!(
                err < 1e-6 * scale,
                "{kind:?}: {name} off backprop by {err} (scale {scale})"
            );
        }
    }
    Ok(())
}

/// Backprop's gradients against central differences: every parameter (a few entries each)
/// and, through the path, the observations. Fixed RK4 steps: central differences through
/// an adaptive solve see its step sequence change with the parameters, and the solution
/// with it by up to the tolerance (divided by the difference step: 1e-5 and more even at
/// rtol 1e-10).
fn gradients_match_finite_differences(dev: &Device) -> Result<()> {
    let data = spiral_directions(4, 12, 0.05, 0.0, &mut Rng::new(9), DType::F64, dev)?;
    let (varmap, model) = build(
        &small_config(Interpolation::Natural),
        SolveOptions::default().method(Method::Rk4).fixed_steps(44),
        Gradient::Backprop,
        dev,
    )?;
    let loss_of = |x: &Tensor| -> candle_core::Result<Tensor> {
        let path = model.path(x, &data.knots)?;
        let (logits, _) = model.forward(&path)?;
        binary_cross_entropy_with_logits(&logits.squeeze(1)?, &data.labels)
    };
    let checked = common::check_finite_differences(
        &varmap,
        || loss_of(&data.x),
        |n| vec![0, n / 2, n - 1],
        1e-5,
        1e-6,
    )?;
    ensure!(checked == 3 * 8, "checked {checked} entries");
    // Into the observations: x as a variable.
    let x = Var::from_tensor(&data.x)?;
    let g = loss_of(x.as_tensor())?.backward()?;
    let gx = g
        .get(&x)
        .expect("a gradient to x")
        .flatten_all()?
        .to_vec1::<f64>()?;
    let base = data.x.flatten_all()?.to_vec1::<f64>()?;
    for k in [1, 5, 20, 40, 47] {
        let at = |d: f64| -> Result<f64> {
            let mut w = base.clone();
            w[k] += d;
            let xt = Tensor::from_vec(w, data.x.shape(), dev)?;
            Ok(loss_of(&xt)?.to_scalar::<f64>()?)
        };
        let fd = (at(1e-5)? - at(-1e-5)?) / 2e-5;
        ensure!(
            (fd - gx[k]).abs() <= 1e-6 * (1.0 + fd.abs()),
            "observation {k}: gradient {} vs finite differences {fd}",
            gx[k]
        );
    }
    Ok(())
}

candle_core::test_device!(
    paths_pass_through_the_knots,
    knots_cpu,
    knots_cuda,
    knots_metal
);
candle_core::test_device!(straight_lines_are_exact, lines_cpu, lines_cuda, lines_metal);
candle_core::test_device!(hand_worked_pieces, hand_cpu, hand_cuda, hand_metal);
candle_core::test_device!(
    paths_match_torchcde,
    torchcde_cpu,
    torchcde_cuda,
    torchcde_metal
);
candle_core::test_device!(
    cubic_paths_are_smooth,
    smooth_cpu,
    smooth_cuda,
    smooth_metal
);
candle_core::test_device!(hermite_is_causal, causal_cpu, causal_cuda, causal_metal);
candle_core::test_device!(
    paths_converge_at_their_order,
    order_cpu,
    order_cuda,
    order_metal
);
candle_core::test_device!(
    cde_matches_its_closed_form,
    closed_form_cpu,
    closed_form_cuda,
    closed_form_metal
);
candle_core::test_device!(
    solves_step_to_the_knots,
    knot_steps_cpu,
    knot_steps_cuda,
    knot_steps_metal
);
candle_core::test_device!(gradient_modes_agree, modes_cpu, modes_cuda, modes_metal);
candle_core::test_device!(
    gradients_match_finite_differences,
    fd_cpu,
    fd_cuda,
    fd_metal
);

/// Missing values are filled linearly in the knots' time inside, with the nearest
/// observation outside; the path through the filled values of a straight line is the line.
#[test]
fn fill_missing_interpolates_in_time() -> Result<()> {
    let nan = f64::NAN;
    let x = Tensor::new(
        &[[[nan, 0.0], [1.0, 1.0], [nan, nan], [3.0, 4.0], [nan, 5.0]]],
        &Device::Cpu,
    )?;
    let knots = [0.0, 1.0, 2.0, 4.0, 5.0];
    let filled = fill_missing(&x, &knots)?.squeeze(0)?.to_vec2::<f64>()?;
    // Channel 0: 1 observed at t = 1, 3 at t = 4: 1 + (2 − 1)/(4 − 1)·2 at t = 2.
    let want = [
        [1.0, 0.0],
        [1.0, 1.0],
        [1.0 + 2.0 / 3.0, 2.0],
        [3.0, 4.0],
        [3.0, 5.0],
    ];
    for (row, w) in filled.iter().zip(&want) {
        for (a, b) in row.iter().zip(w) {
            ensure!((a - b).abs() < 1e-12, "filled {filled:?}, want {want:?}");
        }
    }
    let empty = Tensor::new(&[[[nan, 1.0], [nan, 2.0]]], &Device::Cpu)?;
    let e = fill_missing(&empty, &[0.0, 1.0]).unwrap_err().to_string();
    ensure!(
        e.contains("sequence 0, channel 0: no observed value"),
        "{e}"
    );
    Ok(())
}

/// The spirals: shapes, balanced labels, the time channel, the missing fraction, a labelled
/// direction that matches the turning of the points, and the same data from the same seed.
#[test]
fn spirals_are_what_they_say() -> Result<()> {
    let dev = Device::Cpu;
    let d = spiral_directions(10, 40, 0.0, 0.25, &mut Rng::new(10), DType::F64, &dev)?;
    ensure!(d.x.dims() == [10, 40, 3] && d.knots.len() == 40);
    let labels = d.labels.to_vec1::<f64>()?;
    ensure!(labels.iter().sum::<f64>() == 5.0, "labels {labels:?}");
    let x = d.x.to_vec3::<f64>()?;
    for (seq, label) in x.iter().zip(&labels) {
        ensure!(
            seq.iter().zip(&d.knots).all(|(p, k)| p[0] == *k),
            "time channel"
        );
        let gone = seq.iter().filter(|p| p[1].is_nan()).count();
        ensure!(gone == 10, "{gone} of 40 points missing, want 10");
        // The cross product of successive observed points: negative when clockwise.
        let seen: Vec<&Vec<f64>> = seq.iter().filter(|p| !p[1].is_nan()).collect();
        let turn: f64 = seen
            .windows(2)
            .map(|w| w[0][1] * w[1][2] - w[0][2] * w[1][1])
            .sum();
        ensure!(
            (turn < 0.0) == (*label == 1.0),
            "label {label}, turning {turn}"
        );
    }
    let again = spiral_directions(10, 40, 0.0, 0.25, &mut Rng::new(10), DType::F64, &dev)?;
    let same = (&again.x - &d.x)?.abs()?.flatten_all()?.to_vec1::<f64>()?;
    ensure!(
        same.iter().all(|v| v.is_nan() || *v == 0.0),
        "not reproducible"
    );
    Ok(())
}

/// The stable binary cross-entropy: the plain formula at moderate logits, finite at large
/// ones (where `log σ(x)` rounds to `log 0`).
#[test]
fn binary_cross_entropy_is_stable() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::new(&[-2.0f64, 0.0, 0.5, 3.0], &dev)?;
    let y = Tensor::new(&[0.0f64, 1.0, 1.0, 0.0], &dev)?;
    let got = binary_cross_entropy_with_logits(&x, &y)?.to_scalar::<f64>()?;
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let want = [(-2.0, 0.0), (0.0, 1.0), (0.5, 1.0), (3.0, 0.0)]
        .iter()
        .map(|&(v, t): &(f64, f64)| -(t * sig(v).ln() + (1.0 - t) * (1.0 - sig(v)).ln()))
        .sum::<f64>()
        / 4.0;
    ensure!((got - want).abs() < 1e-14, "{got} vs {want}");
    let big = Tensor::new(&[-200.0f32, 200.0], &dev)?;
    let wrong = Tensor::new(&[1.0f32, 0.0], &dev)?;
    let l = binary_cross_entropy_with_logits(&big, &wrong)?.to_scalar::<f32>()?;
    ensure!((l - 200.0).abs() < 1e-3, "large logits: {l}");
    Ok(())
}

/// A short training on the spirals classifies held-out ones: torchcde's example reaches
/// 100% in 30 epochs; here 40 full-batch Adam steps on 32 short spirals, with one RK4 step
/// per interval between the knots (an unoptimized test build is slow).
#[test]
fn training_learns_the_direction() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(11);
    let train = spiral_directions(32, 25, 0.01, 0.0, &mut rng, DType::F32, &dev)?;
    let test = spiral_directions(64, 25, 0.01, 0.0, &mut rng, DType::F32, &dev)?;
    let varmap = VarMap::new();
    let cfg = NeuralCdeConfig {
        width: 32,
        ..NeuralCdeConfig::default()
    };
    let model = NeuralCde::new(
        &cfg,
        SolveOptions::default()
            .method(Method::Rk4)
            .step_grid(train.knots.clone()),
        Gradient::Backprop,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    init::pytorch_default(&varmap, &mut Rng::new(12))?;
    let mut opt = Adam::new(
        node_adjoint::sorted_vars(&varmap),
        AdamConfig {
            lr: 1e-2,
            ..AdamConfig::default()
        },
    )?;
    let path = model.path(&train.x, &train.knots)?;
    for _ in 0..40 {
        let (logits, _) = model.forward(&path)?;
        let loss = binary_cross_entropy_with_logits(&logits.squeeze(1)?, &train.labels)?;
        opt.backward_step(&loss)?;
    }
    let (logits, _) = model.forward(&model.path(&test.x, &test.knots)?)?;
    let pred = logits.squeeze(1)?.ge(0.0)?.to_dtype(DType::F32)?;
    let acc = pred
        .eq(&test.labels)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    ensure!(acc >= 0.9, "held-out accuracy {acc}");
    Ok(())
}

/// Bad input gets a clear error.
#[test]
fn errors_are_clear() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 4, 3), DType::F32, &dev)?;
    let knots = [0.0, 1.0, 2.0, 3.0];
    let err = |r: candle_core::Result<ControlPath>| r.unwrap_err().to_string();
    let h = Interpolation::Hermite;
    ensure!(err(ControlPath::new(&x.flatten_all()?, &knots, h))
        .contains("[batch ≥ 1, time, channels ≥ 1]"));
    ensure!(err(ControlPath::new(&x, &knots[..3], h)).contains("3 knots for 4 observations"));
    ensure!(err(ControlPath::new(&x, &[0.0, 1.0, 1.0, 2.0], h)).contains("increase strictly"));
    ensure!(err(ControlPath::new(&x, &[0.0, 1.0, f64::NAN, 2.0], h)).contains("knot 2 is NaN"));
    let one = Tensor::zeros((2, 1, 3), DType::F32, &dev)?;
    ensure!(err(ControlPath::new(&one, &[0.0], h)).contains("at least two observations"));
    let ints = Tensor::zeros((2, 4, 3), DType::U32, &dev)?;
    ensure!(err(ControlPath::new(&ints, &knots, h)).contains("must be floats"));
    let nan = x.broadcast_add(&Tensor::new(&[f32::NAN, 0.0, 0.0], &dev)?)?;
    ensure!(err(ControlPath::new(&nan, &knots, h)).contains("fill_missing"));

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let cfg = NeuralCdeConfig {
        channels: 2,
        ..NeuralCdeConfig::default()
    };
    let model = NeuralCde::new(
        &cfg,
        SolveOptions::default(),
        Gradient::Backprop,
        vb.clone(),
    )?;
    let e = model.path(&x, &knots).unwrap_err().to_string();
    ensure!(e.contains("the path has 3 channels, the model 2"), "{e}");
    let zero = NeuralCdeConfig {
        hidden: 0,
        ..NeuralCdeConfig::default()
    };
    ensure!(NeuralCde::new(&zero, SolveOptions::default(), Gradient::Backprop, vb).is_err());

    let path = ControlPath::new(&x, &knots, h)?;
    let field = with_params(|_t: f64, z: &Tensor| z.unsqueeze(2), vec![]);
    let opts = SolveOptions::default();
    let z0 = Tensor::zeros((3, 4), DType::F32, &dev)?;
    let e = cdeint(&field, &path, &z0, &[0.0, 3.0], &opts, &Gradient::Backprop)
        .unwrap_err()
        .to_string();
    ensure!(e.contains("z0 must be [2, hidden ≥ 1]"), "{e}");
    // A field of the wrong shape: [B, H, 1] for a path of 3 channels.
    let z0 = Tensor::zeros((2, 4), DType::F32, &dev)?;
    let e = cdeint(&field, &path, &z0, &[0.0, 3.0], &opts, &Gradient::Backprop)
        .unwrap_err()
        .to_string();
    ensure!(e.contains("[batch, hidden, channels] = [2, 4, 3]"), "{e}");
    Ok(())
}

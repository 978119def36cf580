//! The continuous normalizing flow: its closed-form trace against autograd's Jacobian, a
//! density that integrates to one, sampling and density agreeing, adjoint gradients against
//! backprop and finite differences, training, and its errors.

mod common;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::AdjointOptions;
use node_models::cnf::{two_circles, Cnf, CnfConfig};
use node_models::{init, Adam, AdamConfig, Gradient, Rng};
use node_solvers::{Method, SolveOptions};

fn small() -> CnfConfig {
    CnfConfig {
        dim: 2,
        width: 8,
        hidden: 6,
        t1: 2.0,
        base_std: 0.5,
    }
}

fn tight() -> SolveOptions {
    SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(1e-10, 1e-10)
}

fn build(
    cfg: &CnfConfig,
    gradient: Gradient,
    opts: SolveOptions,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> Result<(VarMap, Cnf)> {
    let varmap = VarMap::new();
    let cnf = Cnf::new(
        cfg,
        opts,
        gradient,
        VarBuilder::from_varmap(&varmap, dtype, dev),
    )?;
    init::pytorch_default(&varmap, &mut Rng::new(seed))?;
    Ok((varmap, cnf))
}

fn trace_matches_jacobian(dev: &Device) -> Result<()> {
    // D² > M and D² ≤ M: the two closed forms of the Frobenius norm.
    for (dim, width) in [(3, 5), (3, 9)] {
        let cfg = CnfConfig {
            dim,
            width,
            hidden: 4,
            ..small()
        };
        trace_matches_jacobian_of(&cfg, dev)?;
    }
    Ok(())
}

fn trace_matches_jacobian_of(cfg: &CnfConfig, dev: &Device) -> Result<()> {
    let (_, cnf) = build(cfg, Gradient::Backprop, tight(), 1, DType::F64, dev)?;
    let z = Rng::new(2).normal_tensor(&[4, 3], 0.0, 1.0, DType::F64, dev)?;
    for t in [0.0, 0.7, 2.0] {
        let (dz0, tr) = cnf.field().dynamics(t, &z)?;
        // Points are independent, so ∂(Σ_b f_i(z_b))/∂z_b is row i of the Jacobian at point
        // b: the Jacobian from one backward pass per coordinate, its trace and its squared
        // Frobenius norm.
        let mut want = vec![0.0; 4];
        let mut want_frob = vec![0.0; 4];
        for i in 0..3 {
            let zv = Var::from_tensor(&z)?;
            let (dz, _) = cnf.field().dynamics(t, zv.as_tensor())?;
            let grads = dz.narrow(1, i, 1)?.sum_all()?.backward()?;
            let g = grads
                .get(zv.as_tensor())
                .expect("a gradient")
                .to_vec2::<f64>()?;
            for (b, row) in g.iter().enumerate() {
                want[b] += row[i];
                want_frob[b] += row.iter().map(|x| x * x).sum::<f64>();
            }
        }
        let got = tr.to_vec1::<f64>()?;
        for (g, w) in got.iter().zip(&want) {
            ensure!(
                (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                "t {t}: {got:?} vs {want:?}"
            );
        }
        // The regularizers' integrands: ‖f‖² and ‖∂f/∂z‖²_F, with the same f and trace.
        let (dz, tr2, kinetic, frob) = cnf.field().dynamics_regularized(t, &z)?;
        ensure!(dz.to_vec2::<f64>()? == dz0.to_vec2::<f64>()?);
        ensure!(tr2.to_vec1::<f64>()? == got);
        let want_kin: Vec<f64> = dz0
            .to_vec2::<f64>()?
            .iter()
            .map(|r| r.iter().map(|x| x * x).sum())
            .collect();
        for (what, got, want) in [
            ("‖f‖²", kinetic.to_vec1::<f64>()?, want_kin),
            ("‖∂f/∂z‖²_F", frob.to_vec1::<f64>()?, want_frob.clone()),
        ] {
            for (g, w) in got.iter().zip(&want) {
                ensure!(
                    (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                    "t {t}, {what}: {got:?} vs {want:?}"
                );
            }
        }
        ensure!(want_frob.iter().all(|&f| f > 1e-4), "a norm worth testing");
        ensure!(want.iter().any(|w| w.abs() > 1e-3), "a trace worth testing");
    }
    Ok(())
}

fn sampling_and_density_agree(dev: &Device) -> Result<()> {
    // Pushing z through the flow gives x and log p(x); solving back from x must give the same
    // log p(x), to the solves' tolerance.
    let (_, cnf) = build(&small(), Gradient::Backprop, tight(), 3, DType::F64, dev)?;
    let z = Rng::new(4).normal_tensor(&[16, 2], 0.0, 0.5, DType::F64, dev)?;
    let (x, lp_forward) = cnf.sample_from(&z)?;
    let lp_back = cnf.log_prob(&x)?;
    let moved = (&x - &z)?.abs()?.max_all()?.to_scalar::<f64>()?;
    ensure!(moved > 1e-2, "the flow must move the points ({moved})");
    let a = lp_forward.to_vec1::<f64>()?;
    let b = lp_back.to_vec1::<f64>()?;
    let base = cnf.base_log_prob(&z)?.to_vec1::<f64>()?;
    let mut changed = 0.0f64;
    for ((a, b), base) in a.iter().zip(&b).zip(&base) {
        ensure!((a - b).abs() < 1e-7, "{a} vs {b}");
        changed = changed.max((a - base).abs());
    }
    ensure!(
        changed > 1e-2,
        "the density must change along the flow ({changed})"
    );
    Ok(())
}

fn adjoint_matches_backprop(dev: &Device) -> Result<()> {
    // The mean NLL's gradient with respect to every parameter and to the data, by the adjoint
    // and by backprop through the same (tight) solver.
    let x = Rng::new(6).normal_tensor(&[8, 2], 0.0, 0.7, DType::F64, dev)?;
    let mut all = vec![];
    for gradient in [
        Gradient::Adjoint(AdjointOptions::default().tolerances(1e-10, 1e-10)),
        Gradient::Backprop,
    ] {
        let (varmap, cnf) = build(&small(), gradient, tight(), 5, DType::F64, dev)?;
        let xv = Var::from_tensor(&x)?;
        let nll = cnf.log_prob(xv.as_tensor())?.mean_all()?.neg()?;
        let grads = nll.backward()?;
        let mut flat = vec![];
        for v in node_adjoint::sorted_vars(&varmap) {
            let g = grads.get(&v).expect("every parameter gets a gradient");
            flat.extend(g.flatten_all()?.to_vec1::<f64>()?);
        }
        flat.extend(
            grads
                .get(&xv)
                .expect("x's gradient")
                .flatten_all()?
                .to_vec1::<f64>()?,
        );
        all.push((nll.to_scalar::<f64>()?, flat));
    }
    let (adj, bp) = (&all[0], &all[1]);
    ensure!((adj.0 - bp.0).abs() < 1e-9, "losses {} vs {}", adj.0, bp.0);
    let scale = bp.1.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    ensure!(scale > 1e-3);
    for (a, b) in adj.1.iter().zip(&bp.1) {
        ensure!((a - b).abs() <= 1e-6 * scale, "{a} vs {b} (scale {scale})");
    }
    Ok(())
}

fn regularizers_integrate(dev: &Device) -> Result<()> {
    // The regularized solve gives the plain log p(x) and, per point, ∫₀^{t₁} ‖f‖² dt and
    // ∫₀^{t₁} ‖∂f/∂z‖²_F dt: checked against Simpson's rule on the integrands along the
    // trajectory (tight solves, 400 intervals).
    let (varmap, cnf) = build(&small(), Gradient::Backprop, tight(), 13, DType::F64, dev)?;
    // Freshly initialised, the field barely moves (kinetic energies down to 2e-5): triple
    // every parameter for integrals of order one.
    for v in node_adjoint::sorted_vars(&varmap) {
        v.set(&v.affine(3.0, 0.0)?)?;
    }
    let x = Rng::new(14).normal_tensor(&[5, 2], 0.0, 0.7, DType::F64, dev)?;
    let reg = cnf.log_prob_regularized(&x)?;
    let plain = cnf.log_prob(&x)?;
    let lp_gap = (&reg.log_p - &plain)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    ensure!(lp_gap < 1e-8, "log p moved by {lp_gap}");
    let t1 = small().t1;
    let n = 400;
    let ts: Vec<f64> = (0..=n).map(|i| t1 * (1.0 - i as f64 / n as f64)).collect();
    let s = Tensor::cat(&[&x, &Tensor::zeros((5, 1), DType::F64, dev)?], 1)?;
    let traj = node_solvers::odeint(cnf.field(), &s, &ts, &tight())?.ys;
    let (mut kin, mut frob) = (vec![0.0; 5], vec![0.0; 5]);
    let h = t1 / n as f64;
    for (i, &t) in ts.iter().enumerate() {
        let z = traj.get(i)?.narrow(1, 0, 2)?;
        let (_, _, k, j) = cnf.field().dynamics_regularized(t, &z)?;
        let w = if i == 0 || i == n {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        } * h
            / 3.0;
        for (acc, v) in kin.iter_mut().zip(k.to_vec1::<f64>()?) {
            *acc += w * v;
        }
        for (acc, v) in frob.iter_mut().zip(j.to_vec1::<f64>()?) {
            *acc += w * v;
        }
    }
    for (what, got, want) in [
        ("kinetic", reg.kinetic.to_vec1::<f64>()?, kin),
        ("jacobian", reg.jacobian.to_vec1::<f64>()?, frob),
    ] {
        let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        ensure!(scale > 0.1, "{what}: integrals worth testing ({want:?})");
        for (g, w) in got.iter().zip(&want) {
            ensure!(
                (g - w).abs() <= 1e-8 * scale,
                "{what}: {got:?} vs Simpson {want:?}"
            );
        }
    }
    Ok(())
}

fn regularized_gradient_modes_agree(dev: &Device) -> Result<()> {
    // The gradient of NLL + mean kinetic + mean Jacobian term, to every parameter: checkpointed
    // backprop equals backprop, the adjoint matches both to the solves' tolerance.
    let x = Rng::new(15).normal_tensor(&[6, 2], 0.0, 0.7, DType::F64, dev)?;
    let mut all = vec![];
    for gradient in [
        Gradient::Backprop,
        Gradient::Checkpoint(node_adjoint::CheckpointOptions::default().checkpoints(4)),
        Gradient::Adjoint(AdjointOptions::default().tolerances(1e-10, 1e-10)),
    ] {
        let (varmap, cnf) = build(&small(), gradient, tight(), 16, DType::F64, dev)?;
        let r = cnf.log_prob_regularized(&x)?;
        let loss = ((r.log_p.mean_all()?.neg()? + r.kinetic.mean_all()?)?
            + r.jacobian.mean_all()?.affine(0.5, 0.0)?)?;
        let grads = loss.backward()?;
        let mut flat = vec![];
        for v in node_adjoint::sorted_vars(&varmap) {
            let g = grads.get(&v).expect("every parameter gets a gradient");
            flat.extend(g.flatten_all()?.to_vec1::<f64>()?);
        }
        all.push(flat);
    }
    let scale = all[0].iter().fold(0.0f64, |m, g| m.max(g.abs()));
    ensure!(scale > 1e-3);
    for (k, tol) in [(1, 1e-12), (2, 1e-6)] {
        for (a, b) in all[k].iter().zip(&all[0]) {
            ensure!(
                (a - b).abs() <= tol * scale,
                "mode {k}: {a} vs backprop {b} (scale {scale})"
            );
        }
    }
    Ok(())
}

candle_core::test_device!(trace_matches_jacobian, trace_cpu, trace_cuda, trace_metal);
candle_core::test_device!(
    regularizers_integrate,
    regularizers_cpu,
    regularizers_cuda,
    regularizers_metal
);
candle_core::test_device!(
    regularized_gradient_modes_agree,
    regularized_modes_cpu,
    regularized_modes_cuda,
    regularized_modes_metal
);
candle_core::test_device!(
    sampling_and_density_agree,
    sampling_cpu,
    sampling_cuda,
    sampling_metal
);
candle_core::test_device!(
    adjoint_matches_backprop,
    adjoint_cpu,
    adjoint_cuda,
    adjoint_metal
);

#[test]
fn density_integrates_to_one() -> Result<()> {
    // Σ p(x) h² over a grid that holds the mass: 1 for a density, whatever the flow did to
    // the base. A trace with the wrong sign, scale or time direction fails this.
    let dev = Device::Cpu;
    let (_, cnf) = build(&small(), Gradient::Backprop, tight(), 7, DType::F64, &dev)?;
    let (n, half) = (121usize, 3.0f64);
    let h = 2.0 * half / (n - 1) as f64;
    let mut pts = Vec::with_capacity(2 * n * n);
    for i in 0..n {
        for j in 0..n {
            pts.extend([-half + i as f64 * h, -half + j as f64 * h]);
        }
    }
    let x = Tensor::from_vec(pts, (n * n, 2), &dev)?;
    let lp = cnf.log_prob(&x)?;
    let mass = lp.exp()?.sum_all()?.to_scalar::<f64>()? * h * h;
    let base_mass = cnf
        .base_log_prob(&x)?
        .exp()?
        .sum_all()?
        .to_scalar::<f64>()?
        * h
        * h;
    let gap = (&lp - cnf.base_log_prob(&x)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    ensure!(gap > 0.1, "the flow must reshape the density ({gap})");
    ensure!(
        (base_mass - 1.0).abs() < 1e-6,
        "the grid holds the base ({base_mass})"
    );
    // Measured: 5e-9 off 1, with the flow moving log p by up to 1.2.
    ensure!((mass - 1.0).abs() < 1e-6, "∫ p = {mass}");
    Ok(())
}

#[test]
fn adjoint_matches_finite_differences() -> Result<()> {
    // dNLL/dθ for a few parameters by central differences (f64, tight solves, step 1e-5).
    let dev = Device::Cpu;
    let x = Rng::new(8).normal_tensor(&[6, 2], 0.0, 0.7, DType::F64, &dev)?;
    let adjoint = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-11, 1e-11));
    let opts = SolveOptions::default().tolerances(1e-11, 1e-11);
    let (varmap, cnf) = build(&small(), adjoint, opts, 9, DType::F64, &dev)?;
    let nll = || cnf.log_prob(&x)?.mean_all()?.neg();
    let entries = |len: usize| vec![0, len / 2, len - 1];
    let checked = common::check_finite_differences(&varmap, nll, entries, 1e-5, 1e-6)?;
    ensure!(
        checked == 18,
        "three entries of each of the six tensors ({checked})"
    );
    Ok(())
}

#[test]
fn adam_steps_lower_the_nll_of_two_circles() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = CnfConfig {
        width: 16,
        hidden: 16,
        ..CnfConfig::default()
    };
    let opts = SolveOptions::default().tolerances(1e-4, 1e-4);
    let gradient = Gradient::Adjoint(AdjointOptions::default().tolerances(1e-4, 1e-4));
    let (varmap, cnf) = build(&cfg, gradient, opts, 11, DType::F32, &dev)?;
    let x = two_circles(128, 0.06, &mut Rng::new(12), DType::F32, &dev)?;
    let cfg = AdamConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let mut opt = Adam::new(node_adjoint::sorted_vars(&varmap), cfg)?;
    let nll = |c: &Cnf| -> Result<Tensor> { Ok(c.log_prob(&x)?.mean_all()?.neg()?) };
    let first = nll(&cnf)?.to_scalar::<f32>()?;
    for _ in 0..15 {
        opt.backward_step(&nll(&cnf)?)?;
    }
    let last = nll(&cnf)?.to_scalar::<f32>()?;
    ensure!(last < first - 0.1, "NLL {first} → {last}");
    Ok(())
}

#[test]
fn bad_input_is_an_error() -> Result<()> {
    let dev = Device::Cpu;
    let (_, cnf) = build(&small(), Gradient::Backprop, tight(), 1, DType::F32, &dev)?;
    for bad in [
        Tensor::zeros((4, 3), DType::F32, &dev)?,
        Tensor::zeros(4, DType::F32, &dev)?,
        Tensor::zeros((0, 2), DType::F32, &dev)?,
    ] {
        let e = cnf.log_prob(&bad).unwrap_err().to_string();
        ensure!(e.contains("[batch ≥ 1, 2]"), "{e}");
        ensure!(cnf.sample_from(&bad).is_err());
    }
    for (cfg, what) in [
        (
            CnfConfig {
                width: 0,
                ..small()
            },
            "width",
        ),
        (
            CnfConfig {
                t1: -1.0,
                ..small()
            },
            "t1",
        ),
        (
            CnfConfig {
                base_std: f64::NAN,
                ..small()
            },
            "base_std",
        ),
    ] {
        let vm = VarMap::new();
        let e = Cnf::new(
            &cfg,
            tight(),
            Gradient::Backprop,
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
        )
        .unwrap_err()
        .to_string();
        ensure!(e.contains(what), "{e}");
    }
    // The field refuses a state without the log-density column (or the regularizers').
    let e = node_solvers::VectorField::eval(
        cnf.field(),
        0.0,
        &Tensor::zeros((4, 2), DType::F32, &dev)?,
    )
    .unwrap_err()
    .to_string();
    ensure!(e.contains("augmented state"), "{e}");
    Ok(())
}

//! Hamiltonian neural networks: `H`'s input gradient and its parameter gradients against
//! finite differences, the learned energy conserved along the learned field, the separable
//! form with the symplectic solver, the paper's data, a short training, and errors.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
use common::check_finite_differences;
use node_models::hnn::{hnn_dataset, Hnn, HnnConfig, HnnKind, HnnSystem};
use node_models::{init, Activation, Adam, AdamConfig, Mlp, Rng};
use node_solvers::{
    odeint, odeint_symplectic, SeparableField, SolveOptions, SolverError, SymplecticOptions,
};

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

fn hnn(kind: HnnKind, dev: &Device) -> Result<(Hnn, VarMap)> {
    let varmap = VarMap::new();
    let cfg = HnnConfig {
        dof: 2,
        width: 8,
        depth: 2,
        kind,
        ..Default::default()
    };
    let model = Hnn::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F64, dev))?;
    init::pytorch_default(&varmap, &mut Rng::new(3))?;
    Ok((model, varmap))
}

fn input_gradient(dev: &Device) -> Result<()> {
    for activation in [Activation::Tanh, Activation::Softplus, Activation::LipSwish] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
        let net = Mlp::new(3, 1, 6, 2, activation, false, vb)?;
        init::pytorch_default(&varmap, &mut Rng::new(1))?;
        let x = Tensor::new(&[[0.3f64, -0.7, 1.1], [-0.2, 0.5, 0.05]], dev)?;
        let (y, g) = net.value_and_input_gradient(&x)?;
        assert_eq!(host(&y)?, host(&net.forward(&x)?)?);
        let g = host(&g)?;
        let base = host(&x)?;
        let eps = 1e-6;
        for k in 0..base.len() {
            let at = |d: f64| -> Result<Vec<f64>> {
                let mut v = base.clone();
                v[k] += d;
                host(&net.forward(&Tensor::from_vec(v, (2, 3), dev)?)?)
            };
            let fd = (at(eps)?[k / 3] - at(-eps)?[k / 3]) / (2.0 * eps);
            assert!(
                (fd - g[k]).abs() < 1e-8 * (1.0 + fd.abs()),
                "{activation:?} entry {k}: {} vs {fd}",
                g[k]
            );
        }
    }
    // Training differentiates the gradient: every parameter of H through the field.
    for kind in [HnnKind::Hamiltonian, HnnKind::Separable] {
        let (model, varmap) = hnn(kind, dev)?;
        let x = Tensor::new(&[[0.3f64, -0.7, 1.1, 0.4], [-0.2, 0.5, 0.05, -1.0]], dev)?;
        let target = Tensor::new(&[[0.1f64, 0.2, -0.3, 0.4], [0.0, -0.1, 0.2, 0.3]], dev)?;
        let loss = || (model.time_derivative(&x)? - &target)?.sqr()?.sum_all();
        let checked = check_finite_differences(&varmap, loss, |n| (0..n).collect(), 1e-6, 1e-6)?;
        assert!(checked > 100, "{checked} entries");
    }
    Ok(())
}

fn learned_energy_is_conserved(dev: &Device) -> Result<()> {
    let x = Tensor::new(&[[0.3f64, -0.7, 1.1, 0.4], [-0.2, 0.5, 0.05, -1.0]], dev)?;
    for kind in [HnnKind::Hamiltonian, HnnKind::Separable] {
        let (model, _) = hnn(kind, dev)?;
        // dH/dt = ∇H · f = ∂H/∂q ∂H/∂p − ∂H/∂p ∂H/∂q = 0 along the field.
        let sol = odeint(
            &model,
            &x,
            &[0.0, 2.0],
            &SolveOptions::default().tolerances(1e-10, 1e-10),
        )?;
        let (h0, h1) = (
            host(&model.energy(&x)?)?,
            host(&model.energy(&sol.last()?)?)?,
        );
        for (a, b) in h0.iter().zip(&h1) {
            assert!((a - b).abs() < 1e-8, "{kind:?}: H from {a} to {b}");
        }
    }
    // The separable one splits: its field is [∂T/∂p, −∂V/∂q], and leapfrog keeps its energy
    // within O(h²) over long runs.
    let (model, _) = hnn(HnnKind::Separable, dev)?;
    let (q, p) = (x.narrow(1, 0, 2)?, x.narrow(1, 2, 2)?);
    let f = model.time_derivative(&x)?;
    let split = Tensor::cat(&[model.velocity(0.0, &p)?, model.force(0.0, &q)?], 1)?;
    assert_eq!(host(&f)?, host(&split)?);
    let ts: Vec<f64> = (0..=50).map(|i| i as f64 * 20.0).collect();
    let sol = odeint_symplectic(&model, &q, &p, &ts, &SymplecticOptions::new(0.05))?;
    let h0 = host(&model.energy(&x)?)?;
    for (i, t) in ts.iter().enumerate() {
        let xi = Tensor::cat(&[sol.qs.get(i)?, sol.ps.get(i)?], 1)?;
        for (a, b) in h0.iter().zip(host(&model.energy(&xi)?)?) {
            assert!((a - b).abs() < 1e-3, "leapfrog: H from {a} to {b} at {t}");
        }
    }
    Ok(())
}

fn data_and_training(dev: &Device) -> Result<()> {
    // The true trajectories conserve the true energy, and the derivatives are the system's.
    for system in [HnnSystem::Spring, HnnSystem::Pendulum] {
        let mut rng = Rng::new(4);
        let (q0, p0) = system.initial(&mut rng);
        let ts: Vec<f64> = (0..=40).map(|i| i as f64 * 0.5).collect();
        let e0 = system.hamiltonian(q0, p0);
        for (q, p) in system.trajectory(q0, p0, &ts) {
            let e = system.hamiltonian(q, p);
            assert!(
                (e - e0).abs() < 1e-9,
                "{}: energy {e} vs {e0}",
                system.name()
            );
        }
        let data = hnn_dataset(system, 3, 0.0, &mut Rng::new(5), DType::F64, dev)?;
        let n = system.times().len();
        assert_eq!(data.x.dims(), &[3 * n, 2]);
        let (x, dx) = (host(&data.x)?, host(&data.dx)?);
        for i in 0..3 * n {
            let (dq, dp) = system.derivative(x[2 * i], x[2 * i + 1]);
            assert!((dq - dx[2 * i]).abs() < 1e-12 && (dp - dx[2 * i + 1]).abs() < 1e-12);
        }
    }
    // A short training on the noisy spring: the HNN's derivative error falls well below the
    // data's spread.
    let mut rng = Rng::new(0);
    let data = hnn_dataset(HnnSystem::Spring, 10, 0.1, &mut rng, DType::F32, dev)?;
    let varmap = VarMap::new();
    let cfg = HnnConfig {
        width: 32,
        ..Default::default()
    };
    let model = Hnn::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    init::pytorch_default(&varmap, &mut rng)?;
    let mut adam = Adam::new(
        varmap.all_vars(),
        AdamConfig {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let mse = || -> candle_core::Result<Tensor> {
        (model.time_derivative(&data.x)? - &data.dx)?
            .sqr()?
            .mean_all()
    };
    let start = mse()?.to_scalar::<f32>()?;
    for _ in 0..150 {
        adam.backward_step(&mse()?)?;
    }
    let end = mse()?.to_scalar::<f32>()?;
    assert!(end < 0.1 * start && end < 0.05, "MSE from {start} to {end}");
    Ok(())
}

fn errors(dev: &Device) -> Result<()> {
    let (baseline, _) = hnn(HnnKind::Baseline, dev)?;
    let x = Tensor::zeros((3, 4), DType::F64, dev)?;
    assert_eq!(baseline.time_derivative(&x)?.dims(), &[3, 4]);
    let invalid = |r: candle_core::Result<Tensor>, needle: &str| {
        let e = r.expect_err("an error");
        assert!(
            matches!(
                SolverError::find(&e),
                Some(SolverError::InvalidOptions(_) | SolverError::OutputMismatch(_))
            ) && e.to_string().contains(needle),
            "{e}"
        );
    };
    invalid(baseline.energy(&x), "no energy");
    invalid(baseline.velocity(0.0, &x), "separable");
    let (h, _) = hnn(HnnKind::Hamiltonian, dev)?;
    invalid(h.force(0.0, &x), "separable");
    invalid(
        h.time_derivative(&Tensor::zeros((3, 3), DType::F64, dev)?),
        "[batch, 4]",
    );
    let cfg = HnnConfig {
        depth: 0,
        ..Default::default()
    };
    let varmap = VarMap::new();
    let e = Hnn::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F64, dev)).unwrap_err();
    assert!(e.to_string().contains("depth"), "{e}");
    // An input gradient needs a scalar network without a final tanh.
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
    let two = Mlp::new(2, 2, 4, 1, Activation::Tanh, false, vb.pp("two"))?;
    assert!(two.value_and_input_gradient(&x.narrow(1, 0, 2)?).is_err());
    Ok(())
}

candle_core::test_device!(
    input_gradient,
    input_gradient_cpu,
    input_gradient_cuda,
    input_gradient_metal
);
candle_core::test_device!(
    learned_energy_is_conserved,
    learned_energy_is_conserved_cpu,
    learned_energy_is_conserved_cuda,
    learned_energy_is_conserved_metal
);
candle_core::test_device!(
    data_and_training,
    data_and_training_cpu,
    data_and_training_cuda,
    data_and_training_metal
);
candle_core::test_device!(errors, errors_cpu, errors_cuda, errors_metal);

//! The MNIST models against PyTorch on the same weights and batch: logits, loss and every
//! parameter's gradient (`fixtures/torch/mnist_*.npz`, from
//! `scripts/fixtures/mnist_models_reference.py`, a transcription of torchdiffeq's
//! `examples/odenet_mnist.py` with our parameter names; computed in float64 there).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use node_models::{Gradient, MnistModel, ModelKind, OdeConfig};
use node_solvers::{Method, SolveOptions};
use std::collections::HashMap;

fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    let m = b
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok(d / m.max(1e-12))
}

fn check(kind: ModelKind, file: &str) -> Result<()> {
    let path = format!("{}/../../fixtures/torch/{file}", env!("CARGO_MANIFEST_DIR"));
    let fx: HashMap<String, Tensor> = Tensor::read_npz(path)?.into_iter().collect();
    let varmap = VarMap::new();
    // The reference integrates the ODE block with 4 classic RK4 steps and backprop.
    let ode = OdeConfig {
        opts: SolveOptions::default().method(Method::Rk4).fixed_steps(4),
        gradient: Gradient::Backprop,
        augment: 0,
        time: node_models::TimeDependence::Concat,
    };
    let model = MnistModel::new(
        kind,
        &ode,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let vars = varmap.data().lock().unwrap().clone();
    assert_eq!(
        vars.len(),
        fx.keys().filter(|k| k.starts_with("param.")).count(),
        "{kind}: parameter sets differ"
    );
    for (name, var) in &vars {
        let p = fx
            .get(&format!("param.{name}"))
            .unwrap_or_else(|| panic!("{kind}: no reference parameter {name}"));
        var.set(p)?;
    }
    let (logits, _) = model.forward(&fx["x"])?;
    let r = max_rel(&logits, &fx["logits"])?;
    assert!(r < 1e-5, "{kind}: logits differ by {r:e}");
    let loss = candle_nn::loss::cross_entropy(&logits, &fx["y"])?;
    let grads = loss.backward()?;
    let want_loss = fx["loss"].to_scalar::<f32>()?;
    assert!(
        (loss.to_scalar::<f32>()? - want_loss).abs() < 1e-5,
        "{kind}: loss"
    );
    let mut worst = (0.0, String::new());
    for (name, var) in &vars {
        let r = max_rel(grads.get(var).unwrap(), &fx[&format!("grad.{name}")])?;
        if r > worst.0 {
            worst = (r, name.clone());
        }
    }
    // float32 against float64, through 6 residual blocks or 16 field evaluations.
    assert!(
        worst.0 < 1e-3,
        "{kind}: gradient of {} differs by {:e}",
        worst.1,
        worst.0
    );
    Ok(())
}

#[test]
fn resnet_matches_pytorch() -> Result<()> {
    check(ModelKind::ResNet, "mnist_resnet.npz")
}

#[test]
fn odenet_matches_pytorch() -> Result<()> {
    check(ModelKind::OdeNet, "mnist_odenet.npz")
}

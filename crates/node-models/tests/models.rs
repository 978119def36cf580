//! Shapes, parameter counts, and that training steps lower the loss.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_models::{init, mnist, MnistModel, ModelKind, OdeConfig, Rng, SgdConfig, SgdMomentum};

fn build(kind: ModelKind, dev: &Device) -> Result<(VarMap, MnistModel)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let model = MnistModel::new(kind, &OdeConfig::default_for(kind), vb)?;
    init::pytorch_default(&varmap, &mut Rng::new(0))?;
    Ok((varmap, model))
}

fn param_count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

fn shapes_and_counts(dev: &Device) -> Result<()> {
    // The reference's counts (the paper rounds them to 0.22M and 0.60M).
    for (kind, want) in [
        (ModelKind::OdeNet, 208_266),
        (ModelKind::RkNet, 208_266),
        (ModelKind::ResNet, 576_778),
        (ModelKind::Mlp, 238_510),
    ] {
        let (varmap, model) = build(kind, dev)?;
        assert_eq!(param_count(&varmap), want, "{kind}");
        let x = Tensor::rand(0f32, 1.0, (3, 1, 28, 28), dev)?;
        let (logits, stats) = model.forward(&x)?;
        assert_eq!(logits.dims(), &[3, 10], "{kind}");
        let has_block = matches!(kind, ModelKind::OdeNet | ModelKind::RkNet);
        assert_eq!(stats.block.is_some(), has_block);
        if kind == ModelKind::RkNet {
            assert_eq!(stats.block.unwrap().nfe_forward, 80, "RK4, 20 steps");
        }
    }
    Ok(())
}

fn steps_lower_the_loss(dev: &Device) -> Result<()> {
    // A fixed batch of synthetic digits; a few SGD steps must lower the loss for every model.
    let split = mnist::synthetic(32, &mut Rng::new(5));
    let idx: Vec<usize> = (0..32).collect();
    let (x, y) = mnist::batch(&split, &idx, None, dev)?;
    for kind in ModelKind::ALL {
        let (varmap, model) = build(kind, dev)?;
        let mut opt = SgdMomentum::new(
            node_adjoint::sorted_vars(&varmap),
            SgdConfig {
                lr: 0.05,
                ..Default::default()
            },
        )?;
        let loss = |m: &MnistModel| -> Result<Tensor> {
            Ok(candle_nn::loss::cross_entropy(&m.forward(&x)?.0, &y)?)
        };
        let first = loss(&model)?.to_scalar::<f32>()?;
        for _ in 0..3 {
            opt.backward_step(&loss(&model)?)?;
        }
        let last = loss(&model)?.to_scalar::<f32>()?;
        assert!(last < first, "{kind}: loss {first} -> {last}");
    }
    Ok(())
}

candle_core::test_device!(
    shapes_and_counts,
    shapes_and_counts_cpu,
    shapes_and_counts_cuda,
    shapes_and_counts_metal
);
candle_core::test_device!(
    steps_lower_the_loss,
    steps_lower_loss_cpu,
    steps_lower_loss_cuda,
    steps_lower_loss_metal
);

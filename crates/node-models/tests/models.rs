//! Shapes, parameter counts, that training steps lower the loss, and that a device trains
//! as the CPU does.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_models::{
    init, mnist, Gradient, MnistModel, ModelKind, OdeConfig, Rng, SgdConfig, SgdMomentum,
};

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

/// What two training steps of one model produced: per step the loss, the evaluation counts and
/// every gradient (by variable name); then every parameter.
struct Trace {
    losses: Vec<Tensor>,
    nfe: Vec<(usize, usize)>,
    grads: Vec<Vec<(String, Tensor)>>,
    params: Vec<(String, Tensor)>,
}

/// Two SGD-with-momentum steps (the second uses the momentum buffers) of `kind` in `dtype` on
/// `dev`, from the parameters of `init_from`, on a fixed batch.
fn two_steps(
    kind: ModelKind,
    ode: &OdeConfig,
    dtype: DType,
    dev: &Device,
    init_from: &VarMap,
) -> Result<Trace> {
    let varmap = VarMap::new();
    let model = MnistModel::new(kind, ode, VarBuilder::from_varmap(&varmap, dtype, dev))?;
    let named = |vm: &VarMap| {
        let mut v: Vec<_> = vm.data().lock().unwrap().clone().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for ((name, var), (name0, var0)) in named(&varmap).iter().zip(named(init_from)) {
        assert_eq!(*name, name0);
        var.set(&var0.as_tensor().to_dtype(dtype)?.to_device(dev)?)?;
    }
    let split = mnist::synthetic(16, &mut Rng::new(7));
    let idx: Vec<usize> = (0..16).collect();
    let (x, y) = mnist::batch(&split, &idx, None, dev)?;
    let x = x.to_dtype(dtype)?;
    let mut opt = SgdMomentum::new(
        node_adjoint::sorted_vars(&varmap),
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
        },
    )?;
    let mut trace = Trace {
        losses: vec![],
        nfe: vec![],
        grads: vec![],
        params: vec![],
    };
    for _ in 0..2 {
        let (logits, stats) = model.forward(&x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let grads = loss.backward()?;
        let block = stats.block.unwrap_or_default();
        trace.nfe.push((block.nfe_forward, block.nfe_backward()));
        trace.losses.push(loss);
        let mut step_grads = vec![];
        for (name, var) in named(&varmap) {
            let g = grads.get(&var);
            ensure!(g.is_some(), "{kind}: no gradient for {name}");
            step_grads.push((name, g.unwrap().clone()));
        }
        trace.grads.push(step_grads);
        opt.step(&grads)?;
    }
    for (name, var) in named(&varmap) {
        trace.params.push((name, var.as_tensor().clone()));
    }
    Ok(trace)
}

/// `max |a - b| / max |a|` (on the host, in f64).
fn relative_gap(a: &Tensor, b: &Tensor) -> Result<f64> {
    let host = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?)
    };
    let (a, b) = (host(a)?, host(b)?);
    ensure!(a.len() == b.len(), "{} vs {} elements", a.len(), b.len());
    let scale = a
        .iter()
        .fold(0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let gap = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    Ok(if gap.is_nan() || b.iter().any(|v| !v.is_finite()) {
        f64::INFINITY
    } else {
        gap / scale
    })
}

/// Two training steps of every model, and of ODE-Net with both gradient modes, on `dev` against
/// the same steps on the CPU, in f64 and f32: losses, every gradient, the evaluation counts and
/// the parameters after the updates. On CUDA this runs each of the project's own kernels
/// (convolution, group norm, the solver's stage combinations, the adjoint's concatenation, the
/// SGD update) inside the models they serve; on the CPU it checks that a run repeats itself
/// (in f32 only).
///
/// The bounds are relative to each tensor's largest entry. The two devices run the same
/// arithmetic in different orders (reductions, matrix products), so they differ by rounding,
/// amplified by two training steps: a few hundred ulps. A wrong kernel is off by far more.
fn same_training_as_cpu(dev: &Device) -> Result<()> {
    let direct = OdeConfig {
        gradient: Gradient::Backprop,
        ..OdeConfig::default_for(ModelKind::OdeNet)
    };
    let variants = [
        (
            ModelKind::Mlp,
            OdeConfig::default_for(ModelKind::Mlp),
            "mlp",
        ),
        (
            ModelKind::ResNet,
            OdeConfig::default_for(ModelKind::ResNet),
            "resnet",
        ),
        (
            ModelKind::RkNet,
            OdeConfig::default_for(ModelKind::RkNet),
            "rknet",
        ),
        (
            ModelKind::OdeNet,
            OdeConfig::default_for(ModelKind::OdeNet),
            "odenet adjoint",
        ),
        (ModelKind::OdeNet, direct, "odenet direct"),
    ];
    // On the CPU (a repeat of the same run) f32 alone, to keep the suite short.
    let dtypes = match dev {
        Device::Cpu => &[(DType::F32, 1e-4)][..],
        _ => &[(DType::F64, 1e-10), (DType::F32, 1e-4)],
    };
    for &(dtype, bound) in dtypes {
        for (kind, ode, label) in &variants {
            let (init_from, _) = build(*kind, &Device::Cpu)?;
            let want = two_steps(*kind, ode, dtype, &Device::Cpu, &init_from)?;
            let got = two_steps(*kind, ode, dtype, dev, &init_from)?;
            let what = format!("{label}, {dtype:?}, {dev:?}");
            ensure!(
                got.nfe == want.nfe,
                "{what}: NFE {:?}, CPU {:?}",
                got.nfe,
                want.nfe
            );
            let mut pairs = vec![];
            for step in 0..2 {
                pairs.push((
                    format!("loss, step {step}"),
                    &want.losses[step],
                    &got.losses[step],
                ));
                for ((name, w), (_, g)) in want.grads[step].iter().zip(&got.grads[step]) {
                    pairs.push((format!("d loss / d {name}, step {step}"), w, g));
                }
            }
            for ((name, w), (_, g)) in want.params.iter().zip(&got.params) {
                pairs.push((format!("{name} after two updates"), w, g));
            }
            for (name, w, g) in pairs {
                let gap = relative_gap(w, g)?;
                ensure!(gap <= bound, "{what}: {name} differs from the CPU's by {gap:.2e} (relative to its largest entry; bound {bound:.0e})");
            }
        }
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
candle_core::test_device!(
    same_training_as_cpu,
    same_training_as_cpu_cpu,
    same_training_as_cpu_cuda,
    same_training_as_cpu_metal
);

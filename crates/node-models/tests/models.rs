//! Shapes, parameter counts, that training steps lower the loss, and that a device trains
//! as the CPU does.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_adjoint::CheckpointOptions;
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
        let x = Rng::new(621).uniform_tensor(&[3, 1, 28, 28], 0.0, 1.0, DType::F32, dev)?;
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

/// Every tensor of a trace, named, with the group whose largest entry scales its f32 gap
/// (0: the losses; 1 + step: that step's gradients; 3: the parameters after the updates).
fn tensors(t: &Trace) -> Vec<(String, usize, &Tensor)> {
    let mut all = vec![];
    for step in 0..2 {
        all.push((format!("loss, step {step}"), 0, &t.losses[step]));
        for (name, g) in &t.grads[step] {
            all.push((format!("d loss / d {name}, step {step}"), 1 + step, g));
        }
    }
    for (name, p) in &t.params {
        all.push((format!("{name} after two updates"), 3, p));
    }
    all
}

/// `max |a - b|` and `max |a|` (on the host, in f64).
fn gap_and_scale(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let host = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?)
    };
    let (a, b) = (host(a)?, host(b)?);
    ensure!(a.len() == b.len(), "{} vs {} elements", a.len(), b.len());
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
    let gap = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    Ok(if gap.is_nan() || b.iter().any(|v| !v.is_finite()) {
        (f64::INFINITY, scale)
    } else {
        (gap, scale)
    })
}

/// Two training steps of every model, and of ODE-Net with both gradient modes, on `dev`
/// against the same steps on the CPU: losses, every gradient, the evaluation counts and the
/// parameters after the updates. On CUDA this runs each of the project's own kernels
/// (convolution, group norm, the solver's stage combinations, the adjoint's concatenation,
/// the SGD update) inside the models they serve, in f64 and f32; on the CPU it checks that
/// a run repeats itself, number for number (in f32).
///
/// f64 is the precise check: every tensor within 1e-10 of its largest entry. The devices
/// differ by rounding only, and on the CPU runs from parameters one rounding apart (1e-15)
/// differ by 5e-14 at most, so the bound leaves three orders of magnitude; a learning rate
/// 0.1% off fails it.
///
/// f32 is a check for gross errors only, because these networks amplify single-precision
/// rounding: rounding flips ReLU masks of values near zero, and some gradients are sums that
/// nearly cancel (a convolution's bias just before a group norm). On the CPU, runs from
/// parameters 1e-7 apart (about one rounding) differ by up to 0.6% of the largest gradient
/// of the first step, and 6% after an update. The first loss moves by 1e-7 only. So in
/// f32: the evaluation counts equal, the first loss within 1e-5 (relative), and every
/// tensor finite and within 0.25 of the largest entry of its group (a step's gradients,
/// or the parameters).
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
    let cpu = &Device::Cpu;
    // On the CPU, f32 alone (a repeat of the same run), to keep the suite short.
    let dtypes: &[DType] = if dev.is_cpu() {
        &[DType::F32]
    } else {
        &[DType::F64, DType::F32]
    };
    for (kind, ode, label) in &variants {
        let (init_from, _) = build(*kind, cpu)?;
        for &dtype in dtypes {
            let what = format!("{label}, {dtype:?}, {dev:?}");
            let want = two_steps(*kind, ode, dtype, cpu, &init_from)?;
            let got = two_steps(*kind, ode, dtype, dev, &init_from)?;
            ensure!(
                got.nfe == want.nfe,
                "{what}: NFE {:?}, CPU {:?}",
                got.nfe,
                want.nfe
            );
            // (name, group, gap, scale) of every tensor; then each group's largest entry.
            let measured = tensors(&want)
                .into_iter()
                .zip(tensors(&got))
                .map(|((name, group, w), (_, _, g))| {
                    let (gap, scale) = gap_and_scale(w, g)?;
                    Ok((name, group, gap, scale))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut group_scale = [0f64; 4];
            for &(_, group, _, scale) in &measured {
                group_scale[group] = group_scale[group].max(scale);
            }
            for (name, group, gap, scale) in measured {
                let (rel, bound, of) = match (dtype, group) {
                    _ if dev.is_cpu() => (gap, 0.0, "exactly"),
                    (DType::F64, _) => (gap / scale, 1e-10, "of its largest entry"),
                    (_, 0) if name.ends_with("step 0") => (gap / scale, 1e-5, "relative"),
                    _ => (
                        gap / group_scale[group],
                        0.25,
                        "of its group's largest entry",
                    ),
                };
                ensure!(
                    rel <= bound,
                    "{what}: {name} differs from the CPU's by {rel:.2e} {of} (bound {bound:.0e})"
                );
            }
        }
    }
    Ok(())
}

/// ODE-Net trained with checkpointed backprop takes the steps backprop takes: the same losses,
/// gradients and parameters after two updates, in f64, within 1e-11 of each group's largest
/// entry (they differ only in the order of the floating-point sums of the backward pass).
fn checkpoint_is_backprop(dev: &Device) -> Result<()> {
    let backprop = OdeConfig {
        gradient: Gradient::Backprop,
        ..OdeConfig::default_for(ModelKind::OdeNet)
    };
    let (init_from, _) = build(ModelKind::OdeNet, dev)?;
    let want = two_steps(ModelKind::OdeNet, &backprop, DType::F64, dev, &init_from)?;
    // 2 stored states: the solve's 4–5 steps replay in two or three stretches.
    let checkpoint = OdeConfig {
        gradient: Gradient::Checkpoint(CheckpointOptions::default().checkpoints(2)),
        ..backprop
    };
    let got = two_steps(ModelKind::OdeNet, &checkpoint, DType::F64, dev, &init_from)?;
    for ((f_want, _), (f_got, b_got)) in want.nfe.iter().zip(&got.nfe) {
        ensure!(f_want == f_got, "forward NFE {f_got}, backprop's {f_want}");
        // The replay evaluates the accepted steps again (6 each, FSAL) plus one per stretch;
        // the forward's first-step choice took 2, so 5 steps in 2 stretches cost the same 32.
        ensure!(*b_got > 0, "backward NFE {b_got}: nothing was replayed");
    }
    let mut group_scale = [0f64; 4];
    let pairs: Vec<_> = tensors(&want).into_iter().zip(tensors(&got)).collect();
    for ((_, group, w), (_, _, g)) in &pairs {
        group_scale[*group] = group_scale[*group].max(gap_and_scale(w, g)?.1);
    }
    for ((name, group, w), (_, _, g)) in &pairs {
        let rel = gap_and_scale(w, g)?.0 / group_scale[*group];
        ensure!(
            rel <= 1e-11,
            "{name}: checkpointing differs from backprop by {rel:.2e}"
        );
    }
    Ok(())
}

/// Two SGD steps of an ODE-Net or RK-Net (`model`, its variables in `varmap`) on the 16
/// digits `x`, `y` lower its loss.
fn two_steps_lower_the_loss(
    model: &MnistModel,
    varmap: &VarMap,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    let mut opt = SgdMomentum::new(node_adjoint::sorted_vars(varmap), SgdConfig::default())?;
    let loss = || -> Result<Tensor> {
        let (logits, stats) = model.forward(x)?;
        ensure!(logits.dims() == [16, 10] && stats.block.is_some());
        Ok(candle_nn::loss::cross_entropy(&logits, y)?)
    };
    let first = loss()?.to_scalar::<f32>()?;
    for _ in 0..2 {
        opt.backward_step(&loss()?)?;
    }
    let last = loss()?.to_scalar::<f32>()?;
    let kind = model.kind();
    ensure!(last < first, "{kind}: loss {first} -> {last}");
    Ok(())
}

/// An augmented ODE-Net and RK-Net (Dupont et al. 2019): 5 channels of zeros beside the 64,
/// the field, the head's norm (23 groups of 3) and the classifier on 69; they train.
fn augmented_models(dev: &Device) -> Result<()> {
    // Parameters of the parts on `d` channels: the field's three norms and two time-channel
    // convolutions, the head's norm, the classifier.
    let on = |d: usize| 3 * 2 * d + 2 * (9 * (d + 1) * d + d) + 2 * d + 10 * d + 10;
    let split = mnist::synthetic(16, &mut Rng::new(5));
    let idx: Vec<usize> = (0..16).collect();
    let (x, y) = mnist::batch(&split, &idx, None, dev)?;
    for kind in [ModelKind::OdeNet, ModelKind::RkNet] {
        let varmap = VarMap::new();
        let ode = OdeConfig {
            augment: 5,
            ..OdeConfig::default_for(kind)
        };
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let model = MnistModel::new(kind, &ode, vb)?;
        init::pytorch_default(&varmap, &mut Rng::new(0))?;
        ensure!(param_count(&varmap) == 208_266 - on(64) + on(69), "{kind}");
        two_steps_lower_the_loss(&model, &varmap, &x, &y)?;
    }
    for kind in [ModelKind::ResNet, ModelKind::Mlp] {
        let ode = OdeConfig {
            augment: 5,
            ..OdeConfig::default_for(kind)
        };
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, dev);
        let e = MnistModel::new(kind, &ode, vb).err().expect("refused");
        ensure!(
            e.to_string()
                .contains("augmentation is for ODE-Net and RK-Net"),
            "{e}"
        );
    }
    Ok(())
}

/// ODE-Net and RK-Net on Galerkin convolutions (Legendre polynomials to degree 2): three
/// coefficient sets per convolution in place of the time channel, a name that records the
/// basis, a loss that two steps lower; the ResNet and the MLP refuse them.
fn galerkin_models(dev: &Device) -> Result<()> {
    let basis: node_models::Basis = "legendre:2".parse().map_err(anyhow::Error::msg)?;
    let time = node_models::TimeDependence::Galerkin(basis);
    // A time-channel convolution 64 + 1 → 64 with bias; a Galerkin one 64 → 64, three times.
    let concat = 9 * 65 * 64 + 64;
    let galerkin = 3 * (9 * 64 * 64 + 64);
    let split = mnist::synthetic(16, &mut Rng::new(5));
    let idx: Vec<usize> = (0..16).collect();
    let (x, y) = mnist::batch(&split, &idx, None, dev)?;
    for kind in [ModelKind::OdeNet, ModelKind::RkNet] {
        let varmap = VarMap::new();
        let ode = OdeConfig {
            time,
            ..OdeConfig::default_for(kind)
        };
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
        let model = MnistModel::new(kind, &ode, vb)?;
        init::pytorch_default(&varmap, &mut Rng::new(0))?;
        ensure!(
            param_count(&varmap) == 208_266 - 2 * concat + 2 * galerkin,
            "{kind}"
        );
        ensure!(model.name() == format!("{kind}-galerkin-legendre:2"));
        let block = model.ode_block().expect("a block");
        ensure!(block.field.time_dependence() == time);
        two_steps_lower_the_loss(&model, &varmap, &x, &y)?;
    }
    let (_, plain) = build(ModelKind::OdeNet, dev)?;
    ensure!(plain.name() == "odenet");
    for kind in [ModelKind::ResNet, ModelKind::Mlp] {
        let ode = OdeConfig {
            time,
            ..OdeConfig::default_for(kind)
        };
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, dev);
        let e = MnistModel::new(kind, &ode, vb).err().expect("refused");
        ensure!(
            e.to_string()
                .contains("Galerkin convolutions are for ODE-Net and RK-Net"),
            "{e}"
        );
    }
    Ok(())
}

/// An augmented block pads dimension 1 with zeros and keeps them: on `dy/dt = −y`, the input's
/// channels decay as `e^(−t)` and the added ones stay 0.
#[test]
fn augmented_blocks_pad_with_zeros() -> Result<()> {
    let dev = Device::Cpu;
    let f = node_adjoint::with_params(|_t: f64, y: &Tensor| y.neg(), vec![]);
    let opts = node_solvers::SolveOptions::default().tolerances(1e-10, 1e-12);
    let block = node_models::OdeBlock::new(f, 1.0, opts, Gradient::Backprop).augmented(3);
    let x = Tensor::ones((2, 4, 5), DType::F64, &dev)?;
    let (y, _) = block.forward_with_stats(&x)?;
    ensure!(y.dims() == [2, 7, 5]);
    let real = y.narrow(1, 0, 4)?.flatten_all()?.to_vec1::<f64>()?;
    ensure!(real.iter().all(|v| (v - (-1f64).exp()).abs() < 1e-9));
    ensure!(y.narrow(1, 4, 3)?.abs()?.sum_all()?.to_scalar::<f64>()? == 0.0);
    let e = block
        .forward_with_stats(&Tensor::ones(4, DType::F64, &dev)?)
        .expect_err("refused");
    ensure!(e.to_string().contains("pads dimension 1"), "{e}");
    // torchdiffeq's GroupNorm(min(32, d), d) where defined, equal groups elsewhere.
    for (d, g) in [
        (1, 1),
        (20, 20),
        (32, 32),
        (64, 32),
        (96, 32),
        (69, 23),
        (70, 14),
        (0, 0),
    ] {
        ensure!(
            node_models::layers::norm_groups(d) == g,
            "{d} channels: {g} groups"
        );
    }
    Ok(())
}

candle_core::test_device!(
    augmented_models,
    augmented_models_cpu,
    augmented_models_cuda,
    augmented_models_metal
);
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
candle_core::test_device!(
    checkpoint_is_backprop,
    checkpoint_is_backprop_cpu,
    checkpoint_is_backprop_cuda,
    checkpoint_is_backprop_metal
);
candle_core::test_device!(
    galerkin_models,
    galerkin_models_cpu,
    galerkin_models_cuda,
    galerkin_models_metal
);

//! The hypernetworks: shapes, a zeroed output layer gives the base method, residual fitting
//! on an ODE-Net field makes few Euler steps more accurate, and ODE-Net's pieces compose to
//! its forward pass.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_models::hyper::zero_output;
use node_models::{
    init, Adam, AdamConfig, HyperConv, HyperMlp, MnistModel, ModelKind, OdeConfig, Rng,
};
use node_solvers::{hyper_residuals, odeint, odeint_hyper, Method, SolveOptions, VectorField};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

fn shapes_and_zero_output(dev: &Device) -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let conv = HyperConv::new(8, 16, vb.pp("conv"))?;
    let mlp = HyperMlp::new(5, 32, 2, vb.pp("mlp"))?;
    init::pytorch_default(&varmap, &mut Rng::new(1))?;
    let y = Rng::new(611).normal_tensor(&[3, 8, 4, 4], 0.0, 1.0, DType::F32, dev)?;
    assert_eq!(conv.forward(0.3, &y, &y.sin()?)?.dims(), &[3, 8, 4, 4]);
    let v = Rng::new(612).normal_tensor(&[7, 5], 0.0, 1.0, DType::F32, dev)?;
    assert_eq!(mlp.forward(0.3, &v, &v.cos()?)?.dims(), &[7, 5]);
    // Zeroed output layers: the hypersolver is its base method, value for value.
    zero_output(&varmap, "conv")?;
    zero_output(&varmap, "mlp")?;
    assert!(zero_output(&varmap, "nothing").is_err());
    let f = |_t: f64, y: &Tensor| y.tanh()?.neg();
    let opts = SolveOptions::default().method(Method::Euler).fixed_steps(3);
    for (g, y0) in [
        (&conv as &dyn node_solvers::Correction, &y),
        (&mlp as &dyn node_solvers::Correction, &v),
    ] {
        let hyper = odeint_hyper(&f, g, y0, &[0.0, 1.0], &opts)?;
        let plain = odeint(&f, y0, &[0.0, 1.0], &opts)?;
        assert_eq!(max_abs_diff(&hyper.ys, &plain.ys)?, 0.0);
    }
    Ok(())
}

/// Fits a [`HyperConv`] to the Euler residuals of a nonlinear field on small feature maps (2
/// steps over `[0, 1]`, the reference by dopri5 at 1e-7): the loss falls on states it was not
/// trained on, and there the fitted HyperEuler is closer to the reference than Euler.
fn residual_fitting(dev: &Device) -> Result<()> {
    let (c, side) = (8, 4);
    // Pointwise and time-dependent, so that the residual (≈ h²/2 · (∂f/∂t + f′ f)) is a
    // function a 3×3 convolution of `[t, y, f]` can represent.
    let field = |t: f64, y: &Tensor| {
        let damping = y.affine(2.0, 0.0)?.tanh()?.affine(-1.0 - t, 0.0)?;
        damping + y.sin()?.affine(0.5, 0.0)?
    };
    let varmap = VarMap::new();
    let hyper = HyperConv::new(c, 16, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    init::pytorch_default(&varmap, &mut Rng::new(3))?;
    zero_output(&varmap, "")?;
    let mut opt = Adam::new(
        node_adjoint::sorted_vars(&varmap),
        AdamConfig {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let reference = SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(1e-7, 1e-7);
    let grid = [0.0, 0.5, 1.0];
    let states = |seed: u64| -> Result<Tensor> {
        let mut rng = Rng::new(seed);
        Ok(rng.normal_tensor(&[16, c, side, side], 0.0, 1.0, DType::F32, dev)?)
    };
    let residuals = |y0: &Tensor| -> Result<_> {
        let ys = odeint(&field, y0, &grid, &reference)?.ys.detach();
        Ok(hyper_residuals(&field, Method::Euler, &grid, &ys)?)
    };
    // Fresh states every iteration, as in training on a data set; the loss measured on
    // states never trained on.
    let held_out = residuals(&states(1)?)?;
    let first = held_out.loss(&hyper)?.to_scalar::<f32>()?;
    for it in 0..300 {
        opt.backward_step(&residuals(&states(100 + it)?)?.loss(&hyper)?)?;
    }
    let last = held_out.loss(&hyper)?.to_scalar::<f32>()?;
    assert!(
        last < 0.2 * first,
        "held-out residual loss {first} → {last}"
    );

    let y0 = states(2)?;
    let want = odeint(&field, &y0, &[0.0, 1.0], &reference)?.last()?;
    let euler = SolveOptions::default().method(Method::Euler).fixed_steps(2);
    let plain = odeint(&field, &y0, &[0.0, 1.0], &euler)?.last()?;
    let fitted = odeint_hyper(&field, &hyper, &y0, &[0.0, 1.0], &euler)?.last()?;
    let rms = |a: &Tensor| -> Result<f64> {
        Ok((a - &want)?
            .sqr()?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .sqrt())
    };
    let (e_plain, e_fit) = (rms(&plain)?, rms(&fitted)?);
    assert!(
        e_fit < 0.5 * e_plain,
        "HyperEuler {e_fit} vs Euler {e_plain}"
    );
    Ok(())
}

fn odenet_pieces_compose(dev: &Device) -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let kind = ModelKind::OdeNet;
    let model = MnistModel::new(kind, &OdeConfig::default_for(kind), vb)?;
    init::pytorch_default(&varmap, &mut Rng::new(0))?;
    let x = Rng::new(613).uniform_tensor(&[3, 1, 28, 28], 0.0, 1.0, DType::F32, dev)?;
    let (logits, _) = model.forward(&x)?;
    let h = model.encode(&x)?;
    assert_eq!(h.dims(), &[3, 64, 6, 6]);
    let block = model.ode_block().expect("ODE-Net has an ODE block");
    let y1 = odeint(&block.field, &h, &[0.0, block.t1], &block.opts)?.last()?;
    assert_eq!(max_abs_diff(&model.classify(&y1)?, &logits)?, 0.0);
    assert_eq!(block.field.eval(0.0, &h)?.dims(), h.dims());
    // The ResNet has no block; the MLP neither downsampling nor head.
    let resnet = MnistModel::new(
        ModelKind::ResNet,
        &OdeConfig::default_for(ModelKind::ResNet),
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, dev),
    )?;
    assert!(resnet.ode_block().is_none());
    let mlp = MnistModel::new(
        ModelKind::Mlp,
        &OdeConfig::default_for(ModelKind::Mlp),
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, dev),
    )?;
    assert!(mlp.encode(&x).is_err() && mlp.classify(&h).is_err());
    Ok(())
}

candle_core::test_device!(
    shapes_and_zero_output,
    shapes_and_zero_output_cpu,
    shapes_and_zero_output_cuda,
    shapes_and_zero_output_metal
);
candle_core::test_device!(
    residual_fitting,
    residual_fitting_cpu,
    residual_fitting_cuda,
    residual_fitting_metal
);
candle_core::test_device!(
    odenet_pieces_compose,
    odenet_pieces_compose_cpu,
    odenet_pieces_compose_cuda,
    odenet_pieces_compose_metal
);

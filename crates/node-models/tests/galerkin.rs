//! Galerkin layers: the bases' values, a constant expansion is a plain linear layer, the
//! weight follows its expansion, gradients against central differences, a depth-variant
//! field fits a flow that no constant linear field can, and the errors; the same for the
//! convolution, and an ODE-Net field on it differentiated by the adjoint.

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use common::{check_finite_differences, max_abs};
use node_adjoint::AdjointOptions;
use node_models::galerkin::{Basis, GalerkinConv2d, GalerkinLinear};
use node_models::{init, Adam, AdamConfig, Gradient, OdeBlock, OdeFunc, Rng, TimeDependence};
use node_solvers::{odeint, Method, SolveOptions};

/// Uniform samples in `[lo, hi)` from a seeded generator (f64): the cases are the same on
/// every run. With Candle's unseeded `Tensor::rand` a CI run failed the ODE function's
/// gradient check once (a convolution weight's gradient 0.3% off its central difference;
/// the draw was not kept, a ReLU kink within a finite-difference step the likely cause).
fn uniform(seed: u64, shape: &[usize], lo: f64, hi: f64, dev: &Device) -> Result<Tensor> {
    Ok(Rng::new(seed).uniform_tensor(shape, lo, hi, DType::F64, dev)?)
}

#[test]
fn the_bases_values() {
    let f = Basis::Fourier {
        harmonics: 2,
        period: 4.0,
    };
    assert_eq!(f.functions(), 5);
    let v = f.eval(1.0); // a quarter period
    let want = [1.0, 0.0, 1.0, -1.0, 0.0];
    assert!(
        v.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-15),
        "{v:?}"
    );
    let l = Basis::Legendre {
        degree: 3,
        span: (0.0, 2.0),
    };
    assert_eq!(l.functions(), 4);
    // At t = 1.5, s = 0.5: P2 = (3s² − 1)/2, P3 = (5s³ − 3s)/2.
    let v = l.eval(1.5);
    let want = [1.0, 0.5, -0.125, -0.4375];
    assert!(
        v.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-15),
        "{v:?}"
    );
    let constant = Basis::Legendre {
        degree: 0,
        span: (0.0, 1.0),
    };
    assert_eq!(constant.eval(0.3), vec![1.0]);
}

fn layer(basis: Basis, dev: &Device) -> Result<(VarMap, GalerkinLinear)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
    let layer = GalerkinLinear::new(3, 2, basis, vb)?;
    Ok((varmap, layer))
}

fn var(varmap: &VarMap, name: &str) -> Var {
    varmap.data().lock().unwrap()[name].clone()
}

/// Only the constant function's coefficients set: a linear layer at every depth. All set:
/// `W(t)` and `b(t)` are the expansions.
fn expansion_case(dev: &Device) -> Result<()> {
    let basis = Basis::Fourier {
        harmonics: 1,
        period: 3.0,
    };
    let (varmap, gal) = layer(basis, dev)?;
    let (w, b) = (var(&varmap, "weight"), var(&varmap, "bias"));
    let w0 = Tensor::new(&[[0.5f64, -1.0, 2.0], [0.1, 0.2, 0.3]], dev)?;
    let b0 = Tensor::new(&[1.0f64, -2.0], dev)?;
    let zeros = Tensor::zeros((2, 3, 2), DType::F64, dev)?;
    w.set(&Tensor::cat(&[w0.unsqueeze(2)?, zeros], 2)?)?;
    b.set(&Tensor::cat(
        &[b0.unsqueeze(1)?, Tensor::zeros((2, 2), DType::F64, dev)?],
        1,
    )?)?;
    let x = Tensor::new(&[[1.0f64, 2.0, 3.0], [-1.0, 0.5, 0.0]], dev)?;
    let plain = x.matmul(&w0.t()?)?.broadcast_add(&b0)?;
    for t in [0.0, 0.7, 2.9] {
        assert!(max_abs(&(gal.forward(t, &x)? - &plain)?)? < 1e-14);
    }
    // Every coefficient set: the layer's output against the expansion built by hand.
    let coeffs = Tensor::arange(0f64, 18.0, dev)?
        .reshape((2, 3, 3))?
        .affine(0.1, -0.8)?;
    let bias = Tensor::new(&[[0.3f64, -0.2, 0.5], [1.0, 0.0, -1.0]], dev)?;
    w.set(&coeffs)?;
    b.set(&bias)?;
    for t in [0.0, 0.7, 2.9] {
        let phi = basis.eval(t);
        let mut wt = Tensor::zeros((2, 3), DType::F64, dev)?;
        let mut bt = Tensor::zeros(2, DType::F64, dev)?;
        for (k, p) in phi.iter().enumerate() {
            wt = (wt + coeffs.narrow(2, k, 1)?.squeeze(2)?.affine(*p, 0.0)?)?;
            bt = (bt + bias.narrow(1, k, 1)?.squeeze(1)?.affine(*p, 0.0)?)?;
        }
        let want = x.matmul(&wt.t()?)?.broadcast_add(&bt)?;
        assert!(max_abs(&(gal.forward(t, &x)? - want)?)? < 1e-13, "t = {t}");
    }
    Ok(())
}

/// The gradients of a solve through a Galerkin field to every coefficient, against central
/// differences.
fn gradients_case(dev: &Device) -> Result<()> {
    let basis = Basis::Legendre {
        degree: 2,
        span: (0.0, 1.0),
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
    let gal = GalerkinLinear::new(2, 2, basis, vb)?;
    init::pytorch_default(&varmap, &mut Rng::new(7))?;
    var(&varmap, "bias").set(&Tensor::new(&[[0.1f64, -0.2, 0.3], [0.0, 0.4, -0.1]], dev)?)?;
    let y0 = Tensor::new(&[[1.0f64, -0.5], [0.3, 0.8]], dev)?;
    let opts = SolveOptions::default().method(Method::Rk4).step_size(0.05);
    let loss = || -> candle_core::Result<Tensor> {
        let field = |t: f64, y: &Tensor| gal.forward(t, y)?.tanh();
        odeint(&field, &y0, &[0.0, 1.0], &opts)?
            .ys
            .get(1)?
            .sqr()?
            .sum_all()
    };
    let checked = check_finite_differences(&varmap, loss, |n| (0..n).collect(), 1e-6, 1e-6)?;
    assert_eq!(checked, 2 * 2 * 3 + 2 * 3);
    Ok(())
}

/// `dy/dt = cos(t) y`: a Galerkin field on a Fourier basis of period 2π learns it from one
/// trajectory; the best constant-rate linear field cannot come close.
fn fits_a_depth_variant_flow_case(dev: &Device) -> Result<()> {
    let ts: Vec<f64> = (0..21).map(|i| 0.3 * i as f64).collect();
    let y0 = Tensor::new(&[[1.0f64], [-0.5]], dev)?;
    let target = Tensor::stack(
        &ts.iter()
            .map(|&t| y0.affine(t.sin().exp(), 0.0))
            .collect::<candle_core::Result<Vec<_>>>()?,
        0,
    )?;
    let opts = SolveOptions::default().method(Method::Rk4).step_size(0.1);
    let fit = |basis: Basis, seed: u64| -> Result<f64> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
        let gal = GalerkinLinear::new(1, 1, basis, vb)?;
        // Seeded (Candle's own initialisation cannot be).
        init::pytorch_default(&varmap, &mut Rng::new(seed))?;
        let mut opt = Adam::new(
            varmap.all_vars(),
            AdamConfig {
                lr: 0.05,
                ..AdamConfig::default()
            },
        )?;
        let mut last = f64::INFINITY;
        for _ in 0..300 {
            let field = |t: f64, y: &Tensor| gal.forward(t, y);
            let ys = odeint(&field, &y0, &ts, &opts)?.ys;
            let loss = (ys - &target)?.sqr()?.mean_all()?;
            opt.backward_step(&loss)?;
            last = loss.to_scalar::<f64>()?;
        }
        Ok(last)
    };
    for seed in 0..3 {
        let galerkin = fit(
            Basis::Fourier {
                harmonics: 1,
                period: 2.0 * std::f64::consts::PI,
            },
            seed,
        )?;
        let constant = fit(
            Basis::Fourier {
                harmonics: 0,
                period: 1.0,
            },
            seed,
        )?;
        // Measured (seeds 0, 1, 2): 7.1e-5, 1.2e-11, 7.5e-15 (cos t is in the basis: only
        // Adam's progress in 300 iterations differs) against 0.57, 0.46, 0.46.
        assert!(
            galerkin < 1e-3,
            "seed {seed}: Galerkin field's loss {galerkin:e}"
        );
        assert!(
            constant > 100.0 * galerkin,
            "seed {seed}: constant {constant:e} vs Galerkin {galerkin:e}"
        );
    }
    Ok(())
}

fn errors_case(dev: &Device) -> Result<()> {
    let vb = |m: &VarMap| VarBuilder::from_varmap(m, DType::F64, dev);
    let m = VarMap::new();
    let err = GalerkinLinear::new(
        2,
        2,
        Basis::Fourier {
            harmonics: 1,
            period: 0.0,
        },
        vb(&m),
    )
    .expect_err("period 0");
    assert!(
        err.to_string().contains("period must be a positive"),
        "{err}"
    );
    let err = GalerkinLinear::new(
        2,
        2,
        Basis::Legendre {
            degree: 2,
            span: (1.0, 1.0),
        },
        vb(&m),
    )
    .expect_err("empty span");
    assert!(
        err.to_string().contains("two different finite times"),
        "{err}"
    );
    let (_, gal) = layer(
        Basis::Fourier {
            harmonics: 1,
            period: 1.0,
        },
        dev,
    )?;
    assert!(gal
        .forward(0.0, &Tensor::zeros((4, 5), DType::F64, dev)?)
        .is_err());
    Ok(())
}

#[test]
fn bases_parse_and_print() {
    let cases = [
        (
            "fourier:2",
            Basis::Fourier {
                harmonics: 2,
                period: 1.0,
            },
        ),
        (
            "fourier:1:6.5",
            Basis::Fourier {
                harmonics: 1,
                period: 6.5,
            },
        ),
        (
            "legendre:3",
            Basis::Legendre {
                degree: 3,
                span: (0.0, 1.0),
            },
        ),
        (
            "legendre:0:-1:2",
            Basis::Legendre {
                degree: 0,
                span: (-1.0, 2.0),
            },
        ),
    ];
    for (spec, basis) in cases {
        assert_eq!(spec.parse::<Basis>().unwrap(), basis, "{spec}");
        assert_eq!(basis.to_string(), spec);
    }
    assert_eq!(
        "Legendre:2".parse::<Basis>().unwrap().to_string(),
        "legendre:2"
    );
    for bad in [
        "",
        "fourier",
        "chebyshev:2",
        "legendre:-1",
        "legendre:2:0",
        "fourier:x",
    ] {
        let e = bad.parse::<Basis>().expect_err(bad);
        assert!(e.contains("expected fourier:M"), "{bad}: {e}");
    }
    let e = "fourier:2:0".parse::<Basis>().expect_err("period 0");
    assert!(e.contains("period must be a positive"), "{e}");
    let e = "legendre:2:1:1".parse::<Basis>().expect_err("empty span");
    assert!(e.contains("two different finite times"), "{e}");
}

/// The convolution at depth `t` is the plain convolution with the expanded kernel and bias
/// (built here by hand from the coefficients), with stride and padding; coefficients on the
/// constant function alone make it the same at every depth.
fn conv_expansion_case(dev: &Device) -> Result<()> {
    let basis: Basis = "legendre:2".parse().map_err(anyhow::Error::msg)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
    let conv = GalerkinConv2d::new(2, 3, 3, 2, 1, basis, vb)?;
    init::pytorch_default(&varmap, &mut Rng::new(3))?;
    let (w, b) = (var(&varmap, "weight"), var(&varmap, "bias"));
    assert_eq!(w.dims(), &[3, 2, 3, 3, 3]);
    b.set(&uniform(1, &[3, 3], -0.5, 0.5, dev)?)?;
    let x = uniform(2, &[2, 2, 7, 7], -1.0, 1.0, dev)?;
    for t in [0.0, 0.35, 1.0] {
        let phi = basis.eval(t);
        let mut kernel = Tensor::zeros((3, 2, 3, 3), DType::F64, dev)?;
        let mut bias = Tensor::zeros(3, DType::F64, dev)?;
        for (k, p) in phi.iter().enumerate() {
            kernel = (kernel + (w.narrow(4, k, 1)?.squeeze(4)? * *p)?)?;
            bias = (bias + (b.narrow(1, k, 1)?.squeeze(1)? * *p)?)?;
        }
        let want = x
            .conv2d(&kernel, 1, 2, 1, 1)?
            .broadcast_add(&bias.reshape((1, 3, 1, 1))?)?;
        let got = conv.forward(t, &x)?;
        assert_eq!(got.dims(), &[2, 3, 4, 4]);
        assert!(max_abs(&(got - want)?)? < 1e-13, "t = {t}");
    }
    // Only the constant Legendre polynomial's coefficients: no dependence on t.
    w.set(&w.as_tensor().narrow(4, 0, 1)?.pad_with_zeros(4, 0, 2)?)?;
    b.set(&b.as_tensor().narrow(1, 0, 1)?.pad_with_zeros(1, 0, 2)?)?;
    let at0 = conv.forward(0.0, &x)?;
    for t in [0.2, 0.9] {
        assert!(max_abs(&(conv.forward(t, &x)? - &at0)?)? < 1e-14);
    }
    let e = conv
        .forward(0.0, &Tensor::zeros((1, 3, 7, 7), DType::F64, dev)?)
        .expect_err("3 channels into a 2-channel convolution");
    assert!(!e.to_string().is_empty());
    let e = GalerkinConv2d::new(2, 3, 0, 1, 1, basis, vb_of(&VarMap::new(), dev))
        .expect_err("kernel 0");
    assert!(e.to_string().contains("must be positive"), "{e}");
    Ok(())
}

fn vb_of(varmap: &VarMap, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_varmap(varmap, DType::F64, dev)
}

/// The ODE-Net field on Galerkin convolutions (4 channels, Fourier basis), solved by 10
/// classic RK4 steps with backprop: its gradients to the norms' parameters and the
/// convolutions' coefficients against central differences (the convolutions' biases get
/// none: the group norm after each removes a per-channel constant).
fn odefunc_gradients_case(dev: &Device) -> Result<()> {
    let basis: Basis = "fourier:1".parse().map_err(anyhow::Error::msg)?;
    let varmap = VarMap::new();
    let func = OdeFunc::with_time(4, TimeDependence::Galerkin(basis), vb_of(&varmap, dev))?;
    assert_eq!(func.time_dependence(), TimeDependence::Galerkin(basis));
    init::pytorch_default(&varmap, &mut Rng::new(11))?;
    for name in ["conv1.bias", "conv2.bias"] {
        let b = var(&varmap, name);
        b.set(&uniform(3, b.dims(), -0.1, 0.1, dev)?)?;
    }
    let opts = SolveOptions::default().method(Method::Rk4).fixed_steps(10);
    let block = OdeBlock::new(func, 1.0, opts, Gradient::Backprop);
    let x = uniform(4, &[2, 4, 5, 5], -1.0, 1.0, dev)?;
    let target = uniform(5, &[2, 4, 5, 5], -1.0, 1.0, dev)?;
    let loss = || -> candle_core::Result<Tensor> {
        let (y, _) = block.forward_with_stats(&x)?;
        (y - &target)?.sqr()?.sum_all()
    };
    // Every third entry of each variable (the first always among them).
    let checked =
        check_finite_differences(&varmap, loss, |n| (0..n).step_by(3).collect(), 1e-6, 1e-6)?;
    assert_eq!(checked, 2 * (4 + 144) + 6 * 2);
    Ok(())
}

/// A smooth field on a Galerkin convolution, `tanh(conv(y, W(t)) + b(t))` on a Legendre
/// basis, differentiated by the adjoint: its gradients to every coefficient against central
/// differences of tightly solved losses.
fn conv_adjoint_case(dev: &Device) -> Result<()> {
    let basis: Basis = "legendre:2".parse().map_err(anyhow::Error::msg)?;
    let varmap = VarMap::new();
    let conv = GalerkinConv2d::new(2, 2, 3, 1, 1, basis, vb_of(&varmap, dev))?;
    init::pytorch_default(&varmap, &mut Rng::new(5))?;
    let b = var(&varmap, "bias");
    b.set(&uniform(6, b.dims(), -0.2, 0.2, dev)?)?;
    let field = node_adjoint::with_params(
        move |t: f64, y: &Tensor| conv.forward(t, y)?.tanh(),
        node_adjoint::sorted_vars(&varmap),
    );
    let opts = SolveOptions::default()
        .method(Method::Dopri5)
        .tolerances(1e-10, 1e-10);
    let block = OdeBlock::new(
        field,
        1.0,
        opts,
        Gradient::Adjoint(AdjointOptions::default()),
    );
    let x = uniform(7, &[2, 2, 4, 4], -1.0, 1.0, dev)?;
    let loss = || -> candle_core::Result<Tensor> {
        let (y, _) = block.forward_with_stats(&x)?;
        y.sqr()?.sum_all()
    };
    let checked = check_finite_differences(&varmap, loss, |n| (0..n).collect(), 1e-5, 1e-6)?;
    assert_eq!(checked, 2 * 2 * 9 * 3 + 2 * 3);
    Ok(())
}

candle_core::test_device!(
    expansion_case,
    expansion_cpu,
    expansion_cuda,
    expansion_metal
);
candle_core::test_device!(
    gradients_case,
    gradients_cpu,
    gradients_cuda,
    gradients_metal
);
candle_core::test_device!(
    fits_a_depth_variant_flow_case,
    fits_a_depth_variant_flow_cpu,
    fits_a_depth_variant_flow_cuda,
    fits_a_depth_variant_flow_metal
);
candle_core::test_device!(errors_case, errors_cpu, errors_cuda, errors_metal);
candle_core::test_device!(
    conv_expansion_case,
    conv_expansion_cpu,
    conv_expansion_cuda,
    conv_expansion_metal
);
candle_core::test_device!(
    odefunc_gradients_case,
    odefunc_gradients_cpu,
    odefunc_gradients_cuda,
    odefunc_gradients_metal
);
candle_core::test_device!(
    conv_adjoint_case,
    conv_adjoint_cpu,
    conv_adjoint_cuda,
    conv_adjoint_metal
);

//! The neural DDE: shapes, its lagged inputs, gradients through the solve, the errors.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use node_adjoint::DelayHistory;
use node_models::{init, NeuralDde, Rng};
use node_solvers::delay::{DelayField, History};
use node_solvers::problems::MackeyGlass;
use node_solvers::SolveOptions;

fn model(dev: &Device, delays: &[f64]) -> Result<(VarMap, NeuralDde)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, dev);
    let m = NeuralDde::new(2, delays, 8, 2, vb)?;
    init::pytorch_default(&varmap, &mut Rng::new(640))?;
    Ok((varmap, m))
}

fn shapes_and_gradients(dev: &Device) -> Result<()> {
    let (_, m) = model(dev, &[0.5, 1.0])?;
    assert_eq!(m.delays(), [0.5, 1.0]);
    let y = Tensor::new(&[[0.1f64, 0.2], [0.3, -0.4], [0.0, 1.0]], dev)?;
    // The lagged states are inputs: changing one changes the field.
    let a = m.eval(0.0, &y, &[y.clone(), y.clone()])?;
    let b = m.eval(0.0, &y, &[y.clone(), y.affine(2.0, 0.0)?])?;
    assert_eq!(a.dims(), [3, 2]);
    let moved = (a - b)?.abs()?.sum_all()?.to_scalar::<f64>()?;
    assert!(moved > 0.0);
    // A batch solve with a history function; every weight gets a gradient.
    let past = |t: f64| y.affine(1.0 + t, 0.0);
    let sol = m.solve(
        &y,
        History::Function(&past),
        &[0.0, 0.7, 2.0],
        &SolveOptions::default(),
    )?;
    assert_eq!(sol.ys.dims(), [3, 3, 2]);
    let grads = sol.ys.sqr()?.sum_all()?.backward()?;
    for v in m.vars()? {
        let g = grads.get(v.as_tensor()).expect("a gradient");
        assert!(g.abs()?.sum_all()?.to_scalar::<f64>()? > 0.0);
    }
    Ok(())
}

fn adjoint_is_backprop(dev: &Device) -> Result<()> {
    // The same weights' gradients by the adjoint and by backprop through the solve.
    let (_, m) = model(dev, &[0.5, 1.0])?;
    let y0 = Tensor::new(&[[0.1f64, 0.2], [0.3, -0.4]], dev)?;
    let ts = [0.0, 0.9, 2.0];
    let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
    let loss = |ys: &Tensor| ys.sqr()?.sum_all();
    let sol = m.solve(&y0, History::Constant, &ts, &opts)?;
    let want = loss(&sol.ys)?.backward()?;
    let sol = m.solve_adjoint(&y0, DelayHistory::Constant, &ts, &opts, &opts)?;
    let got = loss(&sol.ys)?.backward()?;
    for v in m.vars()? {
        let (a, b) = (
            got.get(v.as_tensor()).unwrap(),
            want.get(v.as_tensor()).unwrap(),
        );
        let scale = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-3);
        let err = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()? / scale;
        assert!(err < 1e-6, "{:?}: {err:e}", v.dims());
    }
    let bad = Tensor::zeros((2, 3), DType::F64, dev)?;
    assert!(m
        .solve_adjoint(&bad, DelayHistory::Constant, &ts, &opts, &opts)
        .is_err());
    Ok(())
}

fn errors(dev: &Device) -> Result<()> {
    let vb = || VarBuilder::from_varmap(&VarMap::new(), DType::F64, dev);
    for delays in [&[][..], &[0.0], &[1.0, f64::NAN]] {
        assert!(NeuralDde::new(2, delays, 8, 2, vb()).is_err());
    }
    assert!(NeuralDde::new(0, &[1.0], 8, 2, vb()).is_err());
    assert!(NeuralDde::new(2, &[1.0], 8, 0, vb()).is_err());
    let (_, m) = model(dev, &[1.0])?;
    let y = Tensor::zeros((4, 3), DType::F64, dev)?;
    let e = m.solve(&y, History::Constant, &[0.0, 1.0], &SolveOptions::default());
    assert!(e.unwrap_err().to_string().contains("2 components"));
    let y = Tensor::zeros((4, 2), DType::F64, dev)?;
    assert!(m.eval(0.0, &y, &[]).is_err());
    Ok(())
}

#[test]
fn mackey_glass_field() -> Result<()> {
    let mg = MackeyGlass::default();
    let x = Tensor::new(&[0.5f64, 1.2], &Device::Cpu)?;
    let lag = Tensor::new(&[0.9f64, 1.1], &Device::Cpu)?;
    let got = mg.rhs(&x, &lag)?.to_vec1::<f64>()?;
    for (i, (x, l)) in [(0.5f64, 0.9f64), (1.2, 1.1)].into_iter().enumerate() {
        let want = 2.0 * l / (1.0 + l.powi(10)) - x;
        assert!((got[i] - want).abs() < 1e-14, "{} vs {want}", got[i]);
    }
    Ok(())
}

candle_core::test_device!(shapes_and_gradients, shapes_cpu, shapes_cuda, shapes_metal);
candle_core::test_device!(errors, errors_cpu, errors_cuda, errors_metal);
candle_core::test_device!(
    adjoint_is_backprop,
    adjoint_cpu,
    adjoint_cuda,
    adjoint_metal
);

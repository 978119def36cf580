//! The delay equations' adjoint (`ddeint_adjoint`) against backprop through `ddeint` and
//! against central differences: parameters, the initial state through the solution and the
//! constant history, several delays and output times, a batch, a history function.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{ddeint_adjoint, with_delay_params, DelayHistory};
use node_solvers::delay::{ddeint, History};
use node_solvers::SolveOptions;
use std::sync::Arc;

fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.flatten_all()?.to_vec1::<f64>()?;
    let b = b.flatten_all()?.to_vec1::<f64>()?;
    let scale = b.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f64::max))
}

/// `y' = tanh(W [y, y(t − 0.6), y(t − 1.1)] + b)` on `[B, 2]` states, a loss of three outputs.
struct Case {
    w: Var,
    b: Var,
    y0: Var,
}

impl Case {
    fn new(dev: &Device) -> Result<Self> {
        let w = Tensor::new(
            &[
                [-0.8f64, 0.3, 0.5, -0.2, 0.1, 0.4],
                [-0.1, -0.6, -0.3, 0.7, -0.5, 0.2],
            ],
            dev,
        )?;
        Ok(Self {
            w: Var::from_tensor(&w.t()?.contiguous()?)?,
            b: Var::new(&[0.1f64, -0.2], dev)?,
            y0: Var::new(&[[0.5f64, -0.3], [1.0, 0.2]], dev)?,
        })
    }

    fn field(&self) -> impl Fn(f64, &Tensor, &[Tensor]) -> candle_core::Result<Tensor> + Clone {
        let (w, b) = (self.w.as_tensor().clone(), self.b.as_tensor().clone());
        move |_t, y, lagged| {
            let x = Tensor::cat(&[y, &lagged[0], &lagged[1]], 1)?;
            x.matmul(&w)?.broadcast_add(&b)?.tanh()
        }
    }

    fn loss(ys: &Tensor) -> candle_core::Result<Tensor> {
        // Outputs at 0.8, 1.9 and 3: each weighted differently.
        let weights = Tensor::new(&[0.0f64, 1.0, -0.5, 2.0], ys.device())?;
        ys.sqr()?.sum((1, 2))?.mul(&weights)?.sum_all()
    }
}

const DELAYS: [f64; 2] = [0.6, 1.1];
const TS: [f64; 4] = [0.0, 0.8, 1.9, 3.0];

fn matches_backprop(dev: &Device) -> Result<()> {
    let case = Case::new(dev)?;
    let tight = SolveOptions::default().tolerances(1e-10, 1e-10);
    let f = case.field();
    // Backprop through the solve.
    let (sol, _) = ddeint(
        &f,
        &DELAYS,
        History::Constant,
        case.y0.as_tensor(),
        &TS,
        &tight,
    )?;
    let grads = Case::loss(&sol.ys)?.backward()?;
    let want: Vec<Tensor> = [&case.w, &case.b, &case.y0]
        .iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
        .collect();
    // The adjoint.
    let pf = with_delay_params(f, vec![case.w.clone(), case.b.clone()]);
    let sol = ddeint_adjoint(
        &pf,
        &DELAYS,
        DelayHistory::Constant,
        case.y0.as_tensor(),
        &TS,
        &tight,
        &tight,
    )?;
    let grads = Case::loss(&sol.ys)?.backward()?;
    for (v, want) in [&case.w, &case.b, &case.y0].iter().zip(&want) {
        let got = grads.get(v.as_tensor()).unwrap();
        let err = max_rel(got, want)?;
        assert!(err < 1e-6, "{:?}: relative error {err:e}", v.dims());
    }
    assert!(sol.stats.backward().nfe > 0);
    Ok(())
}

fn matches_differences(dev: &Device) -> Result<()> {
    // One scalar delay equation `y' = a y(t − 1) − y`, its history a function (data, no
    // gradient), `d y(2.5)² / da` against central differences.
    let a = Var::new(&[0.7f64], dev)?;
    let y0 = Tensor::new(&[0.4f64], dev)?;
    let dev2 = dev.clone();
    let phi = Arc::new(move |t: f64| Tensor::new(&[(2.0 * t).cos()], &dev2));
    let field = |a: Tensor| {
        move |_t: f64, y: &Tensor, lagged: &[Tensor]| -> candle_core::Result<Tensor> {
            lagged[0].broadcast_mul(&a)? - y
        }
    };
    let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
    let pf = with_delay_params(field(a.as_tensor().clone()), vec![a.clone()]);
    let sol = ddeint_adjoint(
        &pf,
        &[1.0],
        DelayHistory::Function(phi.clone()),
        &y0,
        &[0.0, 2.5],
        &opts,
        &opts,
    )?;
    let grads = sol.ys.get(1)?.sqr()?.sum_all()?.backward()?;
    let got = grads.get(a.as_tensor()).unwrap().to_vec1::<f64>()?[0];
    let at = |v: f64| -> Result<f64> {
        let f = field(Tensor::new(&[v], dev)?);
        let p = |t: f64| phi(t);
        let (s, _) = ddeint(&f, &[1.0], History::Function(&p), &y0, &[0.0, 2.5], &opts)?;
        Ok(s.last()?.sqr()?.sum_all()?.to_scalar::<f64>()?)
    };
    let eps = 1e-5;
    let fd = (at(0.7 + eps)? - at(0.7 - eps)?) / (2.0 * eps);
    assert!((got - fd).abs() < 1e-6 * fd.abs().max(1.0), "{got} vs {fd}");
    Ok(())
}

fn errors(dev: &Device) -> Result<()> {
    let case = Case::new(dev)?;
    let pf = with_delay_params(case.field(), vec![case.w.clone()]);
    let y32 = case.y0.as_tensor().to_dtype(DType::F32)?;
    let opts = SolveOptions::default();
    let e = ddeint_adjoint(
        &pf,
        &DELAYS,
        DelayHistory::Constant,
        &y32,
        &TS,
        &opts,
        &opts,
    );
    assert!(e.unwrap_err().to_string().contains("dtype"));
    let bad = SolveOptions::default().tolerances(-1.0, 1.0);
    let y0 = case.y0.as_tensor();
    assert!(ddeint_adjoint(&pf, &DELAYS, DelayHistory::Constant, y0, &TS, &opts, &bad).is_err());
    assert!(ddeint_adjoint(&pf, &[], DelayHistory::Constant, y0, &TS, &opts, &opts).is_err());
    Ok(())
}

candle_core::test_device!(
    matches_backprop,
    backprop_cpu,
    backprop_cuda,
    backprop_metal
);
candle_core::test_device!(
    matches_differences,
    differences_cpu,
    differences_cuda,
    differences_metal
);
candle_core::test_device!(errors, errors_cpu, errors_cuda, errors_metal);

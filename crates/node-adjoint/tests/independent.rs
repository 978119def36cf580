//! The adjoint of a batch of independent problems (`odeint_independent_adjoint`): gradients to
//! `y0` and the parameters against backprop through `odeint_independent`, with samples of
//! their own spans (one backwards) and reverse steps rejected for some samples and not others;
//! without parameters; the errors.

#[path = "common/time_mlp.rs"]
mod time_mlp;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{odeint_independent_adjoint, with_batch_params};
use node_solvers::{odeint_independent, Method, SolveOptions, SolverError};
use time_mlp::{max_rel, seeded_normal};

/// `f(t, y) = tanh(y W1ᵀ + b1 + t c) W2ᵀ + b2 − λ y`, `t` of shape `[B]`, `λ` a fixed rate per
/// sample (`[B, 1]`, not trained) from 0.2 to 40: samples of very different stiffness.
#[derive(Clone)]
struct Field {
    w1: Var,
    b1: Var,
    c: Var,
    w2: Var,
    b2: Var,
    lam: Tensor,
}

impl Field {
    fn new(dim: usize, hidden: usize, lam: &[f64], dev: &Device) -> Result<Self> {
        let v = |shape: &[usize], seed: u64, s: f64| -> Result<Var> {
            Ok(Var::from_tensor(
                &(seeded_normal(shape, seed, DType::F64, dev)? * s)?,
            )?)
        };
        Ok(Self {
            w1: v(&[hidden, dim], 701, 0.8)?,
            b1: v(&[hidden], 702, 0.3)?,
            c: v(&[hidden], 703, 0.5)?,
            w2: v(&[dim, hidden], 704, 0.5)?,
            b2: v(&[dim], 705, 0.2)?,
            lam: Tensor::from_vec(lam.to_vec(), (lam.len(), 1), dev)?,
        })
    }

    fn params(&self) -> Vec<Var> {
        vec![
            self.w1.clone(),
            self.b1.clone(),
            self.c.clone(),
            self.w2.clone(),
            self.b2.clone(),
        ]
    }

    fn eval(&self, t: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let b = y.dim(0)?;
        let h = y
            .matmul(&self.w1.t()?)?
            .broadcast_add(&self.b1)?
            .broadcast_add(&t.reshape((b, 1))?.broadcast_mul(&self.c.unsqueeze(0)?)?)?
            .tanh()?;
        h.matmul(&self.w2.t()?)?
            .broadcast_add(&self.b2)?
            .sub(&y.broadcast_mul(&self.lam)?)
    }
}

fn times() -> Vec<Vec<f64>> {
    vec![
        vec![0.0, 0.4, 1.0, 1.5],
        vec![1.0, 0.7, 0.2, -0.5],
        vec![-1.0, -0.9, -0.2, 0.0],
        vec![2.0, 2.3, 2.4, 3.0],
        vec![0.5, 0.6, 0.7, 0.8],
    ]
}

/// `Σ w ⊙ ys` and its gradients to `y0` and to the parameters (flattened in order).
fn gradients(ys: &Tensor, w: &Tensor, y0: &Var, params: &[Var]) -> Result<(Tensor, Vec<Tensor>)> {
    let grads = (ys * w)?.sum_all()?.backward()?;
    let gy0 = grads.get(y0.as_tensor()).expect("y0's gradient").clone();
    let gp = params
        .iter()
        .map(|p| {
            Ok(grads
                .get(p.as_tensor())
                .expect("a parameter's gradient")
                .clone())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((gy0, gp))
}

fn matches_backprop(dev: &Device) -> Result<()> {
    let lams = [0.2, 1.0, 5.0, 40.0, 0.5];
    let field = Field::new(3, 16, &lams, dev)?;
    let y0 = Var::from_tensor(&seeded_normal(&[5, 3], 711, DType::F64, dev)?)?;
    let w = seeded_normal(&[4, 5, 3], 712, DType::F64, dev)?;
    let ts = times();
    // Measured: 4e-10 and 2e-4 (without the rejected samples taken back out, 0.19 at 1e-10;
    // without the steps' first stages, 0.095).
    for (rtol, tol) in [(1e-10, 1e-8), (1e-5, 2e-3)] {
        let opts = SolveOptions::default()
            .method(Method::Tsit5)
            .tolerances(rtol, rtol);
        let f = field.clone();
        let closure = move |t: &Tensor, y: &Tensor| f.eval(t, y);
        let direct = odeint_independent(&closure, y0.as_tensor(), &ts, &opts)?;
        let (want_y0, want_p) = gradients(&direct.ys, &w, &y0, &field.params())?;
        let g = with_batch_params(closure, field.params());
        let sol = odeint_independent_adjoint(&g, y0.as_tensor(), &ts, &opts, &opts)?;
        // The same forward values.
        assert_eq!(max_rel(&sol.ys, &direct.ys)?, 0.0);
        let (got_y0, got_p) = gradients(&sol.ys, &w, &y0, &field.params())?;
        let back = sol.stats.backward();
        assert!(back.accepted_steps > 0);
        let e = max_rel(&got_y0, &want_y0)?;
        assert!(e < tol, "rtol {rtol:e}: y0's gradient {e:e} off backprop's");
        for (i, (a, b)) in got_p.iter().zip(&want_p).enumerate() {
            let e = max_rel(a, b)?;
            assert!(
                e < tol,
                "rtol {rtol:e}: parameter {i}'s gradient {e:e} off backprop's"
            );
        }
        // Some samples' reverse steps are rejected while others' are not, and the parameter
        // integral takes the rejected ones back out.
        assert!(back.rejected_steps > 0, "{back:?}");
    }
    Ok(())
}

candle_core::test_device!(
    matches_backprop,
    matches_backprop_cpu,
    matches_backprop_cuda,
    matches_backprop_metal
);

/// No parameters: only `y0`'s gradient, the field a plain closure's.
#[test]
fn without_parameters() -> Result<()> {
    let dev = &Device::Cpu;
    let lam = Tensor::new(&[[1.0f64], [3.0]], dev)?;
    let f = move |_t: &Tensor, y: &Tensor| y.broadcast_mul(&lam)?.neg();
    let g = with_batch_params(f.clone(), vec![]);
    let y0 = Var::from_tensor(&Tensor::new(&[[1.0f64, 2.0], [0.5, -1.0]], dev)?)?;
    let ts = vec![vec![0.0, 1.0], vec![0.0, 0.5]];
    let opts = SolveOptions::default().tolerances(1e-10, 1e-10);
    let sol = odeint_independent_adjoint(&g, y0.as_tensor(), &ts, &opts, &opts)?;
    let grads = sol.ys.get(1)?.sum_all()?.backward()?;
    // d y(t)/d y0 = e^(−λ t): e^−1 and e^−1.5.
    let got = grads
        .get(y0.as_tensor())
        .expect("y0's gradient")
        .to_vec2::<f64>()?;
    for (row, want) in got.iter().zip([(-1.0f64).exp(), (-1.5f64).exp()]) {
        for v in row {
            assert!((v - want).abs() < 1e-8, "{v} against {want}");
        }
    }
    Ok(())
}

#[test]
fn errors() -> Result<()> {
    let dev = &Device::Cpu;
    let field = Field::new(3, 4, &[1.0, 1.0, 1.0, 1.0, 1.0], dev)?;
    let f = field.clone();
    let g = with_batch_params(move |t: &Tensor, y: &Tensor| f.eval(t, y), field.params());
    let y0 = seeded_normal(&[5, 3], 713, DType::F64, dev)?;
    let opts = SolveOptions::default();
    let find = |e: candle_core::Error| SolverError::find(&e).cloned();
    // The reverse solve needs an explicit adaptive method, refused before any backward pass.
    for bad in [
        opts.clone().method(Method::Adams),
        opts.clone().method(Method::Kvaerno5),
        opts.clone().method(Method::Rk4).fixed_steps(10),
    ] {
        let e = odeint_independent_adjoint(&g, &y0, &times(), &opts, &bad).expect_err("refused");
        assert!(
            matches!(find(e), Some(SolverError::InvalidOptions(ref m)) if m.contains("reverse solve")),
            "{bad:?}"
        );
    }
    // Parameters of another dtype than the state.
    let y32 = y0.to_dtype(DType::F32)?;
    let e = odeint_independent_adjoint(&g, &y32, &times(), &opts, &opts).expect_err("dtype");
    assert!(matches!(find(e), Some(SolverError::InvalidOptions(m)) if m.contains("dtype")));
    // The forward solve's own errors.
    let e = odeint_independent_adjoint(&g, &y0, &times()[..2], &opts, &opts).expect_err("rows");
    assert!(matches!(find(e), Some(SolverError::InvalidTimes(_))));
    Ok(())
}

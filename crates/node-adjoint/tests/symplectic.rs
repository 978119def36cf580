//! `odeint_symplectic_adjoint`: the gradients of backprop through the symplectic solve, from
//! walking its steps back, for every method, forwards and backwards in time; against the
//! closed form and central differences; over long pendulum runs; the backward pass's
//! counts; tensor parameters; f32; the errors.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{
    odeint_symplectic_adjoint, with_separable_params, ParamSeparableField, TensorParam,
};
use node_solvers::{
    odeint_symplectic, SeparableField, SolverError, SymplecticMethod, SymplecticOptions,
};
use time_mlp::{max_rel, scalar, seeded_normal};

#[path = "common/time_mlp.rs"]
mod time_mlp;

/// `v(p) = p ⊙ m + 0.3 tanh(p W1ᵀ) W2ᵀ`, `a(t, q) = −tanh(q Kᵀ + b + t c) K`: parameters in
/// both halves, of several shapes, and a time-dependent force.
#[derive(Clone)]
struct Field {
    m: Var,
    w1: Var,
    w2: Var,
    k: Var,
    b: Var,
    c: Var,
}

impl Field {
    fn new(dim: usize, hidden: usize, dtype: DType, dev: &Device) -> Result<Self> {
        let var = |shape: &[usize], seed: u64, scale: f64| -> Result<Var> {
            let t = seeded_normal(shape, seed, DType::F64, dev)?.affine(scale, 0.0)?;
            Ok(Var::from_tensor(&t.to_dtype(dtype)?)?)
        };
        Ok(Self {
            m: Var::from_tensor(&var(&[dim], 1, 0.1)?.as_tensor().affine(1.0, 1.0)?)?,
            w1: var(&[hidden, dim], 2, 0.5)?,
            w2: var(&[dim, hidden], 3, 0.5)?,
            k: var(&[hidden, dim], 4, 0.7)?,
            b: var(&[hidden], 5, 0.3)?,
            c: var(&[hidden], 6, 0.3)?,
        })
    }
}

impl SeparableField for Field {
    fn velocity(&self, _t: f64, p: &Tensor) -> candle_core::Result<Tensor> {
        let inner = p.matmul(&self.w1.t()?)?.tanh()?.matmul(&self.w2.t()?)?;
        p.broadcast_mul(&self.m)? + inner.affine(0.3, 0.0)?
    }
    fn force(&self, t: f64, q: &Tensor) -> candle_core::Result<Tensor> {
        let shift = (self.b.as_tensor() + self.c.affine(t, 0.0)?)?;
        q.matmul(&self.k.t()?)?
            .broadcast_add(&shift)?
            .tanh()?
            .matmul(&self.k)?
            .neg()
    }
}

impl ParamSeparableField for Field {
    fn params(&self) -> Vec<Var> {
        vec![
            self.m.clone(),
            self.w1.clone(),
            self.w2.clone(),
            self.k.clone(),
            self.b.clone(),
            self.c.clone(),
        ]
    }
}

/// `[dL/dq0, dL/dp0, dL/dθ...]` of `L = Σ wq ⊙ qs + Σ wp ⊙ ps`.
fn grads_of(
    qs: &Tensor,
    ps: &Tensor,
    w: (&Tensor, &Tensor),
    q0: &Var,
    p0: &Var,
    params: &[Var],
) -> Result<Vec<Tensor>> {
    let loss = ((qs * w.0)?.sum_all()? + (ps * w.1)?.sum_all()?)?;
    let g = loss.backward()?;
    let mut out = vec![];
    for v in [q0, p0].into_iter().chain(params) {
        out.push(g.get(v).expect("every input has a gradient").clone());
    }
    Ok(out)
}

/// The walked-back gradients and backprop's through `odeint_symplectic`, of the same loss.
fn both(
    field: &Field,
    q0: &Var,
    p0: &Var,
    ts: &[f64],
    opts: &SymplecticOptions,
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let shape: Vec<usize> = [ts.len()]
        .into_iter()
        .chain(q0.dims().iter().copied())
        .collect();
    let dtype = q0.dtype();
    let wq = seeded_normal(shape.as_slice(), 7, dtype, q0.device())?;
    let wp = seeded_normal(shape, 8, dtype, q0.device())?;
    let params = field.params();
    let sol = odeint_symplectic_adjoint(field, q0, p0, ts, opts)?;
    let walked = grads_of(&sol.qs, &sol.ps, (&wq, &wp), q0, p0, &params)?;
    let direct = odeint_symplectic(field, q0, p0, ts, opts)?;
    // The same forward values.
    assert!(max_rel(&sol.qs, &direct.qs)? == 0.0 && max_rel(&sol.ps, &direct.ps)? == 0.0);
    let backprop = grads_of(&direct.qs, &direct.ps, (&wq, &wp), q0, p0, &params)?;
    Ok((walked, backprop))
}

fn state(dim: usize, seed: u64, dtype: DType, dev: &Device) -> Result<Var> {
    Ok(Var::from_tensor(&seeded_normal(
        &[4, dim],
        seed,
        dtype,
        dev,
    )?)?) // a batch of 4
}

fn matches_backprop(dev: &Device) -> Result<()> {
    let field = Field::new(3, 8, DType::F64, dev)?;
    let (q0, p0) = (
        state(3, 11, DType::F64, dev)?,
        state(3, 12, DType::F64, dev)?,
    );
    let forward = [0.0, 0.3, 0.7, 1.0, 2.5];
    let backward = [2.5, 1.2, 0.0];
    let mut report = vec![];
    let mut worst = 0f64;
    for m in SymplecticMethod::ALL {
        for ts in [&forward[..], &backward[..]] {
            let opts = SymplecticOptions::new(0.05).method(m);
            let (walked, backprop) = both(&field, &q0, &p0, ts, &opts)?;
            for (i, (x, y)) in walked.iter().zip(&backprop).enumerate() {
                let r = max_rel(x, y)?;
                worst = worst.max(r);
                report.push(format!("{m} {ts:?} gradient {i}: {r:e}"));
            }
        }
    }
    // Backprop's gradient of the same solve, to round-off.
    assert!(worst < 1e-11, "{}", report.join("\n"));
    Ok(())
}

/// A spring `q'' = −k q`: `q(T) = q0 cos ωT + p0 sin ωT / ω` with `ω = √k`, so
/// `∂q(T)/∂q0 = cos ωT`, `∂q(T)/∂p0 = sin ωT / ω`, and
/// `∂q(T)/∂k = (−q0 T sin ωT + p0 (T cos ωT / ω − sin ωT / ω²)) / (2ω)`.
fn spring_closed_form(dev: &Device) -> Result<()> {
    let (k, q0v, p0v, t1) = (2.0f64, 0.6, -0.4, 3.0);
    let kv = Var::new(&[k], dev)?;
    let kt = kv.as_tensor().clone();
    let spring = with_separable_params(
        |_t: f64, p: &Tensor| Ok(p.clone()),
        move |_t: f64, q: &Tensor| q.mul(&kt)?.neg(),
        vec![kv.clone()],
    );
    let (q0, p0) = (Var::new(&[q0v], dev)?, Var::new(&[p0v], dev)?);
    let opts = SymplecticOptions::new(0.01).method(SymplecticMethod::Yoshida6);
    let sol = odeint_symplectic_adjoint(&spring, &q0, &p0, &[0.0, t1], &opts)?;
    let g = sol.qs.get(1)?.sum_all()?.backward()?;
    let w = k.sqrt();
    let (s, c) = ((w * t1).sin(), (w * t1).cos());
    let want = [
        c,
        s / w,
        (-q0v * t1 * s + p0v * (t1 * c / w - s / (w * w))) / (2.0 * w),
    ];
    for (v, want) in [&q0, &p0, &kv].into_iter().zip(want) {
        let got = g.get(v).unwrap().to_vec1::<f64>()?[0];
        assert!((got - want).abs() < 1e-10, "{got} against {want}");
    }
    Ok(())
}

/// The pendulum over t 0 → 200 (about 30 swings, 4000 leapfrog steps) with one output: the
/// walk back reconstructs the whole path, and the gradient still matches backprop's; and
/// both match central differences of the solve.
fn long_pendulum(dev: &Device) -> Result<()> {
    let g = Var::new(&[1.0f64], dev)?;
    let gt = g.as_tensor().clone();
    let pendulum = with_separable_params(
        |_t: f64, p: &Tensor| Ok(p.clone()),
        move |_t: f64, q: &Tensor| q.sin()?.mul(&gt)?.neg(),
        vec![g.clone()],
    );
    let (q0, p0) = (Var::new(&[2.0f64], dev)?, Var::new(&[0.0f64], dev)?);
    let ts = [0.0, 200.0];
    let opts = SymplecticOptions::new(0.05);
    let sol = odeint_symplectic_adjoint(&pendulum, &q0, &p0, &ts, &opts)?;
    // The end state: L = q(T) + p(T), whose gradients grow with T (the period depends on
    // the amplitude).
    let loss =
        |qs: &Tensor, ps: &Tensor| -> Result<Tensor> { Ok((qs.get(1)? + ps.get(1)?)?.sum_all()?) };
    let walked = loss(&sol.qs, &sol.ps)?.backward()?;
    let direct = odeint_symplectic(&pendulum, &q0, &p0, &ts, &opts)?;
    let backprop = loss(&direct.qs, &direct.ps)?.backward()?;
    // The gradients are 39, 0.64 and −58 here; 6e-14, 5e-11 and 5e-14 apart, relative.
    for v in [&q0, &p0, &g] {
        let (x, y) = (walked.get(v).unwrap(), backprop.get(v).unwrap());
        let r = max_rel(x, y)?;
        assert!(r < 1e-9, "relative difference {r:e}");
    }
    // dL/dq0 by central differences of the solve.
    let eps = 1e-6;
    let at = |q: f64| -> Result<f64> {
        let q0 = Tensor::new(&[q], dev)?;
        let s = odeint_symplectic(&pendulum, &q0, &p0, &ts, &opts)?;
        scalar(&loss(&s.qs, &s.ps)?)
    };
    let fd = (at(2.0 + eps)? - at(2.0 - eps)?) / (2.0 * eps);
    let got = walked.get(&q0).unwrap().to_vec1::<f64>()?[0];
    assert!(
        (got - fd).abs() < 1e-6 * fd.abs().max(1.0),
        "{got} against {fd}"
    );
    Ok(())
}

/// The walk back evaluates each function as often as the forward solve: for leapfrog,
/// `n + 1` forces and `n` velocities (the force is shared across steps); three kicks and
/// drifts a step for Yoshida 4, one each for the semi-implicit Euler.
fn counts(dev: &Device) -> Result<()> {
    let field = Field::new(2, 4, DType::F64, dev)?;
    let (q0, p0) = (
        state(2, 21, DType::F64, dev)?,
        state(2, 22, DType::F64, dev)?,
    );
    let ts = [0.0, 0.5, 1.0];
    for (m, forces, velocities) in [
        (SymplecticMethod::SemiImplicitEuler, 20, 20),
        (SymplecticMethod::Leapfrog, 21, 20),
        (SymplecticMethod::Yoshida4, 61, 60),
    ] {
        let opts = SymplecticOptions::new(0.05).method(m);
        let sol = odeint_symplectic_adjoint(&field, &q0, &p0, &ts, &opts)?;
        let f = sol.stats.forward();
        assert_eq!(
            (f.steps, f.force_evals, f.velocity_evals),
            (20, forces, velocities)
        );
        assert_eq!(sol.stats.backward().steps, 0);
        (sol.qs.sum_all()? + sol.ps.sum_all()?)?.backward()?;
        assert_eq!(sol.stats.backward(), f, "{m}");
    }
    Ok(())
}

/// A field conditioned on a tensor of the caller's graph: the gradient reaches its source's
/// own inputs. `a(q) = −s q` with `s = u²`: the walked-back `dL/ds`, times `2u`.
fn tensor_params(dev: &Device) -> Result<()> {
    let u = Var::new(&[1.5f64], dev)?;
    let s = u.as_tensor().sqr()?;
    let sp = TensorParam::new(&s)?;
    let st = sp.as_tensor().clone();
    let field = with_separable_params(
        |_t: f64, p: &Tensor| Ok(p.clone()),
        move |_t: f64, q: &Tensor| q.mul(&st)?.neg(),
        vec![],
    )
    .with_tensor_params(vec![sp.clone()]);
    let (q0, p0) = (Tensor::new(&[1.0f64], dev)?, Tensor::new(&[0.5f64], dev)?);
    let opts = SymplecticOptions::new(0.02);
    let sol = odeint_symplectic_adjoint(&field, &q0, &p0, &[0.0, 1.0], &opts)?;
    let g = sol.qs.get(1)?.sum_all()?.backward()?;
    let du = g
        .get(u.as_tensor())
        .expect("the source's input has a gradient");
    // Backprop through the solve with the copy, then the chain rule by hand.
    let direct = odeint_symplectic(&field, &q0, &p0, &[0.0, 1.0], &opts)?;
    let gd = direct.qs.get(1)?.sum_all()?.backward()?;
    let ds = gd.get(sp.as_tensor()).unwrap().to_vec1::<f64>()?[0];
    let got = du.to_vec1::<f64>()?[0];
    assert!(
        (got - ds * 3.0).abs() < 1e-12 * got.abs(),
        "{got} against {}",
        ds * 3.0
    );
    Ok(())
}

/// In f32 the walk back agrees with backprop to f32's round-off.
fn f32_works(dev: &Device) -> Result<()> {
    let field = Field::new(3, 8, DType::F32, dev)?;
    let (q0, p0) = (
        state(3, 31, DType::F32, dev)?,
        state(3, 32, DType::F32, dev)?,
    );
    let opts = SymplecticOptions::new(0.05).method(SymplecticMethod::Yoshida4);
    let (walked, backprop) = both(&field, &q0, &p0, &[0.0, 0.5, 1.0], &opts)?;
    for (i, (x, y)) in walked.iter().zip(&backprop).enumerate() {
        assert_eq!(x.dtype(), DType::F32);
        let r = max_rel(x, y)?;
        assert!(r < 1e-4, "gradient {i}: relative difference {r:e}");
    }
    Ok(())
}

fn invalid_options(msg: &str) -> impl Fn(candle_core::Error) -> bool + '_ {
    move |e| matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(m)) if m.contains(msg))
}

fn errors(dev: &Device) -> Result<()> {
    let field = Field::new(2, 4, DType::F64, dev)?;
    let (q0, p0) = (
        state(2, 41, DType::F64, dev)?,
        state(2, 42, DType::F64, dev)?,
    );
    let ts = [0.0, 1.0];
    // Parameters in another dtype than the state.
    let (q32, p32) = (q0.to_dtype(DType::F32)?, p0.to_dtype(DType::F32)?);
    let err = odeint_symplectic_adjoint(&field, &q32, &p32, &ts, &SymplecticOptions::new(0.1))
        .unwrap_err();
    assert!(invalid_options("dtype")(err));
    // The solver's own checks: the step size, the shapes of q0 and p0.
    let err =
        odeint_symplectic_adjoint(&field, &q0, &p0, &ts, &SymplecticOptions::new(0.0)).unwrap_err();
    assert!(invalid_options("step size")(err));
    let p_bad = Tensor::zeros((4, 3), DType::F64, dev)?;
    let err = odeint_symplectic_adjoint(&field, &q0, &p_bad, &ts, &SymplecticOptions::new(0.1))
        .unwrap_err();
    assert!(invalid_options("one shape")(err));
    // A force of the wrong shape fails the forward solve, before any backward pass.
    let bad = with_separable_params(
        |_t: f64, p: &Tensor| Ok(p.clone()),
        |_t: f64, q: &Tensor| q.sum_keepdim(1),
        vec![],
    );
    let err =
        odeint_symplectic_adjoint(&bad, &q0, &p0, &ts, &SymplecticOptions::new(0.1)).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
    Ok(())
}

candle_core::test_device!(
    matches_backprop,
    matches_backprop_cpu,
    matches_backprop_cuda,
    matches_backprop_metal
);
candle_core::test_device!(
    spring_closed_form,
    spring_closed_form_cpu,
    spring_closed_form_cuda,
    spring_closed_form_metal
);
candle_core::test_device!(
    long_pendulum,
    long_pendulum_cpu,
    long_pendulum_cuda,
    long_pendulum_metal
);
candle_core::test_device!(counts, counts_cpu, counts_cuda, counts_metal);
candle_core::test_device!(
    tensor_params,
    tensor_params_cpu,
    tensor_params_cuda,
    tensor_params_metal
);
candle_core::test_device!(f32_works, f32_works_cpu, f32_works_cuda, f32_works_metal);
candle_core::test_device!(errors, errors_cpu, errors_cuda, errors_metal);

//! Tensors of the caller's graph as a field's parameters (`TensorParam`): every gradient mode
//! delivers their gradients to the graph that produced them, as plain backprop does when the
//! field captures the tensor itself; the errors of mismatched sources.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use node_adjoint::{
    has_tensor_params, odeint_adjoint, odeint_checkpointed, odeint_direct,
    odeint_reversible_adjoint, with_params, AdjointOptions, AdjointSolution, AdjointState,
    CheckpointOptions, ParamVectorField, ReversibleOptions, TensorParam,
};
use node_solvers::{odeint, odeint_reversible, SolveOptions, SolverError, VectorField};
use time_mlp::{max_rel, seeded_normal};

#[path = "common/time_mlp.rs"]
mod time_mlp;

/// An encoder `c = tanh(x E)` (`E` trained) and a field conditioned on it,
/// `f(t, y) = tanh(y A + c) − y/2` (`A` trained): `c` is in the caller's graph.
struct Setup {
    e: Var,
    a: Var,
    y0: Var,
    x: Tensor,
}

impl Setup {
    fn new(dev: &Device) -> Result<Self> {
        let var = |shape: &[usize], seed| -> Result<Var> {
            Ok(Var::from_tensor(&seeded_normal(
                shape,
                seed,
                DType::F64,
                dev,
            )?)?)
        };
        Ok(Self {
            e: var(&[2, 3], 1)?,
            a: var(&[3, 3], 2)?,
            y0: var(&[4, 3], 3)?,
            x: seeded_normal(&[4, 2], 4, DType::F64, dev)?,
        })
    }

    /// The encoder's output, a new graph on every call.
    fn c(&self) -> Result<Tensor> {
        Ok(self.x.matmul(self.e.as_tensor())?.tanh()?)
    }

    fn field_of(
        &self,
        c: Tensor,
    ) -> impl Fn(f64, &Tensor) -> candle_core::Result<Tensor> + Clone + Send + Sync + 'static {
        let a = self.a.clone();
        move |_t: f64, y: &Tensor| y.matmul(a.as_tensor())?.broadcast_add(&c)?.tanh()? - (y * 0.5)?
    }

    /// `L = Σ_i (i + 1)·Σ ys[i]²/2`, differentiated.
    fn backward(ys: &Tensor) -> Result<candle_core::backprop::GradStore> {
        let n = ys.dim(0)?;
        let w = Tensor::arange(1.0, n as f64 + 1.0, ys.device())?.reshape((n, 1, 1))?;
        Ok((ys.sqr()?.broadcast_mul(&w)? * 0.5)?
            .sum_all()?
            .backward()?)
    }

    /// `dL/d[y0, E, A]`.
    fn grads(&self, ys: &Tensor) -> Result<Vec<Tensor>> {
        let g = Self::backward(ys)?;
        let get = |v: &Var| g.get(v).expect("a gradient").clone();
        Ok(vec![get(&self.y0), get(&self.e), get(&self.a)])
    }

    /// `dL/d[y0, A]` (for a field of data `c`: `E` gets none).
    fn grads_y0_a(&self, ys: &Tensor) -> Result<Vec<Tensor>> {
        let g = Self::backward(ys)?;
        assert!(g.get(&self.e).is_none(), "E is not in this graph");
        let get = |v: &Var| g.get(v).expect("a gradient").clone();
        Ok(vec![get(&self.y0), get(&self.a)])
    }
}

fn assert_close(got: &[Tensor], want: &[Tensor], tol: f64, what: &str) -> Result<()> {
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        let name = if got.len() == 3 {
            ["y0", "E", "A"][i]
        } else {
            ["y0", "A"][i]
        };
        let r = max_rel(x, y)?;
        assert!(
            r < tol,
            "{what}: gradient to {name} off by {r:e} (relative)"
        );
    }
    Ok(())
}

/// Each mode with the encoder's output as a `TensorParam` against plain backprop with the
/// field capturing the output itself.
fn every_mode_reaches_the_encoder(dev: &Device) -> Result<()> {
    let s = Setup::new(dev)?;
    let ts = [0.0, 0.4, 1.0, 1.5];
    let opts = SolveOptions::default().tolerances(1e-9, 1e-9);
    let plain = with_params(s.field_of(s.c()?), vec![s.a.clone()]);
    assert!(!has_tensor_params(&plain));
    let want = s.grads(&odeint(&plain, s.y0.as_tensor(), &ts, &opts)?.ys)?;

    let solve = |how: &str| -> Result<AdjointSolution> {
        let c = TensorParam::new(&s.c()?)?;
        let f = with_params(s.field_of(c.as_tensor().clone()), vec![s.a.clone()])
            .with_tensor_params(vec![c]);
        assert!(has_tensor_params(&f));
        assert_eq!(f.params().len(), 2);
        let y0 = s.y0.as_tensor();
        Ok(match how {
            "direct" => odeint_direct(&f, y0, &ts, &opts)?,
            "checkpoint" => odeint_checkpointed(&f, y0, &ts, &opts, &CheckpointOptions::default())?,
            "adjoint" => {
                let adj = AdjointOptions::default().tolerances(1e-11, 1e-11);
                odeint_adjoint(&f, y0, &ts, &opts, &adj)?
            }
            "interpolated" => {
                let adj = AdjointOptions::default()
                    .tolerances(1e-11, 1e-11)
                    .state(AdjointState::Interpolated);
                odeint_adjoint(&f, y0, &ts, &opts, &adj)?
            }
            _ => unreachable!(),
        })
    };
    // Backprop's own operations, differentiated exactly.
    for how in ["direct", "checkpoint"] {
        let got = s.grads(&solve(how)?.ys)?;
        assert_close(&got, &want, 1e-10, how)?;
    }
    // The continuous problem's gradient: backprop's up to the solve's error.
    for how in ["adjoint", "interpolated"] {
        let got = s.grads(&solve(how)?.ys)?;
        assert_close(&got, &want, 1e-6, how)?;
    }

    // Reversible backprop against backprop through the reversible solve.
    let rev = ReversibleOptions::default();
    let (sol, _) = odeint_reversible(&plain, s.y0.as_tensor(), &ts, &opts, rev.coupling)?;
    let want = s.grads(&sol.ys)?;
    let c = TensorParam::new(&s.c()?)?;
    let f = with_params(s.field_of(c.as_tensor().clone()), vec![s.a.clone()])
        .with_tensor_params(vec![c]);
    let got = s.grads(&odeint_reversible_adjoint(&f, s.y0.as_tensor(), &ts, &opts, &rev)?.ys)?;
    assert_close(&got, &want, 1e-10, "reversible")?;
    Ok(())
}

/// A `Var` as the source gets its gradient; plain data as the source is a constant; the
/// forward values are those of the field on the source itself.
fn sources_of_every_kind(dev: &Device) -> Result<()> {
    let s = Setup::new(dev)?;
    let ts = [0.0, 1.0];
    let opts = SolveOptions::default().tolerances(1e-9, 1e-9);
    let adj = AdjointOptions::default().tolerances(1e-11, 1e-11);
    let c = Var::from_tensor(&s.c()?.detach())?;
    // The reference: `c` captured as a Var parameter.
    let plain = with_params(
        s.field_of(c.as_tensor().clone()),
        vec![s.a.clone(), c.clone()],
    );
    let sol = odeint_adjoint(&plain, s.y0.as_tensor(), &ts, &opts, &adj)?;
    let g = sol.ys.get(1)?.sum_all()?.backward()?;
    let want = g.get(&c).expect("a gradient to c").clone();

    let tp = TensorParam::new(c.as_tensor())?;
    assert_ne!(tp.var().as_tensor().id(), c.as_tensor().id());
    let f = with_params(s.field_of(tp.as_tensor().clone()), vec![s.a.clone()])
        .with_tensor_params(vec![tp]);
    let sol2 = odeint_adjoint(&f, s.y0.as_tensor(), &ts, &opts, &adj)?;
    assert!(
        max_rel(&sol2.ys, &sol.ys)? == 0.0,
        "the same forward values"
    );
    let g = sol2.ys.get(1)?.sum_all()?.backward()?;
    let got = g.get(&c).expect("a gradient to the source Var");
    assert!(max_rel(got, &want)? < 1e-12);
    // Plain data: nothing to reach, nothing fails; y0 still gets its gradient.
    let data = TensorParam::new(&s.c()?.detach())?;
    let f = with_params(s.field_of(data.as_tensor().clone()), vec![s.a.clone()])
        .with_tensor_params(vec![data]);
    for sol in [
        odeint_adjoint(&f, s.y0.as_tensor(), &ts, &opts, &adj)?,
        odeint_direct(&f, s.y0.as_tensor(), &ts, &opts)?,
    ] {
        let g = sol.ys.get(1)?.sum_all()?.backward()?;
        assert!(g.get(&s.y0).is_some() && g.get(&s.a).is_some());
    }
    Ok(())
}

/// A field whose sources do not match its parameters.
#[derive(Clone)]
struct Mismatched {
    p: Var,
    sources: Vec<Tensor>,
}

impl VectorField for Mismatched {
    fn eval(&self, _t: f64, y: &Tensor) -> candle_core::Result<Tensor> {
        y.broadcast_mul(self.p.as_tensor())
    }
}

impl ParamVectorField for Mismatched {
    fn params(&self) -> Vec<Var> {
        vec![self.p.clone()]
    }
    fn param_sources(&self) -> Vec<Tensor> {
        self.sources.clone()
    }
}

fn mismatched_sources_are_refused(dev: &Device) -> Result<()> {
    let p = Var::new(&[0.5f64, 1.0], dev)?;
    let y0 = Tensor::new(&[1.0f64, 2.0], dev)?;
    let opts = SolveOptions::default();
    let cases = [
        (vec![], "sources"),
        (vec![Tensor::zeros(3, DType::F64, dev)?], "[3]"),
        (vec![Tensor::zeros(2, DType::F32, dev)?], "F32"),
    ];
    for (sources, says) in cases {
        let f = Mismatched {
            p: p.clone(),
            sources,
        };
        let errs = [
            odeint_adjoint(&f, &y0, &[0.0, 1.0], &opts, &AdjointOptions::default()).err(),
            odeint_checkpointed(&f, &y0, &[0.0, 1.0], &opts, &CheckpointOptions::default()).err(),
            odeint_reversible_adjoint(&f, &y0, &[0.0, 1.0], &opts, &ReversibleOptions::default())
                .err(),
            odeint_direct(&f, &y0, &[0.0, 1.0], &opts).err(),
        ];
        for e in errs {
            let e = e.expect("an error");
            assert!(
                matches!(SolverError::find(&e), Some(SolverError::InvalidOptions(_))),
                "{e}"
            );
            assert!(e.to_string().contains(says), "{e}");
        }
    }
    Ok(())
}

/// `odeint_direct` on a field without `TensorParam`s is backprop through `odeint`, output
/// for output and gradient for gradient, with no backward evaluations.
fn direct_is_backprop(dev: &Device) -> Result<()> {
    let s = Setup::new(dev)?;
    let ts = [0.0, 0.5, 2.0];
    let opts = SolveOptions::default().tolerances(1e-7, 1e-7);
    let f = with_params(s.field_of(s.c()?.detach()), vec![s.a.clone()]);
    let plain = odeint(&f, s.y0.as_tensor(), &ts, &opts)?;
    let want = s.grads_y0_a(&plain.ys)?;
    let sol = odeint_direct(&f, s.y0.as_tensor(), &ts, &opts)?;
    assert_eq!(max_rel(&sol.ys, &plain.ys)?, 0.0);
    assert_eq!(sol.stats.forward().nfe, plain.stats.nfe);
    let got = s.grads_y0_a(&sol.ys)?;
    assert_eq!(sol.stats.backward().nfe, 0);
    assert_close(&got, &want, 1e-14, "direct")?;
    Ok(())
}

candle_core::test_device!(
    every_mode_reaches_the_encoder,
    every_mode_cpu,
    every_mode_cuda,
    every_mode_metal
);
candle_core::test_device!(
    sources_of_every_kind,
    sources_cpu,
    sources_cuda,
    sources_metal
);
candle_core::test_device!(
    mismatched_sources_are_refused,
    mismatched_cpu,
    mismatched_cuda,
    mismatched_metal
);
candle_core::test_device!(direct_is_backprop, direct_cpu, direct_cuda, direct_metal);

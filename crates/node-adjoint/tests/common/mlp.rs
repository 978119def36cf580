//! torchdiffeq's `ode_demo` MLP as a parameterised vector field, with the reference weights:
//! shared by the torchdiffeq comparison tests and the adjoint benchmark.

use candle_core::{Device, Result, Tensor, Var};
use node_adjoint::ParamVectorField;
use node_solvers::VectorField;
use std::collections::HashMap;

/// `f(z) = Linear(tanh(Linear(x)))` with `x = z³` (torchdiffeq's `ode_demo` `ODEFunc`) or `x = z`.
#[derive(Clone)]
pub struct Mlp {
    pub w1: Var,
    pub b1: Var,
    pub w2: Var,
    pub b2: Var,
    pub cube: bool,
}

impl Mlp {
    /// Random weights (scaled 1/√fan_in), zero biases, no cube: the same on every run
    /// (SplitMix64 and Box–Muller; Candle's CPU generator cannot be seeded).
    #[allow(dead_code)] // used by the benchmark, not by the tests
    pub fn random(dim: usize, hidden: usize, dev: &Device) -> Result<Self> {
        let state = std::cell::Cell::new(0x5eed_u64);
        let uniform = || {
            let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(s);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let v = |s: &[usize], std: f64| {
            let n: usize = s.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    let (u1, u2) = (1.0 - uniform(), uniform());
                    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    (std * z) as f32
                })
                .collect();
            Var::from_tensor(&Tensor::from_vec(data, s, dev)?)
        };
        Ok(Self {
            w1: v(&[hidden, dim], 1.0 / (dim as f64).sqrt())?,
            b1: v(&[hidden], 0.0)?,
            w2: v(&[dim, hidden], 1.0 / (hidden as f64).sqrt())?,
            b2: v(&[dim], 0.0)?,
            cube: false,
        })
    }
    /// The weights and initial state of the torchdiffeq reference (`ode_solve.py`).
    pub fn ode_demo() -> Result<(Self, Tensor)> {
        let path = format!(
            "{}/../../fixtures/torchdiffeq/ode_solve_dopri5_rtol1e-7_atol1e-9.npz",
            env!("CARGO_MANIFEST_DIR")
        );
        let fx: HashMap<String, Tensor> = Tensor::read_npz(path)?.into_iter().collect();
        let v = |k: &str| Var::from_tensor(&fx[k]);
        Ok((
            Self {
                w1: v("w1")?,
                b1: v("b1")?,
                w2: v("w2")?,
                b2: v("b2")?,
                cube: true,
            },
            fx["z0"].clone(),
        ))
    }
}

impl VectorField for Mlp {
    fn eval(&self, _t: f64, z: &Tensor) -> Result<Tensor> {
        let x = if self.cube {
            (z * z.sqr()?)?
        } else {
            z.clone()
        };
        let h = x.matmul(&self.w1.t()?)?.broadcast_add(&self.b1)?;
        node_kernels::tanh(&h)?
            .matmul(&self.w2.t()?)?
            .broadcast_add(&self.b2)
    }
}

impl ParamVectorField for Mlp {
    fn params(&self) -> Vec<Var> {
        vec![
            self.w1.clone(),
            self.b1.clone(),
            self.w2.clone(),
            self.b2.clone(),
        ]
    }
}

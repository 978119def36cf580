//! A small time-dependent MLP field with parameters of several shapes, and gradient
//! comparison helpers: shared by the gradient tests of the adjoint and of checkpointing.
#![allow(dead_code)]

use anyhow::Result;
use candle_core::{DType, Device, Shape, Tensor, Var};
use node_adjoint::ParamVectorField;
use node_solvers::VectorField;

pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

pub fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = scalar(&(a - b)?.abs()?.flatten_all()?.max(0)?)?;
    let m = scalar(&b.abs()?.flatten_all()?.max(0)?)?;
    Ok(d / m.max(1e-300))
}

/// `f(t, y) = tanh(y W1ᵀ + b1 + t·c) W2ᵀ + b2`: parameters of several shapes, time-dependent.
#[derive(Clone)]
pub struct Mlp {
    pub w1: Var,
    pub b1: Var,
    pub c: Var,
    pub w2: Var,
    pub b2: Var,
}

/// Standard normal numbers from `seed`, the same on every run (Candle's CPU generator cannot
/// be seeded): SplitMix64 and Box–Muller.
pub fn seeded_normal(
    shape: impl Into<Shape>,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let mut state = seed;
    let mut uniform = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let v: Vec<f64> = (0..shape.elem_count())
        .map(|_| {
            let (u1, u2) = (1.0 - uniform(), uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?)
}

impl Mlp {
    /// The same field on every run.
    pub fn seeded(
        dim: usize,
        hidden: usize,
        dtype: DType,
        dev: &Device,
        seed: u64,
    ) -> Result<Self> {
        let mut k = 0;
        Self::with(dim, hidden, |shape| {
            k += 1;
            seeded_normal(shape, seed.wrapping_mul(1000).wrapping_add(k), dtype, dev)
        })
    }

    /// Weights `N(0, 1)` from `normal`, scaled.
    fn with(
        dim: usize,
        hidden: usize,
        mut normal: impl FnMut(&[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        let mut v = |shape: &[usize], s: f64| -> Result<Var> {
            Ok(Var::from_tensor(&(normal(shape)? * s)?)?)
        };
        Ok(Self {
            w1: v(&[hidden, dim], 0.5)?,
            b1: v(&[hidden], 0.1)?,
            c: v(&[hidden], 0.3)?,
            w2: v(&[dim, hidden], 0.5)?,
            b2: v(&[dim], 0.1)?,
        })
    }
}

impl VectorField for Mlp {
    fn eval(&self, t: f64, y: &Tensor) -> candle_core::Result<Tensor> {
        let pre = y
            .broadcast_matmul(&self.w1.t()?)?
            .broadcast_add(&self.b1)?
            .broadcast_add(&self.c.affine(t, 0.0)?)?;
        node_kernels::tanh(&pre)?
            .broadcast_matmul(&self.w2.t()?)?
            .broadcast_add(&self.b2)
    }
}

impl ParamVectorField for Mlp {
    fn params(&self) -> Vec<Var> {
        vec![
            self.w1.clone(),
            self.b1.clone(),
            self.c.clone(),
            self.w2.clone(),
            self.b2.clone(),
        ]
    }
}

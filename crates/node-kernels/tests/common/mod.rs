//! Seeded random inputs: the same numbers on every run, so a failure can be replayed (Candle's
//! CPU generator cannot be seeded).
#![allow(dead_code)] // each test file uses what it needs

use candle_core::{Device, Result, Shape, Tensor};
use std::cell::Cell;

/// A stream of seeded normal draws (SplitMix64 and Box–Muller); every call takes new numbers.
/// `&self` methods, so closures that only borrow it can draw.
pub struct Draws {
    state: Cell<u64>,
}

impl Draws {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Cell::new(seed),
        }
    }

    fn uniform(&self) -> f64 {
        let s = self.state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `mean + std·N(0, 1)` in f32, as `Tensor::randn(mean, std, shape, dev)` with an f32
    /// mean gives.
    pub fn randn(
        &self,
        mean: f32,
        std: f32,
        shape: impl Into<Shape>,
        dev: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|_| {
                let (u1, u2) = (1.0 - self.uniform(), self.uniform());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                mean + std * z as f32
            })
            .collect();
        Tensor::from_vec(v, shape, dev)
    }

    /// Standard normal numbers of `t`'s shape, dtype and device (`t.randn_like(0.0, 1.0)`).
    pub fn randn_like(&self, t: &Tensor) -> Result<Tensor> {
        self.randn(0.0, 1.0, t.shape(), t.device())?
            .to_dtype(t.dtype())
    }
}

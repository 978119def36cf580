//! A small seeded random number generator, so that initialisation, shuffling and augmentation
//! are reproducible (Candle's CPU device cannot be seeded) and its position can be saved in a
//! checkpoint to resume a run exactly.
//!
//! SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): 64 bits of state, passes BigCrush, and its
//! state after `n` draws is just `seed + n·γ`.

use candle_core::{DType, Device, Result, Tensor};

/// A seeded SplitMix64 generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The state, to store in a checkpoint; [`Rng::from_state`] resumes from it.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// A generator at a saved state.
    pub fn from_state(state: u64) -> Self {
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for the
    /// sizes used here). Returns 0 for `n = 0`.
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// In-place Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// A tensor of normal samples `mean + std·N(0, 1)`.
    pub fn normal_tensor(
        &mut self,
        shape: &[usize],
        mean: f64,
        std: f64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| mean + std * self.normal()).collect();
        Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)
    }

    /// A tensor of samples uniform in `[lo, hi)`.
    pub fn uniform_tensor(
        &mut self,
        shape: &[usize],
        lo: f64,
        hi: f64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * self.uniform()).collect();
        Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_resumable() {
        let mut a = Rng::new(42);
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let mut b = Rng::new(42);
        assert_eq!(first, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        let saved = a.state();
        let x = a.next_u64();
        assert_eq!(Rng::from_state(saved).next_u64(), x);
    }

    #[test]
    fn moments_are_right() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance.
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.015,
            "mean {mean}, var {var}"
        );
        let mut counts = [0usize; 10];
        for _ in 0..n {
            counts[r.below(10)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (c as f64 - 20_000.0).abs() < 600.0),
            "{counts:?}"
        );
    }
}

//! Problems with exact solutions (and one stiff problem with reference values), shared by
//! the tests, the benchmarks and users who want to check a solver setup.

use candle_core::{Result, Tensor};

/// `dy/dt = λ y` on any shape: `y(t) = y0 e^{λ (t − t0)}`.
#[derive(Clone, Copy, Debug)]
pub struct Exponential {
    /// The rate λ.
    pub rate: f64,
}

impl Exponential {
    /// The vector field.
    pub fn field(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
        move |_t, y| y.affine(self.rate, 0.0)
    }
    /// The exact solution at `t` from `y0` at `t0`.
    pub fn exact(&self, y0: &Tensor, t0: f64, t: f64) -> Result<Tensor> {
        y0.affine((self.rate * (t - t0)).exp(), 0.0)
    }
}

/// A damped rotation `dy/dt = A y`, `A = [[−a, ω], [−ω, −a]]`, on states of shape `[..., 2]`
/// (a batch of points in the plane): `y(t) = e^{−a τ} R(ωτ) y0` with `τ = t − t0`.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// Damping `a`.
    pub decay: f64,
    /// Angular frequency `ω`.
    pub freq: f64,
}

impl Rotation {
    fn apply(y: &Tensor, m: [[f64; 2]; 2]) -> Result<Tensor> {
        let last = y.rank() - 1;
        let u = y.narrow(last, 0, 1)?;
        let v = y.narrow(last, 1, 1)?;
        let du = (u.affine(m[0][0], 0.0)? + v.affine(m[0][1], 0.0)?)?;
        let dv = (u.affine(m[1][0], 0.0)? + v.affine(m[1][1], 0.0)?)?;
        Tensor::cat(&[du, dv], last)
    }
    /// The vector field.
    pub fn field(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
        move |_t, y| Self::apply(y, [[-self.decay, self.freq], [-self.freq, -self.decay]])
    }
    /// The exact solution at `t` from `y0` at `t0`.
    pub fn exact(&self, y0: &Tensor, t0: f64, t: f64) -> Result<Tensor> {
        let tau = t - t0;
        let (s, c) = (self.freq * tau).sin_cos();
        let e = (-self.decay * tau).exp();
        Self::apply(y0, [[e * c, e * s], [-e * s, e * c]])
    }
}

/// The nonlinear, non-autonomous `dy/dt = −y² cos t`: `1/y(t) = 1/y0 + sin t − sin t0`.
/// Elementwise on any shape; keep `1/y0 + sin t − sin t0` away from zero.
#[derive(Clone, Copy, Debug, Default)]
pub struct Riccati;

impl Riccati {
    /// The vector field.
    pub fn field(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> {
        |t, y| y.sqr()?.affine(-t.cos(), 0.0)
    }
    /// The exact solution at `t` from `y0` at `t0`.
    pub fn exact(&self, y0: &Tensor, t0: f64, t: f64) -> Result<Tensor> {
        y0.recip()?.affine(1.0, t.sin() - t0.sin())?.recip()
    }
}

/// Robertson's chemical kinetics (H. H. Robertson 1966; Hairer & Wanner II, IV.1), the
/// classic stiff test: `y1' = −k1 y1 + k3 y2 y3`, `y2' = k1 y1 − k3 y2 y3 − k2 y2²`,
/// `y3' = k2 y2²`, with rates `k1 = 0.04`, `k2 = 3·10⁷`, `k3 = 10⁴` by default, on states
/// of shape `[..., 3]` (a batch of reactions). No closed form: [`Robertson::REFERENCE`] holds
/// reference values from `y0 = (1, 0, 0)`.
#[derive(Clone, Copy, Debug)]
pub struct Robertson {
    /// `k1`, `k2`, `k3`.
    pub rates: [f64; 3],
}

impl Default for Robertson {
    fn default() -> Self {
        Self {
            rates: [0.04, 3e7, 1e4],
        }
    }
}

impl Robertson {
    /// `(t, y(t))` from `y(0) = (1, 0, 0)` with the default rates: SciPy's Radau, BDF and
    /// LSODA at `rtol = 1e-12`, `atol = 1e-16` agree on them to 1e-10 relative, and the
    /// values at `t = 40` are Hairer & Wanner's.
    pub const REFERENCE: [(f64, [f64; 3]); 2] = [
        (
            40.0,
            [
                0.7158270687194165,
                9.185534764558227e-06,
                0.2841637457458203,
            ],
        ),
        (
            1e5,
            [
                0.017865921142322477,
                7.274751468528753e-08,
                0.9821340061101634,
            ],
        ),
    ];

    /// The vector field.
    pub fn field(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
        move |_t, y| Self::kinetics(y, |x, i| x.affine(self.rates[i], 0.0))
    }

    /// The field with the rates as a tensor of shape `[3]`, so that they can be trained
    /// (gradients reach `k` as any Candle op's input).
    pub fn field_with_rates(k: &Tensor, y: &Tensor) -> Result<Tensor> {
        Self::kinetics(y, |x, i| x.broadcast_mul(&k.narrow(0, i, 1)?))
    }

    /// The kinetics with `rate(x, i)` = `x · k_(i+1)`.
    fn kinetics(y: &Tensor, rate: impl Fn(&Tensor, usize) -> Result<Tensor>) -> Result<Tensor> {
        let last = y.rank() - 1;
        let y1 = y.narrow(last, 0, 1)?;
        let y2 = y.narrow(last, 1, 1)?;
        let y3 = y.narrow(last, 2, 1)?;
        let slow = rate(&y1, 0)?;
        let fast = rate(&(&y2 * &y3)?, 2)?;
        let sq = rate(&y2.sqr()?, 1)?;
        let d1 = (&fast - &slow)?;
        let d2 = ((&slow - &fast)? - &sq)?;
        Tensor::cat(&[d1, d2, sq], last)
    }
}

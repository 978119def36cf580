//! Problems with exact solutions (and two stiff problems, one with reference values, and two
//! SDEs to compare methods on along one path), shared by the tests, the benchmarks and users
//! who want to check a solver setup.

use crate::field::{Split, WithJacobian};
use crate::sde::SdeField;
use candle_core::{DType, Device, Result, Tensor};

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

    /// The Jacobian `∂f/∂y` in closed form, for [`crate::WithJacobian`]: shape `[3, 3]` for
    /// a state of shape `[3]` (for [`crate::Jacobian::Dense`]), `[B, 3, 3]` for a batch of
    /// shape `[B, 3]` (for [`crate::Jacobian::Batched`]).
    pub fn jacobian(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
        move |_t, y| {
            let [k1, k2, k3] = self.rates;
            let last = y.rank() - 1;
            let y2 = y.narrow(last, 1, 1)?;
            let y3 = y.narrow(last, 2, 1)?;
            let zero = y2.zeros_like()?;
            let c = |v: f64| zero.affine(1.0, v);
            let rows = [
                [c(-k1)?, y3.affine(k3, 0.0)?, y2.affine(k3, 0.0)?],
                [
                    c(k1)?,
                    (y3.affine(-k3, 0.0)? - y2.affine(2.0 * k2, 0.0)?)?,
                    y2.affine(-k3, 0.0)?,
                ],
                [zero.clone(), y2.affine(2.0 * k2, 0.0)?, zero.clone()],
            ];
            let rows = rows
                .iter()
                .map(|r| Tensor::cat(r, last))
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&rows, last)
        }
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

/// The one-dimensional Brusselator with diffusion (Hairer & Wanner II, IV.1, `BRUSS`), a
/// stiff reaction–diffusion system discretized on `N` interior points `x_i = i/(N+1)`:
/// `u_i' = 1 + u_i² v_i − 4 u_i + α (N+1)² (u_(i−1) − 2u_i + u_(i+1))`,
/// `v_i' = 3 u_i − u_i² v_i + α (N+1)² (v_(i−1) − 2v_i + v_(i+1))`, with `u = 1`, `v = 3` at
/// the ends, `u_i(0) = 1 + sin 2πx_i`, `v_i(0) = 3`, usually on `[0, 10]`. The state has
/// shape `[2, N]` (`u` then `v`); the diffusion's eigenvalues reach `−4α(N+1)²`, so the
/// stiffness grows with `N`. No closed form. Its `2N × 2N` Jacobian is what a
/// finite-difference build pays `2N` evaluations for.
#[derive(Clone, Copy, Debug)]
pub struct Brusselator {
    /// `N`, the interior points.
    pub points: usize,
    /// The diffusion coefficient `α` (1/50 in Hairer & Wanner).
    pub alpha: f64,
}

impl Brusselator {
    /// `N` points with Hairer & Wanner's `α = 1/50`.
    pub fn new(points: usize) -> Self {
        Self {
            points,
            alpha: 0.02,
        }
    }

    /// `α (N+1)²`.
    fn diffusion_coefficient(&self) -> f64 {
        self.alpha * ((self.points + 1) as f64).powi(2)
    }

    /// The initial state, shape `[2, N]`.
    pub fn initial(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = self.points;
        let h = 1.0 / (n + 1) as f64;
        let u = (1..=n).map(|i| 1.0 + (2.0 * std::f64::consts::PI * i as f64 * h).sin());
        let v = std::iter::repeat_n(3.0, n);
        Tensor::from_vec(u.chain(v).collect::<Vec<f64>>(), (2, n), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    /// The vector field, on states of shape `[2, N]`.
    pub fn field(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
        move |_t, y| {
            let n = self.points;
            let c = self.diffusion_coefficient();
            let u = y.narrow(0, 0, 1)?;
            let v = y.narrow(0, 1, 1)?;
            let ends = Tensor::ones((1, 1), y.dtype(), y.device())?;
            let laplacian = |w: &Tensor, end: f64| -> Result<Tensor> {
                let end = ends.affine(end, 0.0)?;
                let padded = Tensor::cat(&[&end, w, &end], 1)?;
                let sides = (padded.narrow(1, 0, n)? + padded.narrow(1, 2, n)?)?;
                (sides - w.affine(2.0, 0.0)?)?.affine(c, 0.0)
            };
            let u2v = (u.sqr()? * &v)?;
            let du = ((u2v.affine(1.0, 1.0)? - u.affine(4.0, 0.0)?)? + laplacian(&u, 1.0)?)?;
            let dv = ((u.affine(3.0, 0.0)? - &u2v)? + laplacian(&v, 3.0)?)?;
            Tensor::cat(&[du, dv], 0)
        }
    }

    /// The reaction alone, `u' = 1 + u²v − 4u`, `v' = 3u − u²v`: the non-stiff part of
    /// [`Brusselator::field`]. Point by point, on a state `[2, N]` or a batch `[B, 2, N]`.
    pub fn reaction(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
        move |_t, y| {
            let species = y.rank().saturating_sub(2);
            let u = y.narrow(species, 0, 1)?;
            let v = y.narrow(species, 1, 1)?;
            let u2v = (u.sqr()? * &v)?;
            let du = (u2v.affine(1.0, 1.0)? - u.affine(4.0, 0.0)?)?;
            let dv = (u.affine(3.0, 0.0)? - &u2v)?;
            Tensor::cat(&[du, dv], species)
        }
    }

    /// The diffusion alone, with its boundary values: the stiff part of
    /// [`Brusselator::field`], affine in the state.
    pub fn diffusion(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
        move |_t, y| {
            let n = self.points;
            let c = self.diffusion_coefficient();
            let ends = Tensor::new(&[[1.0f64], [3.0]], &Device::Cpu)?
                .to_dtype(y.dtype())?
                .to_device(y.device())?;
            let padded = Tensor::cat(&[&ends, y, &ends], 1)?;
            let sides = (padded.narrow(1, 0, n)? + padded.narrow(1, 2, n)?)?;
            (sides - y.affine(2.0, 0.0)?)?.affine(c, 0.0)
        }
    }

    /// The diffusion's Jacobian, constant: shape `[2N, 2N]`, on `y`'s device.
    pub fn diffusion_jacobian(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
        move |_t, y| {
            let n = self.points;
            let c = self.diffusion_coefficient();
            let m = 2 * n;
            // Two independent tridiagonal blocks, `u`'s and `v`'s.
            let entries: Vec<f64> = (0..m * m)
                .map(|e| {
                    let (r, col) = (e / m, e % m);
                    if r == col {
                        -2.0 * c
                    } else if r.abs_diff(col) == 1 && r / n == col / n {
                        c
                    } else {
                        0.0
                    }
                })
                .collect();
            Tensor::from_vec(entries, (m, m), &Device::Cpu)?
                .to_dtype(y.dtype())?
                .to_device(y.device())
        }
    }

    /// The field split for the IMEX methods ([`crate::Method::is_imex`]): the reaction
    /// explicit, the diffusion implicit with its Jacobian in closed form.
    #[allow(clippy::type_complexity)]
    pub fn split(
        &self,
    ) -> Split<
        impl Fn(f64, &Tensor) -> Result<Tensor> + '_,
        WithJacobian<
            impl Fn(f64, &Tensor) -> Result<Tensor> + '_,
            impl Fn(f64, &Tensor) -> Result<Tensor> + '_,
        >,
    > {
        Split::new(
            self.reaction(),
            WithJacobian::new(self.diffusion(), self.diffusion_jacobian()),
        )
    }

    /// The Jacobian `∂f/∂y` in closed form, shape `[2N, 2N]` (for [`crate::Jacobian::Dense`]
    /// and [`crate::WithJacobian`]), built on `y`'s device.
    pub fn jacobian(&self) -> impl Fn(f64, &Tensor) -> Result<Tensor> + '_ {
        move |_t, y| {
            let n = self.points;
            let c = self.diffusion_coefficient();
            let (dtype, dev) = (y.dtype(), y.device());
            // Row vectors `[1, N]`; `eye ⊙ row` is the diagonal matrix of `row`.
            let u = y.narrow(0, 0, 1)?;
            let v = y.narrow(0, 1, 1)?;
            let eye = Tensor::eye(n, dtype, dev)?;
            let diag = |row: &Tensor| eye.broadcast_mul(row);
            let neighbours: Vec<f64> = (0..n * n)
                .map(|e| if (e / n).abs_diff(e % n) == 1 { c } else { 0.0 })
                .collect();
            let coupling = Tensor::from_vec(neighbours, (n, n), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(dev)?;
            let uu = u.sqr()?;
            let uv2 = (&u * &v)?.affine(2.0, 0.0)?;
            let du_du = (diag(&uv2.affine(1.0, -4.0 - 2.0 * c)?)? + &coupling)?;
            let du_dv = diag(&uu)?;
            let dv_du = diag(&uv2.affine(-1.0, 3.0)?)?;
            let dv_dv = (diag(&uu.affine(-1.0, -2.0 * c)?)? + &coupling)?;
            Tensor::cat(
                &[
                    Tensor::cat(&[du_du, du_dv], 1)?,
                    Tensor::cat(&[dv_du, dv_dv], 1)?,
                ],
                0,
            )
        }
    }
}

/// An SDE with additive noise whose drift is nonlinear and varies in time, and whose
/// diffusion varies in time: `dy = (sin y − y/2 + cos 3t) dt + 0.6 (1 + t) dW`, diagonal
/// noise on any shape. No closed form: compare against a fine solve along the same path
/// (the methods for additive noise reach strong order 3/2 on it).
#[derive(Clone, Copy, Debug, Default)]
pub struct AdditiveNoise;

impl SdeField for AdditiveNoise {
    fn drift(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        (y.sin()? - y.affine(0.5, 0.0)?)?.affine(1.0, (3.0 * t).cos())
    }
    fn diffusion(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        y.ones_like()?.affine(0.6 * (1.0 + t), 0.0)
    }
    fn additive_noise(&self) -> bool {
        true
    }
}

/// An SDE whose general noise does not commute: a state `y` of shape `[B, 2]` driven by two
/// Brownian motions per row ([`crate::Noise::General`], `W` of shape `[B, 2]`),
/// `dy = −½ sin y dt + g(y) ∘ dW` with `g(y) = [[0.8 y₁, 0.3], [0.2, 0.8 cos y₀]]`
/// (Stratonovich). No closed form: compare against a fine solve along the same path (every
/// method has strong order 1/2 on it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NonCommutingNoise;

impl SdeField for NonCommutingNoise {
    fn drift(&self, _t: f64, y: &Tensor) -> Result<Tensor> {
        y.sin()?.affine(-0.5, 0.0)
    }
    fn diffusion(&self, _t: f64, y: &Tensor) -> Result<Tensor> {
        let (y0, y1) = (y.narrow(1, 0, 1)?, y.narrow(1, 1, 1)?);
        let c = y0.ones_like()?;
        let row0 = Tensor::cat(&[y1.affine(0.8, 0.0)?, c.affine(0.3, 0.0)?], 1)?;
        let row1 = Tensor::cat(&[c.affine(0.2, 0.0)?, y0.cos()?.affine(0.8, 0.0)?], 1)?;
        Tensor::stack(&[row0, row1], 1)
    }
}

/// The Mackey–Glass delay equation `dx/dt = β x(t − τ) / (1 + x(t − τ)^n) − γ x`, elementwise
/// on any shape (positive states), for [`crate::delay::ddeint`] with the one delay `tau`: a
/// model of blood cell production whose solutions oscillate, periodically or chaotically
/// (β = 2, γ = 1, n = 10: periodic at τ = 1, chaotic from τ ≈ 1.7), where a one-dimensional
/// ODE can only be monotone.
#[derive(Clone, Copy, Debug)]
pub struct MackeyGlass {
    /// Production rate β.
    pub beta: f64,
    /// Decay rate γ.
    pub gamma: f64,
    /// Hill exponent `n`.
    pub exponent: f64,
    /// The delay τ.
    pub tau: f64,
}

impl Default for MackeyGlass {
    /// β = 2, γ = 1, n = 10, τ = 1.
    fn default() -> Self {
        Self {
            beta: 2.0,
            gamma: 1.0,
            exponent: 10.0,
            tau: 1.0,
        }
    }
}

impl MackeyGlass {
    /// `f(x, x_τ)`.
    pub fn rhs(&self, x: &Tensor, lagged: &Tensor) -> Result<Tensor> {
        let hill = (lagged.powf(self.exponent)? + 1.0)?;
        lagged.affine(self.beta, 0.0)?.div(&hill)? - x.affine(self.gamma, 0.0)?
    }

    /// The delay field, for [`crate::delay::ddeint`] with the delays `[self.tau]`.
    pub fn field(&self) -> impl Fn(f64, &Tensor, &[Tensor]) -> Result<Tensor> + '_ {
        move |_t, x, lagged| self.rhs(x, &lagged[0])
    }
}

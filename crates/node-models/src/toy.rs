//! The 2-D toy densities of FFJORD's `lib/toy_data.py` (Grathwohl et al. 2019), on which flows
//! are compared: drawn with this crate's seeded [`Rng`], so the same seed gives the same
//! points on every device. Most of their mass lies in `[-4, 4]²`.

use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor};
use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// A 2-D toy density.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toy {
    /// Two concentric circles of radius 3 and 1.5, noise 0.08 (`make_circles(factor 0.5)`
    /// scaled by 3).
    Circles,
    /// Two interleaved half circles, noise 0.1, scaled by 2 and shifted by `(−1, −0.2)`
    /// (`make_moons`).
    Moons,
    /// Eight Gaussians of standard deviation 0.5 on a circle of radius 4, all divided by 1.414.
    EightGaussians,
    /// Five curved arms.
    Pinwheel,
    /// Two interleaved spirals.
    TwoSpirals,
    /// The dark squares of a 4 × 4 checkerboard on `[-4, 4]²`.
    Checkerboard,
}

impl Toy {
    /// Every density, in FFJORD's order.
    pub const ALL: [Toy; 6] = [
        Toy::Circles,
        Toy::Moons,
        Toy::EightGaussians,
        Toy::Pinwheel,
        Toy::TwoSpirals,
        Toy::Checkerboard,
    ];

    /// `n` points, in random order.
    ///
    /// # Shapes
    /// Result `[n, 2]`.
    ///
    /// # Errors
    /// Candle's.
    pub fn sample(self, n: usize, rng: &mut Rng, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut pts: Vec<[f64; 2]> = match self {
            Toy::Circles => {
                let outer = n / 2;
                let mut v = arc(outer, 3.0, 2.0 * PI, [0.0, 0.0]);
                v.extend(arc(n - outer, 1.5, 2.0 * PI, [0.0, 0.0]));
                jitter(&mut v, 0.08 * 3.0, rng);
                v
            }
            Toy::Moons => {
                let outer = n / 2;
                let mut v = arc(outer, 1.0, PI, [0.0, 0.0]);
                // The lower moon: (1 − cos θ, 1 − sin θ − 0.5).
                v.extend(
                    arc(n - outer, 1.0, PI, [0.0, 0.0])
                        .into_iter()
                        .map(|[x, y]| [1.0 - x, 0.5 - y]),
                );
                jitter(&mut v, 0.1, rng);
                v.into_iter()
                    .map(|[x, y]| [2.0 * x - 1.0, 2.0 * y - 0.2])
                    .collect()
            }
            Toy::EightGaussians => {
                let s = FRAC_1_SQRT_2;
                let centers = [
                    [1.0, 0.0],
                    [-1.0, 0.0],
                    [0.0, 1.0],
                    [0.0, -1.0],
                    [s, s],
                    [s, -s],
                    [-s, s],
                    [-s, -s],
                ];
                (0..n)
                    .map(|_| {
                        let c = centers[rng.below(8)];
                        let x = 0.5 * rng.normal() + 4.0 * c[0];
                        let y = 0.5 * rng.normal() + 4.0 * c[1];
                        [x / 1.414, y / 1.414]
                    })
                    .collect()
            }
            Toy::Pinwheel => {
                let (arms, radial_std, tangential_std, rate) = (5, 0.3, 0.1, 0.25);
                (0..n)
                    .map(|k| {
                        let r = radial_std * rng.normal() + 1.0;
                        let u = tangential_std * rng.normal();
                        let angle = 2.0 * PI * (k % arms) as f64 / arms as f64 + rate * r.exp();
                        let (sin, cos) = angle.sin_cos();
                        // FFJORD's einsum("ti,tij->tj") with [[cos, −sin], [sin, cos]].
                        [2.0 * (r * cos + u * sin), 2.0 * (u * cos - r * sin)]
                    })
                    .collect()
            }
            Toy::TwoSpirals => {
                let half = n / 2;
                (0..n)
                    .map(|k| {
                        let a = rng.uniform().sqrt() * 540.0 * 2.0 * PI / 360.0;
                        let x = -a.cos() * a + 0.5 * rng.uniform();
                        let y = a.sin() * a + 0.5 * rng.uniform();
                        let sign = if k < half { 1.0 } else { -1.0 };
                        [
                            sign * x / 3.0 + 0.1 * rng.normal(),
                            sign * y / 3.0 + 0.1 * rng.normal(),
                        ]
                    })
                    .collect()
            }
            Toy::Checkerboard => (0..n)
                .map(|_| {
                    let x = 4.0 * rng.uniform() - 2.0;
                    let y = rng.uniform() - 2.0 * rng.below(2) as f64 + x.floor().rem_euclid(2.0);
                    [2.0 * x, 2.0 * y]
                })
                .collect(),
        };
        rng.shuffle(&mut pts);
        let flat: Vec<f64> = pts.into_iter().flatten().collect();
        Tensor::from_vec(flat, (n, 2), dev)?.to_dtype(dtype)
    }
}

/// `count` points at evenly spaced angles over `[0, span)` (`[0, π]` for a half circle) on a
/// circle of `radius` about `center`.
fn arc(count: usize, radius: f64, span: f64, center: [f64; 2]) -> Vec<[f64; 2]> {
    // make_moons spaces its points over [0, π] inclusive, make_circles over [0, 2π) exclusive.
    let steps = if span < 2.0 * PI {
        count.saturating_sub(1).max(1)
    } else {
        count.max(1)
    };
    (0..count)
        .map(|k| {
            let a = span * k as f64 / steps as f64;
            [center[0] + radius * a.cos(), center[1] + radius * a.sin()]
        })
        .collect()
}

/// Adds `N(0, std²)` to both coordinates of every point.
fn jitter(pts: &mut [[f64; 2]], std: f64, rng: &mut Rng) {
    for p in pts {
        p[0] += std * rng.normal();
        p[1] += std * rng.normal();
    }
}

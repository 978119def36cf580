//! Brownian motion for stochastic differential equations ([`crate::sdeint`]).
//!
//! An SDE solve needs the increments `W(t) − W(s)` of a Brownian motion over its steps, and
//! the same ones again whenever the path is queried again: when a step is redone, or when a
//! gradient is computed by solving again. [`VirtualBrownianTree`] (Li et al. 2020, *Scalable
//! gradients for stochastic differential equations*; diffrax's `VirtualBrownianTree`) draws
//! the path on demand from a seed and stores none of it: its value at any time is a
//! deterministic function of the seed and the time, so every query agrees with every other.

use crate::error::SolverError;
use candle_core::{DType, Device, Result, Shape, Tensor};
use std::sync::Mutex;

/// A Brownian motion (or any other driving path) that an SDE solve queries.
///
/// # Shapes
/// [`increment`](BrownianPath::increment) returns a tensor of [`shape`](BrownianPath::shape),
/// on the path's dtype and device.
pub trait BrownianPath {
    /// The shape of `W(t)`.
    fn shape(&self) -> &Shape;

    /// The span `(t0, t1)`, `t0 < t1`, on which the path is defined.
    fn span(&self) -> (f64, f64);

    /// `W(t) − W(s)`. Either order of `s` and `t` (the increment of a reverse step is the
    /// negative of the forward one).
    ///
    /// # Errors
    /// A time outside [`span`](BrownianPath::span) or not finite.
    fn increment(&self, s: f64, t: f64) -> Result<Tensor>;

    /// The increment `W(t) − W(s)` and the space-time Lévy area of the interval between `s`
    /// and `t` (see [`LevyIncrement`]), which the methods for additive noise
    /// ([`crate::SdeMethod::Shark`] and its kin) need. Either order of `s` and `t`: the
    /// increment changes sign, the area does not (the area of a path walked backwards is
    /// that of the path).
    ///
    /// # Errors
    /// By default [`SolverError::InvalidOptions`]: the path gives no Lévy area.
    /// [`VirtualBrownianTree::with_levy_area`] builds one that does.
    fn levy_increment(&self, s: f64, t: f64) -> Result<LevyIncrement> {
        let _ = (s, t);
        Err(no_levy_area())
    }
}

/// The error of a path without Lévy area asked for one.
fn no_levy_area() -> candle_core::Error {
    SolverError::InvalidOptions(
        "this Brownian path gives no space-time Levy area: build the tree with \
         `VirtualBrownianTree::with_levy_area`"
            .into(),
    )
    .into()
}

/// A Brownian increment over `[s, t]` and its space-time Lévy area (Foster, Lyons &
/// Oberhauser 2020; diffrax's `SpaceTimeLevyArea`):
/// `H = (1/h) ∫ₛᵗ (W(r) − W(s) − (r − s)/h · (W(t) − W(s))) dr`, `h = t − s`.
///
/// `H` is the signed area between the path and the chord over the interval, per unit time:
/// a normal of variance `h/12`, independent of the increment. It is what a step needs
/// beyond the increment to reach strong order 3/2 on SDEs with additive noise:
/// `∫ₛᵗ (W(r) − W(s)) dr = h (ΔW/2 + H)`.
#[derive(Clone, Debug)]
pub struct LevyIncrement {
    /// `W(t) − W(s)`.
    pub dw: Tensor,
    /// The space-time Lévy area `H` of the interval, the shape of `dw`.
    pub area: Tensor,
}

/// A Brownian motion on `[t0, t1]` drawn on demand from a seed (a *virtual Brownian tree*):
/// `W(t0) = 0`, `W(t1)` a normal sample of variance `t1 − t0`, and `W` anywhere inside by
/// bisection with Brownian bridges, each midpoint drawn from a counter-based generator keyed
/// by the seed and the midpoint's place in the tree. Nothing is stored but the last query's
/// path down the tree (so that queries at neighbouring times, as a solve makes them, cost a
/// few bisections each) and the last three answers; the same seed gives the same path on
/// every device and in every order of queries.
///
/// [`VirtualBrownianTree::with_levy_area`] makes the tree carry `∫ W` too, for the
/// space-time Lévy areas ([`BrownianPath::levy_increment`]) that the methods for additive
/// noise take.
///
/// The values are exact samples of one Brownian path at the dyadic points of `[t0, t1]`
/// down to intervals of length `tol`; inside such an interval `W(t)` is one more bridge
/// sample, so two times closer than `tol` are not quite independent. Steps of
/// `(t1 − t0) / 2^k` with `2^-k (t1 − t0) ≥ tol` only meet dyadic points: solves with
/// different step sizes then see the same path exactly, as convergence studies need.
///
/// Every component of `W` is an independent Brownian motion.
///
/// ```
/// use candle_core::{DType, Device};
/// use node_solvers::{BrownianPath, VirtualBrownianTree};
/// # fn main() -> candle_core::Result<()> {
/// let bm = VirtualBrownianTree::new(0.0, 1.0, 1e-4, (2, 3), 7, DType::F64, &Device::Cpu)?;
/// let a = bm.increment(0.0, 0.5)?;
/// let b = bm.increment(0.5, 1.0)?;
/// let whole = bm.increment(0.0, 1.0)?;
/// let gap = (a + b - whole)?.abs()?.max_all()?.to_scalar::<f64>()?;
/// assert!(gap < 1e-12);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct VirtualBrownianTree {
    t0: f64,
    t1: f64,
    tol: f64,
    shape: Shape,
    dtype: DType,
    device: Device,
    seed: u64,
    /// Whether the tree carries `K(t) = ∫ W` beside `W` (for the Lévy area).
    levy: bool,
    /// The last query's path down the tree and its answer.
    path: Mutex<Path>,
}

/// What a tree keeps between queries.
#[derive(Clone, Debug)]
struct Path {
    /// Each interval down to the last query's, with `W` at its ends.
    nodes: Vec<Node>,
    /// The last few queries and their answers, the latest last: a solve asks for each
    /// step's end twice, as the end of one step and the start of the next, and an adaptive
    /// step by step doubling asks for its start and end again after its midpoint.
    last: Vec<(f64, Point)>,
}

/// `W` at one time and, in a tree with Lévy area, `K = ∫ W` from `t0` (else empty).
#[derive(Clone, Debug)]
struct Point {
    w: Vec<f64>,
    k: Vec<f64>,
}

/// A clone is the same path (same seed and span), with its own copy of the last query's
/// path down the tree.
impl Clone for VirtualBrownianTree {
    fn clone(&self) -> Self {
        let path = self.path.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Self {
            t0: self.t0,
            t1: self.t1,
            tol: self.tol,
            shape: self.shape.clone(),
            dtype: self.dtype,
            device: self.device.clone(),
            seed: self.seed,
            levy: self.levy,
            path: Mutex::new(path),
        }
    }
}

#[derive(Clone, Debug)]
struct Node {
    /// Heap index of the interval: 1 for `[t0, t1]`, `2k` and `2k + 1` for the halves of `k`.
    id: u64,
    s: f64,
    u: f64,
    at_s: Point,
    at_u: Point,
}

/// How many recent queries a tree remembers.
const REMEMBERED: usize = 3;

/// Deepest level of the tree (a heap index must fit in 63 bits).
const MAX_DEPTH: u32 = 60;

impl VirtualBrownianTree {
    /// A Brownian motion on `[t0, t1]` of the given shape, dtype and device, resolved down to
    /// intervals of length `tol`, drawn from `seed`.
    ///
    /// # Errors
    /// `t0 ≥ t1` or a time not finite; `tol` not in `(0, t1 − t0]` or so small that the tree
    /// would be deeper than 60 levels; a dtype that is not a float.
    pub fn new(
        t0: f64,
        t1: f64,
        tol: f64,
        shape: impl Into<Shape>,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if !(t0.is_finite() && t1.is_finite() && t0 < t1) {
            return Err(SolverError::InvalidOptions(format!(
                "a Brownian motion needs finite t0 < t1, got [{t0}, {t1}]"
            ))
            .into());
        }
        let span = t1 - t0;
        if !(tol > 0.0 && tol <= span && (span / tol).log2() <= MAX_DEPTH as f64) {
            return Err(SolverError::InvalidOptions(format!(
                "the Brownian tree's tolerance must be in (0, t1 - t0] and at least \
                 (t1 - t0) / 2^{MAX_DEPTH}, got {tol:e} on [{t0}, {t1}]"
            ))
            .into());
        }
        if !dtype.is_float() {
            return Err(SolverError::InvalidOptions(format!(
                "a Brownian motion needs a float dtype, got {dtype:?}"
            ))
            .into());
        }
        let shape = shape.into();
        let n = shape.elem_count();
        let root = Node {
            id: 1,
            s: t0,
            u: t1,
            at_s: Point {
                w: vec![0.0; n],
                k: Vec::new(),
            },
            at_u: Point {
                w: normals(seed, 1, 0, n).map(|z| z * span.sqrt()).collect(),
                k: Vec::new(),
            },
        };
        Ok(Self {
            t0,
            t1,
            tol,
            shape,
            dtype,
            device: device.clone(),
            seed,
            levy: false,
            path: Mutex::new(Path {
                nodes: vec![root],
                last: Vec::new(),
            }),
        })
    }

    /// The same tree carrying the time integral `K(t) = ∫ W` beside `W`, so that
    /// [`BrownianPath::levy_increment`] gives each interval's space-time Lévy area, as the
    /// methods for additive noise need (diffrax's `levy_area=SpaceTimeLevyArea`).
    ///
    /// Each bisection then draws `W` and `K` at the midpoint jointly, given both at the
    /// interval's ends, so the path's increments differ from those of the tree without the
    /// area (the value at `t1` is the same). Every interval's area comes from `K` at its
    /// ends: the areas of adjacent intervals and of their union agree exactly, whatever the
    /// steps. Inside the smallest intervals (below `tol`) each query is one more draw given
    /// the interval's ends, as for `W` alone. A query costs twice the normals.
    ///
    /// The area of an interval of length `h` is a difference of `K` at its ends over `h`:
    /// its relative rounding error is of the order of `1e-16 · ((t1 − t0)/h)^{3/2}` (an
    /// estimate: `K` is of the order of `(t1 − t0)^{3/2}`, the area of `√h`), so about
    /// 1e-7 for steps a millionth of the span.
    pub fn with_levy_area(mut self) -> Self {
        if self.levy {
            return self;
        }
        let span = self.t1 - self.t0;
        let n = self.shape.elem_count();
        // (W(t1), K(t1)): W = √h z₁, K = h^{3/2} (z₁/2 + z₂/√12), covariance
        // [[h, h²/2], [h²/2, h³/3]].
        let z2: Vec<f64> = normals(self.seed, 1, 2, n).collect();
        let path = self.path.get_mut().unwrap_or_else(|e| e.into_inner());
        let root = &mut path.nodes[0];
        root.at_s.k = vec![0.0; n];
        root.at_u.k = root
            .at_u
            .w
            .iter()
            .zip(&z2)
            .map(|(w, z)| span * (0.5 * w + span.sqrt() * z / 12f64.sqrt()))
            .collect();
        path.nodes.truncate(1);
        path.last.clear();
        self.levy = true;
        self
    }

    /// Whether the tree gives Lévy areas ([`VirtualBrownianTree::with_levy_area`]).
    pub fn has_levy_area(&self) -> bool {
        self.levy
    }

    /// The tolerance: the length of the tree's smallest intervals.
    pub fn tol(&self) -> f64 {
        self.tol
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The dtype of its values.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of its values.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `W(t)`, with `W(t0) = 0`.
    ///
    /// # Errors
    /// `t` outside `[t0, t1]` or not finite.
    pub fn value(&self, t: f64) -> Result<Tensor> {
        let p = self.host_value(t)?;
        self.to_tensor(p.w)
    }

    fn to_tensor(&self, w: Vec<f64>) -> Result<Tensor> {
        Tensor::from_vec(w, self.shape.clone(), &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)
    }

    fn check_time(&self, t: f64) -> Result<()> {
        if !(t.is_finite() && t >= self.t0 && t <= self.t1) {
            return Err(SolverError::InvalidTimes(format!(
                "t = {t} is outside the Brownian motion's span [{}, {}]",
                self.t0, self.t1
            ))
            .into());
        }
        Ok(())
    }

    /// `W(t)` (and `K(t)` with Lévy area) on the host, in f64.
    fn host_value(&self, t: f64) -> Result<Point> {
        self.check_time(t)?;
        let mut cache = self.path.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = cache.last.iter().find(|(s, _)| *s == t) {
            return Ok(p.clone());
        }
        let p = self.descend(&mut cache.nodes, t);
        if cache.last.len() == REMEMBERED {
            cache.last.remove(0);
        }
        cache.last.push((t, p.clone()));
        Ok(p)
    }

    /// `W(t)` (and `K(t)`) by bisection from the deepest interval of `path` that holds `t`,
    /// leaving the path down to `t`'s interval in `path`.
    fn descend(&self, path: &mut Vec<Node>, t: f64) -> Point {
        // Climb to the deepest interval of the last path that holds `t`.
        while path.len() > 1 {
            let last = &path[path.len() - 1];
            if last.s <= t && t <= last.u {
                break;
            }
            path.pop();
        }
        loop {
            let node = &path[path.len() - 1];
            if t == node.s {
                return node.at_s.clone();
            }
            if t == node.u {
                return node.at_u.clone();
            }
            let (s, u) = (node.s, node.u);
            let m = 0.5 * (s + u);
            let depth = 63 - node.id.leading_zeros();
            if u - s <= self.tol || depth >= MAX_DEPTH || m <= s || m >= u {
                // A leaf: one bridge sample at `t` itself.
                return self.bridge(node, t, false, node.id, [1, 3]);
            }
            let at_m = self.bridge(node, m, true, 2 * node.id, [0, 2]);
            let child = if t < m {
                Node {
                    id: 2 * node.id,
                    s,
                    u: m,
                    at_s: node.at_s.clone(),
                    at_u: at_m,
                }
            } else {
                Node {
                    id: 2 * node.id + 1,
                    s: m,
                    u,
                    at_s: at_m,
                    at_u: node.at_u.clone(),
                }
            };
            path.push(child);
        }
    }

    /// A draw of the path at `t` inside `node`'s interval given its ends (`t` its midpoint
    /// when `mid`), from the normals keyed by `(id, streams[0])` (and `(id, streams[1])`
    /// for `K`).
    fn bridge(&self, node: &Node, t: f64, mid: bool, id: u64, streams: [u64; 2]) -> Point {
        let n = self.shape.elem_count();
        let (s, u) = (node.s, node.u);
        let h = u - s;
        let (a, b) = ((t - s) / h, (u - t) / h);
        let (ws, wu) = (&node.at_s.w, &node.at_u.w);
        if !self.levy {
            let z = normals(self.seed, id, streams[0], n);
            let w = if mid {
                // W(m) = (W(s) + W(u)) / 2 + √(h / 4) · z.
                let sd = (0.25 * h).sqrt();
                ws.iter()
                    .zip(wu)
                    .zip(z)
                    .map(|((ws, wu), z)| 0.5 * (ws + wu) + sd * z)
                    .collect()
            } else {
                // W(t) = b W(s) + a W(u) + √((t − s) b) · z.
                let sd = ((t - s) * b).sqrt();
                ws.iter()
                    .zip(wu)
                    .zip(z)
                    .map(|((ws, wu), z)| b * ws + a * wu + sd * z)
                    .collect()
            };
            return Point { w, k: Vec::new() };
        }
        // In units of the interval (`θ = a`, W scaled by √h, K by h^{3/2}), the increments
        // `(B, J)` of `(W, ∫W)` from `s` to `t` given those to `u`, `(ŵ, ĵ)`, have mean
        // `B = (3θ² − 2θ) ŵ + 6θ(1 − θ) ĵ`, `J = θ²(θ − 1) ŵ + θ²(3 − 2θ) ĵ` and covariance
        // `[[θ(1−θ)(1−3θ+3θ²), θ²(1−θ)²(½−θ)], [·, θ³(1−θ)³/3]]`.
        let th = a;
        let c11 = th * (1.0 - th) * (1.0 - 3.0 * th + 3.0 * th * th);
        let c12 = th * th * (1.0 - th) * (1.0 - th) * (0.5 - th);
        let c22 = (th * (1.0 - th)).powi(3) / 3.0;
        let l11 = c11.max(0.0).sqrt();
        let l21 = if l11 > 0.0 { c12 / l11 } else { 0.0 };
        let l22 = (c22 - l21 * l21).max(0.0).sqrt();
        let (sh, h32) = (h.sqrt(), h * h.sqrt());
        let (ks, ku) = (&node.at_s.k, &node.at_u.k);
        let mut w = Vec::with_capacity(n);
        let mut k = Vec::with_capacity(n);
        let z1 = normals(self.seed, id, streams[0], n);
        let z2 = normals(self.seed, id, streams[1], n);
        for (i, (z1, z2)) in z1.zip(z2).enumerate() {
            let wh = (wu[i] - ws[i]) / sh;
            let jh = (ku[i] - ks[i] - ws[i] * h) / h32;
            let bm = (3.0 * th * th - 2.0 * th) * wh + 6.0 * th * (1.0 - th) * jh;
            let jm = th * th * (th - 1.0) * wh + th * th * (3.0 - 2.0 * th) * jh;
            let bt = bm + l11 * z1;
            let jt = jm + l21 * z1 + l22 * z2;
            w.push(ws[i] + sh * bt);
            k.push(ks[i] + ws[i] * (t - s) + h32 * jt);
        }
        Point { w, k }
    }

    /// The Lévy increment over `[s, t]` on the host.
    fn host_levy(&self, s: f64, t: f64) -> Result<(Vec<f64>, Vec<f64>)> {
        if !self.levy {
            return Err(no_levy_area());
        }
        let (lo, hi) = if s <= t { (s, t) } else { (t, s) };
        let (a, b) = (self.host_value(lo)?, self.host_value(hi)?);
        let h = hi - lo;
        let sign = if s <= t { 1.0 } else { -1.0 };
        let dw = b.w.iter().zip(&a.w).map(|(b, a)| sign * (b - a)).collect();
        let area = if h > 0.0 {
            (0..a.w.len())
                .map(|i| (b.k[i] - a.k[i]) / h - 0.5 * (a.w[i] + b.w[i]))
                .collect()
        } else {
            vec![0.0; a.w.len()]
        };
        Ok((dw, area))
    }
}

impl BrownianPath for VirtualBrownianTree {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn span(&self) -> (f64, f64) {
        (self.t0, self.t1)
    }

    fn increment(&self, s: f64, t: f64) -> Result<Tensor> {
        let (ws, wt) = (self.host_value(s)?.w, self.host_value(t)?.w);
        self.to_tensor(wt.iter().zip(&ws).map(|(b, a)| b - a).collect())
    }

    fn levy_increment(&self, s: f64, t: f64) -> Result<LevyIncrement> {
        let (dw, area) = self.host_levy(s, t)?;
        Ok(LevyIncrement {
            dw: self.to_tensor(dw)?,
            area: self.to_tensor(area)?,
        })
    }
}

/// SplitMix64's finalizer: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform in `(0, 1)` from 64 random bits (53 of them).
fn unit(bits: u64) -> f64 {
    ((bits >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// `n` independent standard normals, a function of `(seed, id, stream)` only: a
/// counter-based generator (SplitMix64 on the key and the counter) and Box–Muller, two
/// normals per pair of uniforms.
pub(crate) fn normals(seed: u64, id: u64, stream: u64, n: usize) -> impl Iterator<Item = f64> {
    let key = mix(mix(mix(seed ^ 0x6a09_e667_f3bc_c909) ^ id) ^ stream);
    (0..n.div_ceil(2))
        .flat_map(move |j| {
            let a = mix(key ^ mix(2 * j as u64 + 0x9e37_79b9_7f4a_7c15));
            let b = mix(a ^ 0xd1b5_4a32_d192_ed03);
            let r = (-2.0 * unit(a).ln()).sqrt();
            let (s, c) = (std::f64::consts::TAU * unit(b)).sin_cos();
            [r * c, r * s]
        })
        .take(n)
}

#[cfg(test)]
mod tests {
    use super::normals;

    #[test]
    fn normals_are_standard_and_keyed() {
        let n = 200_000;
        let z: Vec<f64> = normals(3, 5, 0, n).collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = z.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n as f64 / var.powi(2);
        // Standard errors: 1/√n ≈ 0.0022 for the mean, √(2/n) ≈ 0.0032 for the variance,
        // √(24/n) ≈ 0.011 for the kurtosis (3 for a normal).
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
        // Neighbouring keys give uncorrelated draws.
        for (id, stream) in [(6, 0), (5, 1)] {
            let w: Vec<f64> = normals(3, id, stream, n).collect();
            let corr = z.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / n as f64;
            assert!(
                corr.abs() < 0.01,
                "correlation {corr} with key ({id}, {stream})"
            );
        }
        // A prefix of a longer draw is the shorter draw.
        let short: Vec<f64> = normals(3, 5, 0, 7).collect();
        assert_eq!(short, z[..7]);
    }
}

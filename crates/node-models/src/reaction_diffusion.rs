//! Reaction–diffusion systems on a 1-D grid with a learned reaction,
//! `∂y_c/∂t = D_c ∂²y_c/∂x² + r_c(y)`: the diffusion known, the reaction a network applied at
//! each grid point ("universal differential equations", Rackauckas et al. 2020).
//!
//! The diffusion is stiff (its eigenvalues reach `−4 D (N+1)²` on `N` points) and linear;
//! the reaction is not stiff and is where the parameters are. [`Diffusion1d`] gives its
//! Jacobian in closed form, so that an IMEX method ([`node_solvers::Method::KenCarp4`]) on
//! `Split::new(reaction, diffusion)` solves the diffusion implicitly and only evaluates the
//! network, whose steps are then held by neither: `train-reaction-diffusion` trains one.
//!
//! On a 2-D grid ([`Diffusion2d`]) the diffusion has no Jacobian to offer (`C n² × C n²` per
//! system, too large for a dense LU): solve it with an explicit method, the
//! Runge–Kutta–Chebyshev [`node_solvers::Method::Rkc`] above all, whose stages grow with the
//! square root of the stiffness.
//!
//! # Shapes
//! States are `[C, N]` (channels, grid points) or a batch `[B, C, N]`; on an `n × n` grid the
//! points are flattened row by row, `N = n²`, so that [`PointwiseReaction`] serves both.

use crate::layers::{Activation, Mlp};
use candle_core::{Device, Result, Tensor, Var};
use candle_nn::{Module, VarBuilder};
use node_adjoint::ParamVectorField;
use node_solvers::{Jacobian, VectorField};

/// Diffusion of `C` channels on a 1-D grid of `N` points: `D_c (y_(i−1) − 2 y_i + y_(i+1)) / Δx²`.
/// Either on the interior points of `(0, 1)` (`Δx = 1/(N+1)`) with fixed (Dirichlet) values
/// at both ends standing in for the neighbours past them ([`Diffusion1d::new`]), or on a
/// periodic grid of `[0, 1)` (`Δx = 1/N`), the last point the first one's neighbour
/// ([`Diffusion1d::periodic`]; it conserves each channel's sum). Affine in the state; no
/// parameters.
#[derive(Clone, Debug)]
pub struct Diffusion1d {
    points: usize,
    coeffs: Vec<f64>,
    /// The end values, one per channel; `None` for a periodic grid.
    ends: Option<Vec<f64>>,
}

impl Diffusion1d {
    /// Diffusion coefficients `coeffs` (one per channel, `D_c ≥ 0`) and end values `ends`
    /// (one per channel) on `points` interior points.
    ///
    /// # Errors
    /// No points, no channels, `coeffs` and `ends` of different lengths, a negative or
    /// non-finite coefficient, a non-finite end value.
    pub fn new(points: usize, coeffs: &[f64], ends: &[f64]) -> Result<Self> {
        if coeffs.len() != ends.len() {
            candle_core::bail!(
                "diffusion: {} coefficients and {} end values: needs one end value per channel",
                coeffs.len(),
                ends.len()
            );
        }
        if ends.iter().any(|e| !e.is_finite()) {
            candle_core::bail!("diffusion: end values must be finite, got {ends:?}");
        }
        Self::checked(points, coeffs, Some(ends.to_vec()))
    }

    /// Diffusion coefficients `coeffs` (one per channel, `D_c ≥ 0`) on a periodic grid of
    /// `points` points.
    ///
    /// # Errors
    /// No points, no channels, a negative or non-finite coefficient.
    pub fn periodic(points: usize, coeffs: &[f64]) -> Result<Self> {
        Self::checked(points, coeffs, None)
    }

    fn checked(points: usize, coeffs: &[f64], ends: Option<Vec<f64>>) -> Result<Self> {
        if points == 0 || coeffs.is_empty() {
            candle_core::bail!(
                "diffusion: {points} points and {} coefficients: needs points and channels",
                coeffs.len()
            );
        }
        if coeffs.iter().any(|d| !d.is_finite() || *d < 0.0) {
            candle_core::bail!(
                "diffusion: coefficients must be finite and non-negative, got {coeffs:?}"
            );
        }
        Ok(Self {
            points,
            coeffs: coeffs.to_vec(),
            ends,
        })
    }

    /// Grid points `N`.
    pub fn points(&self) -> usize {
        self.points
    }

    /// Channels `C`.
    pub fn channels(&self) -> usize {
        self.coeffs.len()
    }

    /// The largest magnitude of the diffusion's eigenvalues, `≤ 4 max(D) / Δx²`: an explicit
    /// method's steps are held to about `2.8 / stiffness` (dopri5's stability limit).
    pub fn stiffness(&self) -> f64 {
        let n = self.points as f64;
        // The eigenvalues are `−2 D (1 − cos θ_k) / Δx²`: `θ_k = kπ/(N+1)`, k = 1..N, with
        // fixed ends; `θ_k = 2πk/N`, k = 0..N−1, on a periodic grid.
        let theta = match self.ends {
            Some(_) => std::f64::consts::PI * n / (n + 1.0),
            None => 2.0 * std::f64::consts::PI * (self.points / 2) as f64 / n,
        };
        let dmax = self.coeffs.iter().fold(0.0f64, |a, &b| a.max(b));
        2.0 * dmax * (1.0 - theta.cos()) / (self.dx() * self.dx())
    }

    /// The grid spacing: `1/(N+1)` with fixed ends, `1/N` on a periodic grid.
    fn dx(&self) -> f64 {
        match self.ends {
            Some(_) => 1.0 / (self.points + 1) as f64,
            None => 1.0 / self.points as f64,
        }
    }

    /// `D_c / Δx²`, one per channel.
    fn scales(&self) -> Vec<f64> {
        let inv = 1.0 / (self.dx() * self.dx());
        self.coeffs.iter().map(|d| d * inv).collect()
    }

    /// Checks that `y` is `[C, N]` or `[B, C, N]`; returns the batch (1 for `[C, N]`).
    fn batch(&self, y: &Tensor) -> Result<usize> {
        let (c, n) = (self.channels(), self.points);
        match y.dims() {
            [cc, nn] if (*cc, *nn) == (c, n) => Ok(1),
            [b, cc, nn] if (*cc, *nn) == (c, n) => Ok(*b),
            d => candle_core::bail!(
                "diffusion of {c} channels on {n} points: the state must be [{c}, {n}] or [B, {c}, {n}], got {d:?}"
            ),
        }
    }

    /// The `[C·N, C·N]` Jacobian of one system (block diagonal over the channels), row-major.
    fn block(&self) -> Vec<f64> {
        let (c, n) = (self.channels(), self.points);
        let m = c * n;
        let periodic = self.ends.is_none();
        let scales = self.scales();
        let mut jac = vec![0.0; m * m];
        for (ch, s) in scales.iter().enumerate() {
            for i in 0..n {
                let r = ch * n + i;
                jac[r * m + r] -= 2.0 * s;
                // The neighbours inside the grid, and on a periodic one those across its
                // ends (added up: on one or two points they are the point itself or the
                // other one twice).
                let left = if i > 0 {
                    Some(i - 1)
                } else {
                    periodic.then(|| n - 1)
                };
                let right = if i + 1 < n {
                    Some(i + 1)
                } else {
                    periodic.then_some(0)
                };
                for j in [left, right].into_iter().flatten() {
                    jac[r * m + ch * n + j] += s;
                }
            }
        }
        jac
    }
}

impl VectorField for Diffusion1d {
    fn eval(&self, _t: f64, y: &Tensor) -> Result<Tensor> {
        self.batch(y)?;
        let rank = y.rank();
        let ends = match &self.ends {
            Some(e) => Some(per_channel(e, y, rank - 2)?),
            None => None,
        };
        let lap = second_difference(y, rank - 1, ends.as_ref())?;
        lap.broadcast_mul(&per_channel(&self.scales(), y, rank - 2)?)
    }

    /// In closed form: [`Jacobian::Dense`] (block diagonal over the batch and the channels),
    /// [`Jacobian::Batched`] for a `[B, C, N]` state (`[B, C·N, C·N]`); `None` for the others.
    fn jacobian(&self, _t: f64, y: &Tensor, structure: Jacobian) -> Result<Option<Tensor>> {
        let b = self.batch(y)?;
        let m = self.channels() * self.points;
        let block = self.block();
        let jac = match structure {
            Jacobian::Batched if y.rank() == 3 => {
                let all: Vec<f64> = std::iter::repeat_n(block, b).flatten().collect();
                Tensor::from_vec(all, (b, m, m), &Device::Cpu)?
            }
            Jacobian::Dense => {
                let size = b * m;
                let mut all = vec![0.0; size * size];
                for k in 0..b {
                    for r in 0..m {
                        let row = (k * m + r) * size + k * m;
                        all[row..row + m].copy_from_slice(&block[r * m..(r + 1) * m]);
                    }
                }
                Tensor::from_vec(all, (size, size), &Device::Cpu)?
            }
            _ => return Ok(None),
        };
        Ok(Some(jac.to_dtype(y.dtype())?.to_device(y.device())?))
    }
}

/// No parameters: the diffusion is the known part.
impl ParamVectorField for Diffusion1d {
    fn params(&self) -> Vec<Var> {
        vec![]
    }
}

/// `values` (one per channel) as a tensor of `y`'s rank, dtype and device, the channels along
/// `channel_axis` and 1 elsewhere: to broadcast against `y`.
fn per_channel(values: &[f64], y: &Tensor, channel_axis: usize) -> Result<Tensor> {
    let mut shape = vec![1; y.rank()];
    shape[channel_axis] = values.len();
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu)?
        .to_dtype(y.dtype())?
        .to_device(y.device())
}

/// `y_(i−1) − 2 y_i + y_(i+1)` along `axis`, the neighbours past the ends the fixed `ends`
/// ([`per_channel`]'s, broadcast along `axis`) or, for `None`, those across the periodic grid.
fn second_difference(y: &Tensor, axis: usize, ends: Option<&Tensor>) -> Result<Tensor> {
    let n = y.dim(axis)?;
    let padded = match ends {
        Some(ends) => {
            let mut end_shape = y.dims().to_vec();
            end_shape[axis] = 1;
            let ends = ends.broadcast_as(end_shape)?;
            Tensor::cat(&[&ends, y, &ends], axis)?
        }
        None => {
            let last = y.narrow(axis, n - 1, 1)?;
            let first = y.narrow(axis, 0, 1)?;
            Tensor::cat(&[&last, y, &first], axis)?
        }
    };
    let sides = (padded.narrow(axis, 0, n)? + padded.narrow(axis, 2, n)?)?;
    sides - y.affine(2.0, 0.0)?
}

/// Diffusion of `C` channels on a grid of `rows × cols` points, the five-point Laplacian
/// `D_c ((y_(i−1,j) − 2 y_(i,j) + y_(i+1,j)) / Δy² + (y_(i,j−1) − 2 y_(i,j) + y_(i,j+1)) / Δx²)`,
/// on the interior points of `(0, 1)²` with fixed values all round (`Δx = 1/(cols+1)`,
/// `Δy = 1/(rows+1)`; [`Diffusion2d::new`], [`Diffusion2d::rectangular`]) or on a periodic
/// grid of `[0, 1)²` (`Δx = 1/cols`, `Δy = 1/rows`; [`Diffusion2d::periodic`],
/// [`Diffusion2d::periodic_rectangular`]). The state holds the grid's points row by row:
/// `[C, rows·cols]` or `[B, C, rows·cols]`, point `(i, j)` at `i·cols + j` (an image of
/// height `rows` and width `cols`, flattened). Affine in the state; no parameters; no
/// Jacobian in closed form (an implicit method would build its `C·rows·cols` square one by
/// differences): for explicit methods, [`node_solvers::Method::Rkc`] above all.
#[derive(Clone, Debug)]
pub struct Diffusion2d {
    /// The same diffusion along a row (`cols` points) and along a column (`rows` points):
    /// the coefficients, the ends and the spacings.
    along_row: Diffusion1d,
    along_col: Diffusion1d,
}

impl Diffusion2d {
    /// Diffusion coefficients `coeffs` (one per channel, `D_c ≥ 0`) and boundary values `ends`
    /// (one per channel) on `side × side` interior points.
    ///
    /// # Errors
    /// As [`Diffusion1d::new`].
    pub fn new(side: usize, coeffs: &[f64], ends: &[f64]) -> Result<Self> {
        Self::rectangular(side, side, coeffs, ends)
    }

    /// As [`Diffusion2d::new`] on `rows × cols` interior points.
    ///
    /// # Errors
    /// As [`Diffusion1d::new`], for either side.
    pub fn rectangular(rows: usize, cols: usize, coeffs: &[f64], ends: &[f64]) -> Result<Self> {
        Ok(Self {
            along_row: Diffusion1d::new(cols, coeffs, ends)?,
            along_col: Diffusion1d::new(rows, coeffs, ends)?,
        })
    }

    /// Diffusion coefficients `coeffs` on a periodic grid of `side × side` points.
    ///
    /// # Errors
    /// As [`Diffusion1d::periodic`].
    pub fn periodic(side: usize, coeffs: &[f64]) -> Result<Self> {
        Self::periodic_rectangular(side, side, coeffs)
    }

    /// As [`Diffusion2d::periodic`] on `rows × cols` points.
    ///
    /// # Errors
    /// As [`Diffusion1d::periodic`], for either side.
    pub fn periodic_rectangular(rows: usize, cols: usize, coeffs: &[f64]) -> Result<Self> {
        Ok(Self {
            along_row: Diffusion1d::periodic(cols, coeffs)?,
            along_col: Diffusion1d::periodic(rows, coeffs)?,
        })
    }

    /// The grid's rows and columns.
    pub fn shape(&self) -> (usize, usize) {
        (self.along_col.points(), self.along_row.points())
    }

    /// Points of the grid, `rows · cols`: the state's last dimension.
    pub fn points(&self) -> usize {
        self.along_col.points() * self.along_row.points()
    }

    /// Channels `C`.
    pub fn channels(&self) -> usize {
        self.along_row.channels()
    }

    /// The largest magnitude of the diffusion's eigenvalues, the sum of the two sides' ones
    /// (`≤ 4 max(D) (1/Δx² + 1/Δy²)`): [`node_solvers::SolveOptions::spectral_radius`] for
    /// `rkc`.
    pub fn stiffness(&self) -> f64 {
        self.along_row.stiffness() + self.along_col.stiffness()
    }
}

impl VectorField for Diffusion2d {
    fn eval(&self, _t: f64, y: &Tensor) -> Result<Tensor> {
        let c = self.channels();
        let (rows, cols) = self.shape();
        let m = rows * cols;
        let grid = match y.dims() {
            [cc, p] if (*cc, *p) == (c, m) => y.reshape((c, rows, cols))?,
            [b, cc, p] if (*cc, *p) == (c, m) => y.reshape((*b, c, rows, cols))?,
            d => candle_core::bail!(
                "diffusion of {c} channels on a {rows} × {cols} grid: the state must be [{c}, {m}] or [B, {c}, {m}] (the grid row by row), got {d:?}"
            ),
        };
        let rank = grid.rank();
        // The boundary values, uploaded once for both directions.
        let ends = match &self.along_row.ends {
            Some(e) => Some(per_channel(e, &grid, rank - 3)?),
            None => None,
        };
        let across = second_difference(&grid, rank - 1, ends.as_ref())?
            .broadcast_mul(&per_channel(&self.along_row.scales(), &grid, rank - 3)?)?;
        let down = second_difference(&grid, rank - 2, ends.as_ref())?
            .broadcast_mul(&per_channel(&self.along_col.scales(), &grid, rank - 3)?)?;
        (across + down)?.reshape(y.shape())
    }
}

/// No parameters: the diffusion is the known part.
impl ParamVectorField for Diffusion2d {
    fn params(&self) -> Vec<Var> {
        vec![]
    }
}

/// A reaction `r(y)` learned as an MLP applied at each grid point to the `C` channels there,
/// `C → width → … → C`, its input centred by `center` (one value per channel, where the
/// states sit). Time-independent.
#[derive(Clone, Debug)]
pub struct PointwiseReaction {
    mlp: Mlp,
    vars: Vec<Var>,
    center: Vec<f64>,
}

impl PointwiseReaction {
    /// The network (`depth` hidden layers of `width`, `activation`), parameters under `vb`.
    ///
    /// # Errors
    /// No channels, no width or depth, a non-finite centre; those of `vb`.
    pub fn new(
        center: &[f64],
        width: usize,
        depth: usize,
        activation: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = center.len();
        if c == 0 || width == 0 || depth == 0 || center.iter().any(|v| !v.is_finite()) {
            candle_core::bail!(
                "reaction network: needs channels, a width and a depth, and a finite centre; got {c} channels, width {width}, depth {depth}, centre {center:?}"
            );
        }
        let mlp = Mlp::new(c, c, width, depth, activation, false, vb)?;
        let vars = mlp.vars()?;
        Ok(Self {
            mlp,
            vars,
            center: center.to_vec(),
        })
    }

    /// Channels `C`.
    pub fn channels(&self) -> usize {
        self.center.len()
    }
}

impl VectorField for PointwiseReaction {
    fn eval(&self, _t: f64, y: &Tensor) -> Result<Tensor> {
        let c = self.channels();
        let rank = y.rank();
        if !(2..=3).contains(&rank) || y.dim(rank - 2)? != c {
            candle_core::bail!(
                "reaction of {c} channels: the state must be [{c}, N] or [B, {c}, N], got {:?}",
                y.dims()
            );
        }
        // Channels last, one row per grid point.
        let last = y.transpose(rank - 2, rank - 1)?;
        let rows_shape = last.dims().to_vec();
        let center = Tensor::from_vec(self.center.clone(), c, &Device::Cpu)?
            .to_dtype(y.dtype())?
            .to_device(y.device())?;
        let x = last.reshape(((), c))?.broadcast_sub(&center)?;
        let r = self.mlp.forward(&x)?.reshape(rows_shape)?;
        r.transpose(rank - 2, rank - 1)?.contiguous()
    }
}

/// The network's weights and biases.
impl ParamVectorField for PointwiseReaction {
    fn params(&self) -> Vec<Var> {
        self.vars.clone()
    }
}

//! Newton's method for the stages of the implicit (ESDIRK) methods.
//!
//! Each implicit stage solves `z = base + hγ f(t_i, z)` (`f` the implicit part of a split
//! field under an IMEX method). The iteration is simplified Newton
//! (as Hairer & Wanner's RADAU5 and diffrax's `VeryChord`):
//! `(I − hγJ) δ = −(z − base − hγ f(t_i, z))`, `z ← z + δ` (carried as the increment
//! `w = z − base`, see [`Newton::solve_stage`]), with the field's Jacobian
//! ([`VectorField::jacobian`]) or else a finite-difference one `J ≈ ∂f/∂y`, built at the
//! start of a step and kept for the following steps while the iterations converge well, and
//! the LU factors of `I − hγJ` kept while `hγ` is unchanged.
//! The iteration stops when `η ‖δ‖ ≤ κ`, with `η = θ / (1 − θ)` from the rate `θ` of
//! successive corrections and `‖·‖` the solve's error norm (Hairer & Wanner, *Solving
//! Ordinary Differential Equations II*, IV.8), and fails when it diverges (`θ ≥ 1`), stays
//! slow past ten iterations or meets a non-finite value: the step is then retried with a
//! fresh Jacobian, or shrunk.
//!
//! The Rosenbrock methods use the same Jacobian and factors for one linear solve per stage
//! and no iterations ([`Newton::rosenbrock_stage`]); they rebuild the Jacobian at every step.
//!
//! The linear algebra runs on the host in f64: each iteration reads the residual back (one
//! host read, counted in [`crate::SolverStats::host_reads`]) and uploads the correction.
//! That suits what implicit methods are for, stiff systems of modest size; the state itself
//! stays on its device.

use crate::error::SolverError;
use crate::field::VectorField;
use crate::options::{Atol, Jacobian, SolveOptions};
use crate::rk::{lincomb, Evaluator, Part};
use crate::solve::dtype_epsilon;
use candle_core::{DType, Device, Result, Tensor};

/// Most Newton iterations per stage.
const MAX_ITERS: usize = 10;
/// The iteration stops when the estimated remaining error is below `κ` in the error norm.
const KAPPA: f64 = 0.03;
/// A contraction rate above this makes the next step rebuild the Jacobian.
const SLOW: f64 = 0.1;

/// `Σ a_i b_i` in four interleaved partial sums, which the compiler vectorizes (one running
/// sum cannot be reordered).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Blocks of at least this size make an adaptive solve keep its step while it would grow by
/// less than a fifth, to keep the LU factors (as RADAU5 always does). Below it a
/// factorization costs less than the steps that keeping them adds. Measured on the CPU
/// (Robertson and the Brusselator, rtol 1e-6): on Robertson's blocks of 3 keeping steps took
/// up to 36% more steps for nothing; on the Brusselator with 16 or 32 components it made no
/// difference in time, with 64 it was mixed (kvaerno5 25% faster, kvaerno3 14% slower), with
/// 128 both were faster (by 26% and 13%), and with 256 it cut kvaerno3's factorizations from
/// 262 to 43 and its time by 58%, for 7% more steps.
const KEEP_STEPS_FROM: usize = 64;

/// The most entries the Jacobian's blocks may have together (2²⁷: with their LU factors,
/// 2 GiB of f64 on the host). A larger state is refused with a typed error before anything
/// is allocated.
const MAX_JACOBIAN_ENTRIES: usize = 1 << 27;

/// Host values `x` as a tensor of `like`'s shape, dtype and device.
fn upload(x: Vec<f64>, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(x, like.shape(), &Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())
}

/// The state of the Newton iterations of one solve: the Jacobian and its factors.
pub(crate) struct Newton {
    rtol: f64,
    /// One value, or one per component of the flattened state.
    atol: Vec<f64>,
    /// Blocks of the Jacobian and their size: the flattened state's first `blocks · size`
    /// components; the rest (with [`Jacobian::DensePrefix`] or [`Jacobian::Blocks`]) do not
    /// enter the field.
    blocks: usize,
    size: usize,
    /// The solve's Jacobian option, passed to [`VectorField::jacobian`].
    structure: Jacobian,
    /// `blocks` row-major `size × size` blocks.
    jac: Vec<f64>,
    /// The step start where `jac` was built.
    jac_t: Option<f64>,
    /// LU factors of `I − hγJ` with their row pivots, for `lu_hg`.
    lu: Vec<f64>,
    piv: Vec<usize>,
    lu_hg: f64,
    /// The step start `y_host` and `inv_scale` belong to.
    at: Option<f64>,
    y_host: Vec<f64>,
    /// `1 / (atol + rtol |y|)` at the step start.
    inv_scale: Vec<f64>,
    /// `η` carried from stage to stage.
    eta: f64,
    /// The last iterations converged slowly: rebuild the Jacobian at the next step.
    slow: bool,
    /// Machine epsilon of the state's dtype.
    eps: f64,
    /// The part of the field the stages solve for: the whole, or the implicit part of a
    /// split field under an IMEX method.
    part: Part,
    /// A Rosenbrock method: no iterations, and a fresh Jacobian at every step unless it is a
    /// W-method with `reuse > 1`.
    rosenbrock: bool,
    /// The most step starts a Rosenbrock method keeps one Jacobian for (1 but for W-methods).
    reuse: usize,
    /// Step starts the current Jacobian has served, and the last one counted.
    jac_steps: usize,
    counted_at: Option<f64>,
}

impl Newton {
    /// The Newton state of a solve with `opts`, when its method is implicit.
    pub(crate) fn for_method<F: VectorField + ?Sized>(
        ev: &Evaluator<'_, F>,
        opts: &SolveOptions,
        y0: &Tensor,
    ) -> Result<Option<Self>> {
        if opts.method.is_implicit() {
            Self::new(ev, opts, y0).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Checks the Jacobian option against the state and reads a per-component `atol`.
    fn new<F: VectorField + ?Sized>(
        ev: &Evaluator<'_, F>,
        opts: &SolveOptions,
        y0: &Tensor,
    ) -> Result<Self> {
        let n = y0.elem_count();
        let bad = |msg: String| -> Result<Self> { Err(SolverError::InvalidOptions(msg).into()) };
        // Newton's residuals and a Rosenbrock stage's finite differences in a half precision
        // are too coarse to converge on or to build a Jacobian from (measured on a stiff
        // linear system in f16: Rodas5P's steps shrank to nothing at every rtol up to 2e-2,
        // implicit Euler met inf, Kværnø 5 took 727 steps and 2381 rejections where f32 took
        // 13 and none; in bf16 Rodas5P was 16% off at rtol 8e-3).
        if matches!(y0.dtype(), DType::F16 | DType::BF16) {
            return bad(format!(
                "the implicit method `{}` needs an f32 or f64 state, got {:?}: solve in f32 (`y0.to_dtype(DType::F32)`)",
                opts.method,
                y0.dtype()
            ));
        }
        let (blocks, size) = match opts.jacobian {
            Jacobian::Dense => (1, n),
            Jacobian::Batched => match y0.dims().first() {
                Some(&b) if b > 0 => (b, n / b),
                _ => {
                    return bad(format!(
                        "a batched Jacobian needs a state with a leading batch dimension, got shape {:?}",
                        y0.shape()
                    ))
                }
            },
            Jacobian::DensePrefix(len) if len == 0 || len > n => {
                return bad(format!(
                    "Jacobian prefix length {len} must be in 1..={n} (the state's size)"
                ))
            }
            Jacobian::DensePrefix(len) => (1, len),
            Jacobian::Blocks { count, size }
                if count == 0 || size == 0 || count.checked_mul(size).is_none_or(|m| m > n) =>
            {
                return bad(format!(
                    "Jacobian blocks: {count} blocks of {size} components must be non-empty and fit the state's {n}"
                ))
            }
            Jacobian::Blocks { count, size } => (count, size),
        };
        // The blocks live on the host in f64, twice (the Jacobian and its LU factors).
        let entries = (size as u128) * (size as u128) * (blocks as u128);
        if entries > MAX_JACOBIAN_ENTRIES as u128 {
            let gib = entries as f64 * 16.0 / (1u64 << 30) as f64;
            let hint = if blocks == 1 {
                "use Jacobian::Batched or Jacobian::Blocks if the state holds independent systems, or an explicit method"
            } else {
                "use an explicit method, or smaller independent systems"
            };
            return bad(format!(
                "the implicit method `{}` would hold {blocks} Jacobian block(s) of {size} × {size} on the host ({gib:.1} GiB): {hint}",
                opts.method
            ));
        }
        let atol = match &opts.atol {
            Atol::Scalar(a) => vec![*a],
            Atol::PerComponent(t) => {
                let t = t.broadcast_as(y0.shape()).map_err(|_| {
                    SolverError::InvalidOptions(format!(
                        "atol of shape {:?} does not broadcast to the state's shape {:?}",
                        t.shape(),
                        y0.shape()
                    ))
                })?;
                ev.read(&t.contiguous()?)?
            }
        };
        let eps = dtype_epsilon(y0.dtype());
        Ok(Self {
            rtol: opts.rtol,
            atol,
            blocks,
            size,
            structure: opts.jacobian,
            jac: vec![],
            jac_t: None,
            lu: vec![],
            piv: vec![],
            lu_hg: f64::NAN,
            at: None,
            y_host: vec![],
            inv_scale: vec![],
            eta: 1.0,
            slow: false,
            eps,
            part: if opts.method.is_imex() && ev.is_split() {
                Part::Implicit
            } else {
                Part::Whole
            },
            rosenbrock: opts.method.is_rosenbrock(),
            reuse: if opts.method.is_w_method() {
                opts.jacobian_reuse.max(1)
            } else {
                1
            },
            jac_steps: 0,
            counted_at: None,
        })
    }

    /// Whether the Newton matrix is large enough that an adaptive solve should keep its step
    /// unless it can grow by a fifth (reusing the LU factors).
    pub(crate) fn keeps_steps(&self) -> bool {
        // A Rosenbrock method's factors change with the Jacobian at every step anyway, unless
        // it is a W-method keeping its Jacobian.
        self.size >= KEEP_STEPS_FROM && (!self.rosenbrock || self.reuse > 1)
    }

    /// Whether the Jacobian was built at the step start `t` (a failure cannot be blamed on
    /// its age).
    pub(crate) fn is_fresh(&self, t: f64) -> bool {
        self.jac_t == Some(t)
    }

    /// A step from `t` was rejected by its error estimate: a Rosenbrock W-method's kept
    /// Jacobian is blamed, and rebuilt for the retry.
    pub(crate) fn rejected(&mut self, t: f64) {
        if self.rosenbrock && self.reuse > 1 && !self.is_fresh(t) {
            self.slow = true;
        }
    }

    /// Prepares a step from `(t, y)`, the field evaluated at `t0_eval`: reads `y` (once per step start)
    /// and builds the Jacobian if there is none or the last iterations were slow.
    pub(crate) fn begin_step<F: VectorField + ?Sized>(
        &mut self,
        ev: &Evaluator<'_, F>,
        t: f64,
        t0_eval: f64,
        y: &Tensor,
    ) -> Result<()> {
        if self.at != Some(t) {
            self.y_host = ev.read(y)?;
            self.inv_scale = self
                .y_host
                .iter()
                .enumerate()
                .map(|(i, v)| 1.0 / (self.atol[i.min(self.atol.len() - 1)] + self.rtol * v.abs()))
                .collect();
            self.at = Some(t);
        }
        if self.jac.is_empty() || (self.slow && !self.is_fresh(t)) {
            self.build_jacobian(ev, t, t0_eval, y)?;
        }
        Ok(())
    }

    /// Prepares a Rosenbrock step from `(t, y)`: the Jacobian at the step start (kept only
    /// when the step is retried from the same start, or by a W-method for up to `reuse`
    /// step starts) and `∂f/∂t` there by differences in the
    /// step's direction (two evaluations; exactly zero for a field that does not depend on
    /// `t`). `f0 = f(t0_eval, y)`.
    pub(crate) fn begin_rosenbrock_step<F: VectorField + ?Sized>(
        &mut self,
        ev: &Evaluator<'_, F>,
        t: f64,
        t0_eval: f64,
        h: f64,
        y: &Tensor,
        f0: &Tensor,
    ) -> Result<Tensor> {
        if self.counted_at != Some(t) {
            self.counted_at = Some(t);
            self.jac_steps += 1;
        }
        self.begin_step(ev, t, t0_eval, y)?;
        if !self.is_fresh(t) && self.jac_steps >= self.reuse {
            self.build_jacobian(ev, t, t0_eval, y)?;
        }
        // Second-order one-sided differences at `t + δ` and `t + 2δ` with `δ ≈ ε^(1/3)`:
        // a first-order difference's `O(δ)` error bounds the global error at `O(√ε)`.
        // `δ ≤ h/4`, so the differences stay in the step's first half (a jump at its end is
        // neither crossed nor reached); `δ` as the time's float holds it.
        let dt = (self.eps.cbrt() * t0_eval.abs().max(1.0)).min(0.25 * h.abs());
        let dt = (t0_eval + dt.copysign(h)) - t0_eval;
        if dt == 0.0 {
            return f0.zeros_like();
        }
        // `2 (f1 − f0) − (f2 − f0) / 2`, the differences first: exactly zero when `f` does
        // not read `t` (weighing f0, f1 and f2 apart would leave rounding).
        let d1 = (ev.eval(t0_eval + dt, y)? - f0)?;
        let d2 = (ev.eval(t0_eval + 2.0 * dt, y)? - f0)?;
        lincomb(None, [(2.0 / dt, &d1), (-0.5 / dt, &d2)])
    }

    /// A Rosenbrock stage: `k = γ (I − hγJ)⁻¹ r` with the factors for `hγ` and the
    /// Jacobian `J` at the step start `(t0_eval, y)`, where `f0 = f(t0_eval, y)`. `None` when
    /// the matrix is singular or a value is not finite (the caller shrinks the step).
    ///
    /// Components outside the Jacobian's blocks ([`Jacobian::DensePrefix`],
    /// [`Jacobian::Blocks`]) are integrals: the field does not depend on them, but they
    /// depend on the others through rows `J_gz` that the blocks leave out, and a Rosenbrock
    /// method needs those too (without them it integrates the integrals to first order).
    /// Their part is `k_g = γ (r_g + h J_gz k_z)`, with the product `J_gz (h k_z)` by a
    /// difference of `f` along `h k_z`: one more evaluation per stage.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rosenbrock_stage<F: VectorField + ?Sized>(
        &mut self,
        ev: &Evaluator<'_, F>,
        t0_eval: f64,
        h: f64,
        gamma: f64,
        y: &Tensor,
        f0: &Tensor,
        r: &Tensor,
    ) -> Result<Option<Tensor>> {
        if !self.factor(ev, h * gamma) {
            return Ok(None);
        }
        let mut x = ev.read(r)?;
        x.iter_mut().for_each(|v| *v *= -gamma);
        self.solve_negated(&mut x);
        if x.iter().any(|v| !v.is_finite()) {
            return Ok(None);
        }
        let inner = self.blocks * self.size;
        if inner < x.len() {
            let along = x[..inner].iter().fold(0.0f64, |m, v| m.max((h * v).abs()));
            if along > 0.0 {
                let scale = self.y_host[..inner]
                    .iter()
                    .fold(1.0f64, |m, v| m.max(v.abs()));
                let sigma = self.eps.sqrt() * scale / along;
                let mut p = self.y_host.clone();
                for (pi, ki) in p[..inner].iter_mut().zip(&x[..inner]) {
                    *pi += sigma * h * ki;
                }
                let yp = upload(p, y)?;
                // The step really taken is the perturbed state as its dtype holds it: read
                // with the difference, its size sets the divisor.
                let fp = ev.eval(t0_eval, &yp)?;
                let diff = lincomb(None, [(1.0, &fp), (-1.0, f0)])?;
                let moved = lincomb(None, [(1.0, &yp), (-1.0, y)])?;
                let both = ev.read(&Tensor::cat(
                    &[diff.flatten_all()?, moved.flatten_all()?],
                    0,
                )?)?;
                let (jv, moved) = both.split_at(x.len());
                // The realized multiple of `h k_z`: its projection on the intended one.
                let (num, den) = moved[..inner]
                    .iter()
                    .zip(&x[..inner])
                    .fold((0.0, 0.0), |(n, d), (m, k)| {
                        (n + m * h * k, d + (h * k) * (h * k))
                    });
                let sigma = num / den;
                if sigma != 0.0 && sigma.is_finite() {
                    for (xi, ji) in x[inner..].iter_mut().zip(&jv[inner..]) {
                        *xi += gamma * ji / sigma;
                    }
                }
                if x.iter().any(|v| !v.is_finite()) {
                    return Ok(None);
                }
            }
        }
        upload(x, r).map(Some)
    }

    /// Builds the Jacobian at the step start: the field's own ([`VectorField::jacobian`]),
    /// or else by forward differences.
    pub(crate) fn build_jacobian<F: VectorField + ?Sized>(
        &mut self,
        ev: &Evaluator<'_, F>,
        t: f64,
        t0_eval: f64,
        y: &Tensor,
    ) -> Result<()> {
        let dims = match self.structure {
            Jacobian::Batched | Jacobian::Blocks { .. } => {
                vec![self.blocks, self.size, self.size]
            }
            Jacobian::Dense | Jacobian::DensePrefix(_) => vec![self.size, self.size],
        };
        let jac = match ev.jacobian(self.part, t0_eval, y, self.structure, &dims)? {
            Some(jac) => jac,
            None => self.differences(ev, t0_eval, y)?,
        };
        if jac.iter().any(|v| !v.is_finite()) {
            return Err(SolverError::NonFinite { t }.into());
        }
        self.jac = jac;
        self.jac_t = Some(t);
        self.lu_hg = f64::NAN;
        self.slow = false;
        self.jac_steps = 0;
        Ok(())
    }

    /// The Jacobian at `y` by forward differences: one evaluation per column (per column
    /// of a block, for [`Jacobian::Batched`] and [`Jacobian::Blocks`]) and one at `y`.
    fn differences<F: VectorField + ?Sized>(
        &self,
        ev: &Evaluator<'_, F>,
        t0_eval: f64,
        y: &Tensor,
    ) -> Result<Vec<f64>> {
        ev.count_jacobian();
        // Differences against `f(y)` itself: the `f0` of a step after an implicit one is its
        // last stage's derivative recovered from Newton's solution, off `f(y)` by the
        // residual over `hγ`, which divided by the perturbation would swamp the Jacobian.
        let f0h = ev.read(&ev.eval_part(self.part, t0_eval, y)?)?;
        let (blocks, size) = (self.blocks, self.size);
        let mut jac = vec![0.0; blocks * size * size];
        for j in 0..size {
            let mut p = self.y_host.clone();
            for b in 0..blocks {
                let e = b * size + j;
                p[e] += (self.eps * p[e].abs().max(1e-5)).sqrt();
            }
            let yp = upload(p, y)?;
            let fp = ev.eval_part(self.part, t0_eval, &yp)?;
            // One read: f at the perturbed state, and that state as its dtype holds it (the
            // step really taken).
            let mut fp = ev.read(&Tensor::cat(&[fp.flatten_all()?, yp.flatten_all()?], 0)?)?;
            let p = fp.split_off(self.y_host.len());
            for b in 0..blocks {
                let e = b * size + j;
                let d = p[e] - self.y_host[e];
                if d == 0.0 {
                    continue;
                }
                for r in 0..size {
                    let row = b * size + r;
                    jac[(b * size + r) * size + j] = (fp[row] - f0h[row]) / d;
                }
            }
        }
        Ok(jac)
    }

    /// LU-factors `I − hγJ` block by block, unless already done for this `hγ`; false when a
    /// block is singular.
    fn factor<F: VectorField + ?Sized>(&mut self, ev: &Evaluator<'_, F>, hg: f64) -> bool {
        // A step kept unchanged can differ from the last in its last bits (`(t + h) − t`):
        // the factors still serve (they only set Newton's rate of convergence).
        if (self.lu_hg - hg).abs() <= 1e-12 * hg.abs() {
            return true;
        }
        ev.count_factorization();
        let n = self.size;
        self.lu = self.jac.iter().map(|j| -hg * j).collect();
        self.piv = vec![0; self.blocks * n];
        for b in 0..self.blocks {
            let m = &mut self.lu[b * n * n..(b + 1) * n * n];
            let piv = &mut self.piv[b * n..(b + 1) * n];
            for i in 0..n {
                m[i * n + i] += 1.0;
            }
            for k in 0..n {
                let p = (k..n)
                    .max_by(|&x, &y| m[x * n + k].abs().total_cmp(&m[y * n + k].abs()))
                    .expect("k < n");
                let pivot = m[p * n + k];
                if pivot == 0.0 || !pivot.is_finite() {
                    self.lu_hg = f64::NAN;
                    return false;
                }
                piv[k] = p;
                if p != k {
                    for c in 0..n {
                        m.swap(k * n + c, p * n + c);
                    }
                }
                // Row updates on slices, which the compiler vectorizes.
                let (top, below) = m.split_at_mut((k + 1) * n);
                let pivot_row = &top[k * n + k + 1..];
                for row in below.chunks_exact_mut(n) {
                    let l = row[k] / pivot;
                    row[k] = l;
                    if l != 0.0 {
                        for (x, p) in row[k + 1..].iter_mut().zip(pivot_row) {
                            *x -= l * p;
                        }
                    }
                }
            }
        }
        self.lu_hg = hg;
        true
    }

    /// `x ← −(I − hγJ)⁻¹ x` with the current factors; identity on components outside the
    /// blocks.
    fn solve_negated(&self, x: &mut [f64]) {
        let n = self.size;
        for b in 0..self.blocks {
            let m = &self.lu[b * n * n..(b + 1) * n * n];
            let piv = &self.piv[b * n..(b + 1) * n];
            let v = &mut x[b * n..(b + 1) * n];
            for (k, &p) in piv.iter().enumerate() {
                v.swap(k, p);
            }
            for r in 0..n {
                let s = dot(&m[r * n..r * n + r], &v[..r]);
                v[r] -= s;
            }
            for r in (0..n).rev() {
                let s = dot(&m[r * n + r + 1..(r + 1) * n], &v[r + 1..]);
                v[r] = (v[r] - s) / m[r * n + r];
            }
        }
        x.iter_mut().for_each(|v| *v = -*v);
    }

    /// Solves the stage equation `z = base + hγ f(ti, z)` for its increment
    /// `w = z − base = hγ f(ti, base + w)`, from the guess `w`; returns `(z, w)`, or `None` when
    /// the iterations fail. Iterating on the increment rather than on `z` (as Hairer and
    /// Wanner advise, IV.8) keeps the stage derivative `w / hγ` free of `z`'s round-off:
    /// recovered as `(z − base) / hγ` it carries an error of about `ε|z| / hγ`, which put a
    /// floor of a few `ε|y|` under the error estimate, above `rtol |y|` in f32 at the default
    /// `rtol` (implicit Euler and Kværnø 3 then shrank their steps until `max_steps`).
    pub(crate) fn solve_stage<F: VectorField + ?Sized>(
        &mut self,
        ev: &Evaluator<'_, F>,
        ti: f64,
        base: &Tensor,
        hg: f64,
        guess: Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        if !self.factor(ev, hg) {
            return Ok(None);
        }
        let mut w = guess;
        let mut eta = self.eta.max(self.eps).powf(0.8);
        let mut prev: Option<f64> = None;
        for _ in 0..MAX_ITERS {
            let fz = ev.eval_part(self.part, ti, &(base + &w)?)?;
            let r = lincomb(Some(&w), [(-hg, &fz)])?;
            let mut d = ev.read(&r)?;
            if d.iter().any(|v| !v.is_finite()) {
                return Ok(None);
            }
            self.solve_negated(&mut d);
            // A state without components has converged (its norm is 0, not 0 / 0).
            let norm = (d
                .iter()
                .zip(&self.inv_scale)
                .map(|(v, s)| (v * s) * (v * s))
                .sum::<f64>()
                / d.len().max(1) as f64)
                .sqrt();
            if !norm.is_finite() {
                return Ok(None);
            }
            let delta = upload(d, &w)?;
            w = (w + delta)?;
            if let Some(p) = prev {
                let theta = norm / p;
                if theta >= 1.0 {
                    self.slow = true;
                    return Ok(None);
                }
                if theta > SLOW {
                    self.slow = true;
                }
                eta = theta / (1.0 - theta);
            }
            if eta * norm <= KAPPA || norm == 0.0 {
                self.eta = eta;
                return Ok(Some(((base + &w)?, w)));
            }
            prev = Some(norm);
        }
        self.slow = true;
        Ok(None)
    }
}

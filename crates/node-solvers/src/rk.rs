//! One generic Runge–Kutta step, for any [`ButcherTableau`].
//!
//! `k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j)`, `y1 = y + h Σ b_i k_i`,
//! `err = h Σ (b_i − b̂_i) k_i`. Stages are combined with scalar affine ops on the caller's
//! tensors (coefficients stay host `f64`), zero coefficients are skipped, and nothing is read
//! back to the host, so an explicit step never waits on the device. An implicit method's
//! stages solve `Y_i = y + h Σ_{j<i} a_ij k_j + hγ f(t_i, Y_i)` by Newton's method
//! (the private `implicit` module; see [`crate::SolveOptions::jacobian`]), which reads back
//! once per iteration.

use crate::error::SolverError;
use crate::field::VectorField;
use crate::implicit::Newton;
use crate::options::Jacobian;
use crate::solve::SolverStats;
use crate::tableau::{ButcherTableau, Rosenbrock};
use candle_core::{DType, Result, Tensor, TensorId};
use std::cell::{Cell, RefCell};

/// `base + Σ w_i x_i` over the terms with non-zero weight (`Σ w_i x_i` without a base).
///
/// When no input needs a gradient (every adjoint solve, and any solve under no autograd),
/// f32/f64 contiguous inputs of one shape on the CPU, or on one CUDA device with the `cuda`
/// feature, are combined in one pass over the output (on CUDA one kernel launch) instead of
/// one scaling and one addition per term. When some input needs a gradient (a solve
/// differentiated straight through), such inputs are combined by differentiable ops of up to
/// three inputs each, one pass (one launch) apiece. The values are those of the Candle ops
/// (the same operations in the same order; only the sign of a zero can differ, as Candle
/// scales by `x·w + 0`), and so are the gradients. Otherwise Candle ops.
pub fn lincomb<'a>(
    base: Option<&Tensor>,
    terms: impl IntoIterator<Item = (f64, &'a Tensor)>,
) -> Result<Tensor> {
    let terms: Vec<(f64, &Tensor)> = terms.into_iter().filter(|(w, _)| *w != 0.0).collect();
    if let Some(out) = crate::fused::lincomb_fused(base, &terms)? {
        return Ok(out);
    }
    if let Some(out) = crate::fused::lincomb_tracked(base, &terms)? {
        return Ok(out);
    }
    lincomb_chain(base, &terms)
}

/// [`lincomb`] in Candle ops: a scaling and an addition per term.
pub(crate) fn lincomb_chain(base: Option<&Tensor>, terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for &(w, x) in terms {
        acc = Some(match acc {
            None => match base {
                // The first term fuses with the base only when it is a plain copy.
                Some(b) if w == 1.0 => (b + x)?,
                Some(b) => (b + x.affine(w, 0.0)?)?,
                None => x.affine(w, 0.0)?,
            },
            Some(a) => (a + x.affine(w, 0.0)?)?,
        });
    }
    match (acc, base) {
        (Some(a), _) => Ok(a),
        (None, Some(b)) => Ok(b.clone()),
        (None, None) => candle_core::bail!("lincomb of no terms"),
    }
}

/// The parts, each flattened, end to end in one vector: `Tensor::cat` of their
/// `flatten_all()`, as the adjoint's augmented state `[y, a, g_θ]` is built.
///
/// When no part needs a gradient, f32/f64 contiguous parts on one CUDA device (with the `cuda`
/// feature) are copied by one kernel launch per 16 parts, instead of Candle's one per part.
/// Otherwise Candle's `cat`, so gradients flow.
///
/// # Errors
/// No parts; parts on several devices or of several dtypes (Candle's `cat` errors).
pub fn concat_flat(parts: &[Tensor]) -> Result<Tensor> {
    let flat = parts
        .iter()
        .map(Tensor::flatten_all)
        .collect::<Result<Vec<_>>>()?;
    if let Some(out) = crate::fused::concat_fused(&flat)? {
        return Ok(out);
    }
    Tensor::cat(&flat, 0)
}

/// A vector field wrapped to count evaluations and check what it returns; it also counts the
/// solve's reads of device values back to the host (each one waits for the device).
pub(crate) struct Evaluator<'a, F: ?Sized> {
    f: &'a F,
    nfe: Cell<usize>,
    explicit_nfe: Cell<usize>,
    host_reads: Cell<usize>,
    jacobians: Cell<usize>,
    factorizations: Cell<usize>,
    /// A split field's last evaluations as a whole, with their parts: an IMEX step's first
    /// stage needs the parts of `f(t, y)` that the solve loop evaluated (or carried over).
    parts: RefCell<Vec<PartsAt>>,
}

/// Which part of a field to evaluate: the whole, or one part of a split one
/// ([`VectorField::split`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Whole,
    Explicit,
    Implicit,
}

/// One evaluation of a split field as a whole, `total = explicit + implicit` at `(t, y)`.
struct PartsAt {
    t: f64,
    y: TensorId,
    total: TensorId,
    explicit: Tensor,
    implicit: Tensor,
}

/// How many of a split field's evaluations as a whole are kept with their parts: the step
/// start's, and one made since (the first step's trial evaluation).
const PARTS_KEPT: usize = 2;

impl<'a, F: VectorField + ?Sized> Evaluator<'a, F> {
    pub(crate) fn new(f: &'a F) -> Self {
        Self {
            f,
            nfe: Cell::new(0),
            explicit_nfe: Cell::new(0),
            host_reads: Cell::new(0),
            jacobians: Cell::new(0),
            factorizations: Cell::new(0),
            parts: RefCell::new(Vec::new()),
        }
    }

    /// Writes the evaluation, read, Jacobian and factorization counts into `stats`.
    pub(crate) fn count_into(&self, stats: &mut SolverStats) {
        stats.nfe = self.nfe.get();
        stats.explicit_nfe = self.explicit_nfe.get();
        stats.host_reads = self.host_reads.get();
        stats.jacobians = self.jacobians.get();
        stats.factorizations = self.factorizations.get();
    }

    /// Counts an LU factorization of the Newton matrix.
    pub(crate) fn count_factorization(&self) {
        self.factorizations.set(self.factorizations.get() + 1);
    }

    /// Counts a Jacobian built by finite differences.
    pub(crate) fn count_jacobian(&self) {
        self.jacobians.set(self.jacobians.get() + 1);
    }

    /// The field's own Jacobian at `(t, y)` for `structure` (of its implicit part for
    /// [`Part::Implicit`]), read to the host, or `None` when it has none; it must have shape
    /// `dims`.
    pub(crate) fn jacobian(
        &self,
        part: Part,
        t: f64,
        y: &Tensor,
        structure: Jacobian,
        dims: &[usize],
    ) -> Result<Option<Vec<f64>>> {
        let jac = match (part, self.f.split()) {
            (Part::Implicit, Some((_, implicit))) => implicit.jacobian(t, y, structure)?,
            _ => self.f.jacobian(t, y, structure)?,
        };
        let Some(jac) = jac else {
            return Ok(None);
        };
        self.count_jacobian();
        if jac.dims() != dims {
            return Err(SolverError::OutputMismatch(format!(
                "its Jacobian has shape {:?}, but `{structure:?}` on a state of shape {:?} needs {dims:?} (at t = {t})",
                jac.dims(),
                y.dims()
            ))
            .into());
        }
        if !jac.dtype().is_float() {
            return Err(SolverError::OutputMismatch(format!(
                "its Jacobian has dtype {:?}, not a float (at t = {t})",
                jac.dtype()
            ))
            .into());
        }
        self.read(&jac).map(Some)
    }

    pub(crate) fn nfe(&self) -> usize {
        self.nfe.get()
    }

    pub(crate) fn host_reads(&self) -> usize {
        self.host_reads.get()
    }

    /// `t`'s values as f64 on the host: the one way the solver reads anything back, counted.
    pub(crate) fn read(&self, t: &Tensor) -> Result<Vec<f64>> {
        self.host_reads.set(self.host_reads.get() + 1);
        read_to_host(t)
    }

    /// `f(t, y)`, checked. A split field ([`VectorField::split`]) is evaluated part by part
    /// and the parts kept a while for [`Evaluator::parts_of`].
    pub(crate) fn eval(&self, t: f64, y: &Tensor) -> Result<Tensor> {
        if self.f.split().is_none() {
            let k = self.f.eval(t, y)?;
            self.nfe.set(self.nfe.get() + 1);
            return Self::check(k, t, y);
        }
        let explicit = self.eval_part(Part::Explicit, t, y)?;
        let implicit = self.eval_part(Part::Implicit, t, y)?;
        let total = (&explicit + &implicit)?;
        let mut parts = self.parts.borrow_mut();
        if parts.len() == PARTS_KEPT {
            parts.remove(0);
        }
        parts.push(PartsAt {
            t,
            y: y.id(),
            total: total.id(),
            explicit,
            implicit,
        });
        Ok(total)
    }

    /// Whether the field is split into an explicit and an implicit part.
    pub(crate) fn is_split(&self) -> bool {
        self.f.split().is_some()
    }

    /// `part` of the field at `(t, y)`, checked; the whole field for a field that is not
    /// split.
    pub(crate) fn eval_part(&self, part: Part, t: f64, y: &Tensor) -> Result<Tensor> {
        let k = match (part, self.f.split()) {
            (Part::Whole, _) | (_, None) => return self.eval(t, y),
            (Part::Explicit, Some((explicit, _))) => {
                self.explicit_nfe.set(self.explicit_nfe.get() + 1);
                explicit.eval(t, y)?
            }
            (Part::Implicit, Some((_, implicit))) => {
                self.nfe.set(self.nfe.get() + 1);
                implicit.eval(t, y)?
            }
        };
        Self::check(k, t, y)
    }

    /// The explicit and implicit parts of `f0 = f(t, y)` of a split field: those of the
    /// evaluation that gave `f0` when it is one of the last ones, else the explicit part
    /// evaluated again and the implicit one by difference.
    pub(crate) fn parts_of(&self, t: f64, y: &Tensor, f0: &Tensor) -> Result<(Tensor, Tensor)> {
        let kept = self
            .parts
            .borrow()
            .iter()
            .find(|p| p.t == t && p.y == y.id() && p.total == f0.id())
            .map(|p| (p.explicit.clone(), p.implicit.clone()));
        if let Some(parts) = kept {
            return Ok(parts);
        }
        let explicit = self.eval_part(Part::Explicit, t, y)?;
        let implicit = (f0 - &explicit)?;
        Ok((explicit, implicit))
    }

    /// `k`, returned for the state `y` at `t`, checked to match it.
    fn check(k: Tensor, t: f64, y: &Tensor) -> Result<Tensor> {
        if k.shape() != y.shape() {
            return Err(SolverError::ShapeMismatch {
                expected: y.shape().clone(),
                got: k.shape().clone(),
                t,
            }
            .into());
        }
        if k.dtype() != y.dtype() {
            return Err(SolverError::OutputMismatch(format!(
                "dtype {:?} but the state is {:?} (at t = {t})",
                k.dtype(),
                y.dtype()
            ))
            .into());
        }
        if !k.device().same_device(y.device()) {
            return Err(SolverError::OutputMismatch(format!(
                "device {:?} but the state is on {:?} (at t = {t})",
                k.device(),
                y.device()
            ))
            .into());
        }
        Ok(k)
    }
}

/// `t`'s values as f64 on the host: the one read back from a device in the solvers' code
/// (callers count it: [`Evaluator::read`], the SDE solve's output check).
pub(crate) fn read_to_host(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// The result of one step.
pub(crate) struct Step {
    /// Stages `k_0 .. k_(s-1)`.
    pub k: Vec<Tensor>,
    /// The propagated solution at `t1`.
    pub y1: Tensor,
    /// `h Σ b_err_i k_i`, when asked for.
    pub err: Option<Tensor>,
}

/// Takes one step from `(t, y)` to `t1 = t + h` given `f0 = f(t0_eval, y)`; the stages at
/// `t1` (`c_i = 1`) evaluate the field at `t1_eval`: `t1`, or the float before a jump there
/// (`t0_eval` is `t`, or the float after a jump there). An implicit method needs `newton`
/// and gives `None` when its iterations fail even with a fresh Jacobian (the caller shrinks
/// the step); an explicit step is always `Some`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rk_step<F: VectorField + ?Sized>(
    tab: &ButcherTableau,
    f: &Evaluator<'_, F>,
    t: f64,
    t1: f64,
    t0_eval: f64,
    t1_eval: f64,
    y: &Tensor,
    f0: &Tensor,
    with_error: bool,
    newton: Option<&mut Newton>,
) -> Result<Option<Step>> {
    let h = t1 - t;
    let stage_time = |i: usize| {
        if tab.c[i] == 1.0 {
            t1_eval
        } else {
            t + tab.c[i] * h
        }
    };
    let (k, y1) = if tab.is_implicit() {
        let Some(newton) = newton else {
            candle_core::bail!(
                "implicit method `{}` stepped without Newton state",
                tab.name
            )
        };
        if y.track_op() || f0.track_op() {
            return Err(SolverError::NotDifferentiable { method: tab.name }.into());
        }
        if let Some(ros) = tab.rosenbrock {
            let ft = newton.begin_rosenbrock_step(f, t, t0_eval, h, y, f0)?;
            loop {
                let stages =
                    rosenbrock_stages(tab, &ros, f, h, &stage_time, t0_eval, y, f0, &ft, newton)?;
                match stages {
                    Some(k) => break (k, None),
                    None if newton.is_fresh(t) => return Ok(None),
                    // A W-method's kept Jacobian made the matrix singular: a fresh one.
                    None => newton.build_jacobian(f, t, t0_eval, y)?,
                }
            }
        } else {
            newton.begin_step(f, t, t0_eval, y)?;
            loop {
                if let Some(done) = implicit_stages(tab, f, h, &stage_time, t0_eval, y, f0, newton)?
                {
                    break done;
                }
                if newton.is_fresh(t) {
                    return Ok(None);
                }
                newton.build_jacobian(f, t, t0_eval, y)?;
            }
        }
    } else {
        explicit_stages(tab, f, h, &stage_time, y, f0)?
    };
    let y1 = match y1 {
        Some(y1) => y1,
        None => lincomb(Some(y), tab.b.iter().zip(&k).map(|(b, ki)| (h * b, ki)))?,
    };
    let err = match (with_error, tab.b_err) {
        (true, Some(e)) => Some(lincomb(None, e.iter().zip(&k).map(|(e, ki)| (h * e, ki)))?),
        _ => None,
    };
    Ok(Some(Step { k, y1, err }))
}

/// The stages of an explicit step, and `y1` when the method is FSAL (the last stage's state).
fn explicit_stages<F: VectorField + ?Sized>(
    tab: &ButcherTableau,
    f: &Evaluator<'_, F>,
    h: f64,
    stage_time: &dyn Fn(usize) -> f64,
    y: &Tensor,
    f0: &Tensor,
) -> Result<(Vec<Tensor>, Option<Tensor>)> {
    let s = tab.stages();
    let fsal = tab.is_fsal();
    let mut k: Vec<Tensor> = Vec::with_capacity(s);
    k.push(f0.clone());
    let mut y1 = None;
    for i in 1..s {
        let yi = lincomb(
            Some(y),
            tab.a[i - 1].iter().zip(&k).map(|(a, kj)| (h * a, kj)),
        )?;
        k.push(f.eval(stage_time(i), &yi)?);
        if fsal && i == s - 1 {
            y1 = Some(yi);
        }
    }
    Ok((k, y1))
}

/// The stages of a Rosenbrock step (see [`Rosenbrock`]), `None` when a linear solve fails
/// (a singular matrix, a non-finite value). `ft = ∂f/∂t` at the step start.
#[allow(clippy::too_many_arguments)]
fn rosenbrock_stages<F: VectorField + ?Sized>(
    tab: &ButcherTableau,
    ros: &Rosenbrock,
    f: &Evaluator<'_, F>,
    h: f64,
    stage_time: &dyn Fn(usize) -> f64,
    t0_eval: f64,
    y: &Tensor,
    f0: &Tensor,
    ft: &Tensor,
    newton: &mut Newton,
) -> Result<Option<Vec<Tensor>>> {
    let s = tab.stages();
    let mut k: Vec<Tensor> = Vec::with_capacity(s);
    for i in 0..s {
        let fi = if i == 0 {
            f0.clone()
        } else {
            let yi = lincomb(
                Some(y),
                tab.a[i - 1].iter().zip(&k).map(|(a, kj)| (h * a, kj)),
            )?;
            f.eval(stage_time(i), &yi)?
        };
        let coupling = if i == 0 { &[][..] } else { ros.coupling[i - 1] };
        let time = (ros.time[i] != 0.0).then_some((h * ros.time[i], ft));
        let r = lincomb(
            Some(&fi),
            coupling.iter().zip(&k).map(|(c, kj)| (*c, kj)).chain(time),
        )?;
        let Some(ki) = newton.rosenbrock_stage(f, t0_eval, h, ros.gamma, y, f0, &r)? else {
            return Ok(None);
        };
        k.push(ki);
    }
    Ok(Some(k))
}

/// The stages of an implicit step, `None` when Newton's iterations fail. Each stage's
/// derivative is recovered from its solution, `k_i = (Y_i − base_i) / hγ`, with no further
/// evaluation (Hairer & Wanner's advice: it does not amplify the iteration's error by the
/// stiffness); the first guess of `Y_i` is `base_i + hγ Σ_j α_ij k_j` with the method's
/// predictor `α`.
///
/// An IMEX method on a split field keeps each stage's two parts: `k^I_i` recovered as above,
/// `k^E_i = f_E(t_i, Y_i)` evaluated, the bases built from both with their own weights, the
/// predictor from the implicit parts. The stages returned are the sums `k^E_i + k^I_i`
/// (the parts share `b`, `b_err` and the dense output).
#[allow(clippy::too_many_arguments)]
fn implicit_stages<F: VectorField + ?Sized>(
    tab: &ButcherTableau,
    f: &Evaluator<'_, F>,
    h: f64,
    stage_time: &dyn Fn(usize) -> f64,
    t0_eval: f64,
    y: &Tensor,
    f0: &Tensor,
    newton: &mut Newton,
) -> Result<Option<(Vec<Tensor>, Option<Tensor>)>> {
    let s = tab.stages();
    let imp = tab.implicit.expect("an implicit method");
    let explicit = imp.explicit.filter(|_| f.is_split());
    let hg = h * imp.gamma;
    // The implicit parts (the whole stages when there is no explicit part), and the explicit
    // parts.
    let mut k: Vec<Tensor> = Vec::with_capacity(s);
    let mut ke: Vec<Tensor> = Vec::with_capacity(if explicit.is_some() { s } else { 0 });
    match explicit {
        Some(_) => {
            let (e0, i0) = f.parts_of(t0_eval, y, f0)?;
            ke.push(e0);
            k.push(i0);
        }
        None => k.push(f0.clone()),
    }
    let mut y1 = None;
    for i in 1..s {
        let implicit_terms = tab.a[i - 1].iter().zip(&k).map(|(a, kj)| (h * a, kj));
        let base = match explicit {
            Some(ex) => lincomb(
                Some(y),
                implicit_terms.chain(ex[i - 1].iter().zip(&ke).map(|(a, kj)| (h * a, kj))),
            )?,
            None => lincomb(Some(y), implicit_terms)?,
        };
        // The predicted increment over `base`.
        let predicted: Vec<(f64, &Tensor)> = imp.predictor[i - 1]
            .iter()
            .zip(&k)
            .filter(|(a, _)| **a != 0.0)
            .map(|(a, kj)| (hg * a, kj))
            .collect();
        let guess = if predicted.is_empty() {
            base.zeros_like()?
        } else {
            lincomb(None, predicted)?
        };
        let Some((yi, w)) = newton.solve_stage(f, stage_time(i), &base, hg, guess)? else {
            return Ok(None);
        };
        k.push(w.affine(1.0 / hg, 0.0)?);
        if explicit.is_some() {
            ke.push(f.eval_part(Part::Explicit, stage_time(i), &yi)?);
        }
        if tab.is_fsal() && i == s - 1 {
            y1 = Some(yi);
        }
    }
    if explicit.is_some() {
        k = k
            .iter()
            .zip(&ke)
            .map(|(ki, kei)| ki + kei)
            .collect::<Result<_>>()?;
    }
    Ok(Some((k, y1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problems::Riccati;
    use crate::Method;
    use candle_core::{DType, Device};

    /// The embedded estimate `h Σ b_err_i k_i` of a method with embedded order `q` is
    /// `O(h^(q+1))`: one step at h, h/2, h/4 from the same point. Each order gets steps inside
    /// its asymptotic range (measured: dopri5's ratios are 4.7, 19.5, 26, 29 from h = 0.4
    /// down; dopri8's 59, 143, 193, 227 on the way to 256, then round-off below h = 0.025).
    #[test]
    fn embedded_error_estimates_have_their_order() -> Result<()> {
        let p = Riccati;
        let field = p.field();
        let ev = Evaluator::new(&field);
        let y = Tensor::new(&[1.0f64, 0.5], &Device::Cpu)?;
        let t = 0.3;
        let f0 = ev.eval(t, &y)?;
        for m in Method::RUNGE_KUTTA.into_iter().filter(|m| m.is_adaptive()) {
            let tab = m.tableau().unwrap();
            let mut logs = vec![];
            let h0 = match tab.error_order {
                7 => 0.1,
                4 => 0.025,
                _ => 0.05,
            };
            for h in [h0, h0 / 2.0, h0 / 4.0] {
                let opts = crate::SolveOptions::default()
                    .method(m)
                    .tolerances(1e-13, 1e-15);
                let mut newton = Newton::for_method(&ev, &opts, &y)?;
                let step = rk_step(tab, &ev, t, t + h, t, t + h, &y, &f0, true, newton.as_mut())?
                    .expect("Newton converges on a smooth problem");
                let e = step
                    .err
                    .unwrap()
                    .abs()?
                    .max(0)?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                logs.push(e.log2());
            }
            let slope = (logs[0] - logs[2]) / 2.0;
            let want = (tab.error_order + 1) as f64;
            assert!(
                (slope - want).abs() < 0.35,
                "{m}: error estimate order {slope:.2}, expected {want}"
            );
        }
        Ok(())
    }
}

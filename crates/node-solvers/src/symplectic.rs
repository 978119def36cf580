//! `odeint_symplectic`: symplectic splitting methods for separable systems
//! `dq/dt = v(t, p)`, `dp/dt = a(t, q)` — Hamiltonian mechanics with `H = T(p) + V(q)`
//! (`v = ∂T/∂p`, `a = −∂V/∂q`), and second-order systems `q'' = a(t, q)` with `p = q'`
//! (diffrax's `SemiImplicitEuler` takes the same two terms).
//!
//! A step is a sequence of drifts `q ← q + c h v(p)` and kicks `p ← p + d h a(q)`. The maps
//! are symplectic, so the methods keep a nearby energy for exponentially long times instead of
//! drifting as Runge–Kutta methods do, and the symmetric ones (all but the semi-implicit
//! Euler) are time-reversible: a step back with `−h` undoes a step to round-off.
//!
//! | method | order | kicks (force evaluations) per step |
//! |---|---|---|
//! | [`SymplecticMethod::SemiImplicitEuler`] | 1 | 1 |
//! | [`SymplecticMethod::Leapfrog`] (velocity Verlet) | 2 | 1 (the last kick's force is the next step's first) |
//! | [`SymplecticMethod::Yoshida4`] (three leapfrog steps, Forest–Ruth/Yoshida) | 4 | 3 |
//! | [`SymplecticMethod::Yoshida6`] (seven leapfrog steps, Yoshida's solution A) | 6 | 7 |
//!
//! Time advances with the drifts for the force and with the kicks for the velocity, so
//! time-dependent forces keep the order. Steps are fixed: an output interval is cut into
//! equal steps of at most the step size, so every output time is a step's end. Gradients
//! flow by backprop through the tensor ops.

use crate::error::SolverError;
use crate::method::{find_named, names_of};
use crate::rk::{lincomb, Evaluator};
use crate::solve::{check_times, first_non_finite, steps_over};
use candle_core::{Result, Tensor};
use std::fmt;
use std::str::FromStr;

/// The two halves of a separable system: the velocity `dq/dt = v(t, p)` and the force
/// `dp/dt = a(t, q)`. `q` and `p` have the same shape; each function returns that shape.
pub trait SeparableField {
    /// `dq/dt` at `(t, p)`.
    fn velocity(&self, t: f64, p: &Tensor) -> Result<Tensor>;
    /// `dp/dt` at `(t, q)`.
    fn force(&self, t: f64, q: &Tensor) -> Result<Tensor>;
}

/// A [`SeparableField`] from two closures.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use node_solvers::{odeint_symplectic, Separable, SymplecticOptions};
/// # fn main() -> candle_core::Result<()> {
/// // The pendulum q'' = −sin q: H = p²/2 − cos q.
/// let pendulum = Separable {
///     velocity: |_t: f64, p: &Tensor| Ok(p.clone()),
///     force: |_t: f64, q: &Tensor| q.sin()?.neg(),
/// };
/// let q0 = Tensor::new(&[1.0f64], &Device::Cpu)?;
/// let p0 = Tensor::new(&[0.0f64], &Device::Cpu)?;
/// let sol = odeint_symplectic(&pendulum, &q0, &p0, &[0.0, 100.0], &SymplecticOptions::new(0.05))?;
/// let (q, p) = (sol.qs.get(1)?.to_vec1::<f64>()?[0], sol.ps.get(1)?.to_vec1::<f64>()?[0]);
/// let energy = |q: f64, p: f64| p * p / 2.0 - q.cos();
/// assert!((energy(q, p) - energy(1.0, 0.0)).abs() < 1e-3);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Separable<V, A> {
    /// `dq/dt = velocity(t, p)`.
    pub velocity: V,
    /// `dp/dt = force(t, q)`.
    pub force: A,
}

impl<V, A> SeparableField for Separable<V, A>
where
    V: Fn(f64, &Tensor) -> Result<Tensor>,
    A: Fn(f64, &Tensor) -> Result<Tensor>,
{
    fn velocity(&self, t: f64, p: &Tensor) -> Result<Tensor> {
        (self.velocity)(t, p)
    }
    fn force(&self, t: f64, q: &Tensor) -> Result<Tensor> {
        (self.force)(t, q)
    }
}

/// A symplectic splitting method; see the [module](self) for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SymplecticMethod {
    /// Symplectic Euler: drift with the old momentum, kick with the new position. Order 1,
    /// not time-reversible (diffrax's `SemiImplicitEuler`).
    SemiImplicitEuler,
    /// Velocity Verlet (kick–drift–kick leapfrog, Störmer–Verlet). Order 2.
    #[default]
    Leapfrog,
    /// Leapfrog composed over `w1 h, w0 h, w1 h` (Forest & Ruth 1990, Yoshida 1990). Order 4.
    Yoshida4,
    /// Leapfrog composed over seven substeps, Yoshida's (1990) solution A. Order 6.
    Yoshida6,
}

/// One substep of a splitting method: a drift of `q` or a kick of `p`, by a fraction of the
/// step `h`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Substep {
    /// `q ← q + c h v(t_p, p)`: `c`.
    Drift(f64),
    /// `p ← p + d h a(t_q, q)`: `d`.
    Kick(f64),
}

impl SymplecticMethod {
    /// Every method, in order of increasing order.
    pub const ALL: [SymplecticMethod; 4] = [
        SymplecticMethod::SemiImplicitEuler,
        SymplecticMethod::Leapfrog,
        SymplecticMethod::Yoshida4,
        SymplecticMethod::Yoshida6,
    ];

    /// The method's name, as [`FromStr`] parses it.
    pub fn name(self) -> &'static str {
        match self {
            SymplecticMethod::SemiImplicitEuler => "semi_implicit_euler",
            SymplecticMethod::Leapfrog => "leapfrog",
            SymplecticMethod::Yoshida4 => "yoshida4",
            SymplecticMethod::Yoshida6 => "yoshida6",
        }
    }

    /// Order of accuracy.
    pub fn order(self) -> usize {
        match self {
            SymplecticMethod::SemiImplicitEuler => 1,
            SymplecticMethod::Leapfrog => 2,
            SymplecticMethod::Yoshida4 => 4,
            SymplecticMethod::Yoshida6 => 6,
        }
    }

    /// The leapfrog substeps' weights of a composition method (summing to 1).
    fn weights(self) -> Vec<f64> {
        match self {
            SymplecticMethod::SemiImplicitEuler | SymplecticMethod::Leapfrog => vec![1.0],
            SymplecticMethod::Yoshida4 => {
                let c = 2f64.cbrt();
                let w1 = 1.0 / (2.0 - c);
                vec![w1, -c * w1, w1]
            }
            SymplecticMethod::Yoshida6 => {
                // Yoshida (1990), Table 1, solution A.
                let (w1, w2, w3) = (
                    -1.177_679_984_178_87,
                    0.235_573_213_359_357,
                    0.784_513_610_477_560,
                );
                let w0 = 1.0 - 2.0 * (w1 + w2 + w3);
                vec![w3, w2, w1, w0, w1, w2, w3]
            }
        }
    }

    /// The drifts and kicks of one step, in order; consecutive kicks of the composed
    /// leapfrog steps are merged. A kick that follows a kick (the next step's first, for all
    /// but the semi-implicit Euler) reuses its force: `q` has not moved.
    pub fn substeps(self) -> Vec<Substep> {
        if self == SymplecticMethod::SemiImplicitEuler {
            return vec![Substep::Drift(1.0), Substep::Kick(1.0)];
        }
        let mut ops: Vec<Substep> = vec![];
        for w in self.weights() {
            match ops.last_mut() {
                Some(Substep::Kick(d)) => *d += w / 2.0,
                _ => ops.push(Substep::Kick(w / 2.0)),
            }
            ops.push(Substep::Drift(w));
            ops.push(Substep::Kick(w / 2.0));
        }
        ops
    }

    /// The substeps of a step from `t` of length `h`, each with the time its function sees:
    /// a drift's velocity sees the time the kicks have advanced, a kick's force the time the
    /// drifts have advanced, so time-dependent forces keep the order.
    pub fn timed_substeps(self, t: f64, h: f64) -> Vec<(Substep, f64)> {
        let (mut t_q, mut t_p) = (t, t);
        self.substeps()
            .into_iter()
            .map(|op| match op {
                Substep::Drift(c) => {
                    let at = t_p;
                    t_q += c * h;
                    (op, at)
                }
                Substep::Kick(d) => {
                    let at = t_q;
                    t_p += d * h;
                    (op, at)
                }
            })
            .collect()
    }
}

impl fmt::Display for SymplecticMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SymplecticMethod {
    type Err = SolverError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let aliases = [
            ("symplectic_euler", SymplecticMethod::SemiImplicitEuler),
            ("verlet", SymplecticMethod::Leapfrog),
            ("velocity_verlet", SymplecticMethod::Leapfrog),
            ("stormer_verlet", SymplecticMethod::Leapfrog),
            ("forest_ruth", SymplecticMethod::Yoshida4),
        ];
        find_named(s, &Self::ALL, Self::name, &aliases).ok_or_else(|| {
            SolverError::InvalidOptions(format!(
                "unknown symplectic method `{s}` (expected one of: {})",
                names_of(&Self::ALL, Self::name)
            ))
        })
    }
}

/// Options of [`odeint_symplectic`].
#[derive(Clone, Debug)]
pub struct SymplecticOptions {
    /// The method (leapfrog by default).
    pub method: SymplecticMethod,
    /// The largest step: each interval between output times is cut into the fewest equal
    /// steps no longer than this.
    pub step_size: f64,
    /// At most this many steps in all (default 10 000 000).
    pub max_steps: usize,
    /// Whether the outputs are checked for NaN and infinity at the end (one read back).
    pub check_finite: bool,
}

impl SymplecticOptions {
    /// Leapfrog with steps of at most `step_size`.
    pub fn new(step_size: f64) -> Self {
        Self {
            method: SymplecticMethod::default(),
            step_size,
            max_steps: 10_000_000,
            check_finite: true,
        }
    }
    /// Sets the method.
    pub fn method(mut self, method: SymplecticMethod) -> Self {
        self.method = method;
        self
    }
    /// Sets the largest number of steps.
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }
    /// Whether to check the outputs for NaN and infinity (the default).
    pub fn check_finite(mut self, check: bool) -> Self {
        self.check_finite = check;
        self
    }

    /// The number of equal steps each interval of `ts` is cut into, checked: step `i` of
    /// interval `j` starts at `ts[j] + (ts[j+1] − ts[j]) · i / n_j` and has length
    /// `(ts[j+1] − ts[j]) / n_j`.
    ///
    /// # Errors
    /// `InvalidOptions` for the step size, `InvalidTimes`/`TimesNotMonotone`,
    /// `MaxStepsExceeded` when the steps would pass `max_steps`.
    pub fn step_counts(&self, ts: &[f64]) -> Result<Vec<usize>> {
        if !(self.step_size.is_finite() && self.step_size > 0.0) {
            return Err(SolverError::InvalidOptions(format!(
                "the step size must be finite and > 0, got {}",
                self.step_size
            ))
            .into());
        }
        check_times(ts)?;
        let counts: Vec<usize> = ts
            .windows(2)
            .map(|w| steps_over((w[1] - w[0]).abs(), self.step_size))
            .collect();
        // Saturating: a tiny step over a long span needs more steps than a usize holds.
        let total = counts.iter().fold(0usize, |a, &c| a.saturating_add(c));
        if total > self.max_steps {
            return Err(SolverError::MaxStepsExceeded {
                t: ts[0],
                steps: total,
            }
            .into());
        }
        Ok(counts)
    }
}

/// Counts of a symplectic solve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymplecticStats {
    /// Steps taken.
    pub steps: usize,
    /// Evaluations of the force `a(t, q)`.
    pub force_evals: usize,
    /// Evaluations of the velocity `v(t, p)`.
    pub velocity_evals: usize,
}

/// The result of [`odeint_symplectic`].
#[derive(Clone, Debug)]
pub struct SymplecticSolution {
    /// The output times, as given.
    pub ts: Vec<f64>,
    /// The positions at `ts`: `[ts.len(), ...q0.shape]`.
    pub qs: Tensor,
    /// The momenta at `ts`: `[ts.len(), ...p0.shape]`.
    pub ps: Tensor,
    /// Counts.
    pub stats: SymplecticStats,
}

/// Solves `dq/dt = v(t, p)`, `dp/dt = a(t, q)` from `(q0, p0)` at `ts[0]` through every time
/// of `ts` (increasing or decreasing) with a symplectic splitting method and fixed steps
/// ([`SymplecticOptions`]).
///
/// # Shapes
/// `q0` and `p0`: the same shape `S`, float dtype, one device; `velocity` and `force` return
/// `S`. Results `qs`, `ps`: `[ts.len(), ...S]`.
///
/// # Errors
/// [`SolverError`]: `InvalidOptions` (step size, shapes or dtypes of `q0` and `p0`),
/// `InvalidTimes`/`TimesNotMonotone`, `ShapeMismatch`/`OutputMismatch` for what the
/// functions return, `MaxStepsExceeded`, `NonFinite` (checked once, on the outputs).
pub fn odeint_symplectic<F: SeparableField + ?Sized>(
    field: &F,
    q0: &Tensor,
    p0: &Tensor,
    ts: &[f64],
    opts: &SymplecticOptions,
) -> Result<SymplecticSolution> {
    let invalid = |msg: String| -> Result<SymplecticSolution> {
        Err(SolverError::InvalidOptions(msg).into())
    };
    if q0.shape() != p0.shape() || q0.dtype() != p0.dtype() {
        return invalid(format!(
            "q0 and p0 must have one shape and dtype, got {:?} {:?} and {:?} {:?}",
            q0.shape(),
            q0.dtype(),
            p0.shape(),
            p0.dtype()
        ));
    }
    if !q0.dtype().is_float() || !q0.device().same_device(p0.device()) {
        return invalid(format!(
            "q0 and p0 must be float tensors on one device, got {:?} on {:?} and {:?}",
            q0.dtype(),
            q0.device(),
            p0.device()
        ));
    }
    let counts = opts.step_counts(ts)?;
    let total: usize = counts.iter().sum();
    let velocity = |t: f64, p: &Tensor| field.velocity(t, p);
    let force = |t: f64, q: &Tensor| field.force(t, q);
    let (ev_v, ev_a) = (Evaluator::new(&velocity), Evaluator::new(&force));
    let (mut q, mut p) = (q0.clone(), p0.clone());
    // The force at the current position and drift time, while neither has changed.
    let mut a_now: Option<Tensor> = None;
    let (mut qs, mut ps) = (vec![q.clone()], vec![p.clone()]);
    for (w, &n) in ts.windows(2).zip(&counts) {
        let h = (w[1] - w[0]) / n as f64;
        for i in 0..n {
            let t = w[0] + (w[1] - w[0]) * (i as f64 / n as f64);
            for (op, time) in opts.method.timed_substeps(t, h) {
                match op {
                    Substep::Drift(c) => {
                        let v = ev_v.eval(time, &p)?;
                        q = lincomb(Some(&q), [(c * h, &v)])?;
                        a_now = None;
                    }
                    Substep::Kick(d) => {
                        let a = match a_now.take() {
                            Some(a) => a,
                            None => ev_a.eval(time, &q)?,
                        };
                        p = lincomb(Some(&p), [(d * h, &a)])?;
                        a_now = Some(a);
                    }
                }
            }
            // The cached force, at `t + h` up to round-off, is the next step's first.
        }
        qs.push(q.clone());
        ps.push(p.clone());
    }
    let (qs, ps) = (Tensor::stack(&qs, 0)?, Tensor::stack(&ps, 0)?);
    if opts.check_finite {
        if let Some(i) = first_non_finite(&ev_a, &Tensor::stack(&[&qs, &ps], 1)?)? {
            return Err(SolverError::NonFinite { t: ts[i] }.into());
        }
    }
    Ok(SymplecticSolution {
        ts: ts.to_vec(),
        qs,
        ps,
        stats: SymplecticStats {
            steps: total,
            force_evals: ev_a.nfe(),
            velocity_evals: ev_v.nfe(),
        },
    })
}

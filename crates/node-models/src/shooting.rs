//! Multiple shooting: a long trajectory fitted as short segments, each solved from a start
//! state of its own, with a penalty on the gaps where one segment ends and the next begins
//! (Bock & Plitt 1984; DiffEqFlux's `multiple_shoot`, torchdyn's multiple-shooting layers).
//!
//! Fitting an ODE to a long series by one solve from the first observation (single
//! shooting) makes a loss whose every term depends on all of the field's past: for an
//! oscillator, a wrong frequency puts the late predictions half a period out of phase, and
//! gradient descent settles on a field that matches the series' mean. Short segments keep
//! each prediction near its start, so the loss is close to that of one step's fit; the gap
//! penalty (or training the start states with the field) ties the segments back into one
//! trajectory.
//!
//! The observation times `t_0 < … < t_{n−1}` are cut into segments of
//! [`MultipleShooting::intervals`] intervals each (the last may be shorter); consecutive
//! segments share one time, where the first ends and the next starts. The start states,
//! one per segment, come from the caller: the observations at the segments' starts
//! ([`MultipleShooting::starts_from`]; DiffEqFlux's choice, for fully observed, clean
//! states) or `Var`s initialised from them and trained with the field (noisy or partly
//! observed states).

use crate::layers::{BlockStats, Gradient};
use candle_core::{bail, Result, Tensor};
use node_adjoint::{odeint_independent_adjoint, ParamVectorField};
use node_solvers::{odeint_independent, SolveOptions, TimeInvariant};
use std::ops::Range;

/// How a series' observation times are cut into segments and how the segments are solved.
///
/// # Example
/// One step of a fit of `dy/dt = −k y` to a series, the start states trained with `k`.
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use candle_nn::{AdamW, Optimizer};
/// use node_adjoint::with_params;
/// use node_models::{Gradient, MultipleShooting};
/// use node_solvers::SolveOptions;
///
/// # fn main() -> candle_core::Result<()> {
/// let dev = Device::Cpu;
/// let ts: Vec<f64> = (0..9).map(|i| 0.5 * i as f64).collect();
/// // The series: 9 observations of one state, `[9, 1, 1]` (a batch of one).
/// let observed = Tensor::new(ts.iter().map(|t| (-0.8 * t).exp()).collect::<Vec<_>>(), &dev)?
///     .reshape((9, 1, 1))?;
/// let k = Var::new(&[0.3f64], &dev)?;
/// let kt = k.as_tensor().clone();
/// let f = with_params(move |_t: f64, y: &Tensor| y.broadcast_mul(&kt)?.neg(), vec![k.clone()]);
///
/// let shooting = MultipleShooting::new(2).batched(true); // 4 segments of 2 intervals
/// let starts = Var::from_tensor(&shooting.starts_from(&observed)?)?; // [4, 1, 1]
/// let targets = shooting.gather(&observed)?;
/// let mut opt = AdamW::new_lr(vec![k.clone(), starts.clone()], 0.05)?;
/// let sol = shooting.solve(&f, &starts, &ts, &SolveOptions::default(), &Gradient::Backprop)?;
/// let data = (&sol.ys - &targets)?.sqr()?.mean_all()?;
/// let loss = (data + sol.continuity_loss()?.affine(10.0, 0.0)?)?;
/// opt.backward_step(&loss)?;
/// assert!(k.to_vec1::<f64>()?[0] > 0.3); // towards the true rate 0.8
/// assert_eq!(sol.stats.len(), 1); // the four segments in one solve
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MultipleShooting {
    /// Observation intervals per segment: a segment covers `intervals + 1` observation times,
    /// its first shared with the previous segment's last. At least 1; `n − 1` or more (for
    /// `n` times) is one segment, single shooting.
    pub intervals: usize,
    /// Solve every segment with the first one's time offsets in one batched solve, their
    /// start states side by side along the state's dimension 0, instead of one solve per
    /// segment. Only for a field that does not depend on `t` and treats dimension 0 of its
    /// state as a batch of independent states: each segment is solved on the first
    /// segment's times. Segments whose time offsets differ from the first's (a shorter last
    /// segment, uneven observation times) are solved on their own.
    /// An adaptive method then picks one step sequence for the batch from the error norm over
    /// all its segments (an RMS: one segment's error may exceed the tolerance
    /// where the others' are below it; tighten the tolerances, or solve one by one, where that
    /// matters).
    pub batched: bool,
    /// With [`MultipleShooting::batched`]: every row of the batched solve (each segment's
    /// states) keeps its own steps and error control
    /// ([`node_solvers::odeint_independent`]), so that each segment is solved to the
    /// tolerance, as on its own, in the one solve; the field is evaluated at `t = 0`
    /// ([`node_solvers::TimeInvariant`]). Differentiated by [`Gradient::Backprop`] or
    /// [`Gradient::Adjoint`] ([`node_adjoint::odeint_independent_adjoint`]).
    pub independent: bool,
}

impl MultipleShooting {
    /// Segments of `intervals` observation intervals, solved one by one.
    pub fn new(intervals: usize) -> Self {
        Self {
            intervals,
            batched: false,
            independent: false,
        }
    }

    /// Sets [`MultipleShooting::batched`].
    pub fn batched(mut self, batched: bool) -> Self {
        self.batched = batched;
        self
    }

    /// Sets [`MultipleShooting::independent`] (and, when `true`,
    /// [`MultipleShooting::batched`]).
    pub fn independent(mut self, independent: bool) -> Self {
        self.independent = independent;
        self.batched |= independent;
        self
    }

    /// The segments of `n` observation times, as ranges of their indices: `0..k+1`,
    /// `k..2k+1`, …, the last ending at `n`.
    ///
    /// # Errors
    /// `intervals` is 0 or `n < 2`.
    pub fn segments(&self, n: usize) -> Result<Vec<Range<usize>>> {
        if self.intervals == 0 {
            bail!("multiple shooting: a segment needs at least one interval, got intervals = 0");
        }
        if n < 2 {
            bail!("multiple shooting: needs at least 2 observation times, got {n}");
        }
        let k = self.intervals;
        Ok((0..n - 1)
            .step_by(k)
            .map(|start| start..(start + k + 1).min(n))
            .collect())
    }

    /// The index of each segment's first observation time.
    ///
    /// # Errors
    /// As [`MultipleShooting::segments`].
    pub fn start_indices(&self, n: usize) -> Result<Vec<usize>> {
        Ok(self.segments(n)?.into_iter().map(|r| r.start).collect())
    }

    /// The observations at the segments' starts, `[S, ...state]` for `observed` of shape
    /// `[n, ...state]`, detached: the start states, or the values to initialise trained ones
    /// with.
    ///
    /// # Errors
    /// As [`MultipleShooting::segments`], with `n = observed.dim(0)`.
    pub fn starts_from(&self, observed: &Tensor) -> Result<Tensor> {
        let idx = self.start_indices(observed.dim(0)?)?;
        rows(observed, &idx).map(|t| t.detach())
    }

    /// The observations in the order of [`ShootingSolution::ys`]: every segment's rows,
    /// the shared times twice. `observed` is `[n, ...state]`.
    ///
    /// # Errors
    /// As [`MultipleShooting::segments`], with `n = observed.dim(0)`.
    pub fn gather(&self, observed: &Tensor) -> Result<Tensor> {
        let idx: Vec<usize> = self
            .segments(observed.dim(0)?)?
            .into_iter()
            .flatten()
            .collect();
        rows(observed, &idx)
    }

    /// Solves `dy/dt = f(t, y)` on each segment of `ts` from its start state in `starts`
    /// (`[S, ...state]`, `S` the number of segments), differentiated as `gradient` says:
    /// the gradients reach `f`'s parameters and `starts`.
    ///
    /// # Errors
    /// The segments' errors ([`MultipleShooting::segments`]), `starts` with another number
    /// of rows than segments or fewer than two dimensions when batched, and the solver's
    /// typed errors.
    pub fn solve<F>(
        &self,
        f: &F,
        starts: &Tensor,
        ts: &[f64],
        opts: &SolveOptions,
        gradient: &Gradient,
    ) -> Result<ShootingSolution>
    where
        F: ParamVectorField + Clone + Send + Sync + 'static,
    {
        let segments = self.segments(ts.len())?;
        let s = segments.len();
        if starts.rank() == 0 || starts.dim(0)? != s {
            bail!(
                "multiple shooting: {} observation times in segments of {} intervals make {s} \
                 segments, so the start states must be [{s}, ...state], got {:?}",
                ts.len(),
                self.intervals,
                starts.shape()
            );
        }
        if self.batched && starts.rank() < 2 {
            bail!(
                "multiple shooting: batched segments are stacked along the state's dimension 0, \
                 so the start states must be [S, batch, ...], got {:?}",
                starts.shape()
            );
        }
        let mut ys: Vec<Option<Tensor>> = vec![None; s];
        let mut stats = Vec::new();
        // The segments solved together: those whose offsets are the first's.
        let together: Vec<usize> = if self.batched {
            let first = offsets(ts, &segments[0]);
            let span = first.last().copied().unwrap_or(0.0).abs();
            (0..s)
                .filter(|&i| {
                    let o = offsets(ts, &segments[i]);
                    o.len() == first.len()
                        && o.iter()
                            .zip(&first)
                            .all(|(a, b)| (a - b).abs() <= 1e-12 * span)
                })
                .collect()
        } else {
            Vec::new()
        };
        if together.len() > 1 {
            let y0 = rows(starts, &together)?;
            let mut dims = y0.dims().to_vec();
            let (group, batch) = (dims[0], dims[1]);
            let merged = [&[group * batch][..], &dims[2..]].concat();
            let times = &ts[segments[0].clone()];
            let y0 = y0.reshape(merged)?;
            let (y, st) = if self.independent {
                solve_independent(f, &y0, times, opts, gradient)?
            } else {
                gradient.solve(f, &y0, times, opts)?
            };
            dims.insert(0, y.dim(0)?);
            let y = y.reshape(dims)?;
            for (j, &i) in together.iter().enumerate() {
                ys[i] = Some(y.narrow(1, j, 1)?.squeeze(1)?);
            }
            stats.push(st);
        }
        for (i, range) in segments.iter().enumerate() {
            if ys[i].is_none() {
                let (y, st) = gradient.solve(f, &starts.get(i)?, &ts[range.clone()], opts)?;
                ys[i] = Some(y);
                stats.push(st);
            }
        }
        let segment_ys: Vec<Tensor> = ys.into_iter().flatten().collect();
        let gaps = if s > 1 {
            let ends = segment_ys[..s - 1]
                .iter()
                .map(|y| y.get(y.dim(0)? - 1))
                .collect::<Result<Vec<_>>>()?;
            Some((Tensor::stack(&ends, 0)? - starts.narrow(0, 1, s - 1)?)?)
        } else {
            None
        };
        Ok(ShootingSolution {
            ys: Tensor::cat(&segment_ys, 0)?,
            segments: segment_ys,
            gaps,
            stats,
        })
    }
}

/// The rows of `y0` solved as independent problems on `ts`, the field at `t = 0`.
fn solve_independent<F>(
    f: &F,
    y0: &Tensor,
    ts: &[f64],
    opts: &SolveOptions,
    gradient: &Gradient,
) -> Result<(Tensor, BlockStats)>
where
    F: ParamVectorField + Clone + Send + Sync + 'static,
{
    let field = TimeInvariant(f.clone());
    let rows = [ts.to_vec()];
    Ok(match gradient {
        Gradient::Backprop => {
            let sol = odeint_independent(&field, y0, &rows, opts)?;
            let stats = BlockStats {
                nfe_forward: sol.nfe,
                explicit_nfe_forward: 0,
                adjoint: None,
            };
            (sol.ys, stats)
        }
        Gradient::Adjoint(a) => {
            let span = (ts[ts.len() - 1] - ts[0]).abs();
            let reverse = a.reverse_solve_options(opts, span);
            let sol = odeint_independent_adjoint(&field, y0, &rows, opts, &reverse)?;
            let stats = BlockStats {
                nfe_forward: sol.stats.forward().nfe,
                explicit_nfe_forward: 0,
                adjoint: Some(sol.stats),
            };
            (sol.ys, stats)
        }
        other => bail!(
            "multiple shooting: independent segments are differentiated by backprop or the \
             adjoint, not {other:?}"
        ),
    })
}

/// The segments' solutions.
#[derive(Clone, Debug)]
pub struct ShootingSolution {
    /// Every segment's states at its observation times, one after the other
    /// (`[Σ lengths, ...state]`, the shared times twice, as [`MultipleShooting::gather`]
    /// orders the observations).
    pub ys: Tensor,
    /// Each segment's states at its observation times, `[length, ...state]`.
    pub segments: Vec<Tensor>,
    /// `[S − 1, ...state]`: each segment's end minus the next segment's start; `None` for
    /// one segment.
    pub gaps: Option<Tensor>,
    /// The solves' counts: one entry per solve (one for all the batched segments).
    pub stats: Vec<BlockStats>,
}

impl ShootingSolution {
    /// The mean square of the gaps (a zero scalar for one segment): the continuity penalty
    /// to add, weighted, to the data loss.
    ///
    /// # Errors
    /// Tensor errors.
    pub fn continuity_loss(&self) -> Result<Tensor> {
        match &self.gaps {
            Some(g) => g.sqr()?.mean_all(),
            None => Tensor::zeros((), self.ys.dtype(), self.ys.device()),
        }
    }

    /// The forward solves' evaluations of the field, all segments together.
    pub fn nfe_forward(&self) -> usize {
        self.stats.iter().map(|s| s.nfe_forward).sum()
    }
}

/// `t[range] − t[range.start]`.
fn offsets(ts: &[f64], range: &Range<usize>) -> Vec<f64> {
    ts[range.clone()]
        .iter()
        .map(|t| t - ts[range.start])
        .collect()
}

/// The rows `idx` of `x` (along dimension 0).
fn rows(x: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    let idx = Tensor::new(idx.as_slice(), x.device())?;
    x.index_select(&idx, 0)
}

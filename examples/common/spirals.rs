//! The spiral task the latent ODE and the RNN baseline share (the paper's §5.1 and Table 2):
//! noisy spiral pieces, some of their points observed, scored on fresh spirals and past the
//! observed window. Included with `#[path]`.
#![allow(dead_code)]

pub use crate::common::{json_number, write_summary};
use crate::plot::{square_panel, Canvas, LEARNED_COLOR, TRUE_COLOR};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use node_models::latent_ode::{spirals, Spirals};
use node_models::Rng;
use std::path::Path;

/// The data options.
#[derive(clap::Args, Debug)]
pub struct SpiralArgs {
    /// Number of training spirals.
    #[arg(long, default_value_t = 1000)]
    pub nspiral: usize,
    /// Points on the time grid the spirals are cut from. torchdiffeq's example sets 1000 in
    /// its `__main__` but does not pass it on, so its data use 500: its default is ours.
    #[arg(long, default_value_t = 500)]
    pub ntotal: usize,
    /// Points per spiral in the observed window.
    #[arg(long, default_value_t = 100)]
    pub nsample: usize,
    /// Observe only this many points of each spiral's window, chosen at random (the paper's
    /// irregular sampling; the default observes all `--nsample`).
    #[arg(long)]
    pub observed: Option<usize>,
    /// Also draw this many grid points after each window, never observed, and score the
    /// forecast there (the paper's Table 2 scores 100).
    #[arg(long, default_value_t = 0)]
    pub forecast: usize,
    /// Score on this many fresh spirals (their own noise and observed points) instead of
    /// the training ones.
    #[arg(long, default_value_t = 0)]
    pub test_spirals: usize,
    /// Standard deviation of the observation noise (data and likelihood).
    #[arg(long, default_value_t = 0.3)]
    pub noise: f64,
}

/// Spirals observed in a window of `nsample` grid points, with what is scored after it.
pub struct Observed {
    /// The window: noisy and clean points, and its times.
    pub window: Spirals,
    /// `[n, nsample]`, 1 where observed; `None` when every point is.
    pub mask: Option<Tensor>,
    /// The `--forecast` times after the window, and the clean points there `[n, F, 2]`.
    pub future: Option<(Vec<f64>, Tensor)>,
}

/// The training spirals and those scored.
pub struct Task {
    /// What training sees (its `future` is never read in training).
    pub train: Observed,
    /// Fresh spirals with `--test-spirals`, else `None`: the training ones are scored.
    pub test: Option<Observed>,
}

impl Task {
    /// The spirals scored at the end.
    pub fn scored(&self) -> &Observed {
        self.test.as_ref().unwrap_or(&self.train)
    }

    /// "test" or "training": which spirals are scored.
    pub fn scored_name(&self) -> &'static str {
        if self.test.is_some() {
            "test"
        } else {
            "training"
        }
    }
}

impl SpiralArgs {
    /// The data of a seed: the same whether the run is resumed or not. The training spirals
    /// with `--forecast 0` are those of the earlier versions of `train-latent-ode`.
    pub fn task(&self, seed: u64, dev: &Device) -> Result<Task> {
        if self.nspiral == 0 {
            bail!("--nspiral must be positive");
        }
        if self.nsample == 0 || self.ntotal <= 2 * (self.nsample + self.forecast) {
            bail!(
                "--ntotal ({}) must exceed twice --nsample + --forecast ({} + {})",
                self.ntotal,
                self.nsample,
                self.forecast
            );
        }
        if !(self.noise.is_finite() && self.noise > 0.0) {
            bail!("--noise must be a positive number");
        }
        if let Some(n) = self.observed {
            if n == 0 || n > self.nsample {
                bail!("--observed must be in 1..={} (--nsample)", self.nsample);
            }
        }
        let train = self.observe(self.nspiral, seed ^ 0xda7a, seed ^ 0x0b5e, dev)?;
        let test = match self.test_spirals {
            0 => None,
            n => Some(self.observe(n, seed ^ 0x7e57, seed ^ 0x7e57_0b5e, dev)?),
        };
        Ok(Task { train, test })
    }

    fn observe(&self, n: usize, data_seed: u64, mask_seed: u64, dev: &Device) -> Result<Observed> {
        let all = spirals(
            n,
            self.ntotal,
            self.nsample + self.forecast,
            self.noise,
            &mut Rng::new(data_seed),
            DType::F32,
            dev,
        )?;
        let k = self.nsample;
        let window = Spirals {
            observed: all.observed.narrow(1, 0, k)?,
            clean: all.clean.narrow(1, 0, k)?,
            ts: all.ts[..k].to_vec(),
        };
        let future = match self.forecast {
            0 => None,
            f => Some((all.ts[k..].to_vec(), all.clean.narrow(1, k, f)?)),
        };
        // Observing all `nsample` is no mask.
        let mask = self
            .observed
            .filter(|&o| o < k)
            .map(|o| observation_mask(n, k, o, mask_seed, dev))
            .transpose()?;
        Ok(Observed {
            window,
            mask,
            future,
        })
    }
}

/// The fields that start a spiral trainer's `summary.json`: the run's settings and which
/// spirals were scored.
pub fn summary_head(
    model: &str,
    args: &SpiralArgs,
    time_input: bool,
    iters: usize,
    seed: u64,
    task: &Task,
) -> Vec<(&'static str, String)> {
    vec![
        ("model", format!("\"{model}\"")),
        ("time_input", time_input.to_string()),
        (
            "observed",
            args.observed.unwrap_or(args.nsample).to_string(),
        ),
        ("iters", iters.to_string()),
        ("seed", seed.to_string()),
        ("scored", format!("\"{}\"", task.scored_name())),
    ]
}

/// A `[n, nsample]` mask observing `observed` random points of each sequence (its own
/// generator: the same for a seed, resumed or not).
fn observation_mask(
    n: usize,
    nsample: usize,
    observed: usize,
    seed: u64,
    dev: &Device,
) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let mut v = vec![0f32; n * nsample];
    let mut idx: Vec<usize> = (0..nsample).collect();
    for row in v.chunks_mut(nsample) {
        rng.shuffle(&mut idx);
        for &i in &idx[..observed] {
            row[i] = 1.0;
        }
    }
    Ok(Tensor::from_vec(v, (n, nsample), dev)?)
}

/// The RMSE over coordinates between `pred` and `truth` (`[n, T, d]`), over the points
/// where `weight` (`[n, T]`) is 1, or all.
pub fn rmse(pred: &Tensor, truth: &Tensor, weight: Option<&Tensor>) -> Result<f64> {
    let sq = (pred - truth)?.sqr()?.sum(2)?;
    let w = match weight {
        Some(w) => w.clone(),
        None => sq.ones_like()?,
    };
    let total = (&sq * &w)?.sum_all()?.to_scalar::<f32>()? as f64;
    let count = w.sum_all()?.to_scalar::<f32>()? as f64 * truth.dim(2)? as f64;
    Ok((total / count.max(1.0)).sqrt())
}

/// Draws the first four (at most) scored spirals in a 2×2 grid, each with its clean curve over
/// the window and after it (blue), its observed points (grey) and `curve`, the model's points
/// `[n, K, 2]` at any times (orange).
pub fn draw_forecasts(s: &Observed, curve: &Tensor, path: &Path) -> Result<()> {
    let xy = |t: &Tensor| -> Result<(Vec<f64>, Vec<f64>)> {
        let v = t.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        Ok(v.iter().map(|p| (p[0], p[1])).unzip())
    };
    let clean = match &s.future {
        Some((_, f)) => Tensor::cat(&[&s.window.clean, f], 1)?,
        None => s.window.clean.clone(),
    };
    let mut c = Canvas::new(640, 640);
    for i in 0..s.window.observed.dim(0)?.min(4) {
        let (cx, cy) = xy(&clean.get(i)?)?;
        let (mx, my) = xy(&curve.get(i)?)?;
        let (ox, oy) = xy(&s.window.observed.get(i)?)?;
        let seen = match &s.mask {
            Some(m) => m.get(i)?.to_vec1::<f32>()?,
            None => vec![1.0; ox.len()],
        };
        let panel = square_panel(
            10 + 315 * (i % 2),
            10 + 315 * (i / 2),
            305,
            cx.iter().chain(&mx).cloned(),
            cy.iter().chain(&my).cloned(),
        );
        c.frame(&panel);
        for ((x, y), m) in ox.iter().zip(&oy).zip(&seen) {
            if *m > 0.5 {
                c.dot(&panel, *x, *y, [170, 170, 170]);
            }
        }
        c.series(&panel, &cx, &cy, TRUE_COLOR);
        c.series(&panel, &mx, &my, LEARNED_COLOR);
    }
    c.save_png(path)
}

//! What the iteration-based trainers (`train-cnf`, `train-latent-ode`, `train-spiral-rnn`)
//! share: initial weights, Adam and the run's generator, restored from a checkpoint, a progress bar, a metrics line and an atomic
//! checkpoint every so many iterations, and a clean stop (signal or `--stop-after-steps`)
//! from which `--resume` goes on bit for bit. Included with `#[path]`.
#![allow(dead_code)]

use crate::common::{device_label, log, stop_flag, stopped};
use anyhow::{Context, Result};
use candle_core::Device;
use candle_nn::{Optimizer, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use node_models::checkpoint::{self, Resumed};
use node_models::{init, Adam, AdamConfig, Rng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where to write and when.
pub struct Plan<'a> {
    /// The checkpoint's model name (another trainer's checkpoint is refused).
    pub model: &'a str,
    /// Output folder: `checkpoint.safetensors` and `metrics.jsonl`.
    pub out_dir: &'a Path,
    /// Iterations in total, counting resumed ones.
    pub iters: usize,
    /// A metrics line and a checkpoint every this many iterations.
    pub every: usize,
    /// Stop after this many iterations of this run.
    pub stop_after: Option<usize>,
    /// Continue from the checkpoint in `out_dir`.
    pub resume: bool,
    /// Seed of the initial weights and of the run's generator.
    pub seed: u64,
    /// Adam's learning rate.
    pub lr: f64,
    /// Fields put into every metrics line before `lr`, `seed` and `device` (`"key":value,`
    /// each, comma included), or nothing.
    pub extra_json: String,
}

/// A run in progress.
pub struct Iterations {
    /// The optimizer, restored when resumed.
    pub opt: Adam,
    /// The run's generator (data, noise), restored when resumed.
    pub rng: Rng,
    /// The first iteration this run takes (0-based).
    pub start: usize,
    /// Number of trained values.
    pub n_params: usize,
    plan: PlanOwned,
    ckpt: PathBuf,
    metrics: PathBuf,
    stop: Arc<AtomicBool>,
    pb: ProgressBar,
    sums: Vec<(&'static str, f64)>,
    count: usize,
    since: Instant,
    steps_run: usize,
}

struct PlanOwned {
    model: String,
    iters: usize,
    every: usize,
    stop_after: Option<usize>,
    extra_json: String,
}

impl Iterations {
    /// Initialises `varmap` as PyTorch does from `plan.seed` and makes Adam at `plan.lr` over
    /// it; creates the output folder and, with `plan.resume` and a checkpoint there, restores
    /// the variables, Adam and the run's generator from it.
    pub fn start(plan: Plan, varmap: &VarMap, dev: &Device) -> Result<Self> {
        Self::start_with(plan, varmap, dev, || Ok(()))
    }

    /// [`Iterations::start`] with a model's own initialisation `model_init` run after PyTorch's
    /// defaults (and before a checkpoint is restored).
    pub fn start_with(
        plan: Plan,
        varmap: &VarMap,
        dev: &Device,
        model_init: impl FnOnce() -> Result<()>,
    ) -> Result<Self> {
        let mut rng = Rng::new(plan.seed);
        init::pytorch_default(varmap, &mut rng)?;
        model_init()?;
        let mut opt = Adam::new(
            node_adjoint::sorted_vars(varmap),
            AdamConfig {
                lr: plan.lr,
                ..Default::default()
            },
        )?;
        std::fs::create_dir_all(plan.out_dir)
            .with_context(|| format!("creating {}", plan.out_dir.display()))?;
        let ckpt = plan.out_dir.join("checkpoint.safetensors");
        let mut start = 0;
        if plan.resume {
            if ckpt.exists() {
                // The checkpoint's "epochs" are these trainers' iterations.
                let Resumed { epoch, rng: r, .. } =
                    checkpoint::load(&ckpt, plan.model, varmap, &mut opt)?;
                start = epoch;
                rng = r;
                println!("resumed from {} after iteration {epoch}", ckpt.display());
            } else {
                println!(
                    "no checkpoint in {}: starting from scratch",
                    plan.out_dir.display()
                );
            }
        }
        let pb = ProgressBar::new(plan.iters as u64);
        pb.set_style(ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )?);
        pb.set_position(start as u64);
        Ok(Self {
            opt,
            rng,
            start,
            ckpt,
            metrics: plan.out_dir.join("metrics.jsonl"),
            n_params: varmap.all_vars().iter().map(|v| v.elem_count()).sum(),
            plan: PlanOwned {
                model: plan.model.to_string(),
                iters: plan.iters,
                every: plan.every,
                stop_after: plan.stop_after,
                extra_json: format!(
                    "{}\"lr\":{},\"seed\":{},\"device\":\"{}\"",
                    plan.extra_json,
                    plan.lr,
                    plan.seed,
                    device_label(dev, false)
                ),
            },
            stop: stop_flag()?,
            pb,
            sums: vec![],
            count: 0,
            since: Instant::now(),
            steps_run: 0,
        })
    }

    /// The iterations left to this run.
    pub fn remaining(&self) -> std::ops::Range<usize> {
        self.start..self.plan.iters
    }

    /// Records iteration `it` (0-based), whose `values` (the same names every time) go into
    /// the progress bar and, averaged since the last line, into the metrics; writes the line
    /// and the checkpoint when due. `Some(code)` when the run must stop now.
    pub fn record(
        &mut self,
        it: usize,
        values: &[(&'static str, f64)],
        varmap: &VarMap,
    ) -> Result<Option<ExitCode>> {
        if self.sums.is_empty() {
            self.sums = values.iter().map(|(k, _)| (*k, 0.0)).collect();
        }
        for ((_, s), (_, v)) in self.sums.iter_mut().zip(values) {
            *s += v;
        }
        self.count += 1;
        self.steps_run += 1;
        self.pb.inc(1);
        self.pb.set_message(
            values
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let done = it + 1;
        let stopping =
            self.stop.load(Ordering::SeqCst) || self.plan.stop_after == Some(self.steps_run);
        if done.is_multiple_of(self.plan.every) || done == self.plan.iters || stopping {
            let n = self.count as f64;
            let secs = self.since.elapsed().as_secs_f64() / n;
            let means: Vec<(&str, f64)> = self.sums.iter().map(|(k, s)| (*k, s / n)).collect();
            let json: String = means
                .iter()
                .map(|(k, m)| format!(",\"{k}\":{m:.6}"))
                .collect();
            let line = format!(
                "{{\"iter\":{done}{json},\"secs_per_iter\":{secs:.4},{}}}",
                self.plan.extra_json
            );
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.metrics)
                .and_then(|mut f| writeln!(f, "{line}"))
                .with_context(|| format!("writing {}", self.metrics.display()))?;
            checkpoint::save(
                &self.ckpt,
                &self.plan.model,
                varmap,
                &self.opt,
                done,
                &self.rng,
                None,
            )?;
            let text: Vec<String> = means.iter().map(|(k, m)| format!("{k} {m:.4}")).collect();
            log(
                &self.pb,
                format!("iter {done:5} | {} | {secs:.3} s/iter", text.join(" | ")),
            );
            self.sums.iter_mut().for_each(|(_, s)| *s = 0.0);
            self.count = 0;
            self.since = Instant::now();
        }
        if stopping && done < self.plan.iters {
            self.pb.finish_and_clear();
            println!(
                "stopped after iteration {done}; checkpoint: {} (--resume goes on from there)",
                self.ckpt.display()
            );
            return Ok(Some(stopped(&self.stop)));
        }
        Ok(None)
    }

    /// Clears the progress bar; returns the metrics and checkpoint paths.
    pub fn finish(&self) -> (PathBuf, PathBuf) {
        self.pb.finish_and_clear();
        (self.metrics.clone(), self.ckpt.clone())
    }
}

//! Training checkpoints: model variables, optimizer state, epoch and random-generator
//! position in one safetensors file, written atomically, and checked on load; optionally the
//! progress inside an unfinished epoch, so that an interrupted run loses no steps.
//!
//! Layout: `model.<name>` for each variable of the `VarMap`; the optimizer's buffers,
//! `optim.<name>` for the first of each variable (SGD's momentum, Adam's first moment) and
//! `optim2.<name>` for a second (Adam's second moment); and `meta.*` tensors: `format` (bytes
//! of [`FORMAT`], or of [`FORMAT_MID_EPOCH`] when written inside an epoch), `model` (bytes of
//! the model name), `epoch` (u32, epochs completed), `rng` (the generator state as two u32
//! words), `optimizer` (bytes of [`OptimizerState::name`]; absent means SGD with momentum,
//! which older files hold) and `optim_steps` (two u32 words, when the optimizer counts steps);
//! inside an epoch also `step` (u32, its training steps done), `order` (u32, its order of
//! training examples) and `sums` (f64, the trainer's running sums).

use crate::optim::{Adam, SgdMomentum};
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The format tag of a checkpoint written at the end of an epoch.
pub const FORMAT: &str = "neural-odes-candle/checkpoint/v1";
/// The format tag of a checkpoint written inside an epoch (a [`PartialEpoch`] with it);
/// builds that know only [`FORMAT`] refuse it instead of skipping the rest of the epoch.
pub const FORMAT_MID_EPOCH: &str = "neural-odes-candle/checkpoint/v2";

/// What is wrong with a checkpoint.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Not one of our checkpoints (or unreadable).
    #[error("{path} is not a training checkpoint of this project: {reason}")]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A checkpoint of another model.
    #[error("{path} is a checkpoint of model `{found}`, not `{expected}`")]
    WrongModel {
        /// The file.
        path: PathBuf,
        /// The model in the file.
        found: String,
        /// The model being trained.
        expected: String,
    },
    /// Variables differ in name or shape.
    #[error("{path} does not fit this model: {reason}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The first difference found.
        reason: String,
    },
}

impl std::fmt::Debug for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl From<CheckpointError> for candle_core::Error {
    fn from(e: CheckpointError) -> Self {
        candle_core::Error::WrappedContext {
            wrapped: Box::new(e),
            context: "checkpoint".into(),
        }
    }
}

/// What a checkpoint restores besides the variables.
#[derive(Clone, Debug, PartialEq)]
pub struct Resumed {
    /// Epochs completed.
    pub epoch: usize,
    /// The generator, at the position it had when the checkpoint was written.
    pub rng: Rng,
    /// Where the next epoch stood, for a checkpoint written inside it.
    pub partial: Option<PartialEpoch>,
}

/// Progress inside an unfinished epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialEpoch {
    /// Training steps done in the epoch.
    pub step: usize,
    /// The epoch's order of the training examples (their indices).
    pub order: Vec<u32>,
    /// The trainer's running sums for the epoch's metrics, stored as given.
    pub sums: Vec<f64>,
}

/// An optimizer whose state a checkpoint can hold: one or two buffers per variable (slots),
/// and a step count.
pub trait OptimizerState {
    /// The optimizer's name, stored in the checkpoint: another optimizer's file is refused.
    fn name(&self) -> &'static str;
    /// The buffers, slot by slot (at most two), each with one entry per variable in the order
    /// the optimizer was built with (`None` where a variable has none yet).
    fn slots(&self) -> Vec<&[Option<Tensor>]>;
    /// Steps taken, for optimizers whose update depends on it (0 otherwise).
    fn steps(&self) -> u64 {
        0
    }
    /// Restores what [`OptimizerState::slots`] and [`OptimizerState::steps`] gave.
    ///
    /// # Errors
    /// When the slots do not fit the variables.
    fn restore(&mut self, slots: Vec<Vec<Option<Tensor>>>, steps: u64) -> Result<()>;
}

/// The optimizer name of checkpoints written before `meta.optimizer` existed.
const SGD_MOMENTUM: &str = "sgd-momentum";

impl OptimizerState for SgdMomentum {
    fn name(&self) -> &'static str {
        SGD_MOMENTUM
    }
    fn slots(&self) -> Vec<&[Option<Tensor>]> {
        vec![self.buffers()]
    }
    fn restore(&mut self, slots: Vec<Vec<Option<Tensor>>>, _steps: u64) -> Result<()> {
        match <[_; 1]>::try_from(slots) {
            Ok([b]) => self.set_buffers(b),
            Err(s) => candle_core::bail!("SGD has one slot of buffers, got {}", s.len()),
        }
    }
}

impl OptimizerState for Adam {
    fn name(&self) -> &'static str {
        "adam"
    }
    fn slots(&self) -> Vec<&[Option<Tensor>]> {
        self.moments().iter().map(Vec::as_slice).collect()
    }
    fn steps(&self) -> u64 {
        Adam::steps(self)
    }
    fn restore(&mut self, slots: Vec<Vec<Option<Tensor>>>, steps: u64) -> Result<()> {
        match <[_; 2]>::try_from(slots) {
            Ok(m) => self.set_state(m, steps),
            Err(s) => candle_core::bail!("Adam has two slots of buffers, got {}", s.len()),
        }
    }
}

fn slot_key(slot: usize, name: &str) -> String {
    match slot {
        0 => format!("optim.{name}"),
        k => format!("optim{}.{name}", k + 1),
    }
}

fn named_vars(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<(String, candle_core::Var)> =
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn bytes_tensor(s: &str) -> Result<Tensor> {
    Tensor::from_vec(s.as_bytes().to_vec(), s.len(), &Device::Cpu)
}

/// Writes a checkpoint atomically: to `<path>.tmp`, synced, then renamed over `path`, so a
/// crash leaves the previous checkpoint intact. `opt` (an [`OptimizerState`]: [`SgdMomentum`]
/// or [`Adam`]) must have been built from
/// `node_adjoint::sorted_vars(varmap)` (the buffers are matched by position in name order).
/// `epoch` counts the epochs completed; `partial` is the progress in the next one, for a
/// checkpoint written inside it.
///
/// # Errors
/// I/O and Candle errors.
pub fn save(
    path: &Path,
    model: &str,
    varmap: &VarMap,
    opt: &impl OptimizerState,
    epoch: usize,
    rng: &Rng,
    partial: Option<&PartialEpoch>,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let vars = named_vars(varmap);
    let slots = opt.slots();
    for slot in &slots {
        if slot.len() != vars.len() {
            candle_core::bail!(
                "optimizer has {} buffers for {} variables",
                slot.len(),
                vars.len()
            );
        }
    }
    for (i, (name, var)) in vars.iter().enumerate() {
        tensors.insert(
            format!("model.{name}"),
            var.as_tensor().to_device(&Device::Cpu)?,
        );
        for (k, slot) in slots.iter().enumerate() {
            if let Some(b) = &slot[i] {
                tensors.insert(slot_key(k, name), b.to_device(&Device::Cpu)?);
            }
        }
    }
    tensors.insert("meta.optimizer".into(), bytes_tensor(opt.name())?);
    if opt.steps() > 0 {
        let s = opt.steps();
        tensors.insert(
            "meta.optim_steps".into(),
            Tensor::new(&[(s >> 32) as u32, s as u32], &Device::Cpu)?,
        );
    }
    let format = match partial {
        None => FORMAT,
        Some(p) => {
            let step = u32::try_from(p.step).map_err(|_| {
                candle_core::Error::Msg(format!("checkpoint: step {} too large", p.step))
            })?;
            tensors.insert("meta.step".into(), Tensor::new(&[step], &Device::Cpu)?);
            let n = p.order.len();
            tensors.insert(
                "meta.order".into(),
                Tensor::from_vec(p.order.clone(), n, &Device::Cpu)?,
            );
            let k = p.sums.len();
            tensors.insert(
                "meta.sums".into(),
                Tensor::from_vec(p.sums.clone(), k, &Device::Cpu)?,
            );
            FORMAT_MID_EPOCH
        }
    };
    tensors.insert("meta.format".into(), bytes_tensor(format)?);
    tensors.insert("meta.model".into(), bytes_tensor(model)?);
    tensors.insert(
        "meta.epoch".into(),
        Tensor::new(&[epoch as u32], &Device::Cpu)?,
    );
    let s = rng.state();
    tensors.insert(
        "meta.rng".into(),
        Tensor::new(&[(s >> 32) as u32, s as u32], &Device::Cpu)?,
    );
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn text(t: &Tensor) -> Result<String> {
    Ok(String::from_utf8_lossy(&t.to_vec1::<u8>()?).into_owned())
}

/// Loads a checkpoint into `varmap` and `opt`, after checking that it is one of ours, of
/// `model` and `opt`'s optimizer, with exactly the same variable names and shapes.
///
/// # Errors
/// [`CheckpointError`] (inside `candle_core::Error`) for a foreign file, another model or
/// another shape; nothing is modified then.
pub fn load(
    path: &Path,
    model: &str,
    varmap: &VarMap,
    opt: &mut impl OptimizerState,
) -> Result<Resumed> {
    let not_ours = |reason: String| CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let file =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| not_ours(e.to_string()))?;
    match file.get("meta.format").map(text).transpose()? {
        Some(f) if f == FORMAT || f == FORMAT_MID_EPOCH => {}
        Some(f) => return Err(not_ours(format!("format `{f}`")).into()),
        None => return Err(not_ours("no format tag".into()).into()),
    }
    let found = file
        .get("meta.model")
        .map(text)
        .transpose()?
        .unwrap_or_default();
    if found != model {
        return Err(CheckpointError::WrongModel {
            path: path.to_path_buf(),
            found,
            expected: model.to_string(),
        }
        .into());
    }
    let mismatch = |reason: String| CheckpointError::Mismatch {
        path: path.to_path_buf(),
        reason,
    };
    let optimizer = file
        .get("meta.optimizer")
        .map(text)
        .transpose()?
        .unwrap_or_else(|| SGD_MOMENTUM.to_string());
    if optimizer != opt.name() {
        return Err(mismatch(format!(
            "written by optimizer `{optimizer}`, not `{}`",
            opt.name()
        ))
        .into());
    }
    let vars = named_vars(varmap);
    // Check everything before touching anything.
    for (name, var) in &vars {
        match file.get(&format!("model.{name}")) {
            None => return Err(mismatch(format!("variable `{name}` is missing")).into()),
            Some(t) if t.shape() != var.shape() => {
                return Err(mismatch(format!(
                    "variable `{name}` has shape {:?}, the model {:?}",
                    t.dims(),
                    var.dims()
                ))
                .into())
            }
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(extra) = file
        .keys()
        .filter_map(|k| k.strip_prefix("model."))
        .find(|k| !known.contains(k))
    {
        return Err(mismatch(format!("variable `{extra}` is not in this model")).into());
    }
    let epoch = file
        .get("meta.epoch")
        .ok_or_else(|| not_ours("no epoch".into()))?
        .to_vec1::<u32>()?[0] as usize;
    let words = file
        .get("meta.rng")
        .ok_or_else(|| not_ours("no rng state".into()))?
        .to_vec1::<u32>()?;
    if words.len() != 2 {
        return Err(not_ours("bad rng state".into()).into());
    }
    let partial = match (
        file.get("meta.step"),
        file.get("meta.order"),
        file.get("meta.sums"),
    ) {
        (None, None, None) => None,
        (Some(step), Some(order), Some(sums)) => Some(PartialEpoch {
            step: step.to_vec1::<u32>()?.first().copied().unwrap_or_default() as usize,
            order: order.to_vec1::<u32>()?,
            sums: sums.to_vec1::<f64>()?,
        }),
        _ => return Err(not_ours("incomplete mid-epoch state".into()).into()),
    };
    let steps = match file.get("meta.optim_steps") {
        None => 0,
        Some(t) => match t.to_vec1::<u32>()?.as_slice() {
            &[hi, lo] => ((hi as u64) << 32) | lo as u64,
            _ => return Err(not_ours("bad optimizer step count".into()).into()),
        },
    };
    let n_slots = opt.slots().len();
    let mut slots = vec![Vec::with_capacity(vars.len()); n_slots];
    for (name, var) in &vars {
        for (k, slot) in slots.iter_mut().enumerate() {
            slot.push(match file.get(&slot_key(k, name)) {
                Some(b) if b.shape() != var.shape() => {
                    return Err(mismatch(format!(
                        "optimizer buffer of `{name}` has shape {:?}, the model {:?}",
                        b.dims(),
                        var.dims()
                    ))
                    .into())
                }
                Some(b) => Some(b.to_device(var.device())?.to_dtype(var.dtype())?),
                None => None,
            });
        }
    }
    for (name, var) in &vars {
        let t = &file[&format!("model.{name}")];
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    opt.restore(slots, steps)?;
    Ok(Resumed {
        epoch,
        rng: Rng::from_state(((words[0] as u64) << 32) | words[1] as u64),
        partial,
    })
}

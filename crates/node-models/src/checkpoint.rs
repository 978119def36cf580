//! Training checkpoints: model variables, optimizer state, epoch and random-generator
//! position in one safetensors file, written atomically, and checked on load; optionally the
//! progress inside an unfinished epoch, so that an interrupted run loses no steps.
//!
//! Layout: `model.<name>` for each variable of the `VarMap`, `optim.<name>` for each momentum
//! buffer, and `meta.*` tensors: `format` (bytes of [`FORMAT`], or of [`FORMAT_MID_EPOCH`]
//! when written inside an epoch), `model` (bytes of the model name), `epoch` (u32, epochs
//! completed), `rng` (the generator state as two u32 words); inside an epoch also `step` (u32,
//! its training steps done), `order` (u32, its order of training examples) and `sums` (f64,
//! the trainer's running sums).

use crate::optim::SgdMomentum;
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
/// crash leaves the previous checkpoint intact. `opt` must have been built from
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
    opt: &SgdMomentum,
    epoch: usize,
    rng: &Rng,
    partial: Option<&PartialEpoch>,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let vars = named_vars(varmap);
    if vars.len() != opt.buffers().len() {
        candle_core::bail!(
            "optimizer has {} buffers for {} variables",
            opt.buffers().len(),
            vars.len()
        );
    }
    for ((name, var), buf) in vars.iter().zip(opt.buffers()) {
        tensors.insert(
            format!("model.{name}"),
            var.as_tensor().to_device(&Device::Cpu)?,
        );
        if let Some(b) = buf {
            tensors.insert(format!("optim.{name}"), b.to_device(&Device::Cpu)?);
        }
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
/// `model`, with exactly the same variable names and shapes.
///
/// # Errors
/// [`CheckpointError`] (inside `candle_core::Error`) for a foreign file, another model or
/// another shape; nothing is modified then.
pub fn load(path: &Path, model: &str, varmap: &VarMap, opt: &mut SgdMomentum) -> Result<Resumed> {
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
    let mut buffers = Vec::with_capacity(vars.len());
    for (name, var) in &vars {
        let t = &file[&format!("model.{name}")];
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        buffers.push(match file.get(&format!("optim.{name}")) {
            Some(b) => Some(b.to_device(var.device())?.to_dtype(var.dtype())?),
            None => None,
        });
    }
    opt.set_buffers(buffers)?;
    Ok(Resumed {
        epoch,
        rng: Rng::from_state(((words[0] as u64) << 32) | words[1] as u64),
        partial,
    })
}

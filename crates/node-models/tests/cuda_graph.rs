//! Training steps recorded as a CUDA graph (`node_kernels::GraphStep`) against the same steps
//! run op by op: the same losses and parameters. On the CPU, recording is refused clearly.
//!
//! The replay runs the recorded kernels on the same data, so it should give the eager
//! numbers bit for bit; a different cuBLAS algorithm inside the capture would change the
//! rounding only. f64 is the precise check (1e-9). In f32 these networks amplify rounding
//! to percents after an update (see `same_training_as_cpu` in `models.rs`), so f32 is
//! checked for gross errors only.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_kernels::GraphStep;
use node_models::{init, mnist, MnistModel, ModelKind, OdeConfig, Rng, SgdConfig, SgdMomentum};

struct Trainer {
    varmap: VarMap,
    model: MnistModel,
    opt: SgdMomentum,
}

impl Trainer {
    fn new(kind: ModelKind, dtype: DType, dev: &Device) -> Result<Self> {
        let mut ode = OdeConfig::default_for(kind);
        // A graph cannot hold the fixed-step solve's final check (a read back to the host).
        ode.opts = ode.opts.check_finite(false);
        let varmap = VarMap::new();
        let model = MnistModel::new(kind, &ode, VarBuilder::from_varmap(&varmap, dtype, dev))?;
        init::pytorch_default(&varmap, &mut Rng::new(3))?;
        let opt = SgdMomentum::new(
            node_adjoint::sorted_vars(&varmap),
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 5e-4,
            },
        )?;
        Ok(Self { varmap, model, opt })
    }

    /// One training step on `[x, y]`: the loss and the number of correct predictions.
    fn step(&mut self, xy: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
        let (logits, _) = self.model.forward(&xy[0])?;
        let loss = candle_nn::loss::cross_entropy(&logits, &xy[1])?;
        let correct = logits
            .argmax(1)?
            .eq(&xy[1])?
            .to_dtype(DType::F64)?
            .sum_all()?;
        let grads = loss.backward()?;
        self.opt.step(&grads)?;
        Ok(vec![loss, correct])
    }

    fn params(&self) -> Result<Vec<f64>> {
        let mut all = vec![];
        for v in node_adjoint::sorted_vars(&self.varmap) {
            let v = v.as_tensor().to_dtype(DType::F64)?;
            all.extend(v.flatten_all()?.to_vec1::<f64>()?);
        }
        Ok(all)
    }
}

fn batches(dev: &Device, dtype: DType, n: usize, size: usize) -> Result<Vec<[Tensor; 2]>> {
    let split = mnist::synthetic(n * size, &mut Rng::new(11));
    (0..n)
        .map(|b| {
            let idx: Vec<usize> = (b * size..(b + 1) * size).collect();
            let (x, y) = mnist::batch(&split, &idx, None, dev)?;
            Ok([x.to_dtype(dtype)?, y])
        })
        .collect()
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn graph_steps_match_eager_steps(dev: &Device) -> Result<()> {
    if !dev.is_cuda() {
        let data = batches(dev, DType::F32, 1, 16)?;
        let mut t = Trainer::new(ModelKind::Mlp, DType::F32, dev)?;
        let err = GraphStep::capture(&data[0], |xy| t.step(xy))
            .err()
            .expect("recording needs CUDA");
        ensure!(err.to_string().contains("CUDA"), "{err}");
        return Ok(());
    }
    // (dtype, bound on the losses' relative gap, bound on the parameters' gap relative to
    // the largest, whether the correct counts must be equal)
    for (dtype, loss_bound, param_bound, exact) in [
        (DType::F64, 1e-9, 1e-9, true),
        (DType::F32, 1e-2, 0.25, false),
    ] {
        let data = batches(dev, dtype, 4, 16)?;
        for kind in [ModelKind::Mlp, ModelKind::ResNet, ModelKind::RkNet] {
            let what = format!("{kind}, {dtype:?}");
            let mut eager = Trainer::new(kind, dtype, dev)?;
            let mut want = vec![];
            for xy in &data {
                let out = eager.step(xy)?;
                want.push((scalar(&out[0])?, scalar(&out[1])?));
            }
            let mut recorded = Trainer::new(kind, dtype, dev)?;
            let (mut graph, first) = GraphStep::capture(&data[0], |xy| recorded.step(xy))?;
            let mut got = vec![(scalar(&first[0])?, scalar(&first[1])?)];
            for xy in &data[1..] {
                let out = graph.run(xy)?;
                got.push((scalar(&out[0])?, scalar(&out[1])?));
            }
            for (step, (w, g)) in want.iter().zip(&got).enumerate() {
                let loss_ok = (w.0 - g.0).abs() <= loss_bound * w.0.abs();
                ensure!(
                    loss_ok && (!exact || w.1 == g.1),
                    "{what}, step {step}: loss and correct {g:?} with the graph, {w:?} without"
                );
            }
            let (pw, pg) = (eager.params()?, recorded.params()?);
            let scale = pw.iter().fold(0f64, |m, v| m.max(v.abs()));
            let gap = pw
                .iter()
                .zip(&pg)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            ensure!(
                gap <= param_bound * scale,
                "{what}: parameters differ by {gap:.2e} (largest {scale:.2e})"
            );

            // A batch of another size cannot be replayed: an error, not a wrong step.
            let short = batches(dev, dtype, 1, 8)?;
            ensure!(graph.run(&short[0]).is_err(), "{what}: a short batch ran");
        }
    }
    // A step that reads back to the host cannot be recorded; the device works on after it.
    let data = batches(dev, DType::F32, 2, 16)?;
    let mut t = Trainer::new(ModelKind::Mlp, DType::F32, dev)?;
    let err = GraphStep::capture(&data[0], |xy| {
        let out = t.step(xy)?;
        let _ = out[0].to_scalar::<f32>()?;
        Ok(out)
    })
    .err()
    .expect("a read back to the host cannot be recorded");
    ensure!(err.to_string().contains("captur"), "{err}");
    let out = t.step(&data[1])?;
    ensure!(scalar(&out[0])?.is_finite());
    Ok(())
}

candle_core::test_device!(
    graph_steps_match_eager_steps,
    graph_steps_match_eager_cpu,
    graph_steps_match_eager_cuda,
    graph_steps_match_eager_metal
);

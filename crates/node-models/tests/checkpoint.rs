//! Checkpoint round trip, and refusal of foreign, other-model and other-shape files.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use node_models::checkpoint::{self, CheckpointError};
use node_models::{
    init, Adam, AdamConfig, MnistModel, ModelKind, OdeConfig, Rng, SgdConfig, SgdMomentum,
};

fn setup(kind: ModelKind, seed: u64) -> Result<(VarMap, MnistModel, SgdMomentum)> {
    let varmap = VarMap::new();
    let model = MnistModel::new(
        kind,
        &OdeConfig::default_for(kind),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    init::pytorch_default(&varmap, &mut Rng::new(seed))?;
    let opt = SgdMomentum::new(node_adjoint::sorted_vars(&varmap), SgdConfig::default())?;
    Ok((varmap, model, opt))
}

fn snapshot(varmap: &VarMap) -> Result<Vec<Vec<f32>>> {
    Ok(node_adjoint::sorted_vars(varmap)
        .iter()
        .map(|v| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect())
}

fn kind_of(e: &candle_core::Error) -> &CheckpointError {
    match e {
        candle_core::Error::WrappedContext { wrapped, .. } => {
            wrapped.downcast_ref().expect("a CheckpointError")
        }
        _ => panic!("not a CheckpointError: {e}"),
    }
}

#[test]
fn round_trip_restores_everything() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let path = dir.join("c.safetensors");
    let (vm, model, mut opt) = setup(ModelKind::Mlp, 1)?;
    let x = Rng::new(631).uniform_tensor(&[4, 1, 28, 28], 0.0, 1.0, DType::F32, &Device::Cpu)?;
    let y = Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu)?;
    opt.backward_step(&candle_nn::loss::cross_entropy(&model.forward(&x)?.0, &y)?)?;
    let mut rng = Rng::new(9);
    rng.next_u64();
    checkpoint::save(&path, "mlp", &vm, &opt, 3, &rng, None)?;
    assert!(
        !dir.join("c.safetensors.tmp").exists(),
        "the temporary file is renamed away"
    );

    let (vm2, _, mut opt2) = setup(ModelKind::Mlp, 2)?;
    assert_ne!(snapshot(&vm)?, snapshot(&vm2)?);
    let r = checkpoint::load(&path, "mlp", &vm2, &mut opt2)?;
    assert_eq!(r.epoch, 3);
    assert_eq!(r.rng, rng);
    assert_eq!(r.partial, None);
    assert_eq!(snapshot(&vm)?, snapshot(&vm2)?);
    for (a, b) in opt.buffers().iter().zip(opt2.buffers()) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?
        );
    }

    // Written inside an epoch: the progress comes back as it was, under the other format tag.
    let partial = checkpoint::PartialEpoch {
        step: 17,
        order: vec![3, 0, 2, 1, 4],
        sums: vec![1.5, 12.0, 0.25],
    };
    checkpoint::save(&path, "mlp", &vm, &opt, 3, &rng, Some(&partial))?;
    let r = checkpoint::load(&path, "mlp", &vm2, &mut opt2)?;
    assert_eq!((r.epoch, r.partial), (3, Some(partial)));
    let format =
        candle_core::safetensors::load(&path, &Device::Cpu)?["meta.format"].to_vec1::<u8>()?;
    assert_eq!(format, checkpoint::FORMAT_MID_EPOCH.as_bytes());
    Ok(())
}

#[test]
fn foreign_and_mismatched_checkpoints_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let path = dir.join("odenet.safetensors");
    let (vm, _, opt) = setup(ModelKind::OdeNet, 1)?;
    checkpoint::save(&path, "odenet", &vm, &opt, 1, &Rng::new(0), None)?;

    // Another model.
    let (vm2, _, mut opt2) = setup(ModelKind::ResNet, 1)?;
    let before = snapshot(&vm2)?;
    let e = checkpoint::load(&path, "resnet", &vm2, &mut opt2).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::WrongModel { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("`odenet`, not `resnet`"), "{e}");
    // The same name but other shapes (RK-Net and ODE-Net share shapes; MLP does not).
    let e = checkpoint::load(
        &path,
        "odenet",
        &setup(ModelKind::Mlp, 1)?.0,
        &mut setup(ModelKind::Mlp, 1)?.2,
    )
    .unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::Mismatch { .. }),
        "{e}"
    );
    assert_eq!(
        snapshot(&vm2)?,
        before,
        "nothing is modified by a refused load"
    );

    // Not a checkpoint at all: garbage, and a safetensors file of something else.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors")?;
    let e =
        checkpoint::load(&junk, "odenet", &vm, &mut setup(ModelKind::OdeNet, 1)?.2).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::NotACheckpoint { .. }),
        "{e}"
    );
    let other = dir.join("other.safetensors");
    let t = std::collections::HashMap::from([(
        "weight".to_string(),
        Tensor::zeros(3, DType::F32, &Device::Cpu)?,
    )]);
    candle_core::safetensors::save(&t, &other)?;
    let e =
        checkpoint::load(&other, "odenet", &vm, &mut setup(ModelKind::OdeNet, 1)?.2).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::NotACheckpoint { .. }),
        "{e}"
    );
    Ok(())
}

#[test]
fn adam_resumes_exactly_and_optimizers_are_not_mixed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("adam.safetensors");
    let x = Rng::new(632).uniform_tensor(&[4, 1, 28, 28], 0.0, 1.0, DType::F32, &Device::Cpu)?;
    let y = Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu)?;
    let adam = |vm: &VarMap| Adam::new(node_adjoint::sorted_vars(vm), AdamConfig::default());
    let (vm, model, _) = setup(ModelKind::Mlp, 1)?;
    let mut opt = adam(&vm)?;
    let loss = |m: &MnistModel| -> Result<Tensor> {
        Ok(candle_nn::loss::cross_entropy(&m.forward(&x)?.0, &y)?)
    };
    for _ in 0..2 {
        opt.backward_step(&loss(&model)?)?;
    }
    checkpoint::save(&path, "mlp", &vm, &opt, 1, &Rng::new(0), None)?;

    // Resumed from the file, the next step is the one the uninterrupted run takes, bit for
    // bit: both moments and the step count (Adam's bias correction) came back.
    let (vm2, model2, _) = setup(ModelKind::Mlp, 2)?;
    let mut opt2 = adam(&vm2)?;
    checkpoint::load(&path, "mlp", &vm2, &mut opt2)?;
    assert_eq!(opt2.steps(), 2);
    opt.backward_step(&loss(&model)?)?;
    opt2.backward_step(&loss(&model2)?)?;
    assert_eq!(snapshot(&vm)?, snapshot(&vm2)?);

    // An Adam checkpoint is refused by SGD, and an SGD one by Adam, before anything changes.
    let (vm3, _, mut sgd) = setup(ModelKind::Mlp, 3)?;
    let before = snapshot(&vm3)?;
    let e = checkpoint::load(&path, "mlp", &vm3, &mut sgd).unwrap_err();
    assert!(
        matches!(kind_of(&e), CheckpointError::Mismatch { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("`adam`, not `sgd-momentum`"), "{e}");
    assert_eq!(snapshot(&vm3)?, before);
    // A file from before `meta.optimizer` existed is SGD's: still read by SGD, refused by Adam.
    let sgd_path = tmp.path().join("sgd.safetensors");
    checkpoint::save(&sgd_path, "mlp", &vm3, &sgd, 1, &Rng::new(0), None)?;
    let mut old = candle_core::safetensors::load(&sgd_path, &Device::Cpu)?;
    assert!(old.remove("meta.optimizer").is_some());
    candle_core::safetensors::save(&old, &sgd_path)?;
    checkpoint::load(&sgd_path, "mlp", &vm3, &mut sgd)?;
    let e = checkpoint::load(&sgd_path, "mlp", &vm3, &mut adam(&vm3)?).unwrap_err();
    assert!(e.to_string().contains("`sgd-momentum`, not `adam`"), "{e}");
    Ok(())
}

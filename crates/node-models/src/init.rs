//! Seeded initialisation with PyTorch's defaults, so a `--seed` reproduces a run (Candle's CPU
//! random generator cannot be seeded).

use crate::rng::Rng;
use candle_core::Result;
use candle_nn::VarMap;

/// Re-initialises every variable of `varmap` in name order: weights of rank ≥ 2 (conv and
/// linear) and their biases uniform in `±1/√fan_in` (PyTorch's `kaiming_uniform_(a=√5)` and
/// bias rule), rank-1 weights without such a companion (normalisation scales) to 1, and the
/// biases of those to 0.
///
/// # Errors
/// Candle errors while writing the variables.
pub fn pytorch_default(varmap: &VarMap, rng: &mut Rng) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
        let weight_of = |p: &str| data.get(&format!("{p}.weight")).map(|w| w.dims().to_vec());
        let fan_in = |w: &[usize]| w[1..].iter().product::<usize>().max(1) as f64;
        let value = match (leaf, dims.len()) {
            ("weight", r) if r >= 2 => Some(1.0 / fan_in(&dims).sqrt()),
            ("bias", 1) => match weight_of(prefix) {
                Some(w) if w.len() >= 2 => Some(1.0 / fan_in(&w).sqrt()),
                _ => None,
            },
            _ => None,
        };
        let t = match value {
            Some(bound) => rng.uniform_tensor(&dims, -bound, bound, var.dtype(), var.device())?,
            None if leaf == "weight" => var.ones_like()?,
            None => var.zeros_like()?,
        };
        var.set(&t)?;
    }
    Ok(())
}

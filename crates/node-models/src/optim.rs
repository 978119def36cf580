//! SGD with momentum and a piecewise-constant learning-rate schedule (candle-nn has neither):
//! the reference trains ODE-Net with `SGD(lr 0.1, momentum 0.9)`, decayed ×0.1 at epochs 60,
//! 100 and 140. Adam (torchdiffeq's CNF example trains with it), whose state, unlike
//! candle-nn's `AdamW`'s, can be saved in a checkpoint.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::Optimizer;

/// Settings of [`SgdMomentum`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor μ.
    pub momentum: f64,
    /// L2 weight decay λ.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        }
    }
}

/// SGD with (heavy-ball) momentum, with PyTorch's update:
/// `g ← ∇ + λθ`, `b ← μ b + g` (`b = g` on the first step), `θ ← θ − lr · b`.
#[derive(Debug)]
pub struct SgdMomentum {
    vars: Vec<Var>,
    buffers: Vec<Option<Tensor>>,
    config: SgdConfig,
}

impl SgdMomentum {
    /// The momentum buffers, one per variable in the order given to `new` (`None` before a
    /// variable's first gradient): to save in a checkpoint. [`Optimizer::step`] updates them in
    /// place: copy one (`Tensor::copy`) to keep its value across steps.
    pub fn buffers(&self) -> &[Option<Tensor>] {
        &self.buffers
    }

    /// Restores buffers saved with [`SgdMomentum::buffers`].
    ///
    /// # Errors
    /// When the number or the shapes of the buffers do not match the variables.
    pub fn set_buffers(&mut self, buffers: Vec<Option<Tensor>>) -> Result<()> {
        check_buffers(&buffers, &self.vars)?;
        self.buffers = buffers;
        Ok(())
    }
}

impl Optimizer for SgdMomentum {
    type Config = SgdConfig;

    /// # Errors
    /// A learning rate, momentum or weight decay that is negative or not finite (PyTorch
    /// refuses the negative ones; a NaN or infinite one would turn the parameters NaN, to be
    /// found later as a failing solve).
    fn new(vars: Vec<Var>, config: SgdConfig) -> Result<Self> {
        check_settings(
            "SGD",
            &[
                ("learning rate", config.lr),
                ("momentum", config.momentum),
                ("weight decay", config.weight_decay),
            ],
        )?;
        let buffers = vec![None; vars.len()];
        Ok(Self {
            vars,
            buffers,
            config,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let SgdConfig {
            lr,
            momentum,
            weight_decay,
        } = self.config;
        // In place, two passes per variable with momentum (node-kernels' fused updates on the
        // CPU and CUDA): no new tensor but a buffer's zeros on its first step, where `b = ∇`
        // then `b ← μ b + ∇` (PyTorch's first step).
        for (var, buf) in self.vars.iter().zip(self.buffers.iter_mut()) {
            let Some(g) = grads.get(var) else { continue };
            let p = var.as_tensor();
            if momentum == 0.0 {
                node_kernels::sgd_descend(p, g, lr, weight_decay)?;
                continue;
            }
            let b = match buf {
                Some(b) => b,
                None => buf.insert(p.zeros_like()?.detach()),
            };
            node_kernels::sgd_momentum_update(b, g, p, momentum, weight_decay)?;
            node_kernels::sgd_descend(p, b, lr, 0.0)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

/// Refuses a negative or non-finite setting of the optimizer `what`.
fn check_settings(what: &str, settings: &[(&str, f64)]) -> Result<()> {
    for &(name, v) in settings {
        if !(v.is_finite() && v >= 0.0) {
            candle_core::bail!("{what}: the {name} must be finite and ≥ 0, got {v}");
        }
    }
    Ok(())
}

/// Settings of [`Adam`]; the defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay β₁ of the first moment.
    pub beta1: f64,
    /// Decay β₂ of the second moment.
    pub beta2: f64,
    /// ε added to the root of the second moment.
    pub eps: f64,
    /// L2 weight decay λ (added to the gradient, as PyTorch's `Adam`, not decoupled).
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adam (Kingma & Ba 2015) with PyTorch's update: `g ← ∇ + λθ`, `m ← β₁m + (1−β₁)g`,
/// `v ← β₂v + (1−β₂)g²`, `θ ← θ − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`. `t` counts the calls
/// to [`Optimizer::step`] (one count for all variables).
#[derive(Debug)]
pub struct Adam {
    vars: Vec<Var>,
    moments: [Vec<Option<Tensor>>; 2],
    steps: u64,
    config: AdamConfig,
    /// A factor on the learning rate per variable (PyTorch's parameter groups), or none.
    lr_scales: Option<Vec<f64>>,
    /// A factor on the weight decay per variable, or none.
    decay_scales: Option<Vec<f64>>,
}

impl Adam {
    /// The first and second moments, one per variable in the order given to `new` (`None`
    /// before a variable's first gradient): to save in a checkpoint.
    pub fn moments(&self) -> &[Vec<Option<Tensor>>; 2] {
        &self.moments
    }

    /// The number of steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Restores moments and a step count saved with [`Adam::moments`] and [`Adam::steps`].
    ///
    /// # Errors
    /// When the number or the shapes of the moments do not match the variables.
    pub fn set_state(&mut self, moments: [Vec<Option<Tensor>>; 2], steps: u64) -> Result<()> {
        for m in &moments {
            check_buffers(m, &self.vars)?;
        }
        self.moments = moments;
        self.steps = steps;
        Ok(())
    }

    /// Sets the L2 weight decay λ.
    pub fn set_weight_decay(&mut self, weight_decay: f64) {
        self.config.weight_decay = weight_decay;
    }

    /// Scales the learning rate of each variable (in the order given to `new`) by its
    /// factor, as PyTorch's parameter groups with their own `lr` do: two networks trained
    /// together at different rates (a GAN's generator and discriminator). The factors
    /// multiply whatever [`Optimizer::set_learning_rate`] sets. They are settings, not
    /// state: a checkpoint does not hold them.
    ///
    /// # Errors
    /// A number of factors other than the number of variables, or a factor that is negative
    /// or not finite.
    pub fn set_lr_scales(&mut self, scales: Vec<f64>) -> Result<()> {
        self.lr_scales = Some(self.checked_scales(scales, "learning-rate")?);
        Ok(())
    }

    /// Scales the weight decay of each variable (in the order given to `new`) by its factor,
    /// as PyTorch's parameter groups with their own `weight_decay` do: 0 exempts a variable
    /// that is no weight (a learned initial state). Settings, not state, as
    /// [`Adam::set_lr_scales`].
    ///
    /// # Errors
    /// As [`Adam::set_lr_scales`].
    pub fn set_weight_decay_scales(&mut self, scales: Vec<f64>) -> Result<()> {
        self.decay_scales = Some(self.checked_scales(scales, "weight-decay")?);
        Ok(())
    }

    fn checked_scales(&self, scales: Vec<f64>, what: &str) -> Result<Vec<f64>> {
        if scales.len() != self.vars.len() {
            candle_core::bail!(
                "Adam: {} {what} factors for {} variables",
                scales.len(),
                self.vars.len()
            );
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
            candle_core::bail!("Adam: a {what} factor must be finite and ≥ 0, got {s}");
        }
        Ok(scales)
    }
}

fn check_buffers(buffers: &[Option<Tensor>], vars: &[Var]) -> Result<()> {
    if buffers.len() != vars.len() {
        candle_core::bail!(
            "optimizer state has {} buffers for {} variables",
            buffers.len(),
            vars.len()
        );
    }
    for (b, v) in buffers.iter().zip(vars) {
        if let Some(b) = b {
            if b.shape() != v.shape() {
                candle_core::bail!(
                    "optimizer buffer of shape {:?} for a variable of shape {:?}",
                    b.shape(),
                    v.shape()
                );
            }
        }
    }
    Ok(())
}

impl Optimizer for Adam {
    type Config = AdamConfig;

    /// # Errors
    /// A learning rate, ε or weight decay that is negative or not finite, a β outside
    /// `[0, 1)` (PyTorch's checks, NaN and infinity refused too).
    fn new(vars: Vec<Var>, config: AdamConfig) -> Result<Self> {
        check_settings(
            "Adam",
            &[
                ("learning rate", config.lr),
                ("eps", config.eps),
                ("weight decay", config.weight_decay),
            ],
        )?;
        for (name, beta) in [("beta1", config.beta1), ("beta2", config.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                candle_core::bail!("Adam: {name} must be in [0, 1), got {beta}");
            }
        }
        let n = vars.len();
        Ok(Self {
            vars,
            moments: [vec![None; n], vec![None; n]],
            steps: 0,
            config,
            lr_scales: None,
            decay_scales: None,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        self.steps += 1;
        let t = self.steps as f64;
        let step_size = lr / (1.0 - beta1.powf(t));
        let root_bc2 = (1.0 - beta2.powf(t)).sqrt();
        let [ms, vs] = &mut self.moments;
        for (i, ((var, m), v)) in self
            .vars
            .iter()
            .zip(ms.iter_mut())
            .zip(vs.iter_mut())
            .enumerate()
        {
            let Some(g) = grads.get(var) else { continue };
            let step_size = step_size * self.lr_scales.as_ref().map_or(1.0, |s| s[i]);
            let p = var.as_tensor();
            let weight_decay = weight_decay * self.decay_scales.as_ref().map_or(1.0, |s| s[i]);
            let g = if weight_decay == 0.0 {
                g.clone()
            } else {
                (g + (p * weight_decay)?)?
            };
            // Zero moments before the first step: β·0 + (1 − β)·g.
            let new_m = match m.as_ref() {
                Some(m) => ((m * beta1)? + (&g * (1.0 - beta1))?)?,
                None => (&g * (1.0 - beta1))?,
            };
            let g2 = g.sqr()?;
            let new_v = match v.as_ref() {
                Some(v) => ((v * beta2)? + (g2 * (1.0 - beta2))?)?,
                None => (g2 * (1.0 - beta2))?,
            };
            let denom = (new_v.sqrt()? / root_bc2)?.affine(1.0, eps)?;
            var.set(&(p - ((&new_m / denom)? * step_size)?)?)?;
            *m = Some(new_m.detach());
            *v = Some(new_v.detach());
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

/// A learning rate constant between epoch boundaries: `base · rates[k]` during the epochs
/// from `boundaries[k-1]` (or 0) up to `boundaries[k]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PiecewiseSchedule {
    /// The base rate.
    pub base: f64,
    /// Epochs at which the rate changes (increasing).
    pub boundaries: Vec<usize>,
    /// Factors, one more than boundaries.
    pub rates: Vec<f64>,
}

impl PiecewiseSchedule {
    /// torchdiffeq's MNIST schedule: ×1, ×0.1, ×0.01, ×0.001 with boundaries 60, 100, 140.
    pub fn reference(base: f64) -> Self {
        Self {
            base,
            boundaries: vec![60, 100, 140],
            rates: vec![1.0, 0.1, 0.01, 0.001],
        }
    }

    /// The reference schedule compressed to a run of `epochs` epochs: boundaries at 60/160,
    /// 100/160 and 140/160 of the run (rounded; identical to [`Self::reference`] at 160).
    pub fn scaled(base: f64, epochs: usize) -> Self {
        let at = |f: usize| ((epochs * f) as f64 / 160.0).round() as usize;
        Self {
            base,
            boundaries: vec![at(60), at(100), at(140)],
            rates: vec![1.0, 0.1, 0.01, 0.001],
        }
    }

    /// The rate during `epoch` (0-based).
    pub fn lr(&self, epoch: usize) -> f64 {
        let k = self.boundaries.iter().take_while(|&&b| epoch >= b).count();
        self.base * self.rates[k.min(self.rates.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_pytorch_update() -> Result<()> {
        // θ0 = 1, ∇ = 2θ (L = θ²): b1 = 2, θ1 = 1 − 0.1·2 = 0.8; b2 = 0.9·2 + 1.6 = 3.4,
        // θ2 = 0.8 − 0.34 = 0.46.
        let v = Var::new(&[1.0f64], &Device::Cpu)?;
        let mut opt = SgdMomentum::new(vec![v.clone()], SgdConfig::default())?;
        for want in [0.8, 0.46] {
            opt.backward_step(&v.as_tensor().sqr()?.sum_all()?)?;
            assert!((v.to_vec1::<f64>()?[0] - want).abs() < 1e-12);
        }
        Ok(())
    }

    #[test]
    fn adam_matches_the_pytorch_update() -> Result<()> {
        // θ0 = 1, ∇ = 2θ, lr 0.1. Step 1: m = 0.2, v = 0.004, m̂ = 2, v̂ = 4, θ1 = 1 − 0.1·2/(2 + ε)
        // = 0.9 (Adam's first step moves every weight by lr). Step 2, g = 1.8: m = 0.36,
        // v = 0.0072396, m̂ = 0.36/0.19, v̂ = 0.0072396/0.001999, θ2 = 0.9 − 0.1·m̂/√v̂ (with θ1's
        // ε kept, 5e-10 off 0.9).
        let v = Var::new(&[1.0f64], &Device::Cpu)?;
        let cfg = AdamConfig {
            lr: 0.1,
            ..Default::default()
        };
        let mut opt = Adam::new(vec![v.clone()], cfg)?;
        let theta1 = 1.0 - 0.1 * 2.0 / (2.0 + 1e-8);
        let g = 2.0 * theta1;
        let m2: f64 = 0.9 * 0.2 + 0.1 * g;
        let v2: f64 = 0.999 * 0.004 + 0.001 * g * g;
        let theta2 = theta1 - 0.1 * (m2 / 0.19) / ((v2 / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        for want in [theta1, theta2] {
            opt.backward_step(&v.as_tensor().sqr()?.sum_all()?)?;
            let got = v.to_vec1::<f64>()?[0];
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert_eq!(opt.steps(), 2);
        Ok(())
    }

    #[test]
    fn adam_lr_scales_act_per_variable() -> Result<()> {
        // Adam's first step moves every weight by lr, here times each variable's factor.
        let a = Var::new(&[1.0f64], &Device::Cpu)?;
        let b = Var::new(&[1.0f64], &Device::Cpu)?;
        let cfg = AdamConfig {
            lr: 0.1,
            ..Default::default()
        };
        let mut opt = Adam::new(vec![a.clone(), b.clone()], cfg)?;
        opt.set_lr_scales(vec![1.0, 0.2])?;
        let loss = (a.as_tensor().sqr()? + b.as_tensor().sqr()?)?.sum_all()?;
        opt.backward_step(&loss)?;
        for (v, moved) in [(&a, 0.1), (&b, 0.02)] {
            let got = v.to_vec1::<f64>()?[0];
            assert!((got - (1.0 - moved)).abs() < 1e-8, "{got}");
        }
        assert!(opt.set_lr_scales(vec![1.0]).is_err());
        assert!(opt.set_lr_scales(vec![1.0, -1.0]).is_err());
        assert!(opt.set_lr_scales(vec![1.0, f64::NAN]).is_err());
        Ok(())
    }

    #[test]
    fn adam_weight_decay_scales_act_per_variable() -> Result<()> {
        // A loss with zero gradient: only the decay λθ = 0.5 pushes, and Adam's first step
        // moves a weight it pushes by lr; the exempt one (factor 0) stays.
        let a = Var::new(&[1.0f64], &Device::Cpu)?;
        let b = Var::new(&[1.0f64], &Device::Cpu)?;
        let cfg = AdamConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = Adam::new(vec![a.clone(), b.clone()], cfg)?;
        opt.set_weight_decay_scales(vec![1.0, 0.0])?;
        let zero = |v: &Var| v.as_tensor().sqr()? - v.as_tensor().sqr()?;
        let loss = (zero(&a)? + zero(&b)?)?.sum_all()?;
        opt.backward_step(&loss)?;
        for (v, want) in [(&a, 0.9), (&b, 1.0)] {
            let got = v.to_vec1::<f64>()?[0];
            assert!((got - want).abs() < 1e-8, "{got}");
        }
        assert!(opt.set_weight_decay_scales(vec![1.0]).is_err());
        assert!(opt.set_weight_decay_scales(vec![1.0, -1.0]).is_err());
        Ok(())
    }

    #[test]
    fn reference_schedule() {
        let s = PiecewiseSchedule::reference(0.1);
        let lrs: Vec<f64> = [0, 59, 60, 99, 100, 140, 200]
            .iter()
            .map(|&e| s.lr(e))
            .collect();
        let want = [0.1, 0.1, 0.01, 0.01, 0.001, 0.0001, 0.0001];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{lrs:?}");
        }
        assert_eq!(PiecewiseSchedule::scaled(0.1, 160), s);
        assert_eq!(PiecewiseSchedule::scaled(0.1, 8).boundaries, vec![3, 5, 7]);
    }

    /// Settings that would turn the parameters NaN, or that PyTorch refuses, are refused
    /// when the optimizer is made (`train-mnist --lr nan` trained a step and then failed in
    /// the ODE solve, "non-finite value at t = 0").
    #[test]
    fn refuses_bad_settings() -> Result<()> {
        let v = || -> Result<Vec<Var>> { Ok(vec![Var::new(&[1.0f64], &Device::Cpu)?]) };
        for lr in [f64::NAN, f64::INFINITY, -0.1] {
            let cfg = SgdConfig {
                lr,
                ..SgdConfig::default()
            };
            assert!(SgdMomentum::new(v()?, cfg).is_err(), "SGD lr {lr}");
            let cfg = AdamConfig {
                lr,
                ..AdamConfig::default()
            };
            assert!(Adam::new(v()?, cfg).is_err(), "Adam lr {lr}");
        }
        let cfg = SgdConfig {
            momentum: -0.9,
            ..SgdConfig::default()
        };
        assert!(SgdMomentum::new(v()?, cfg).is_err());
        let cfg = SgdConfig {
            weight_decay: f64::NAN,
            ..SgdConfig::default()
        };
        assert!(SgdMomentum::new(v()?, cfg).is_err());
        for (beta1, beta2) in [(1.0, 0.999), (0.9, -0.1), (f64::NAN, 0.999)] {
            let cfg = AdamConfig {
                beta1,
                beta2,
                ..AdamConfig::default()
            };
            assert!(Adam::new(v()?, cfg).is_err(), "betas {beta1} {beta2}");
        }
        // The edges PyTorch allows: no learning rate, no momentum.
        let cfg = SgdConfig {
            lr: 0.0,
            momentum: 0.0,
            weight_decay: 0.0,
        };
        SgdMomentum::new(v()?, cfg)?;
        Adam::new(
            v()?,
            AdamConfig {
                lr: 0.0,
                beta1: 0.0,
                ..AdamConfig::default()
            },
        )?;
        Ok(())
    }
}

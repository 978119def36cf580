//! Launchers of `optim.cu`: SGD's in-place updates on CUDA (see `crate::optim`).

use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, WithDType};

use super::{dtype_name, Source};
use crate::optim::{Descend, Update};

static OPTIM: Source = Source::new(include_str!("optim.cu"), "optim.cu", "node_kernels_optim");

const THREADS: u32 = 256;
/// Blocks per launch at most; larger tensors are covered by the kernels' grid-stride loops.
const MAX_BLOCKS: usize = 4096;

fn config(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The contiguous span of `l` (of `n` elements), or an error.
fn span(l: &Layout, n: usize) -> Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) if b - a == n => Ok(a..b),
        _ => candle_core::bail!("node-kernels optim (CUDA): a strided operand"),
    }
}

/// `b ← b·μ + (g + p·λ)` in place.
pub(crate) fn update(
    op: &Update,
    b: &mut CudaStorage,
    lb: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    p: &CudaStorage,
    lp: &Layout,
) -> Result<()> {
    fn go<T: CudaDType + DeviceRepr + WithDType>(
        op: &Update,
        b: &mut CudaStorage,
        lb: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        p: &CudaStorage,
        lp: &Layout,
    ) -> Result<()> {
        let n = lb.shape().elem_count();
        let (rb, rg, rp) = (span(lb, n)?, span(lg, n)?, span(lp, n)?);
        if n == 0 {
            return Ok(());
        }
        let dev = b.device.clone();
        let (module, ptx) = OPTIM.module()?;
        let name = format!("node_sgd_update_{}", dtype_name::<T>()?);
        let func = dev.get_or_load_custom_func(&name, module, ptx)?;
        let g = g.as_cuda_slice::<T>()?.slice(rg);
        let p = p.as_cuda_slice::<T>()?.slice(rp);
        let mut b = b.as_cuda_slice_mut::<T>()?.slice_mut(rb);
        let (mu, wd) = (T::from_f64(op.momentum), T::from_f64(op.weight_decay));
        let (n64, decay) = (n as u64, i32::from(op.weight_decay != 0.0));
        let mut builder = func.builder();
        builder.arg(&n64);
        builder.arg(&mu);
        builder.arg(&wd);
        builder.arg(&decay);
        builder.arg(&mut b);
        builder.arg(&g);
        builder.arg(&p);
        // SAFETY: the arguments match the kernel's signature; the views cover `n` elements.
        unsafe { builder.launch(config(n)) }.w()?;
        Ok(())
    }
    match b.dtype() {
        DType::F32 => go::<f32>(op, b, lb, g, lg, p, lp),
        DType::F64 => go::<f64>(op, b, lb, g, lg, p, lp),
        d => candle_core::bail!("sgd_momentum_update (CUDA): no kernel for {d:?}"),
    }
}

/// `p ← p − (d + p·λ)·lr` in place.
pub(crate) fn descend(
    op: &Descend,
    p: &mut CudaStorage,
    lp: &Layout,
    d: &CudaStorage,
    ld: &Layout,
) -> Result<()> {
    fn go<T: CudaDType + DeviceRepr + WithDType>(
        op: &Descend,
        p: &mut CudaStorage,
        lp: &Layout,
        d: &CudaStorage,
        ld: &Layout,
    ) -> Result<()> {
        let n = lp.shape().elem_count();
        let (rp, rd) = (span(lp, n)?, span(ld, n)?);
        if n == 0 {
            return Ok(());
        }
        let dev = p.device.clone();
        let (module, ptx) = OPTIM.module()?;
        let name = format!("node_sgd_descend_{}", dtype_name::<T>()?);
        let func = dev.get_or_load_custom_func(&name, module, ptx)?;
        let d = d.as_cuda_slice::<T>()?.slice(rd);
        let mut p = p.as_cuda_slice_mut::<T>()?.slice_mut(rp);
        let (lr, wd) = (T::from_f64(op.lr), T::from_f64(op.weight_decay));
        let (n64, decay) = (n as u64, i32::from(op.weight_decay != 0.0));
        let mut builder = func.builder();
        builder.arg(&n64);
        builder.arg(&lr);
        builder.arg(&wd);
        builder.arg(&decay);
        builder.arg(&mut p);
        builder.arg(&d);
        // SAFETY: the arguments match the kernel's signature; the views cover `n` elements.
        unsafe { builder.launch(config(n)) }.w()?;
        Ok(())
    }
    match p.dtype() {
        DType::F32 => go::<f32>(op, p, lp, d, ld),
        DType::F64 => go::<f64>(op, p, lp, d, ld),
        dt => candle_core::bail!("sgd_descend (CUDA): no kernel for {dt:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC needs no GPU: the source compiles and every kernel the launchers name is there.
    #[test]
    fn source_compiles_with_nvrtc() {
        let ptx = OPTIM.ptx().unwrap();
        for dt in ["f32", "f64"] {
            for k in ["node_sgd_update", "node_sgd_descend"] {
                assert!(
                    ptx.contains(&format!(".entry {k}_{dt}(")),
                    "{k}_{dt} missing"
                );
            }
        }
    }
}

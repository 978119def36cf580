//! Launchers of `optim.cu`: SGD's in-place updates on CUDA (see `crate::optim`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, WithDType};

use super::{dtype_name, grid_stride, Source};
use crate::optim::span;

static OPTIM: Source = Source::new(include_str!("optim.cu"), "optim.cu", "node_kernels_optim");

/// Launches `{kernel}_{dtype}(n, s0, s1, decay, dst, srcs..)` over the `n` contiguous
/// elements of `dst`; `decay` says whether the weight decay `s1` is not 0. The kernels:
/// `node_sgd_update` (`b ← b·μ + (g + p·λ)`, on `[μ, λ]`, `b` and `[g, p]`) and
/// `node_sgd_descend` (`p ← p − (d + p·λ)·lr`, on `[lr, λ]`, `p` and `[d]`).
pub(crate) fn launch(
    kernel: &str,
    scalars: [f64; 2],
    dst: (&mut CudaStorage, &Layout),
    srcs: &[(&CudaStorage, &Layout)],
) -> Result<()> {
    fn go<T: CudaDType + DeviceRepr + WithDType>(
        kernel: &str,
        [s0, s1]: [f64; 2],
        (dst, ld): (&mut CudaStorage, &Layout),
        srcs: &[(&CudaStorage, &Layout)],
    ) -> Result<()> {
        let n = ld.shape().elem_count();
        if n == 0 {
            return Ok(());
        }
        let dev = dst.device.clone();
        let (module, ptx) = OPTIM.module()?;
        let func =
            dev.get_or_load_custom_func(&format!("{kernel}_{}", dtype_name::<T>()?), module, ptx)?;
        let views = srcs
            .iter()
            .map(|(s, l)| Ok(s.as_cuda_slice::<T>()?.slice(span(l)?)))
            .collect::<Result<Vec<CudaView<'_, T>>>>()?;
        let mut d = dst.as_cuda_slice_mut::<T>()?.slice_mut(span(ld)?);
        let (a, b) = (T::from_f64(s0), T::from_f64(s1));
        let (n64, decay) = (n as u64, i32::from(s1 != 0.0));
        let mut builder = func.builder();
        builder.arg(&n64);
        builder.arg(&a);
        builder.arg(&b);
        builder.arg(&decay);
        builder.arg(&mut d);
        for v in &views {
            builder.arg(v);
        }
        // SAFETY: the arguments match the kernel's signature; every view covers `n` elements
        // (the operands' shapes were checked equal).
        unsafe { builder.launch(grid_stride(n)) }.w()?;
        Ok(())
    }
    match dst.0.dtype() {
        DType::F32 => go::<f32>(kernel, scalars, dst, srcs),
        DType::F64 => go::<f64>(kernel, scalars, dst, srcs),
        d => candle_core::bail!("{kernel} (CUDA): no kernel for {d:?}"),
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

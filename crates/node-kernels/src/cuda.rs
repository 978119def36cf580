//! CUDA kernels of this crate (with the `cuda` feature), for f32 and f64: group
//! normalization, optionally fused with a ReLU, forward and backward (here), the
//! convolution's unfolding, its adjoint and its output rearrangement (`conv`, around cuBLAS
//! products: see `conv/unfolded.rs`), and SGD's in-place updates (`optim`).
//!
//! Off the CPU, [`crate::group_norm`] would otherwise be Candle's chain of ten broadcast ops
//! forward and some thirty backward, each a kernel launch: on an H100, broadcast element-wise
//! kernels were 39% of an ODE-Net training step's GPU time, GroupNorm's chain the largest part.
//! Here it is one launch forward and two backward. The sources (`cuda/*.cu`) are compiled at
//! run time with NVRTC, once per process, and loaded once per device; no CUDA compiler is
//! needed to build this crate.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::{CudaDType, CudaDevice, Map3, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, WithDType};

use crate::group_norm::{Geometry, Settings};

mod conv;
pub(crate) mod optim;

/// A CUDA source of this crate, compiled to PTX by NVRTC on first use (once per process) and
/// loaded as a module once per device.
pub(crate) struct Source {
    code: &'static str,
    file: &'static str,
    module: &'static str,
    ptx: OnceLock<std::result::Result<String, String>>,
}

impl Source {
    const fn new(code: &'static str, file: &'static str, module: &'static str) -> Self {
        Self {
            code,
            file,
            module,
            ptx: OnceLock::new(),
        }
    }

    /// The PTX. `fmad=false`: no multiply-add is contracted behind the source's back, so
    /// group normalization's forward and backward kernels compute a slice's statistics and
    /// normalized values with the same roundings (the fused ReLU's mask depends on it).
    fn ptx(&'static self) -> Result<&'static str> {
        self.ptx
            .get_or_init(|| {
                let opts = CompileOptions {
                    fmad: Some(false),
                    name: Some(self.file.into()),
                    ..Default::default()
                };
                compile_ptx_with_opts(self.code, opts)
                    .map(|p| p.to_src())
                    .map_err(|e| e.to_string())
            })
            .as_deref()
            .map_err(|e| {
                candle_core::Error::Msg(format!("node-kernels: NVRTC failed on {}: {e}", self.file))
            })
    }

    /// The module's name and PTX, for `CudaDevice::get_or_load_custom_func`.
    fn module(&'static self) -> Result<(&'static str, &'static str)> {
        Ok((self.module, self.ptx()?))
    }
}

/// Threads per block of the grid-stride kernels (`conv.cu`, `optim.cu`).
const THREADS: u32 = 256;
/// Blocks per launch at most; larger outputs are covered by the kernels' grid-stride loops.
const MAX_BLOCKS: usize = 16 * 1024;

/// The launch of a grid-stride kernel over `n` elements: one thread per element up to
/// [`MAX_BLOCKS`] blocks of [`THREADS`].
fn grid_stride(n: usize) -> LaunchConfig {
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

static GROUP_NORM: Source = Source::new(
    include_str!("cuda/group_norm.cu"),
    "group_norm.cu",
    "node_kernels_group_norm",
);

/// Threads per block for slices of `len` elements; the forward and backward kernels must use
/// the same (their block sums then add in the same order).
fn block_size(len: usize) -> u32 {
    match len {
        0..=256 => 64,
        257..=2048 => 128,
        _ => 256,
    }
}

fn dtype_name<T: WithDType>() -> Result<&'static str> {
    match T::DTYPE {
        DType::F32 => Ok("f32"),
        DType::F64 => Ok("f64"),
        d => candle_core::bail!("node-kernels: no CUDA kernel for {d:?}"),
    }
}

fn offsets(l: &Layout, what: &str) -> Result<(usize, usize)> {
    l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!("group_norm (CUDA): {what} must be contiguous"))
    })
}

/// `[B, C, *]` (checked by `group_norm`) as (slices, groups, channels per group, positions),
/// within the kernels' 32-bit indices.
fn geometry(dims: &[usize], groups: usize) -> Result<(usize, usize, usize, usize)> {
    let g = Geometry::new(dims, groups);
    let slices = dims[0] * groups;
    if i32::try_from(slices).is_err() || i32::try_from(g.slice_len()).is_err() {
        candle_core::bail!("group_norm (CUDA): input {dims:?} too large for the kernel");
    }
    Ok((slices, g.groups, g.cg, g.s))
}

/// The forward pass on `(x, weight, bias)`.
pub(crate) struct Forward(pub Settings);

impl Map3 for Forward {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        x: &CudaSlice<T>,
        lx: &Layout,
        w: &CudaSlice<T>,
        lw: &Layout,
        b: &CudaSlice<T>,
        lb: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let Settings { groups, eps, relu } = self.0;
        let name = format!("node_gn_fwd_{}", dtype_name::<T>()?);
        let (slices, groups, cg, s) = geometry(lx.dims(), groups)?;
        let ((x0, x1), (w0, w1), (b0, b1)) = (
            offsets(lx, "x")?,
            offsets(lw, "weight")?,
            offsets(lb, "bias")?,
        );
        if slices == 0 || cg * s == 0 {
            return dev.alloc_zeros::<T>(x1 - x0);
        }
        let (x, w, b) = (x.slice(x0..x1), w.slice(w0..w1), b.slice(b0..b1));
        // SAFETY: every element is written by the kernel (each block its whole slice).
        let mut y = unsafe { dev.alloc::<T>(x1 - x0)? };
        let (module, ptx) = GROUP_NORM.module()?;
        let func = dev.get_or_load_custom_func(&name, module, ptx)?;
        let cfg = LaunchConfig {
            grid_dim: (slices as u32, 1, 1),
            block_dim: (block_size(cg * s), 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&w);
        builder.arg(&b);
        builder.arg(&mut y);
        let eps = T::from_f64(eps);
        candle_core::builder_arg!(builder, groups as i32, cg as i32, s as i32, eps);
        candle_core::builder_arg!(builder, i32::from(relu));
        // SAFETY: the arguments match the kernel's signature; the views cover what it reads.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(y)
    }
}

/// The backward pass on `x`, `weight`, `bias` and `dy` → `[dx, dweight, dbias]`, flat.
pub(crate) fn backward(
    settings: Settings,
    inputs: [(&CudaStorage, &Layout); 4],
) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr + WithDType + ValidAsZeroBits>(
        Settings { groups, eps, relu }: Settings,
        [(x, lx), (w, lw), (b, lb), (dy, ldy)]: [(&CudaStorage, &Layout); 4],
    ) -> Result<CudaStorage> {
        let dev = &x.device;
        let dt = dtype_name::<T>()?;
        let (slices, groups, cg, s) = geometry(lx.dims(), groups)?;
        if ldy.dims() != lx.dims() {
            candle_core::bail!(
                "group_norm backward (CUDA): gradient shape {:?}",
                ldy.dims()
            );
        }
        let c = groups * cg;
        let ((x0, x1), (w0, w1), (b0, b1), (dy0, dy1)) = (
            offsets(lx, "x")?,
            offsets(lw, "weight")?,
            offsets(lb, "bias")?,
            offsets(ldy, "gradient")?,
        );
        if w1 - w0 != c || b1 - b0 != c {
            candle_core::bail!(
                "group_norm backward (CUDA): {} and {} parameters for {c} channels",
                w1 - w0,
                b1 - b0
            );
        }
        let n = x1 - x0;
        let wrap = |slice| T::wrap_cuda_slice(slice, dev.clone());
        if slices == 0 || cg * s == 0 {
            // No data: no input gradient, and the parameters' gradients are zero.
            return Ok(wrap(dev.alloc_zeros::<T>(n + 2 * c)?));
        }
        let x = x.as_cuda_slice::<T>()?.slice(x0..x1);
        let dy = dy.as_cuda_slice::<T>()?.slice(dy0..dy1);
        let w = w.as_cuda_slice::<T>()?.slice(w0..w1);
        let b = b.as_cuda_slice::<T>()?.slice(b0..b1);
        // SAFETY: the first kernel writes all of `dx` and `part`, the second the 2·C tail.
        let mut out = unsafe { dev.alloc::<T>(n + 2 * c)? };
        let mut part = unsafe { dev.alloc::<T>(slices * cg * 2)? };
        let (module, ptx) = GROUP_NORM.module()?;
        {
            let func = dev.get_or_load_custom_func(&format!("node_gn_bwd_{dt}"), module, ptx)?;
            let cfg = LaunchConfig {
                grid_dim: (slices as u32, 1, 1),
                block_dim: (block_size(cg * s), 1, 1),
                shared_mem_bytes: 0,
            };
            let mut dx = out.slice_mut(0..n);
            let mut builder = func.builder();
            builder.arg(&x);
            builder.arg(&w);
            builder.arg(&b);
            builder.arg(&dy);
            builder.arg(&mut dx);
            builder.arg(&mut part);
            let eps = T::from_f64(eps);
            candle_core::builder_arg!(builder, groups as i32, cg as i32, s as i32, eps);
            candle_core::builder_arg!(builder, i32::from(relu));
            // SAFETY: the arguments match the kernel's signature.
            unsafe { builder.launch(cfg) }.w()?;
        }
        {
            let func =
                dev.get_or_load_custom_func(&format!("node_gn_bwd_params_{dt}"), module, ptx)?;
            let threads = 128u32;
            let cfg = LaunchConfig {
                grid_dim: ((c as u32).div_ceil(threads), 1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut dwb = out.slice_mut(n..n + 2 * c);
            let batch = slices / groups;
            let mut builder = func.builder();
            builder.arg(&part);
            builder.arg(&mut dwb);
            candle_core::builder_arg!(builder, batch as i32, groups as i32, cg as i32);
            // SAFETY: as above.
            unsafe { builder.launch(cfg) }.w()?;
        }
        Ok(wrap(out))
    }
    match inputs[0].0.dtype() {
        DType::F32 => go::<f32>(settings, inputs),
        DType::F64 => go::<f64>(settings, inputs),
        d => candle_core::bail!("group_norm backward (CUDA): no kernel for {d:?}"),
    }
}

/// Runs `op` on three CUDA storages, returning a storage of `shape`.
pub(crate) fn run3(
    op: &impl Map3,
    [(s1, l1), (s2, l2), (s3, l3)]: [(&CudaStorage, &Layout); 3],
    shape: Shape,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let slice = op.map(&s1.slice, l1, &s2.slice, l2, &s3.slice, l3, dev)?;
    Ok((
        CudaStorage {
            slice,
            device: dev.clone(),
        },
        shape,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC needs no GPU: a CUDA build's unit tests compile the source on any machine with
    /// CUDA's libraries (`libnvrtc`) and check that every kernel the launchers name is there.
    #[test]
    fn source_compiles_with_nvrtc() {
        let ptx = GROUP_NORM.ptx().unwrap();
        for dt in ["f32", "f64"] {
            for k in ["node_gn_fwd", "node_gn_bwd", "node_gn_bwd_params"] {
                assert!(
                    ptx.contains(&format!(".entry {k}_{dt}(")),
                    "{k}_{dt} missing"
                );
            }
        }
    }
}

//! The one-launch CUDA stage combination behind [`crate::rk::lincomb`] and concatenation
//! behind [`crate::rk::concat_flat`] (with the `cuda` feature).
//!
//! Candle's chain is two kernel launches per term (`affine`, then `add`) and an allocation
//! for each intermediate; a dopri5 step combines 26 terms that way, 51 launches beside its 6
//! evaluations. Here each combination is one launch, 7 per step (`fused.cu`, compiled at run
//! time by NVRTC, once per process, loaded once per device), with the same values as the
//! chain. Candle's `cat` is a copy launch per part; the adjoint joins 2 + (parameters) parts
//! at every evaluation of its reverse dynamics, here in one launch.

use std::sync::OnceLock;

use candle_core::cuda_backend::cudarc::driver::{
    DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, Layout, Result, Storage, Tensor, WithDType};

const SOURCE: &str = include_str!("fused.cu");
const MODULE: &str = "node_solvers_lincomb";
/// Terms per launch: `NODE_LINCOMB_MAX_TERMS` in the source. Longer combinations (dense
/// output of high-order tableaus) continue from the partial sum in further launches.
const MAX_TERMS: usize = 16;
const THREADS: u32 = 256;
/// Blocks per launch at most; larger outputs are covered by the kernel's grid-stride loop.
const MAX_BLOCKS: usize = 16 * 1024;

/// The module's PTX, compiled on first use. `fmad=false`: a term's product is rounded before
/// it is added, as in Candle's chain, so both give the same values.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        let opts = CompileOptions {
            fmad: Some(false),
            name: Some("fused.cu".into()),
            ..Default::default()
        };
        compile_ptx_with_opts(SOURCE, opts)
            .map(|p| p.to_src())
            .map_err(|e| e.to_string())
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("node-solvers: NVRTC failed on fused.cu: {e}")))
}

/// The kernels' by-value parameter (`NodeLincombF32` / `NodeLincombF64`): device addresses
/// of the base (0 for none) and the terms, and the terms' weights.
#[repr(C)]
#[derive(Clone, Copy)]
struct Terms<T> {
    base: u64,
    x: [u64; MAX_TERMS],
    w: [T; MAX_TERMS],
}

// SAFETY: plain data with the C layout of the kernels' structs (pointers are 8 bytes on every
// CUDA target); the test below checks its size against the parameter size in the PTX.
unsafe impl<T: DeviceRepr> DeviceRepr for Terms<T> {}

/// Parts per launch: `NODE_CONCAT_MAX_PARTS` in the source.
const MAX_PARTS: usize = 16;

/// The concatenation kernel's by-value parameter (`NodeConcatParts`): each part's device
/// address and the output index where it ends.
#[repr(C)]
#[derive(Clone, Copy)]
struct Parts {
    x: [u64; MAX_PARTS],
    end: [u64; MAX_PARTS],
}

// SAFETY: plain data with the C layout of the kernel's struct; the test below checks its size
// against the parameter size in the PTX.
unsafe impl DeviceRepr for Parts {}

/// The kernels of element type `T`.
pub(super) trait Kernel: WithDType + DeviceRepr + CudaDType {
    const NAME: &'static str;
    const CONCAT: &'static str;
}
impl Kernel for f32 {
    const NAME: &'static str = "node_lincomb_f32";
    const CONCAT: &'static str = "node_concat_f32";
}
impl Kernel for f64 {
    const NAME: &'static str = "node_lincomb_f64";
    const CONCAT: &'static str = "node_concat_f64";
}

/// One block per 256 elements up to [`MAX_BLOCKS`] (the kernels' loops cover the rest).
fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The parts, each flattened, end to end in one vector: one launch per [`MAX_PARTS`] parts,
/// or `None` for a strided part. All on one CUDA device, of dtype `T`, none tracking a
/// gradient (checked by the caller).
pub(super) fn concat<T: Kernel>(parts: &[Tensor]) -> Result<Option<Tensor>> {
    let n: usize = parts.iter().map(|t| t.elem_count()).sum();
    // Hold every read guard while the device addresses are in use.
    let guards: Vec<_> = parts.iter().map(|t| t.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let (Storage::Cuda(cuda), Some((start, end))) = (&**storage, layout.contiguous_offsets())
        else {
            return Ok(None);
        };
        // Empty parts take no slot (and their views no address).
        if end > start {
            views.push((cuda.as_cuda_slice::<T>()?.slice(start..end), &cuda.device));
        }
    }
    let Some((_, dev)) = views.first() else {
        return Ok(None);
    };
    let dev = (*dev).clone();
    let stream = dev.cuda_stream();
    // SAFETY: every element is written, each by the launch whose parts cover it.
    let mut out = unsafe { dev.alloc::<T>(n)? };
    let func = dev.get_or_load_custom_func(T::CONCAT, MODULE, ptx()?)?;
    {
        // As in `combine`: the guards order each launch after its inputs' writes.
        let ptrs: Vec<_> = views.iter().map(|(v, _)| v.device_ptr(&stream)).collect();
        let (out_ptr, _out_guard) = out.device_ptr_mut(&stream);
        let mut at = 0usize;
        for (chunk, vs) in ptrs.chunks(MAX_PARTS).zip(views.chunks(MAX_PARTS)) {
            let mut p = Parts {
                x: [0; MAX_PARTS],
                end: [0; MAX_PARTS],
            };
            let mut len = 0usize;
            for (j, ((x, _), (v, _))) in chunk.iter().zip(vs).enumerate() {
                len += v.len();
                p.x[j] = *x;
                p.end[j] = len as u64;
            }
            // This launch writes `[at, at + len)` of the output.
            let dst = out_ptr + (at * std::mem::size_of::<T>()) as u64;
            let len64 = len as u64;
            let mut builder = func.builder();
            builder.arg(&p);
            builder.arg(&dst);
            builder.arg(&len64);
            // SAFETY: the arguments match the kernel's signature; every address covers its
            // part's elements, the output `[at, at + len)`, and all stay alive (the guards
            // above) until the launch is queued.
            unsafe { builder.launch(grid(len)) }.w()?;
            at += len;
        }
    }
    drop(views);
    drop(guards);
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev));
    Ok(Some(Tensor::from_storage(
        storage,
        n,
        BackpropOp::none(),
        false,
    )))
}

/// `base + Σ w_i x_i` in one launch (more past 16 terms), or `None` for a strided input.
/// `all` is the base (when `has_base`) then the terms' tensors, all on one CUDA device, of
/// one shape and of dtype `T`, none tracking a gradient (checked by the caller).
pub(super) fn combine<T: Kernel>(
    all: &[&Tensor],
    has_base: bool,
    terms: &[(f64, &Tensor)],
) -> Result<Option<Tensor>> {
    let like = all[0];
    if like.elem_count() == 0 {
        return Ok(None);
    }
    // Hold every read guard while the device addresses are in use.
    let guards: Vec<_> = all.iter().map(|t| t.storage_and_layout()).collect();
    let mut storages = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let Storage::Cuda(cuda) = &**storage else {
            return Ok(None);
        };
        if !layout.is_contiguous() {
            return Ok(None);
        }
        storages.push((cuda, *layout));
    }
    let ws: Vec<f64> = terms.iter().map(|(w, _)| *w).collect();
    let out = combine_storages::<T>(&storages, has_base, &ws)?;
    drop(storages);
    drop(guards);
    Ok(Some(Tensor::from_storage(
        Storage::Cuda(out),
        like.shape().clone(),
        BackpropOp::none(),
        false,
    )))
}

/// `base + Σ w_i x_i` over contiguous storages of one length on one device: `all` is the
/// base (when `has_base`) then the terms, one weight per term, at least one term.
pub(super) fn combine_storages<T: Kernel>(
    all: &[(&CudaStorage, &Layout)],
    has_base: bool,
    ws: &[f64],
) -> Result<CudaStorage> {
    let n = all[0].1.shape().elem_count();
    let mut views = Vec::with_capacity(all.len());
    for (cuda, layout) in all {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("lincomb (CUDA): a strided input");
        };
        views.push(cuda.as_cuda_slice::<T>()?.slice(start..end));
    }
    let dev = all[0].0.device.clone();
    let stream = dev.cuda_stream();
    // SAFETY: every element is written by the first launch (none for no elements).
    let mut out = unsafe { dev.alloc::<T>(n)? };
    if n == 0 {
        return Ok(T::wrap_cuda_slice(out, dev));
    }
    let func = dev.get_or_load_custom_func(T::NAME, MODULE, ptx()?)?;
    let cfg = grid(n);
    {
        // Each pointer's guard orders the launch after the tensor's last write and records
        // the read (or, for the output, the write) once the launch is queued.
        let ptrs: Vec<_> = views.iter().map(|v| v.device_ptr(&stream)).collect();
        let (out_ptr, _out_guard) = out.device_ptr_mut(&stream);
        let (mut base, xs) = if has_base {
            (ptrs[0].0, &ptrs[1..])
        } else {
            (0, &ptrs[..])
        };
        for (xs, ws) in xs.chunks(MAX_TERMS).zip(ws.chunks(MAX_TERMS)) {
            let mut t = Terms {
                base,
                x: [0; MAX_TERMS],
                w: [T::zero(); MAX_TERMS],
            };
            for (j, ((x, _), w)) in xs.iter().zip(ws).enumerate() {
                t.x[j] = *x;
                t.w[j] = T::from_f64(*w);
            }
            let (n_terms, n) = (xs.len() as i32, n as u64);
            let mut builder = func.builder();
            builder.arg(&t);
            builder.arg(&n_terms);
            builder.arg(&out_ptr);
            builder.arg(&n);
            // SAFETY: the arguments match the kernel's signature; every address covers `n`
            // elements of `T` and stays alive (the guards above) until the launch is queued.
            unsafe { builder.launch(cfg) }.w()?;
            // A longer combination goes on from the partial sum, in place (each element is
            // read and written by the same thread).
            base = out_ptr;
        }
    }
    drop(views);
    Ok(T::wrap_cuda_slice(out, dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC needs no GPU: a CUDA build's unit tests compile the source on any machine with
    /// CUDA's libraries (`libnvrtc`), and check that both kernels are there and take the
    /// struct this module passes, byte for byte.
    #[test]
    fn source_compiles_with_nvrtc() {
        let ptx = ptx().unwrap();
        for (dt, size) in [
            ("f32", std::mem::size_of::<Terms<f32>>()),
            ("f64", std::mem::size_of::<Terms<f64>>()),
        ] {
            let param = format!(".param .align 8 .b8 node_lincomb_{dt}_param_0[{size}]");
            assert!(ptx.contains(&param), "{param} not in the PTX:\n{ptx}");
            let size = std::mem::size_of::<Parts>();
            let param = format!(".param .align 8 .b8 node_concat_{dt}_param_0[{size}]");
            assert!(ptx.contains(&param), "{param} not in the PTX:\n{ptx}");
        }
    }
}

//! The allocator setting is made where glibc is the C library, and is a no-op elsewhere; the
//! CUDA event setting on CUDA devices only.

use candle_core::{Device, Result, Tensor};

#[test]
fn keep_freed_memory_applies_on_glibc_only() {
    let applied = node_kernels::keep_freed_memory();
    assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
    // Large buffers still allocate, fill and free correctly afterwards.
    for n in [1usize << 20, 40 << 20, 1 << 10] {
        let v = vec![1.5f32; n];
        assert_eq!(v.iter().map(|x| *x as f64).sum::<f64>(), 1.5 * n as f64);
    }
}

/// On CUDA the events are turned off (Candle's device runs one stream) and tensors allocated
/// afterwards compute as before; on other devices nothing is done.
fn cuda_events_skipped_on_cuda_only(dev: &Device) -> Result<()> {
    let skipped = node_kernels::skip_unused_cuda_events(dev);
    assert_eq!(skipped, dev.is_cuda());
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = dev.as_cuda_device() {
        assert!(!cuda.is_event_tracking());
    }
    let x = Tensor::arange(0f32, 1000.0, dev)?;
    let y = ((&x * 2.0)? + &x)?.sum_all()?.to_scalar::<f32>()?;
    assert_eq!(y, 3.0 * 999.0 * 1000.0 / 2.0);
    Ok(())
}

candle_core::test_device!(
    cuda_events_skipped_on_cuda_only,
    cuda_events_cpu,
    cuda_events_cuda,
    cuda_events_metal
);

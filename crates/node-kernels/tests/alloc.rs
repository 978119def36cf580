//! The allocator setting is made where glibc is the C library, and is a no-op elsewhere.

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

//! The process allocator's settings for training.

/// Requests of this size and above still get their own mapping (the ceiling of glibc's own
/// moving threshold; a higher one, tried, raised the peak without a faster step).
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Makes glibc's `malloc` keep freed memory for the next request instead of handing it back to
/// the kernel, so a training step's large buffers are not page-faulted in anew every step.
///
/// By default glibc serves each request above 128 KiB (a threshold that grows with what has
/// been freed) from a fresh `mmap` and unmaps it on `free`: clearing those pages was 10–12 % of
/// a CPU step (`perf`, BENCHMARKS.md). Here every request below 32 MiB comes from the heap,
/// and the heap is never trimmed. Measured against mimalloc (which the binaries used before):
/// the same step times within the noise, peaks 9–21 % lower (MiniLM full fine-tuning 516 → 470
/// MiB, LoRA 345 → 275 MiB). A process-wide setting: call it once, first thing in `main`.
/// Returns whether glibc took both settings; off Linux with glibc it does nothing and returns
/// `false`.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes the allocator's tunables (it returns 0 for a value out of
    // range, and changes nothing then).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_large_buffer_comes_from_the_heap() {
        const SIZE: usize = 24 << 20;
        assert!(super::keep_freed_memory());
        // `hblkhd`: the bytes glibc holds in `mmap`ed blocks. By default a 24 MiB request is
        // such a block (the threshold starts at 128 KiB); with the settings it is heap memory.
        // SAFETY: `mallinfo2` only reads the allocator's counters.
        let mapped_before = unsafe { libc::mallinfo2() }.hblkhd;
        let buffer = std::hint::black_box(vec![1u8; SIZE]);
        let mapped_after = unsafe { libc::mallinfo2() }.hblkhd;
        assert_eq!(buffer.len(), SIZE);
        assert!(
            mapped_after < mapped_before + SIZE,
            "mapped {mapped_before} → {mapped_after} bytes"
        );
    }
}

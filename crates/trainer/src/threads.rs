//! The process's worker threads.

/// Makes the calling thread one of the threads of rayon's global pool, which every parallel
/// loop of the CPU paths (products, attention, adapters, AdamW) runs on: the pool keeps one
/// thread per core, this one (index 0) among them. Call it first thing in `main`, before
/// anything runs in parallel.
///
/// By default the pool's threads are all its own and `main` only waits: each of the training
/// step's few hundred parallel loops wakes two sleeping workers and then `main` again, and
/// `main` runs the serial work between loops (burn's operations) while both workers sleep.
/// With `main` in the pool, a loop it starts runs on it and wakes one other thread.
/// Measured (`xtask bench`, MiniLM, in turns; BENCHMARKS.md, "Sixteenth session"): the full
/// step ≈ 5 % faster, LoRA's ≈ 4 %, inference unchanged.
///
/// Returns whether the pool took it: `false` where the global pool had already been built
/// (then it stays as it was).
pub fn join_the_thread_pool() -> bool {
    rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
        .is_ok()
}

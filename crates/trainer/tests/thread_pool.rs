//! `join_the_thread_pool`: a process-wide setting, so a test binary of its own.

use rayon::prelude::*;

#[test]
fn the_calling_thread_joins_the_pool_once() {
    let caller = std::thread::current().id();
    assert!(trainer::join_the_thread_pool());
    // The caller is the pool's thread 0, and the pool has its default size all the same.
    assert_eq!(rayon::current_thread_index(), Some(0));
    let cores = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    assert_eq!(rayon::current_num_threads(), cores);
    // A parallel loop started here runs (partly) on this thread, and gives the sum.
    let on_caller = std::sync::atomic::AtomicUsize::new(0);
    let sum: usize = (0..100_000usize)
        .into_par_iter()
        .with_max_len(1_000)
        .map(|i| {
            if std::thread::current().id() == caller {
                on_caller.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            i
        })
        .sum();
    assert_eq!(sum, 100_000 * 99_999 / 2);
    assert!(on_caller.into_inner() > 0);
    // The pool exists now: a second call changes nothing.
    assert!(!trainer::join_the_thread_pool());
}

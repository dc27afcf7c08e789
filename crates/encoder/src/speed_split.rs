//! How a product's rows (or columns) are shared between the threads: in proportion to how fast
//! each CPU has been running products, not in equal halves.
//!
//! The cores of a virtual machine need not be equal: on this project's 2-core VM one ran a
//! register-only FMA loop at 164–175 GFLOP/s while the other ran it at 120–124, alone or together,
//! for a minute or more at a time (BENCHMARKS.md, "Twentieth session"), presumably sharing its
//! physical core with another guest. With equal halves the fast core waits for the slow one at the
//! end of every product (the step's idle core). `gemm` cannot share one packing between threads, so
//! the split cannot be made finer to balance by stealing (each block packs the whole other factor:
//! BENCHMARKS.md, "Nineteenth session"); instead each thread claims, when it starts, a share
//! proportional to its CPU's measured speed, and the last to start takes what is left.
//! (The weight products on AVX-512 CPUs share one packing and claim their rows as they go,
//! `panel_product`; this split is for the products still on `gemm`: the weight gradients, and
//! every product elsewhere.)
//!
//! The values do not depend on the split: each element's sum runs over the depth in the same
//! order whichever block computes it (`gemm`'s depth blocking depends on the depth alone), so
//! the results stay the same run to run (tested).

use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// A share is a whole number of this many parts of the product.
const PARTS: usize = 16;

/// CPUs whose speed is kept; a CPU numbered higher gets equal shares.
const MAX_CPUS: usize = 1024;

/// How far one product's measurement moves a CPU's speed (an exponential moving average: the
/// machine's neighbours change over seconds; a MiniLM step has about a hundred split products).
const LEARNING_RATE: f32 = 0.05;

/// A product's measurement is clamped to this factor of the mean (a thread descheduled in the
/// middle of its block would otherwise look many times slower than its CPU is).
const CLAMP: f32 = 1.5;

/// Each CPU's speed at products relative to the others' (mean ≈ 1; f32 bits, 0 = not measured).
static RELATIVE_SPEED: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// The CPU this thread runs on now, where the OS says.
fn current_cpu() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: no arguments; returns -1 on failure.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok().filter(|&cpu| cpu < MAX_CPUS)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

fn speed_of(cpu: usize) -> Option<f32> {
    let bits = RELATIVE_SPEED[cpu].load(Ordering::Relaxed);
    (bits != 0).then(|| f32::from_bits(bits))
}

/// How many CPUs have been measured, and the sum of their speeds.
fn measured() -> (usize, f32) {
    (0..MAX_CPUS)
        .filter_map(speed_of)
        .fold((0, 0.0), |(count, sum), speed| (count + 1, sum + speed))
}

/// The most tasks whose speeds one product records (more are split in equal shares).
const MAX_TASKS: usize = 64;

/// One parallel product's division of `len` rows (or columns) into whole `unit`s between
/// `tasks` tasks. Nothing here allocates: with two small vectors a product, LoRA's peak
/// memory rose by 4 MiB in the median of ten runs (glibc's placement, BENCHMARKS.md).
pub(crate) struct SpeedSplit {
    len: usize,
    unit: usize,
    tasks: usize,
    /// The sum of the measured CPUs' speeds, where every CPU measured has a thread of its own
    /// (as many CPUs measured as there are tasks); `None`: equal shares.
    sum: Option<f32>,
    /// `(tasks that have claimed, the first row not claimed)`.
    claims: Mutex<(usize, usize)>,
    /// `(cpu, rows per second)` of the tasks that ran on one CPU throughout, and their count.
    rates: Mutex<([(usize, f64); MAX_TASKS], usize)>,
}

/// A task's part of the product: its rows, and where and when it started.
pub(crate) struct Claim {
    pub rows: Range<usize>,
    cpu: Option<usize>,
    start: Instant,
}

impl SpeedSplit {
    /// Shares from the speeds measured so far.
    pub(crate) fn new(len: usize, unit: usize, tasks: usize) -> Self {
        let (count, sum) = measured();
        let sum = (count == tasks && tasks <= MAX_TASKS && sum > 0.0).then_some(sum);
        Self::with_sum(len, unit, tasks, sum)
    }

    fn with_sum(len: usize, unit: usize, tasks: usize, sum: Option<f32>) -> Self {
        Self {
            len,
            unit,
            tasks,
            sum,
            claims: Mutex::new((0, 0)),
            rates: Mutex::new(([(0, 0.0); MAX_TASKS], 0)),
        }
    }

    /// The rows of the task starting now, on this thread's CPU: its CPU's share of the whole
    /// (an equal share where it has none), or all that is left for the last task to start.
    pub(crate) fn claim(&self) -> Claim {
        let cpu = current_cpu();
        Claim {
            rows: self.claim_on(cpu),
            cpu,
            start: Instant::now(),
        }
    }

    fn claim_on(&self, cpu: Option<usize>) -> Range<usize> {
        let share = cpu
            .zip(self.sum)
            .and_then(|(cpu, sum)| Some(speed_of(cpu)? / sum))
            .unwrap_or(1.0 / self.tasks as f32);
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        let (claimed, next) = *claims;
        let end = if claimed + 1 == self.tasks {
            self.len
        } else {
            // Whole parts of the length, so that products of one shape repeat the same few
            // sizes (each size is a buffer `gemm` allocates: fewer sizes for glibc to place).
            let parts = (share * PARTS as f32).round() as usize;
            let size = (parts * self.len / PARTS).next_multiple_of(self.unit);
            (next + size).min(self.len)
        };
        *claims = (claimed + 1, end);
        next..end
    }

    /// Records how fast `claim`'s task ran (where it stayed on one CPU).
    pub(crate) fn done(&self, claim: Claim) {
        let elapsed = claim.start.elapsed().as_secs_f64();
        let (Some(cpu), false) = (claim.cpu, claim.rows.is_empty()) else {
            return;
        };
        if current_cpu() == Some(cpu) && elapsed > 0.0 {
            let rate = claim.rows.len() as f64 / elapsed;
            let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
            let (rates, count) = &mut *rates;
            if let Some(slot) = rates.get_mut(*count) {
                *slot = (cpu, rate);
                *count += 1;
            }
        }
    }

    /// Moves each CPU's speed towards what this product measured, where it ran on more than
    /// one CPU (each task's rate against their mean).
    pub(crate) fn learn(self) {
        let (rates, count) = self.rates.into_inner().unwrap_or_else(|e| e.into_inner());
        let rates = &rates[..count];
        if rates.len() < 2 || rates.iter().all(|&(cpu, _)| cpu == rates[0].0) {
            return;
        }
        let mean = rates.iter().map(|&(_, r)| r).sum::<f64>() / rates.len() as f64;
        for &(cpu, rate) in rates {
            let relative = ((rate / mean) as f32).clamp(1.0 / CLAMP, CLAMP);
            // From 1 (the mean) rather than from a first measurement, which may be a cold
            // start's.
            let speed = speed_of(cpu).unwrap_or(1.0);
            let speed = speed + LEARNING_RATE * (relative - speed);
            RELATIVE_SPEED[cpu].store(speed.to_bits(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that set speeds, one at a time.
    static SPEEDS: Mutex<()> = Mutex::new(());

    fn set_speed(cpu: usize, speed: f32) {
        RELATIVE_SPEED[cpu].store(speed.to_bits(), Ordering::Relaxed);
    }

    /// Claims in proportion to the speeds, whole parts of sixteen, every row once, the last
    /// task taking the rest (also a task on a CPU not measured, and more claims than rows).
    #[test]
    fn claims_cover_the_rows_in_proportion() {
        let _one_at_a_time = SPEEDS.lock().unwrap_or_else(|e| e.into_inner());
        // CPUs no thread of this machine runs on.
        let (fast, slow, unmeasured) = (MAX_CPUS - 1, MAX_CPUS - 2, MAX_CPUS - 3);
        set_speed(fast, 1.2);
        set_speed(slow, 0.8);
        // 0.4 · 16 = 6.4 parts: 6, 375 rows, to whole units 384; the rest to the last.
        let split = SpeedSplit::with_sum(1000, 16, 2, Some(2.0));
        assert_eq!(split.claim_on(Some(slow)), 0..384);
        assert_eq!(split.claim_on(Some(fast)), 384..1000);
        // 0.6 · 16 = 9.6 parts: 10, 625 rows, 640.
        let split = SpeedSplit::with_sum(1000, 16, 2, Some(2.0));
        assert_eq!(split.claim_on(Some(fast)), 0..640);
        assert_eq!(split.claim_on(Some(slow)), 640..1000);
        // Thirds where a CPU is not measured or not known: 5 parts, 312 rows, 320.
        let split = SpeedSplit::with_sum(1000, 16, 3, Some(2.0));
        assert_eq!(split.claim_on(Some(unmeasured)), 0..320);
        assert_eq!(split.claim_on(None), 320..640);
        assert_eq!(split.claim_on(Some(fast)), 640..1000);
        let split = SpeedSplit::with_sum(20, 16, 2, None);
        assert_eq!(split.claim_on(Some(fast)), 0..16);
        assert_eq!(split.claim_on(Some(slow)), 16..20);
        assert_eq!(split.claim_on(None), 20..20);
        set_speed(fast, 0.0);
        set_speed(slow, 0.0);
    }

    /// A product's values do not depend on how its rows (or columns) are shared: split by
    /// very different speeds, it equals the one-thread product to the bit.
    #[test]
    fn products_equal_the_one_thread_product_whatever_the_split() {
        let value = |i: usize| (crate::fastmath::splitmix64(i as u64) >> 40) as f32 / 8e6 - 1.0;
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        // Rows ≥ columns (split by rows) and the other way, neither a multiple of 16.
        for (m, n, k) in [(1000, 200, 300), (150, 900, 200)] {
            let lhs: Vec<f32> = (0..m * k).map(value).collect();
            let rhs: Vec<f32> = (0..k * n).map(|i| value(i + 7)).collect();
            let run = |parallel: bool| {
                let mut dst = vec![0f32; m * n];
                // SAFETY: row-major buffers of exactly these shapes.
                unsafe {
                    crate::cpu_inference::product(
                        (m, n, k),
                        dst.as_mut_ptr(),
                        (n, 1),
                        false,
                        lhs.as_ptr(),
                        (k, 1),
                        rhs.as_ptr(),
                        (n, 1),
                        0.5,
                        parallel,
                    )
                };
                dst
            };
            let alone = run(false);
            let _one_at_a_time = SPEEDS.lock().unwrap_or_else(|e| e.into_inner());
            for speeds in [[0.0, 0.0], [1.0, 1.0], [1.45, 0.7], [0.67, 1.5]] {
                for cpu in 0..cpus.min(MAX_CPUS) {
                    set_speed(cpu, speeds[cpu % 2]);
                }
                // The product below is split by the speeds set (where the pool has a thread
                // for each CPU; with none set, a concurrent test's product may have measured
                // some, so that case is not asserted).
                let threads = rayon::current_num_threads();
                if speeds[0] > 0.0 && threads == cpus {
                    assert!(SpeedSplit::new(m, 16, threads).sum.is_some());
                }
                let shared = run(true);
                let differing = alone.iter().zip(&shared).filter(|(a, b)| a != b).count();
                assert_eq!(differing, 0, "{m}×{n}×{k} at speeds {speeds:?}");
            }
            (0..cpus.min(MAX_CPUS)).for_each(|cpu| set_speed(cpu, 0.0));
        }
    }
}

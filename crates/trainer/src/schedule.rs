//! Learning rate of the encoder and heads: linear warm-up, then cosine decay to 0
//! (DAO-SPEC step 5), exactly as transformers' `get_cosine_schedule_with_warmup`.

/// The warm-up + cosine schedule over a run of `total_steps` optimizer updates.
///
/// The update with index `t` (the number of updates already taken, from 0) uses
/// `base_lr × multiplier(t)`:
/// - `t / warmup` for `t < warmup`, so the very first update has learning rate 0;
/// - `max(0, 0.5 (1 + cos(π (t − warmup) / (total − warmup))))` after that.
///
/// Like transformers, nothing clamps `t` at `total_steps`: past it the cosine rises again,
/// so `total_steps` must count every update of the run (see [`updates_per_run`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineWithWarmup {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl CosineWithWarmup {
    pub fn new(base_lr: f64, warmup_steps: usize, total_steps: usize) -> Self {
        Self {
            base_lr,
            warmup_steps,
            total_steps,
        }
    }

    /// The factor applied to `base_lr` by update `step` (0-based).
    pub fn multiplier(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            // transformers divides by max(1, warmup); here warmup ≥ 1 on this branch.
            return step as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = (step - self.warmup_steps) as f64 / decay_steps as f64;
        (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
    }

    /// The learning rate of update `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        self.base_lr * self.multiplier(step)
    }
}

/// Optimizer updates in a run: `ceil(rows / batch)` batches per epoch (the last one may be
/// short), one update per `grad_accum` batches and one more for a shorter last group (the
/// training loop updates at each epoch's end), times `epochs`. Without accumulation this is
/// the transformers `Trainer`'s count.
pub fn updates_per_run(rows: usize, batch_size: usize, grad_accum: usize, epochs: usize) -> usize {
    let batches = rows.div_ceil(batch_size.max(1));
    batches.div_ceil(grad_accum.max(1)) * epochs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_golden_values() {
        let Some(path) = testkit::shared_file(
            "schedule::matches_transformers_golden_values",
            "fixtures/dao_golden.json",
        ) else {
            return;
        };
        let golden = testkit::read_json(&path);
        let fixture = &golden["lr_schedule"];
        let schedule = CosineWithWarmup::new(
            fixture["base_lr"].as_f64().unwrap(),
            fixture["warmup_steps"].as_u64().unwrap() as usize,
            fixture["total_steps"].as_u64().unwrap() as usize,
        );
        let steps = fixture["steps"].as_array().unwrap();
        let expected = fixture["multiplier"].as_array().unwrap();
        assert_eq!(steps.len(), expected.len());
        assert!(steps.len() >= 9, "fixture has {} steps", steps.len());
        let mut max_rel = 0.0f64;
        for (step, want) in steps.iter().zip(expected) {
            let step = step.as_u64().unwrap() as usize;
            // The fixture stores f32 values: compare in f32 after rounding ours the same way.
            let want = want.as_f64().unwrap() as f32 as f64;
            let got = schedule.multiplier(step) as f32 as f64;
            let rel = (got - want).abs() / want.abs().max(1e-30);
            if want == 0.0 {
                assert!(got.abs() <= 1e-12, "step {step}: got {got}, expected 0");
            } else {
                assert!(rel <= 1e-7, "step {step}: got {got}, expected {want}");
                max_rel = max_rel.max(rel);
            }
            let lr = schedule.lr(step);
            assert!((lr - schedule.base_lr * schedule.multiplier(step)).abs() < 1e-20);
        }
        eprintln!("lr schedule: max relative difference {max_rel:e}");
    }

    #[test]
    fn hand_computed_points() {
        let s = CosineWithWarmup::new(2e-5, 4, 12);
        assert_eq!(s.lr(0), 0.0); // the first update has lr 0
        assert!((s.multiplier(1) - 0.25).abs() < 1e-15);
        assert!((s.multiplier(4) - 1.0).abs() < 1e-15);
        // Half way through the decay: cos(π/2) = 0 → 0.5.
        assert!((s.multiplier(8) - 0.5).abs() < 1e-15);
        // A quarter: 0.5 (1 + cos(π/4)) = 0.853553390593...
        assert!((s.multiplier(6) - 0.853_553_390_593_273_8).abs() < 1e-15);
        assert!(s.multiplier(12).abs() < 1e-15);
        // No warm-up: full rate at once.
        assert_eq!(CosineWithWarmup::new(1.0, 0, 10).multiplier(0), 1.0);
    }

    #[test]
    fn counts_updates_as_the_training_loop_makes_them() {
        // 2198 rows, batch 10 → 220 batches (last one of 8 rows).
        assert_eq!(updates_per_run(2198, 10, 1, 100), 22_000);
        assert_eq!(updates_per_run(2198, 10, 4, 1), 55);
        // 220 batches in groups of 3: 73 whole groups and one of a single batch.
        assert_eq!(updates_per_run(2198, 10, 3, 2), 148);
        assert_eq!(updates_per_run(3, 10, 4, 2), 2);
    }
}

//! The learning-rate schedule: optional linear warm-up, then improved-diffusion's linear anneal
//! `lr · (1 − s / lr_anneal_steps)`. Its one piece of state (the step) is in the scheduler record,
//! so a resumed run continues the schedule exactly.

use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::LearningRate;

use crate::config::OptimConfig;

/// Warm-up + linear anneal, stepped once per optimiser step.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionLr {
    base: f64,
    warmup: u64,
    anneal: u64,
    /// Optimiser steps taken.
    step: u64,
}

impl DiffusionLr {
    /// The schedule of `optim`.
    pub fn new(optim: &OptimConfig) -> Self {
        Self { base: optim.lr, warmup: optim.warmup_steps, anneal: optim.lr_anneal_steps, step: 0 }
    }

    /// The learning rate of 0-based optimiser step `s`.
    pub fn lr_at(&self, s: u64) -> f64 {
        let mut lr = self.base;
        if self.warmup > 0 && s < self.warmup {
            lr *= (s + 1) as f64 / self.warmup as f64;
        }
        if self.anneal > 0 {
            lr *= (1.0 - s as f64 / self.anneal as f64).max(0.0);
        }
        lr
    }
}

impl LrScheduler for DiffusionLr {
    fn step(&mut self) -> LearningRate {
        let lr = self.lr_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as i64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<i64>("step") {
            self.step = step as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_reference_anneal() {
        let o = OptimConfig { lr: 1.0, warmup_steps: 4, lr_anneal_steps: 10, ..Default::default() };
        let mut s = DiffusionLr::new(&o);
        let got: Vec<f64> = (0..11).map(|_| s.step()).collect();
        // improved-diffusion: lr · (1 − step/anneal); warm-up multiplies by (s + 1)/warmup.
        let want = [0.25, 0.5 * 0.9, 0.75 * 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        let mut r = DiffusionLr::new(&o);
        r.load_record(s.to_record());
        assert_eq!(r.step, 11);
    }
}

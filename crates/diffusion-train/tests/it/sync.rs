//! A training step reads the device back once — the per-example losses (with their MSE and VLB
//! terms), which the host needs before the update reaches the weights (to stop on a non-finite
//! loss) and to feed the importance sampler — and not for the gradient norm, which stays on the
//! device (clipping included) until the log reads it (counted by `diffusion_core::sync`).

use diffusion_core::sync::host_reads;
use diffusion_train::config::{TimestepSamplerKind, TrainConfig};
use diffusion_train::stepper::Stepper;

use crate::cpu;

#[test]
fn a_training_step_reads_the_device_back_once() {
    for (clip, sampler) in [
        (None, TimestepSamplerKind::Uniform),
        (Some(1.0), TimestepSamplerKind::Uniform),
        (Some(1.0), TimestepSamplerKind::LossSecondMoment),
    ] {
        let mut cfg = TrainConfig::preset("tiny").unwrap();
        cfg.optim.grad_clip = clip;
        cfg.timestep_sampler = sampler;
        let mut stepper = Stepper::new(&cfg, &cpu(), 3).unwrap();
        for step in 0..3 {
            let before = host_reads();
            let loss = stepper.step();
            assert!(loss.is_finite());
            assert_eq!(host_reads() - before, 1, "step {step} (clip {clip:?}, {sampler:?})");
        }
        // Asking for the gradient norm is the one more read.
        let before = host_reads();
        let report = stepper.step_report();
        assert!(report.grad_norm.is_finite() && report.grad_norm > 0.0);
        assert_eq!(host_reads() - before, 2);
    }
}

//! The samplers never read the device back: every step of every loop — including the
//! predictor-corrector's per-sample step sizes and DPM-Solver's multistep state — stays on the
//! device, so a GPU can run ahead of the host (counted by `diffusion_core::sync`).

use diffusion_core::sync::host_reads;
use diffusion_models::MlpConfig;
use diffusion_sample::StepSchedule;
use diffusion_sample::dpm_solver::DpmAlgorithm;
use diffusion_sample::karras::{Churn, KarrasMethod};
use diffusion_sample::sampler::Predictor;
use diffusion_sample::unipc::UniPcVariant;
use diffusion_sample::{Method, NoiseSource, SampleOptions, sample};

use crate::{device, process};

#[test]
fn sampling_loops_make_no_device_to_host_reads() {
    let dev = device();
    let mlp = MlpConfig::new().init(&dev);
    let d = process(10, diffusion_core::ModelVariance::FixedSmall);
    let ids: Vec<u64> = (0..8).collect();
    let noise = NoiseSource::new(1);
    let options = SampleOptions { clip_denoised: true, record_every: Some(3) };
    let own = |karras| StepSchedule { steps: 6, spacing: diffusion_core::TimestepSpacing::Trailing, karras };
    for method in [
        Method::Ddpm,
        Method::Ddim { eta: 0.0 },
        Method::Ddim { eta: 1.0 },
        Method::langevin(&d, 2),
        Method::PredictorCorrector { predictor: Predictor::Ddpm, corrector_steps: 2, snr: 0.16 },
        Method::PredictorCorrector { predictor: Predictor::Ddim { eta: 0.0 }, corrector_steps: 1, snr: 0.16 },
        Method::DpmSolver { order: 2, algorithm: DpmAlgorithm::DpmSolverPp, schedule: None },
        Method::DpmSolver { order: 3, algorithm: DpmAlgorithm::DpmSolverPp, schedule: None },
        Method::DpmSolver { order: 2, algorithm: DpmAlgorithm::SdeDpmSolverPp, schedule: None },
        Method::DpmSolver { order: 2, algorithm: DpmAlgorithm::SdeDpmSolverPp, schedule: Some(own(true)) },
        Method::UniPc { order: 2, variant: UniPcVariant::Bh2, schedule: None },
        Method::UniPc { order: 3, variant: UniPcVariant::Bh2, schedule: Some(own(true)) },
        Method::Karras {
            method: KarrasMethod::Euler,
            schedule: own(false),
            churn: Churn { s_churn: 1.0, ..Churn::default() },
        },
        Method::Karras { method: KarrasMethod::EulerAncestral, schedule: own(true), churn: Churn::default() },
        Method::Karras { method: KarrasMethod::Heun, schedule: own(false), churn: Churn::default() },
    ] {
        let before = host_reads();
        let out = sample(&d, &mlp, &ids, [1, 2], &noise, method, &options, None, &dev).unwrap();
        assert_eq!(host_reads() - before, 0, "{method:?} read the device back");
        // The count is real: reading the result is one read.
        let _ = diffusion_core::sync::read_f32(out.sample);
        assert_eq!(host_reads() - before, 1);
    }
    // The full bound: T levels on the device, one read for the whole batch's report.
    let x0 = noise.batch(&ids, 42, [1, 2], &dev).clamp(-1.0, 1.0);
    let before = host_reads();
    let bound = diffusion_sample::likelihood::full_bound(&d, &mlp, x0, &ids, &noise, true);
    assert_eq!(host_reads() - before, 0, "the full bound read the device back");
    let mut totals = diffusion_sample::likelihood::TermTotals::default();
    totals.add(bound);
    assert_eq!(host_reads() - before, 1, "its report is one read");
    assert_eq!(totals.per_image.len(), ids.len());
}

//! Sampling a zero-terminal-SNR process (Lin et al. 2023): with the exact v-prediction for the
//! Gaussian data of this suite, every sampler that admits ᾱ_T = 0 starts from pure noise and
//! returns the data's moments; annealed Langevin, which needs σ_T < ∞, is refused by name.
//!
//! The exact network: x_0 | x_t is Gaussian with E[x_0 | x_t] = μ + √ᾱ s² (x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ)
//! and E[ε | x_t] = √(1 − ᾱ) (x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ); v̂ = √ᾱ ε̂ − √(1 − ᾱ) x̂_0. At ᾱ = 0
//! that is v̂ = −μ: the network knows nothing of x_0 but its mean.

use burn::tensor::Tensor;
use diffusion_core::{
    BetaSchedule, DiffusionConfig, GaussianDiffusion, ModelMean, ProcessSpec, TimestepSpacing, interp_sigma,
    spaced_timesteps, training_sigmas,
};
use diffusion_sample::dpm_solver::DpmAlgorithm;
use diffusion_sample::karras::{Churn, KarrasMethod};
use diffusion_sample::unipc::UniPcVariant;
use diffusion_sample::{Method, NoiseSource, StepSchedule, sample};

use crate::{MU, S, assert_data_moments, assert_exact_moments, device, ids, opts, per_coordinate, values};

fn zero_snr_process() -> GaussianDiffusion {
    let config = DiffusionConfig { mean: ModelMean::Velocity, ..Default::default() };
    ProcessSpec {
        zero_terminal_snr: true,
        ..ProcessSpec::new(BetaSchedule::Cosine { num_timesteps: 1000 }, config)
    }
    .build()
    .unwrap()
}

/// The exact v̂ at the (possibly fractional) original timestep t: ᾱ from σ interpolated in t,
/// as the σ samplers define it (exactly ᾱ_t at whole t but the last, where σ samplers read ᾱ as
/// 2⁻²⁴ and the rest as 0 — the network is evaluated at what the sampler asks).
fn perfect_v(original: &GaussianDiffusion) -> impl Fn(Tensor<2>, Tensor<1>) -> Tensor<2> + '_ {
    let ab = original.tables().alphas_cumprod.clone();
    let sigmas = training_sigmas(&ab);
    move |x: Tensor<2>, t: Tensor<1>| {
        per_coordinate(x, t, |tv, x, d| {
            let a = if tv.fract() == 0.0 {
                ab[tv as usize]
            } else {
                let s = interp_sigma(&sigmas, tv);
                1.0 / (1.0 + s * s)
            };
            let (mu, s) = (MU[d % 2], S[d % 2]);
            let den = a * s * s + 1.0 - a;
            let eps = (1.0 - a).sqrt() * (x - a.sqrt() * mu) / den;
            let x0 = mu + a.sqrt() * s * s * (x - a.sqrt() * mu) / den;
            a.sqrt() * eps - (1.0 - a).sqrt() * x0
        })
    }
}

/// DDPM and DDIM over trailing steps (the first is T − 1, where x_T is pure noise) give the
/// exact moments of their chains (closed-form propagation, as in the suite's ε tests), and
/// DPM-Solver++ 2M, UniPC, Euler, Euler-ancestral and Heun over trailing schedules return the
/// data's mean and standard deviation, all from the same zero-SNR v-prediction process.
#[test]
fn every_sampler_samples_the_gaussian_from_pure_noise() {
    let dev = device();
    let base = zero_snr_process();
    let model = perfect_v(&base);
    let noise = NoiseSource::new(9);
    let kept = spaced_timesteps(1000, 100, TimestepSpacing::Trailing).unwrap();
    assert_eq!(kept.last(), Some(&999), "trailing keeps the pure-noise step");
    let mut trailing = kept.clone();
    trailing.sort_unstable();
    let respaced = base.respace(&trailing).unwrap();
    assert!(respaced.has_zero_terminal_snr());
    for method in [Method::Ddpm, Method::Ddim { eta: 0.0 }, Method::Ddim { eta: 1.0 }] {
        let out = sample(&respaced, &model, &ids(), [1, 2], &noise, method, &opts(), None, &dev).unwrap();
        assert_exact_moments(&format!("{method:?}, 100 trailing steps"), &respaced, method, out.sample);
    }
    let own = |steps, karras| StepSchedule { steps, spacing: TimestepSpacing::Trailing, karras };
    for method in [
        Method::DpmSolver { order: 2, algorithm: DpmAlgorithm::DpmSolverPp, schedule: Some(own(50, false)) },
        Method::UniPc { order: 2, variant: UniPcVariant::Bh2, schedule: Some(own(50, false)) },
        Method::Karras { method: KarrasMethod::Euler, schedule: own(100, false), churn: Churn::default() },
        Method::Karras { method: KarrasMethod::Heun, schedule: own(50, false), churn: Churn::default() },
    ] {
        let out = sample(&base, &model, &ids(), [1, 2], &noise, method, &opts(), None, &dev).unwrap();
        assert_data_moments(&format!("{method:?}"), out.sample, 0.05);
    }
    // DPM-Solver++ over the respaced process's own steps reads its ᾱ_T = 0 as 2⁻²⁴ too.
    let method = Method::DpmSolver { order: 2, algorithm: DpmAlgorithm::DpmSolverPp, schedule: None };
    let out = sample(&respaced, &model, &ids(), [1, 2], &noise, method, &opts(), None, &dev).unwrap();
    assert_data_moments("DPM-Solver++ 2M over the 100 trailing steps", out.sample, 0.05);
    // Euler-ancestral adds DDPM's posterior noise (σ_up² = σ_{i+1}²(σ_i² − σ_{i+1}²)/σ_i²), so
    // over the same trailing steps it is DDPM's chain, under-dispersed at 100 steps like it
    // (std 0.277 for s = 0.3): its moments are that chain's exact ones.
    let method = Method::Karras {
        method: KarrasMethod::EulerAncestral,
        schedule: own(100, false),
        churn: Churn::default(),
    };
    let out = sample(&base, &model, &ids(), [1, 2], &noise, method, &opts(), None, &dev).unwrap();
    assert_exact_moments("Euler-ancestral, 100 trailing steps", &respaced, Method::Ddpm, out.sample);
}

/// Annealed Langevin runs on y = x/√ᾱ, undefined at ᾱ = 0: refused with the reason and the
/// samplers that do work.
#[test]
fn langevin_refuses_a_zero_snr_process() {
    let dev = device();
    let base = zero_snr_process().respace_spec("10").unwrap();
    let model = perfect_v(&base);
    let method = Method::langevin(&base, 1);
    assert!(base.has_zero_terminal_snr(), "the respaced process keeps the last step");
    let Err(err) =
        sample(&base, &model, &ids()[..4], [1, 2], &NoiseSource::new(1), method, &opts(), None, &dev)
    else {
        panic!("Langevin ran on a zero-SNR process")
    };
    let err = err.to_string();
    assert!(err.contains("zero terminal SNR") && err.contains("ddim"), "{err}");
    // Refused before any step, however many Langevin steps per level (none: no step to refuse).
    let none = Method::Langevin { steps_per_level: 0, step_scale: 0.1 };
    let calls = std::cell::Cell::new(0);
    let counting = |x: Tensor<2>, t: Tensor<1>| {
        calls.set(calls.get() + 1);
        model(x, t)
    };
    let result =
        sample(&base, &counting, &ids()[..4], [1, 2], &NoiseSource::new(1), none, &opts(), None, &dev);
    assert!(result.is_err(), "Langevin with no steps per level ran on a zero-SNR process");
    assert_eq!(calls.get(), 0, "the network was called before the refusal");
}

/// Classifier guidance on DDIM at zero terminal SNR: at ᾱ = 0 x̂_0 cannot be read back from the
/// guided ε̂, so it stays the network's there; a zero gradient then leaves DDIM unchanged, and a
/// pull towards a target moves the samples towards it (everything finite).
#[test]
fn guided_ddim_keeps_the_network_x0_at_the_pure_noise_step() {
    let dev = device();
    let base = zero_snr_process();
    let model = perfect_v(&base);
    let mut kept = spaced_timesteps(1000, 50, TimestepSpacing::Trailing).unwrap();
    kept.sort_unstable();
    let fast = base.respace(&kept).unwrap();
    let noise = NoiseSource::new(5);
    let ids: Vec<u64> = (0..1000).collect();
    let zero = |x: Tensor<2>, _t: Tensor<1>| x.zeros_like();
    let target = [-0.5f32, 0.6];
    let pull = |x: Tensor<2>, _t: Tensor<1>| {
        let n = x.dims()[0];
        let tgt = Tensor::<1>::from_floats(target, &x.device()).reshape([1, 2]).repeat_dim(0, n);
        (tgt - x).mul_scalar(2.0)
    };
    let method = Method::Ddim { eta: 0.0 };
    let run = |g: Option<&dyn diffusion_sample::Guidance<2>>| {
        values(sample(&fast, &model, &ids, [1, 2], &noise, method, &opts(), g, &dev).unwrap().sample)
    };
    let (plain, unmoved, pulled) = (run(None), run(Some(&zero)), run(Some(&pull)));
    assert!(pulled.iter().all(|v| v.is_finite()));
    let diff = plain.iter().zip(&unmoved).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-4, "a zero gradient changed DDIM by {diff}");
    let dist = |x: &[f32]| {
        let (m, _) = crate::moments(x);
        ((m[0] - f64::from(target[0])).powi(2) + (m[1] - f64::from(target[1])).powi(2)).sqrt()
    };
    assert!(dist(&pulled) < dist(&plain) - 0.2, "guided {} vs plain {}", dist(&pulled), dist(&plain));
}

//! Zero terminal SNR (Lin et al. 2023): a process whose last ᾱ is exactly 0, built from a
//! schedule rescaled by `rescale_zero_terminal_snr`. The expected values are closed forms: at
//! ᾱ = 0, x_T = ε exactly, v = −x_0, ε̂ = x_T for any x̂_0, and q(x_T | x_0) = 𝒩(0, I), so the
//! prior term of the bound is 0.

use burn::tensor::Tensor;
use diffusion_core::{BetaSchedule, DiffusionConfig, LossKind, ModelMean, ModelVariance, ProcessSpec};

use crate::common::{device, host_random, timesteps, values};

fn spec(mean: ModelMean, variance: ModelVariance) -> ProcessSpec {
    ProcessSpec {
        zero_terminal_snr: true,
        ..ProcessSpec::new(
            BetaSchedule::Linear { num_timesteps: 50 },
            DiffusionConfig { mean, variance, ..Default::default() },
        )
    }
}

/// Only v-prediction is accepted where ᾱ_T = 0, and the refusal names the mean it got; the
/// spec records the option in JSON only when it is set, so older records read as before.
#[test]
fn zero_terminal_snr_needs_v_prediction() {
    for (mean, name) in [
        (ModelMean::Epsilon, "epsilon"),
        (ModelMean::StartX, "start_x"),
        (ModelMean::PreviousX, "previous_x"),
    ] {
        let err = spec(mean, ModelVariance::FixedSmall).build().unwrap_err().to_string();
        assert!(err.contains("zero terminal SNR") && err.contains("velocity"), "{mean:?}: {err}");
        assert!(err.contains(&format!("mean is {name}")), "the refusal names the mean given: {err}");
    }
    let d = spec(ModelMean::Velocity, ModelVariance::FixedSmall).build().unwrap();
    assert!(d.has_zero_terminal_snr());
    assert_eq!(*d.tables().alphas_cumprod.last().unwrap(), 0.0);
    // Switching the parameterisation afterwards is refused the same way.
    let err = d.clone().with_config(DiffusionConfig::default()).unwrap_err().to_string();
    assert!(err.contains("epsilon"), "{err}");
    let plain = ProcessSpec::new(BetaSchedule::Linear { num_timesteps: 50 }, DiffusionConfig::default());
    assert!(!plain.build().unwrap().has_zero_terminal_snr());
    let json = serde_json::to_string(&plain).unwrap();
    assert!(!json.contains("zero_terminal_snr"), "{json}");
    // A record written before the field existed reads as the plain schedule.
    let mut old: serde_json::Value = serde_json::to_value(&plain).unwrap();
    assert!(old.as_object_mut().unwrap().remove("zero_terminal_snr").is_none());
    assert_eq!(serde_json::from_value::<ProcessSpec>(old).unwrap(), plain);
    let s = spec(ModelMean::Velocity, ModelVariance::FixedSmall);
    let back: ProcessSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

/// At the last step x_T is the noise itself, the v target is −x_0, ε̂ from any x̂_0 is x_T, and
/// x̂_0 from v̂ is −v̂; at the other steps ε̂ is the usual (x_t/√ᾱ − x̂_0)/√(1/ᾱ − 1).
#[test]
fn the_last_step_is_pure_noise_and_eps_is_its_input() {
    let dev = device();
    let d = spec(ModelMean::Velocity, ModelVariance::FixedSmall).build().unwrap();
    let last = d.num_timesteps() - 1;
    let x0 = host_random([4, 3], true, 1, &dev);
    let noise = host_random([4, 3], true, 2, &dev);
    let t = timesteps(&[last, last, 3, 0], &dev);
    let x_t = d.q_sample(x0.clone(), t.clone(), noise.clone());
    let (xs, ns, x0s) = (values(x_t.clone()), values(noise.clone()), values(x0.clone()));
    assert_eq!(&xs[..6], &ns[..6], "x_T = ε");
    let v = values(d.velocity(x0.clone(), t.clone(), noise.clone()));
    assert_eq!(v[..6], x0s[..6].iter().map(|a| -a).collect::<Vec<_>>()[..], "v = −x_0 at ᾱ = 0");
    let guess = host_random([4, 3], true, 3, &dev);
    let eps = values(d.predict_eps_from_x0(x_t.clone(), t.clone(), guess.clone()));
    assert_eq!(&eps[..6], &xs[..6], "ε̂ = x_T whatever x̂_0 is");
    let tb = d.tables();
    let gs = values(guess.clone());
    for row in 2..4 {
        let step = [3, 0][row - 2];
        for c in 0..3 {
            let k = row * 3 + c;
            let want = (tb.sqrt_recip_alphas_cumprod[step] as f32 * xs[k] - gs[k])
                / tb.sqrt_recipm1_alphas_cumprod[step] as f32;
            assert!((eps[k] - want).abs() <= 1e-5 * want.abs().max(1.0), "t = {step}: {} vs {want}", eps[k]);
        }
    }
    let x0_hat = values(d.predict_x0_from_v(x_t, t, guess));
    assert_eq!(x0_hat[..6], gs[..6].iter().map(|a| -a).collect::<Vec<_>>()[..], "x̂_0 = −v̂ at ᾱ = 0");
}

/// The bound over a zero-SNR process is finite: the prior term is 0 (q(x_T | x_0) = 𝒩(0, I)),
/// every term and both per-step errors are finite, and the ε̂ error at the last step is 0 (ε̂ = x_T
/// = ε there); the hybrid loss at the last step is finite too.
#[test]
fn the_bound_and_the_losses_are_finite_at_zero_snr() {
    let dev = device();
    let d = spec(ModelMean::Velocity, ModelVariance::LearnedRange).build().unwrap();
    let config = DiffusionConfig { loss: LossKind::RescaledMse, ..d.config() };
    let d = d.with_config(config).unwrap();
    let n = d.num_timesteps();
    let x0 = host_random([2, 3], false, 4, &dev).mul_scalar(2.0).sub_scalar(1.0);
    // A stand-in network: v̂ = 0.3 x_t + 0.1, and a variance interpolation of 0.2.
    let model = |x: Tensor<2>, _t: Tensor<1>| {
        Tensor::cat(vec![x.clone().mul_scalar(0.3).add_scalar(0.1), x.zeros_like().add_scalar(0.2)], 1)
    };
    let bpd = d.calc_bpd_loop(x0.clone(), false, model, |t| host_random([2, 3], true, 100 + t as u64, &dev));
    let prior = values(bpd.prior_bpd);
    assert!(prior.iter().all(|p| p.abs() < 1e-6), "prior term {prior:?}");
    let vb = values(bpd.vb.clone());
    assert!(vb.iter().all(|v| v.is_finite()), "{vb:?}");
    let eps_mse = values(bpd.eps_mse);
    assert!(eps_mse.iter().all(|v| v.is_finite()));
    assert_eq!(eps_mse[n - 1], 0.0, "ε̂ = ε at the last step");
    assert!(values(bpd.total_bpd).iter().all(|v| v.is_finite() && *v > 0.0));
    let t = timesteps(&[n - 1, n - 1], &dev);
    let losses = d.training_losses(x0, t, host_random([2, 3], true, 7, &dev), model);
    let l = values(losses.loss);
    assert!(l.iter().all(|v| v.is_finite()), "{l:?}");
}

/// σ-parameterised samplers read ᾱ = 0 as 2⁻²⁴ (diffusers' convention), so σ_T ≈ 4096 is finite.
#[test]
fn sigma_samplers_see_a_finite_terminal_sigma() {
    let d = spec(ModelMean::Velocity, ModelVariance::FixedSmall).build().unwrap();
    let sigmas = diffusion_core::training_sigmas(&d.tables().alphas_cumprod);
    let last = *sigmas.last().unwrap();
    assert!((last - (16_777_216f64 - 1.0).sqrt()).abs() < 1e-9, "σ_T = {last}");
    assert!(sigmas.windows(2).all(|w| w[0] < w[1]));
}

//! Euler, Euler-ancestral and Heun against diffusers' `EulerDiscreteScheduler`,
//! `EulerAncestralDiscreteScheduler` and `HeunDiscreteScheduler`.
//!
//! Golden values: `fixtures/k_schedulers.json`, written by `tools/gen_k_schedulers_reference.py`,
//! which runs diffusers 0.42.1's schedulers over whole chains with a closed-form stand-in network
//! (`out = A x + B t`, per prediction type, t the float32 fractional timestep) and its
//! `randn_tensor` patched to return stored noise. Every network call's timestep and input and
//! every step's sample are compared, for ε, x_0 and v, every spacing, Karras σ, churn and
//! diffusers' zero-terminal-SNR tables.

use std::sync::LazyLock;

use burn::tensor::{Device, Tensor};
use diffusion_core::{BetaSchedule, GaussianDiffusion, ModelMean, TimestepSpacing};
use diffusion_sample::karras::{Churn, KarrasMethod, KarrasSampler, KarrasState};
use diffusion_sample::{Method, SampleOptions, StepSchedule, sample_with};
use serde_json::Value;

use crate::golden::{StepNoise, assert_close_to_scale, f32s_as_f64, floats, slice, tensor4};

static REF: LazyLock<Value> = LazyLock::new(|| {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/k_schedulers.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
});

struct Run {
    method: KarrasMethod,
    prediction: ModelMean,
    spacing: TimestepSpacing,
    n: usize,
    cosine: bool,
    what: String,
}

fn parse(run: &Value) -> Run {
    let method = match run["scheduler"].as_str().unwrap() {
        "euler" => KarrasMethod::Euler,
        "euler_ancestral" => KarrasMethod::EulerAncestral,
        _ => KarrasMethod::Heun,
    };
    let prediction = match run["prediction_type"].as_str().unwrap() {
        "epsilon" => ModelMean::Epsilon,
        "sample" => ModelMean::StartX,
        _ => ModelMean::Velocity,
    };
    let offset = run["steps_offset"].as_u64().unwrap() as usize;
    let spacing = match run["timestep_spacing"].as_str().unwrap() {
        "linspace" => TimestepSpacing::Linspace,
        "trailing" => TimestepSpacing::Trailing,
        _ => TimestepSpacing::Leading { steps_offset: offset },
    };
    let n = run["num_inference_steps"].as_u64().unwrap() as usize;
    let cosine = run["beta_schedule"].as_str().unwrap() == "squaredcos_cap_v2";
    let what = format!(
        "{method:?} {prediction:?} n={n} {spacing:?} karras={} cosine={cosine} zero_snr={} churn={}",
        run["use_karras_sigmas"], run["rescale_betas_zero_snr"], run["s_churn"]
    );
    Run { method, prediction, spacing, n, cosine, what }
}

/// The tolerance of a run. diffusers computes in f32 (torch's sqrt not always correctly
/// rounded); on the cosine schedule the first σ is 2·10⁴, so x ≈ 2·10⁴ lands on values of order
/// 1 in the first step and f32 rounding there is ≈ 3e-4 of the result (the generator's f64
/// re-computation differs from diffusers by as much; Heun's second stage divides that error by a
/// small σ). On the linear schedule f64 and diffusers agree to 7e-7.
fn tolerance(r: &Run) -> f32 {
    match (r.cosine, r.method) {
        (false, _) => 2e-5,
        (true, KarrasMethod::Heun) => 5e-2,
        (true, _) => 1e-3,
    }
}

/// Every complete run: σ and timesteps of the schedule, init_noise_sigma, and at every network
/// call the timestep and the scaled input, then the sample after every call; the loop
/// (`Method::Karras` through `sample_with`) reproduces the final sample.
#[test]
fn karras_samplers_equal_diffusers() {
    let dev = Device::flex();
    let root = &*REF;
    let x_t = tensor4(&root["inputs"]["x_T"], &dev);
    let (mut compared, mut errors, mut calls) = (0, 0, 0);
    for run in root["runs"].as_array().unwrap() {
        let r = parse(run);
        if let Some(e) = run.get("error") {
            // diffusers refuses: x_0 prediction and Karras σ in Euler-ancestral, zero SNR in Heun.
            let e = e.as_str().unwrap();
            assert!(
                e.contains("sample")
                    || e.contains("use_karras_sigmas")
                    || e.contains("rescale_betas_zero_snr"),
                "{}: unexpected diffusers error {e}",
                r.what
            );
            errors += 1;
            continue;
        }
        let zero_snr = run["rescale_betas_zero_snr"].as_bool().unwrap();
        let name = run["beta_schedule"].as_str().unwrap();
        let karras = run["use_karras_sigmas"].as_bool().unwrap();
        // diffusers' own ᾱ (f32) for the zero-SNR tables (its last ᾱ is 2⁻²⁴, not 0); ours (f64)
        // otherwise.
        let d = GaussianDiffusion::from_schedule(
            &if r.cosine {
                BetaSchedule::Cosine { num_timesteps: 1000 }
            } else {
                BetaSchedule::Linear { num_timesteps: 1000 }
            },
            diffusion_core::DiffusionConfig { mean: r.prediction, ..Default::default() },
        )
        .unwrap();
        // The scheduler's own f32 ᾱ table (its zero-SNR table ends at 2⁻²⁴, not 0).
        let tables = if zero_snr { "zero_snr_schedules" } else { "schedules" };
        let ab = f32s_as_f64(&root[tables][name]["alphas_cumprod"]);
        let mut sampler =
            KarrasSampler::from_alphas_cumprod(&ab, r.method, r.n, r.spacing, karras, r.prediction).unwrap();
        let churn = run["s_churn"].as_f64();
        if let Some(s_churn) = churn {
            sampler.churn = Churn {
                s_churn,
                s_tmin: run["s_tmin"].as_f64().unwrap(),
                s_tmax: run["s_tmax"].as_f64().unwrap(),
                s_noise: run["s_noise"].as_f64().unwrap(),
            };
        }
        let what = &r.what;
        // The schedule: diffusers' σ list for Heun repeats the inner σ; ours holds each once.
        let want_sigmas = floats(&run["sigmas"]);
        let want_sigmas: Vec<f32> = match r.method {
            KarrasMethod::Heun => {
                let mut s = vec![want_sigmas[0]];
                s.extend(want_sigmas[1..want_sigmas.len() - 1].iter().step_by(2));
                s.push(0.0);
                s
            }
            _ => want_sigmas,
        };
        assert_eq!(sampler.sigmas.len(), want_sigmas.len(), "{what}: σ count");
        for (k, (a, b)) in sampler.sigmas.iter().zip(&want_sigmas).enumerate() {
            assert!((a - b).abs() <= 2e-6 * b.abs(), "{what}: σ[{k}] ours {a}, diffusers {b}");
        }
        let want_init = run["init_noise_sigma"].as_f64().unwrap() as f32;
        assert!((sampler.init_noise_sigma - want_init).abs() <= 2e-6 * want_init, "{what}: init_noise_sigma");
        let model_t = floats(&run["model_t"]);
        assert_eq!(sampler.num_evaluations(), model_t.len(), "{what}: network calls");

        let [a, b] =
            <[f32; 2]>::try_from(floats(&root["network"][run["prediction_type"].as_str().unwrap()])).unwrap();
        let tol = tolerance(&r);
        let noises = &root["inputs"]["noises"];
        let mut state = KarrasState::default();
        let mut x = x_t.clone().mul_scalar(sampler.init_noise_sigma);
        let mut noise_calls = Vec::new();
        let mut e = 0;
        while let Some(ev) = sampler.evaluation(&state) {
            // Timestep: diffusers' are f32; Karras' come from our f64 σ → t (≈ 1e-4 apart).
            let tt = 1e-3_f64.max(1e-6 * model_t[e].abs() as f64);
            assert!(
                (ev.t - f64::from(model_t[e])).abs() <= tt,
                "{what}: call {e}: t {} vs {}",
                ev.t,
                model_t[e]
            );
            let input = sampler.scale_model_input(&state, x.clone()).unwrap();
            assert_close_to_scale(
                &input,
                &slice(&run["model_in"], e, &dev),
                tol,
                &format!("{what}: input of call {e}"),
            );
            let out = input.clone().mul_scalar(a) + input.zeros_like().add_scalar(b * model_t[e]);
            let noise = ev.needs_noise.then(|| {
                noise_calls.push(ev.step);
                slice(noises, noise_calls.len() - 1, &dev)
            });
            let step = sampler.step(&mut state, x, out, noise).unwrap();
            assert_close_to_scale(
                &step.sample,
                &slice(&run["samples"], e, &dev),
                tol,
                &format!("{what}: sample {e}"),
            );
            x = step.sample;
            e += 1;
        }
        calls += e;
        let want_noise: Vec<usize> =
            run["noise_steps"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        // diffusers' Euler-ancestral draws noise at the last step too, multiplied by σ_up = 0.
        let drawn: Vec<usize> = match r.method {
            KarrasMethod::EulerAncestral => (0..r.n).collect(),
            _ => noise_calls.clone(),
        };
        assert_eq!(drawn, want_noise, "{what}: steps that drew noise");
        if r.method == KarrasMethod::EulerAncestral {
            assert_eq!(noise_calls, (0..r.n - 1).collect::<Vec<_>>(), "{what}: steps that need noise");
        }
        // The loop, on the process itself.
        if !zero_snr && churn.is_none() {
            let method = Method::Karras {
                method: r.method,
                schedule: StepSchedule { steps: r.n, spacing: r.spacing, karras },
                churn: Churn::default(),
            };
            let net = |x: Tensor<4>, t: Tensor<1>| {
                let bsz = x.dims()[0];
                x.clone().mul_scalar(a) + t.reshape([bsz, 1, 1, 1]).mul_scalar(b) + x.zeros_like()
            };
            let noise = StepNoise { noises, x_t: x_t.clone(), n: r.n, device: dev.clone() };
            let no_clip = SampleOptions { clip_denoised: false, record_every: None };
            let out = sample_with(&d, &net, x_t.clone(), &noise, method, &no_clip, None).unwrap();
            // Our own f64 tables here: σ_0 from f64 ᾱ_0 = 0.9999 is 1e-4 away from diffusers'
            // f32 one, which moves the last steps by up to 1e-4 of the scale.
            let loop_tol = tol.max(5e-4);
            assert_close_to_scale(
                &out.sample,
                &tensor4(&run["final"], &dev),
                loop_tol,
                &format!("{what}: loop"),
            );
            assert_eq!(method.evaluations(&d), model_t.len(), "{what}: evaluations");
        }
        compared += 1;
    }
    assert_eq!((compared, errors), (152, 26));
    assert_eq!(calls, 2955, "network calls compared");
}

/// A zero-terminal-SNR process of our own (β rescaled in f64, ᾱ_T = 0, read as 2⁻²⁴ by the σ
/// samplers) gives diffusers' schedule for every v-prediction zero-SNR run: σ (up to the f32
/// rescaling diffusers does: 1e-4 relative) and the first σ of about 4096.
#[test]
fn a_zero_snr_process_gives_diffusers_sigmas() {
    let mut checked = 0;
    for run in REF["runs"].as_array().unwrap() {
        if !run["error"].is_null()
            || !run["rescale_betas_zero_snr"].as_bool().unwrap()
            || run["prediction_type"] != "v_prediction"
        {
            continue;
        }
        let r = parse(run);
        let schedule = if r.cosine {
            BetaSchedule::Cosine { num_timesteps: 1000 }
        } else {
            BetaSchedule::Linear { num_timesteps: 1000 }
        };
        let d = diffusion_core::ProcessSpec {
            zero_terminal_snr: true,
            ..diffusion_core::ProcessSpec::new(
                schedule,
                diffusion_core::DiffusionConfig { mean: r.prediction, ..Default::default() },
            )
        }
        .build()
        .unwrap();
        let karras = run["use_karras_sigmas"].as_bool().unwrap();
        let sampler = KarrasSampler::new(&d, r.method, r.n, r.spacing, karras, r.prediction).unwrap();
        let want = floats(&run["sigmas"]);
        assert_eq!(sampler.sigmas.len(), want.len(), "{}", r.what);
        for (k, (a, b)) in sampler.sigmas.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-4 * b.abs(), "{}: σ[{k}] ours {a}, diffusers {b}", r.what);
        }
        checked += 1;
    }
    assert!(checked >= 8, "{checked} zero-SNR runs");
}

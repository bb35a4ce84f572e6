//! UniPC against diffusers' `UniPCMultistepScheduler`.
//!
//! Golden values: `fixtures/unipc_ddim.json` ("unipc_runs"), written by
//! `tools/gen_unipc_ddim_reference.py`, which runs diffusers 0.42.1's scheduler over whole chains
//! with the closed-form stand-in network `out = A x + B t` of the DPM-Solver fixture. Every
//! step's predictor and corrector orders, the corrected sample, x̂_0 and the sample are compared:
//! bh1 and bh2, orders 2 and 3, ε / x_0 / v, every spacing, Karras σ, final σ 0 or σ_min,
//! `disable_corrector`, and diffusers' zero-terminal-SNR table.

use std::sync::LazyLock;

use burn::tensor::{Device, Tensor};
use diffusion_core::{BetaSchedule, GaussianDiffusion, ModelMean, SigmaSchedule, TimestepSpacing};
use diffusion_sample::dpm_solver::dpm_timesteps;
use diffusion_sample::unipc::{UniPc, UniPcState, UniPcVariant};
use diffusion_sample::{LoopNoise, Method, SampleOptions, StepSchedule, sample_with};
use serde_json::Value;

use crate::golden::{assert_close_to_scale, f32s_as_f64, floats, slice, tensor4};

static REF: LazyLock<Value> = LazyLock::new(|| {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/unipc_ddim.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
});

struct NoNoise(Tensor<4>);

impl LoopNoise<4> for NoNoise {
    fn initial(&self) -> Tensor<4> {
        self.0.clone()
    }

    fn step(&self, _key: u64) -> Tensor<4> {
        panic!("UniPC draws no noise")
    }
}

/// Every complete run, step by step from diffusers' own f32 ᾱ; the loop (`Method::UniPc` through
/// `sample_with` on our f64 process) for the linear-schedule runs with final σ = 0. Tolerance:
/// 1e-4 of max(1, |x|) step by step (cosine runs start at |x| ≈ 2·10⁴ in f32), 5e-4 for the loop
/// (σ_0 from f64 ᾱ_0 = 0.9999 is 1e-4 from diffusers' f32 one).
///
/// Not compared: the 2 bh1 runs onto σ = 0 (diffusers gives NaN: B(h) = h = −∞ there; ours
/// too), the 12 Karras runs on `squaredcos_cap_v2` without a begin index (diffusers' own loop
/// fails on its repeated timesteps; rerun with one and compared), and the 8 Karras runs with
/// final σ_min, whose last two σ are equal — a step of h = 0, which `UniPc::from_schedule`
/// refuses as a non-decreasing σ.
#[test]
fn unipc_runs_equal_diffusers() {
    let dev = Device::flex();
    let root = &*REF;
    let x_t = tensor4(&root["inputs"]["x_T"], &dev);
    let (mut compared, mut looped, mut corrected, mut skipped) = (0, 0, 0, 0);
    for run in root["unipc_runs"].as_array().unwrap() {
        let karras = run["use_karras_sigmas"].as_bool().unwrap();
        let sigma_min = run["final_sigmas_type"].as_str().unwrap() == "sigma_min";
        if run.get("error").is_some() || (karras && sigma_min) {
            skipped += 1;
            continue;
        }
        let n = run["num_inference_steps"].as_u64().unwrap() as usize;
        let cosine = run["beta_schedule"].as_str().unwrap() == "squaredcos_cap_v2";
        let zero_snr = run["rescale_betas_zero_snr"].as_bool().unwrap();
        let spacing = match run["timestep_spacing"].as_str().unwrap() {
            "linspace" => TimestepSpacing::Linspace,
            "trailing" => TimestepSpacing::Trailing,
            _ => TimestepSpacing::Leading { steps_offset: run["steps_offset"].as_u64().unwrap() as usize },
        };
        let (prediction, key) = match run["prediction_type"].as_str().unwrap() {
            "epsilon" => (ModelMean::Epsilon, "epsilon"),
            "sample" => (ModelMean::StartX, "sample"),
            _ => (ModelMean::Velocity, "v_prediction"),
        };
        let variant = match run["solver_type"].as_str().unwrap() {
            "bh1" => UniPcVariant::Bh1,
            _ => UniPcVariant::Bh2,
        };
        let order = run["solver_order"].as_u64().unwrap() as usize;
        let disable: Vec<usize> = run["disable_corrector"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let what = format!(
            "{variant:?} order {order} {key} n={n} {spacing:?} karras={karras} cosine={cosine} zero_snr={zero_snr} \
             sigma_min={sigma_min} disable={disable:?}"
        );
        let ab = f32s_as_f64(&root["schedules"][run["schedule"].as_str().unwrap()]["alphas_cumprod"]);
        let steps = dpm_timesteps(1000, n, spacing).unwrap();
        let mut sched = SigmaSchedule::multistep(&ab, &steps, karras.then_some(7.0), cosine).unwrap();
        if sigma_min {
            sched.sigmas[n] = diffusion_core::training_sigmas(&ab)[0];
        }
        let want_sigmas = floats(&run["sigmas"]);
        for (k, (a, b)) in sched.sigmas.iter().zip(&want_sigmas).enumerate() {
            assert!(
                (*a as f32 - b).abs() <= 2e-6 * b.abs().max(1e-3),
                "{what}: σ[{k}] ours {a}, diffusers {b}"
            );
        }
        let want_t: Vec<f64> =
            run["model_t"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
        if !karras {
            assert_eq!(sched.timesteps, want_t, "{what}: timesteps");
        }
        let mut solver = UniPc::from_schedule(&sched, order, variant, prediction).unwrap();
        solver.disable_corrector = disable.clone();
        let [a, b] = <[f32; 2]>::try_from(floats(&root["network"][key])).unwrap();
        let mut state = UniPcState::default();
        let mut x = x_t.clone();
        for (k, &t) in want_t.iter().enumerate() {
            let out = x.clone().mul_scalar(a) + x.zeros_like().add_scalar(b * t as f32);
            let s = solver.step(&mut state, x, out).unwrap();
            assert_eq!(s.order as u64, run["orders"][k].as_u64().unwrap(), "{what}: predictor order at {k}");
            let want_c = run["corrector_orders"][k].as_u64().unwrap_or(0);
            assert_eq!(s.corrector_order as u64, want_c, "{what}: corrector order at {k}");
            if let Some(c) = &s.corrected {
                assert_close_to_scale(
                    c,
                    &slice(&run["predictor_in"], k, &dev),
                    1e-4,
                    &format!("{what}: corrected {k}"),
                );
                corrected += 1;
            }
            assert_close_to_scale(
                &s.pred_x0,
                &slice(&run["x0_pred"], k, &dev),
                1e-4,
                &format!("{what}: x̂_0 {k}"),
            );
            assert_close_to_scale(
                &s.sample,
                &slice(&run["samples"], k, &dev),
                1e-4,
                &format!("{what}: sample {k}"),
            );
            x = s.sample;
        }
        if !cosine && !zero_snr && !sigma_min && disable.is_empty() {
            let schedule = if cosine {
                BetaSchedule::Cosine { num_timesteps: 1000 }
            } else {
                BetaSchedule::Linear { num_timesteps: 1000 }
            };
            let config = diffusion_core::DiffusionConfig { mean: prediction, ..Default::default() };
            let d = GaussianDiffusion::from_schedule(&schedule, config).unwrap();
            let net = |x: Tensor<4>, t: Tensor<1>| {
                let bsz = x.dims()[0];
                x.clone().mul_scalar(a) + t.reshape([bsz, 1, 1, 1]).mul_scalar(b) + x.zeros_like()
            };
            let method =
                Method::UniPc { order, variant, schedule: Some(StepSchedule { steps: n, spacing, karras }) };
            let no_clip = SampleOptions { clip_denoised: false, record_every: None };
            let out =
                sample_with(&d, &net, x_t.clone(), &NoNoise(x_t.clone()), method, &no_clip, None).unwrap();
            assert_close_to_scale(&out.sample, &tensor4(&run["final"], &dev), 5e-4, &format!("{what}: loop"));
            looped += 1;
        }
        compared += 1;
    }
    assert_eq!(compared + skipped, 157);
    assert_eq!((compared, skipped), (135, 22));
    assert!(looped >= 30 && corrected > 1000, "looped {looped}, corrected {corrected}");
}

/// DDIM (η = 0 and 0.5) against diffusers' `DDIMScheduler`, through our respacing: the process
/// respaced to diffusers' timesteps, then `ddim_step` at each level, with diffusers' noise.
///
/// Compared: every run whose schedule our respaced DDIM can express — diffusers steps from t to
/// t − ⌊T/n⌋ (not to the next listed timestep) and ends on `final_alpha_cumprod`, so the runs
/// where each previous timestep is the next one listed and the last goes to ᾱ = 1
/// (`set_alpha_to_one`): leading and (for n dividing T) trailing spacings. Not compared, with
/// the reason: linspace spacing (diffusers' previous timestep is not a step of the chain: 888 →
/// 788 for n = 10), `set_alpha_to_one = false` (the last step lands on ᾱ_0, not 1),
/// `clip_sample` (diffusers clips x̂_0 after ε̂ is computed, improved-diffusion — whose DDIM this
/// is — before), and zero terminal SNR with ε or x_0 prediction (ᾱ_T = 0 needs v, and
/// `GaussianDiffusion` refuses the others with the reason). Zero terminal SNR with v is compared:
/// there diffusers keeps ᾱ_T = 0 (no 2⁻²⁴), so x̂_0 = −v̂ and ε̂ = x_T at the first trailing step.
#[test]
fn ddim_matches_diffusers_where_the_chains_agree() {
    let dev = Device::flex();
    let root = &*REF;
    let x_t = tensor4(&root["inputs"]["x_T"], &dev);
    let (mut compared, mut not_expressible, mut zero_snr_compared) = (0, 0, 0);
    for run in root["ddim_runs"].as_array().unwrap() {
        let ts: Vec<usize> =
            run["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
        let prev: Vec<i64> =
            run["prev_timesteps"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
        let chain =
            (0..ts.len()).all(|k| if k + 1 < ts.len() { prev[k] == ts[k + 1] as i64 } else { prev[k] < 0 });
        if !chain
            || !run["set_alpha_to_one"].as_bool().unwrap()
            || run["clip_sample"].as_bool().unwrap()
            || (run["rescale_betas_zero_snr"].as_bool().unwrap() && run["prediction_type"] != "v_prediction")
        {
            not_expressible += 1;
            continue;
        }
        let n = ts.len();
        let eta = run["eta"].as_f64().unwrap();
        let cosine = run["beta_schedule"].as_str().unwrap() == "squaredcos_cap_v2";
        let (prediction, key) = match run["prediction_type"].as_str().unwrap() {
            "epsilon" => (ModelMean::Epsilon, "epsilon"),
            "sample" => (ModelMean::StartX, "sample"),
            _ => (ModelMean::Velocity, "v_prediction"),
        };
        let zero_snr = run["rescale_betas_zero_snr"].as_bool().unwrap();
        let what = format!(
            "DDIM eta {eta} {key} n={n} {} cosine={cosine} zero_snr={zero_snr}",
            run["timestep_spacing"]
        );
        let schedule = if cosine {
            BetaSchedule::Cosine { num_timesteps: 1000 }
        } else {
            BetaSchedule::Linear { num_timesteps: 1000 }
        };
        let config = diffusion_core::DiffusionConfig { mean: prediction, ..Default::default() };
        let d = diffusion_core::ProcessSpec {
            zero_terminal_snr: zero_snr,
            ..diffusion_core::ProcessSpec::new(schedule, config)
        }
        .build()
        .unwrap();
        assert_eq!(d.has_zero_terminal_snr(), zero_snr, "{what}");
        let mut kept = ts.clone();
        kept.reverse();
        let r = d.respace(&kept).unwrap();
        let [a, b] = <[f32; 2]>::try_from(floats(&root["network"][key])).unwrap();
        let stored: Vec<usize> =
            run["stored_steps"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let options = diffusion_sample::StepOptions { clip_denoised: false, guidance: None };
        let mut x = x_t.clone();
        for (k, &t) in ts.iter().enumerate() {
            let level = n - 1 - k;
            let out = x.clone().mul_scalar(a) + x.zeros_like().add_scalar(b * t as f32);
            let noise = (eta > 0.0 && level > 0).then(|| slice(&root["inputs"]["noises"], k, &dev));
            let s = diffusion_sample::step::ddim_step(&r, x, level, out, eta, noise, &options).unwrap();
            if let Some(j) = stored.iter().position(|&q| q == k) {
                // diffusers' f32 ᾱ against our f64 ᾱ: 1e-4 of the scale.
                assert_close_to_scale(
                    &s.pred_x0,
                    &slice(&run["x0_pred"], j, &dev),
                    1e-4,
                    &format!("{what}: x̂_0 {k}"),
                );
                assert_close_to_scale(
                    &s.sample,
                    &slice(&run["samples"], j, &dev),
                    1e-4,
                    &format!("{what}: sample {k}"),
                );
            }
            x = s.sample;
        }
        assert_close_to_scale(&x, &tensor4(&run["final"], &dev), 1e-4, &format!("{what}: final"));
        compared += 1;
        zero_snr_compared += usize::from(zero_snr);
    }
    assert_eq!(compared + not_expressible, 215);
    assert_eq!(compared, 72 + zero_snr_compared, "{zero_snr_compared} zero-SNR runs");
    assert!(zero_snr_compared > 0, "zero terminal SNR with v is covered");
}

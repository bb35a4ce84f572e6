//! DPM-Solver++ 2M / 3M and SDE-DPM-Solver++ 2M against diffusers' `DPMSolverMultistepScheduler`.
//!
//! Golden values: `fixtures/dpm_solver.json`, written by `tools/gen_dpm_solver_reference.py`,
//! which runs diffusers 0.42.1's scheduler over whole chains with a closed-form stand-in network
//! (`out = A x + B t`, per prediction type) and its `randn_tensor` patched to return stored
//! noise. Every step's sample and the order diffusers used are compared.

use std::sync::LazyLock;

use burn::tensor::{Device, Tensor};
use diffusion_core::{BetaSchedule, GaussianDiffusion, ModelMean, SigmaSchedule, TimestepSpacing};
use diffusion_sample::dpm_solver::{DpmAlgorithm, DpmSolver, DpmState, dpm_timesteps};
use diffusion_sample::{Method, SampleOptions, StepSchedule, sample_with};
use serde_json::Value;

use crate::golden::{StepNoise, f64s, floats, slice, tensor4};

static REF: LazyLock<Value> = LazyLock::new(|| {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/dpm_solver.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
});

/// Every diffusers run of the grid {2M, 3M, SDE-2M} × {ε, x_0, v} × {10, 20 steps} × {linspace,
/// trailing, leading} × {linear, cosine}: the timesteps, σ, the order of every step and the
/// sample after every step. The tolerance, 1e-4 of max(1, |x|), covers σ computed from our f64
/// ᾱ rather than diffusers' f32 cumprod and torch's f32 transcendental functions (the generator
/// measured up to 8e-6 between an all-f64 computation and diffusers); cosine runs reach |x| ≈ 1e3.
#[test]
fn dpm_solver_runs_equal_diffusers() {
    let dev = Device::flex();
    let root = &*REF;
    let x_t = tensor4(&root["inputs"]["x_T"], &dev);
    let mut compared = 0;
    let mut karras = 0;
    for run in root["runs"].as_array().unwrap() {
        if run["use_karras_sigmas"].as_bool().unwrap() {
            karras += 1; // dpm_solver_karras_runs_equal_diffusers
            continue;
        }
        assert!(run.get("error").is_none(), "a non-Karras run failed in diffusers: {}", run["error"]);
        let n = run["num_inference_steps"].as_u64().unwrap() as usize;
        let schedule = match run["beta_schedule"].as_str().unwrap() {
            "linear" => BetaSchedule::Linear { num_timesteps: 1000 },
            _ => BetaSchedule::Cosine { num_timesteps: 1000 },
        };
        let d = GaussianDiffusion::from_schedule(&schedule, Default::default()).unwrap();
        let spacing = match run["timestep_spacing"].as_str().unwrap() {
            "linspace" => TimestepSpacing::Linspace,
            "trailing" => TimestepSpacing::Trailing,
            _ => TimestepSpacing::Leading { steps_offset: 0 },
        };
        let (prediction, key) = match run["prediction_type"].as_str().unwrap() {
            "epsilon" => (ModelMean::Epsilon, "epsilon"),
            "sample" => (ModelMean::StartX, "sample"),
            _ => (ModelMean::Velocity, "v_prediction"),
        };
        let algorithm = match run["algorithm_type"].as_str().unwrap() {
            "dpmsolver++" => DpmAlgorithm::DpmSolverPp,
            _ => DpmAlgorithm::SdeDpmSolverPp,
        };
        let order = run["solver_order"].as_u64().unwrap() as usize;
        let what = format!(
            "{algorithm:?} order {order} {key} n={n} {spacing:?} {}",
            run["beta_schedule"].as_str().unwrap()
        );
        let timesteps = dpm_timesteps(1000, n, spacing).unwrap();
        let want_t: Vec<usize> =
            run["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
        assert_eq!(timesteps, want_t, "{what}: timesteps");
        let solver = DpmSolver::new(&d, timesteps.clone(), order, algorithm, prediction).unwrap();
        for (k, (a, b)) in solver.sigmas.iter().zip(floats(&run["sigmas"])).enumerate() {
            assert!((a - b).abs() <= 1e-5 * b.abs(), "{what}: sigma[{k}] ours {a}, diffusers {b}");
        }
        let ab = floats(&root["network"][key]);
        let mut state = DpmState::default();
        let mut x = x_t.clone();
        for (k, &t) in timesteps.iter().enumerate() {
            let out = x.clone().mul_scalar(ab[0]) + x.zeros_like().add_scalar(ab[1] * t as f32);
            let noise = (algorithm == DpmAlgorithm::SdeDpmSolverPp)
                .then(|| slice(&root["inputs"]["noises"], k, &dev));
            let step = solver.step(&mut state, x, out, noise).unwrap();
            assert_eq!(step.order as u64, run["orders"][k].as_u64().unwrap(), "{what}: order of step {k}");
            let got = step.sample.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            let want =
                slice(&run["samples"], k, &dev).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{what}: step {k} element {i}: ours {a}, diffusers {b}"
                );
            }
            x = step.sample;
        }
        // The loop: `Method::DpmSolver` over the process respaced to these timesteps (the
        // network sees the original steps through the respacing map) gives the same chain.
        let mut kept = timesteps.clone();
        kept.reverse();
        let config = diffusion_core::DiffusionConfig { mean: prediction, ..Default::default() };
        let respaced = d.clone().with_config(config).unwrap().respace(&kept).unwrap();
        let noise = StepNoise { noises: &root["inputs"]["noises"], x_t: x_t.clone(), n, device: dev.clone() };
        let net = |x: Tensor<4>, t: Tensor<1>| {
            let b = x.dims()[0];
            x.clone().mul_scalar(ab[0]) + t.reshape([b, 1, 1, 1]).mul_scalar(ab[1]) + x.zeros_like()
        };
        let method = Method::DpmSolver { order, algorithm, schedule: None };
        // diffusers without thresholding: x̂_0 is not clipped.
        let no_clip = SampleOptions { clip_denoised: false, record_every: None };
        let looped = sample_with(&respaced, &net, x_t.clone(), &noise, method, &no_clip, None).unwrap();
        let got = looped.sample.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let want =
            slice(&run["samples"], n - 1, &dev).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{what}: loop, element {i}: ours {a}, diffusers {b}"
            );
        }
        // The same chain from the solver's own schedule over the unrespaced process.
        let own = Method::DpmSolver {
            order,
            algorithm,
            schedule: Some(StepSchedule { steps: n, spacing, karras: false }),
        };
        let d_pred = d.clone().with_config(config).unwrap();
        let looped = sample_with(&d_pred, &net, x_t.clone(), &noise, own, &no_clip, None).unwrap();
        assert_close(&looped.sample, &want, &format!("{what}: own-schedule loop"));
        compared += 1;
    }
    assert_eq!((compared, karras), (108, 36));
}

fn assert_close(got: &Tensor<4>, want: &[f32], what: &str) {
    let got = got.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: size");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{what}: element {i}: ours {a}, diffusers {b}");
    }
}

/// The Karras-σ runs: σ_k = (σ_max^{1/7} + k/(n−1) (σ_min^{1/7} − σ_max^{1/7}))^7 between the
/// training σ of the last and the first step, each timestep the σ's fractional step (linear in
/// log σ) rounded — or, for diffusers' `squaredcos_cap_v2`, truncated by its int64 cast, which
/// repeats the first timestep so that diffusers' own loop runs off its σ (recorded there as an
/// error; those runs are compared with `set_begin_index(0)`, which diffusers needs to run them).
/// Every σ and timestep, every step's order and sample, and for the rounded runs the loop.
#[test]
fn dpm_solver_karras_runs_equal_diffusers() {
    let dev = Device::flex();
    let root = &*REF;
    let x_t = tensor4(&root["inputs"]["x_T"], &dev);
    let (mut compared, mut looped_runs, mut failed_in_diffusers) = (0, 0, 0);
    for run in root["runs"].as_array().unwrap() {
        if !run["use_karras_sigmas"].as_bool().unwrap() {
            continue;
        }
        if run.get("error").is_some() {
            assert!(run["begin_index"].is_null(), "diffusers failed with a begin index: {}", run["error"]);
            failed_in_diffusers += 1;
            continue;
        }
        let n = run["num_inference_steps"].as_u64().unwrap() as usize;
        let cosine = run["beta_schedule"].as_str().unwrap() == "squaredcos_cap_v2";
        let schedule = if cosine {
            BetaSchedule::Cosine { num_timesteps: 1000 }
        } else {
            BetaSchedule::Linear { num_timesteps: 1000 }
        };
        let (prediction, key) = match run["prediction_type"].as_str().unwrap() {
            "epsilon" => (ModelMean::Epsilon, "epsilon"),
            _ => (ModelMean::Velocity, "v_prediction"),
        };
        let config = diffusion_core::DiffusionConfig { mean: prediction, ..Default::default() };
        let d = GaussianDiffusion::from_schedule(&schedule, config).unwrap();
        let algorithm = match run["algorithm_type"].as_str().unwrap() {
            "dpmsolver++" => DpmAlgorithm::DpmSolverPp,
            _ => DpmAlgorithm::SdeDpmSolverPp,
        };
        let order = run["solver_order"].as_u64().unwrap() as usize;
        let what = format!("karras {algorithm:?} order {order} {key} n={n} cosine={cosine}");
        // diffusers' own f32 ᾱ: Karras σ hang on σ_min = σ_0, which f32 ᾱ_0 = 0.9999 moves by
        // 1e-4 relative (1 − ᾱ_0 loses four digits).
        let name = run["beta_schedule"].as_str().unwrap();
        let ab64: Vec<f64> =
            floats(&root["schedules"][name]["alphas_cumprod"]).into_iter().map(f64::from).collect();
        let ab64 = &ab64;
        let steps = dpm_timesteps(1000, n, TimestepSpacing::Linspace).unwrap();
        let sched = SigmaSchedule::multistep(ab64, &steps, Some(7.0), cosine).unwrap();
        for (k, (a, b)) in sched.sigmas.iter().zip(floats(&run["sigmas"])).enumerate() {
            assert!((*a as f32 - b).abs() <= 1e-5 * b.abs(), "{what}: sigma[{k}] ours {a}, diffusers {b}");
        }
        // The fractional timesteps before rounding (diffusers' f64 values, from its f32 log σ).
        let log: Vec<f64> = diffusion_core::training_sigmas(ab64).iter().map(|s| s.ln()).collect();
        for (k, (s, want)) in
            f64s(&run["karras_sigmas_f64"]).iter().zip(f64s(&run["karras_timesteps_f64"])).enumerate()
        {
            let t = diffusion_core::sigma_to_t(*s, &log);
            assert!((t - want).abs() < 2e-3, "{what}: sigma_to_t at {k}: ours {t}, diffusers {want}");
        }
        let want_t: Vec<f64> =
            run["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as f64).collect();
        // diffusers' truncation turns σ_max's t = 998.99999996 (its f32 log σ table) into 998;
        // ours is 999.0 exactly: a whole-step difference only where t is within 1e-6 of a
        // whole number.
        let frac = f64s(&run["karras_timesteps_f64"]);
        for (k, (a, b)) in sched.timesteps.iter().zip(&want_t).enumerate() {
            let near_whole = (frac[k] - frac[k].round()).abs() < 1e-6;
            assert!(a == b || (cosine && near_whole && (a - b).abs() == 1.0), "{what}: t[{k}] {a} vs {b}");
        }
        let solver = DpmSolver::from_schedule(&sched, order, algorithm, prediction).unwrap();
        let ab = floats(&root["network"][key]);
        let mut state = DpmState::default();
        let mut x = x_t.clone();
        for (k, &t) in want_t.iter().enumerate() {
            let out = x.clone().mul_scalar(ab[0]) + x.zeros_like().add_scalar(ab[1] * t as f32);
            let noise = (algorithm == DpmAlgorithm::SdeDpmSolverPp)
                .then(|| slice(&root["inputs"]["noises"], k, &dev));
            let step = solver.step(&mut state, x, out, noise).unwrap();
            assert_eq!(step.order as u64, run["orders"][k].as_u64().unwrap(), "{what}: order of step {k}");
            let want =
                slice(&run["samples"], k, &dev).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            assert_close(&step.sample, &want, &format!("{what}: step {k}"));
            x = step.sample;
        }
        if !cosine {
            let noise =
                StepNoise { noises: &root["inputs"]["noises"], x_t: x_t.clone(), n, device: dev.clone() };
            let net = |x: Tensor<4>, t: Tensor<1>| {
                let b = x.dims()[0];
                x.clone().mul_scalar(ab[0]) + t.reshape([b, 1, 1, 1]).mul_scalar(ab[1]) + x.zeros_like()
            };
            let method = Method::DpmSolver {
                order,
                algorithm,
                schedule: Some(StepSchedule { steps: n, spacing: TimestepSpacing::Linspace, karras: true }),
            };
            let no_clip = SampleOptions { clip_denoised: false, record_every: None };
            let out = sample_with(&d, &net, x_t.clone(), &noise, method, &no_clip, None).unwrap();
            let want = floats(&run["final"]["data"]);
            assert_close(&out.sample, &want, &format!("{what}: loop"));
            looped_runs += 1;
        }
        compared += 1;
    }
    assert_eq!((compared, looped_runs, failed_in_diffusers), (24, 12, 12));
}

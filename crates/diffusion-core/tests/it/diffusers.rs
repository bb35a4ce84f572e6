//! diffusers' timestep spacings and zero-terminal-SNR rescaling.
//!
//! Golden values: `diffusers.json`, written by `tools/gen_diffusers_reference.py`, which calls
//! huggingface/diffusers 0.42.1's own `DDIMScheduler.set_timesteps` (every `timestep_spacing`,
//! `steps_offset` 0 and 1) and `rescale_zero_terminal_snr` (on float64 betas).

use std::sync::LazyLock;

use diffusion_core::{
    TimestepSpacing, continuous_timesteps, interp_sigma, karras_sigmas, rescale_zero_terminal_snr,
    sigma_to_t, space_timesteps, spaced_timesteps, training_sigmas,
};
use serde_json::Value;

static REF: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(include_str!("diffusers.json")).expect("diffusers.json parses"));

fn ints(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Every case of the grid T ∈ {50, 1000, 4000} × n ∈ {1, 2, 7, 10, 20, 50, T} × spacing ×
/// offset: the same steps as diffusers (which lists them in decreasing order), ties rounded half
/// to even as numpy does; the spec strings of `space_timesteps` give the same. Where diffusers'
/// `leading` with an offset steps past the last training step (n = T, offset 1 gives step T) we
/// refuse with an error instead.
#[test]
fn spacings_equal_diffusers_set_timesteps() {
    let cases = REF["spacings"].as_array().unwrap();
    assert_eq!(cases.len(), 120);
    let mut refused = 0;
    for c in cases {
        let t = c["num_train_timesteps"].as_u64().unwrap() as usize;
        let n = c["num_inference_steps"].as_u64().unwrap() as usize;
        let offset = c["steps_offset"].as_u64().unwrap() as usize;
        let (spacing, spec) = match c["timestep_spacing"].as_str().unwrap() {
            "linspace" => (TimestepSpacing::Linspace, format!("linspace{n}")),
            "trailing" => (TimestepSpacing::Trailing, format!("trailing{n}")),
            "leading" => (TimestepSpacing::Leading { steps_offset: offset }, format!("leading{n}+{offset}")),
            other => panic!("spacing {other}"),
        };
        let mut want = ints(&c["timesteps"]);
        want.reverse();
        let what = format!("T = {t}, n = {n}, {spacing:?}");
        if want.iter().any(|&s| s >= t) {
            let err = spaced_timesteps(t, n, spacing).unwrap_err().to_string();
            assert!(err.contains("falls outside"), "{what}: {err}");
            refused += 1;
            continue;
        }
        assert_eq!(spaced_timesteps(t, n, spacing).unwrap(), want, "{what}");
        assert_eq!(space_timesteps(t, &spec).unwrap(), want, "{what}: spec {spec}");
    }
    assert_eq!(refused, 3, "only leading with n = T and offset 1 leaves the process");
    assert!(spaced_timesteps(10, 11, TimestepSpacing::Trailing).is_err());
    assert!(spaced_timesteps(10, 0, TimestepSpacing::Linspace).is_err());
}

/// Lin et al.'s rescaling equals diffusers' `rescale_zero_terminal_snr` in float64 for its
/// linear, scaled-linear and cosine schedules at T = 1000 and 50: the last ᾱ is exactly 0 and
/// the first √ᾱ is unchanged.
#[test]
fn zero_terminal_snr_rescale_equals_diffusers() {
    let cases = REF["zero_snr"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let what = format!("{} T = {}", c["beta_schedule"], c["num_train_timesteps"]);
        let input = floats(&c["betas_input_f64"]);
        let got = rescale_zero_terminal_snr(&input);
        let want = floats(&c["betas_f64"]);
        assert_eq!(got.len(), want.len(), "{what}");
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-3), "{what}: beta[{k}] ours {a}, diffusers {b}");
        }
        assert_eq!(*got.last().unwrap(), 1.0, "{what}: the last step is pure noise");
        let mut acc = 1.0;
        for (k, (b, want_ab)) in got.iter().zip(floats(&c["alphas_cumprod_f64"])).enumerate() {
            acc *= 1.0 - b;
            assert!((acc - want_ab).abs() <= 1e-12, "{what}: alphas_cumprod[{k}]");
        }
        // A process from these betas is refused for ε-prediction with a reason, not NaNs.
        let err = diffusion_core::GaussianDiffusion::new(got, Default::default()).unwrap_err().to_string();
        assert!(err.contains("zero terminal SNR") && err.contains("epsilon"), "{what}: {err}");
    }
}

/// Euler's and Heun's timesteps (`continuous_timesteps`) for every case of the same grid equal
/// `EulerDiscreteScheduler.set_timesteps`' float32 values: linspace unrounded, leading and
/// trailing DDIM's integer steps (in diffusers' decreasing order). Euler's leading steps can
/// pass the last training step with an offset (diffusers then clamps σ); we refuse those.
#[test]
fn continuous_timesteps_equal_diffusers_euler() {
    let mut refused = 0;
    for c in REF["spacings"].as_array().unwrap() {
        let t = c["num_train_timesteps"].as_u64().unwrap() as usize;
        let n = c["num_inference_steps"].as_u64().unwrap() as usize;
        let offset = c["steps_offset"].as_u64().unwrap() as usize;
        let spacing = match c["timestep_spacing"].as_str().unwrap() {
            "linspace" => TimestepSpacing::Linspace,
            "trailing" => TimestepSpacing::Trailing,
            _ => TimestepSpacing::Leading { steps_offset: offset },
        };
        let want = floats(&c["euler_timesteps"]);
        let what = format!("T = {t}, n = {n}, {spacing:?}");
        if want.iter().any(|&s| s >= t as f64) {
            assert!(continuous_timesteps(t, n, spacing).is_err(), "{what}");
            refused += 1;
            continue;
        }
        let got = continuous_timesteps(t, n, spacing).unwrap();
        assert_eq!(got, want, "{what}");
    }
    assert_eq!(refused, 3);
}

/// Closed-form properties of the σ maps: `sigma_to_t` inverts the training σ at every step and
/// interpolates linearly in log σ between steps; `interp_sigma` is exact at whole steps and
/// linear in t between; Karras σ run from σ_max to σ_min with σ^{1/ρ} evenly spaced.
#[test]
fn sigma_maps_invert_each_other() {
    let d = diffusion_core::GaussianDiffusion::from_schedule(
        &diffusion_core::BetaSchedule::Linear { num_timesteps: 1000 },
        Default::default(),
    )
    .unwrap();
    let train = training_sigmas(&d.tables().alphas_cumprod);
    let log: Vec<f64> = train.iter().map(|s| s.ln()).collect();
    for i in [0, 1, 17, 500, 998, 999] {
        assert!((sigma_to_t(train[i], &log) - i as f64).abs() < 1e-9, "step {i}");
        assert_eq!(interp_sigma(&train, i as f64), train[i]);
    }
    // Halfway in log σ between steps 10 and 11 is t = 10.5.
    let mid = ((log[10] + log[11]) / 2.0).exp();
    assert!((sigma_to_t(mid, &log) - 10.5).abs() < 1e-9);
    assert!((interp_sigma(&train, 10.25) - (0.75 * train[10] + 0.25 * train[11])).abs() < 1e-15);
    // Out of range: clamped to the ends.
    assert_eq!(sigma_to_t(train[0] / 2.0, &log), 0.0);
    assert_eq!(sigma_to_t(train[999] * 2.0, &log), 999.0);
    let k = karras_sigmas(0.1, 80.0, 5, 7.0);
    assert!((k[0] - 80.0).abs() < 1e-12 && (k[4] - 0.1).abs() < 1e-12);
    let roots: Vec<f64> = k.iter().map(|s| s.powf(1.0 / 7.0)).collect();
    for w in roots.windows(3) {
        assert!(((w[0] - w[1]) - (w[1] - w[2])).abs() < 1e-12);
    }
}

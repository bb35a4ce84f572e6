//! The σ parameterisation of a variance-preserving process (Karras et al. 2022): with
//! σ_t = √((1 − ᾱ_t)/ᾱ_t), x_t/√ᾱ_t = x_0 + σ_t ε, so the samplers of the "Elucidating" paper
//! (Euler, Heun, their ancestral forms) and the σ schedules they use apply to a model trained on
//! any β schedule. Timesteps here are *fractional* indices of the training process: a σ between
//! two training levels maps to a t between their indices.
//!
//! | function | what | as in diffusers |
//! |---|---|---|
//! | [`training_sigmas`] | σ_t at every training step | `((1 − alphas_cumprod)/alphas_cumprod) ** 0.5` |
//! | [`interp_sigma`] | σ at a fractional t, linear in t between training steps | `np.interp(t, arange(T), sigmas)` |
//! | [`karras_sigmas`] | (σ_max^{1/ρ} + k/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, k = 0 … n−1 (Karras Eq. 5) | `_convert_to_karras` |
//! | [`sigma_to_t`] | the fractional t of a σ, linear in log σ between the neighbouring training steps | `_sigma_to_t` |
//! | [`continuous_timesteps`] | the Euler/Heun timesteps of a spacing (linspace unrounded) | `EulerDiscreteScheduler.set_timesteps` |
//!
//! Everything is computed in f64 from the process's f64 ᾱ (diffusers keeps ᾱ and the training σ
//! in f32 and does the rest in f64; the two agree to about 1e-7 relative).

use crate::error::{Error, Result};
use crate::respace::{TimestepSpacing, spaced_timesteps};

/// The ᾱ that stands for ᾱ = 0 (zero terminal SNR) in the σ parameterisation: 2⁻²⁴, as
/// diffusers' Euler, Euler-ancestral, DPM-Solver and UniPC schedulers put in place of the last ᾱ
/// when `rescale_betas_zero_snr` is set (σ_T ≈ 4096 instead of ∞).
pub const ZERO_SNR_ALPHA_BAR: f64 = 1.0 / 16_777_216.0;

/// ᾱ_t with a 0 replaced by [`ZERO_SNR_ALPHA_BAR`]: what the σ-parameterised samplers use.
pub fn sigma_alpha_bar(alpha_bar: f64) -> f64 {
    if alpha_bar == 0.0 { ZERO_SNR_ALPHA_BAR } else { alpha_bar }
}

/// σ_t = √((1 − ᾱ_t)/ᾱ_t) for each ᾱ_t (increasing in t), with ᾱ = 0 read as
/// [`ZERO_SNR_ALPHA_BAR`] (so σ is finite).
pub fn training_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|&a| {
            let a = sigma_alpha_bar(a);
            ((1.0 - a) / a).sqrt()
        })
        .collect()
}

/// σ at the fractional timestep `t`: linear interpolation in t between the training steps
/// ⌊t⌋ and ⌈t⌉, clamped to the ends (numpy's `interp`).
pub fn interp_sigma(sigmas: &[f64], t: f64) -> f64 {
    let n = sigmas.len();
    if n == 0 {
        return f64::NAN;
    }
    if t <= 0.0 {
        return sigmas[0];
    }
    if t >= (n - 1) as f64 {
        return sigmas[n - 1];
    }
    let lo = t.floor() as usize;
    let w = t - lo as f64;
    if w == 0.0 { sigmas[lo] } else { sigmas[lo] + w * (sigmas[lo + 1] - sigmas[lo]) }
}

/// Karras et al.'s n noise levels from σ_max down to σ_min, evenly spaced in σ^{1/ρ}
/// (Eq. 5; ρ = 7 in the paper). n = 1 gives σ_max alone.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize, rho: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    (0..n)
        .map(|k| {
            // numpy's linspace(0, 1, n): k/(n − 1), the last value exactly 1.
            let ramp = if n < 2 {
                0.0
            } else if k + 1 == n {
                1.0
            } else {
                k as f64 * (1.0 / (n - 1) as f64)
            };
            (hi + ramp * (lo - hi)).powf(rho)
        })
        .collect()
}

/// The fractional timestep of `sigma`: with `log_sigmas` = log σ of the training steps
/// (increasing), the last step i with log σ_i ≤ log σ (at most T − 2), and
/// w = (log σ_i − log σ)/(log σ_i − log σ_{i+1}) clamped to [0, 1], t = i + w. Below σ_0 this
/// gives 0, above σ_{T−1} gives T − 1 (k-diffusion's and diffusers' `sigma_to_t`).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    let log_sigma = sigma.max(1e-10).ln();
    // numpy: cumsum(dists >= 0).argmax() — the first index where the running count of
    // log σ_i ≤ log σ reaches its maximum, i.e. the last such i (0 if there is none).
    let mut low = 0;
    let mut best = 0;
    let mut count = 0;
    for (i, &l) in log_sigmas.iter().enumerate() {
        if log_sigma - l >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            low = i;
        }
    }
    let low = low.min(n - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// The `n` timesteps, decreasing, that diffusers' Euler and Heun schedulers pick from a
/// `num_timesteps`-step process: `Linspace` is `linspace(0, T − 1, n)` **unrounded** (in f32,
/// as diffusers computes it); `Leading` and `Trailing` are the integer steps of
/// [`spaced_timesteps`].
pub fn continuous_timesteps(num_timesteps: usize, n: usize, spacing: TimestepSpacing) -> Result<Vec<f64>> {
    let mut t = match spacing {
        TimestepSpacing::Linspace => {
            if n == 0 || n > num_timesteps {
                return Err(Error::InvalidRespacing {
                    spec: format!("linspace{n}"),
                    num_timesteps,
                    reason: format!("the number of steps must be in 1..={num_timesteps}"),
                });
            }
            let stop = (num_timesteps - 1) as f64;
            let step = if n > 1 { stop / (n - 1) as f64 } else { 0.0 };
            (0..n)
                .map(|k| if k + 1 == n && n > 1 { stop } else { k as f64 * step })
                .map(|v| f64::from(v as f32))
                .collect()
        }
        _ => spaced_timesteps(num_timesteps, n, spacing)?.into_iter().map(|s| s as f64).collect::<Vec<_>>(),
    };
    t.reverse();
    Ok(t)
}

/// A σ-space sampling schedule: the timesteps (fractional, decreasing) the network is
/// evaluated at and σ at each, followed by the final σ = 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SigmaSchedule {
    /// One per step, decreasing; fractional indices of the training process.
    pub timesteps: Vec<f64>,
    /// σ at each timestep, then 0: `timesteps.len() + 1` values.
    pub sigmas: Vec<f64>,
}

impl SigmaSchedule {
    /// Euler/Heun's schedule (diffusers' `EulerDiscreteScheduler` and `HeunDiscreteScheduler`):
    /// the [`continuous_timesteps`] of `spacing` with σ interpolated linearly in t; with
    /// `karras_rho`, Karras σ from the first σ down to the last of those, each mapped back to its
    /// fractional timestep by [`sigma_to_t`] (spacing then only sets the range).
    pub fn continuous(
        alphas_cumprod: &[f64],
        n: usize,
        spacing: TimestepSpacing,
        karras_rho: Option<f64>,
    ) -> Result<Self> {
        let train = training_sigmas(alphas_cumprod);
        let mut timesteps = continuous_timesteps(train.len(), n, spacing)?;
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp_sigma(&train, t)).collect();
        if let Some(rho) = karras_rho {
            let (max, min) = (sigmas[0], sigmas[sigmas.len() - 1]);
            sigmas = karras_sigmas(min, max, n, rho);
            let log: Vec<f64> = train.iter().map(|s| s.ln()).collect();
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log)).collect();
        }
        sigmas.push(0.0);
        Ok(Self { timesteps, sigmas })
    }

    /// A multistep solver's schedule (diffusers' `DPMSolverMultistepScheduler` and
    /// `UniPCMultistepScheduler`): integer `timesteps` (decreasing) with their training σ; with
    /// `karras_rho`, Karras σ between the training σ of the first and the last training step
    /// (σ_{T−1} … σ_0), each timestep the rounded [`sigma_to_t`] (diffusers rounds for every
    /// schedule but `squaredcos_cap_v2`, where its int64 cast truncates instead — `truncate`
    /// reproduces that).
    pub fn multistep(
        alphas_cumprod: &[f64],
        timesteps: &[usize],
        karras_rho: Option<f64>,
        truncate: bool,
    ) -> Result<Self> {
        let train = training_sigmas(alphas_cumprod);
        if let Some(&t) = timesteps.iter().find(|&&t| t >= train.len()) {
            return Err(Error::InvalidRespacing {
                spec: format!("{timesteps:?}"),
                num_timesteps: train.len(),
                reason: format!("step {t} falls outside the process"),
            });
        }
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f64>) = match karras_rho {
            None => timesteps.iter().map(|&t| (t as f64, train[t])).unzip(),
            Some(rho) => {
                let sigmas = karras_sigmas(train[0], train[train.len() - 1], timesteps.len(), rho);
                let log: Vec<f64> = train.iter().map(|s| s.ln()).collect();
                let t = sigmas
                    .iter()
                    .map(|&s| {
                        let t = sigma_to_t(s, &log);
                        if truncate { t.trunc() } else { t.round_ties_even() }
                    })
                    .collect();
                (t, sigmas)
            }
        };
        sigmas.push(0.0);
        Ok(Self { timesteps, sigmas })
    }

    /// Steps of the schedule.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Whether the schedule has no step.
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }
}

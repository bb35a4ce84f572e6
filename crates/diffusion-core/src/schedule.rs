//! Variance schedules β₁…β_T (section "Forward diffusion process" of the survey).
//!
//! | code | paper |
//! |---|---|
//! | `betas[t]` | β_{t+1} (index 0 is the first noising step) |
//! | [`linear_betas`] | Ho et al. 2020, §4: β from 10⁻⁴ to 0.02, scaled by 1000/T |
//! | [`cosine_betas`] | Nichol & Dhariwal 2021, Eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2), s = 0.008 |
//!
//! All tables are `f64`, as in improved-diffusion ("use float64 for accuracy").

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The cosine schedule's offset `s` (Nichol & Dhariwal 2021, §3.2).
pub const COSINE_S: f64 = 0.008;
/// The cap on β used by [`cosine_betas`] to avoid a singularity near t = T.
pub const COSINE_MAX_BETA: f64 = 0.999;

/// Where the β of a process come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BetaSchedule {
    /// [`linear_betas`] with `num_timesteps` steps.
    Linear {
        /// T.
        num_timesteps: usize,
    },
    /// [`cosine_betas`] with `num_timesteps` steps.
    Cosine {
        /// T.
        num_timesteps: usize,
    },
    /// β given by the user, one per step.
    Betas {
        /// β₁…β_T, each in (0, 1].
        betas: Vec<f64>,
    },
    /// ᾱ given by the user, one per step; β_t = 1 − ᾱ_t / ᾱ_{t−1} with ᾱ₀ = 1.
    AlphasCumprod {
        /// ᾱ₁…ᾱ_T, strictly decreasing in (0, 1).
        alphas_cumprod: Vec<f64>,
    },
}

impl BetaSchedule {
    /// A named schedule (`"linear"` or `"cosine"`) with `num_timesteps` steps.
    pub fn named(name: &str, num_timesteps: usize) -> Result<Self> {
        match name {
            "linear" => Ok(Self::Linear { num_timesteps }),
            "cosine" => Ok(Self::Cosine { num_timesteps }),
            other => Err(Error::UnknownSchedule(other.to_string())),
        }
    }

    /// The validated β of this schedule.
    pub fn betas(&self) -> Result<Vec<f64>> {
        let betas = match self {
            Self::Linear { num_timesteps } => linear_betas(*num_timesteps)?,
            Self::Cosine { num_timesteps } => cosine_betas(*num_timesteps)?,
            Self::Betas { betas } => betas.clone(),
            Self::AlphasCumprod { alphas_cumprod } => betas_from_alphas_cumprod(alphas_cumprod)?,
        };
        validate_betas(&betas)?;
        Ok(betas)
    }
}

/// Checks that there is at least one β and that every β lies in (0, 1].
pub fn validate_betas(betas: &[f64]) -> Result<()> {
    if betas.is_empty() {
        return Err(Error::NoTimesteps);
    }
    match betas.iter().position(|b| !(*b > 0.0 && *b <= 1.0)) {
        Some(index) => Err(Error::BetaOutOfRange { index, value: betas[index] }),
        None => Ok(()),
    }
}

/// The linear schedule of Ho et al. (2020), extended to any T as in improved-diffusion:
/// `scale = 1000 / T`, β evenly spaced from `scale · 1e-4` to `scale · 0.02` (both included).
///
/// Evaluated like `numpy.linspace` (`start + i · step`, last value exactly `end`), so the
/// values agree with the reference bit for bit.
pub fn linear_betas(num_timesteps: usize) -> Result<Vec<f64>> {
    if num_timesteps == 0 {
        return Err(Error::NoTimesteps);
    }
    let scale = 1000.0 / num_timesteps as f64;
    let start = scale * 0.0001;
    let end = scale * 0.02;
    if num_timesteps == 1 {
        return Ok(vec![start]);
    }
    let step = (end - start) / (num_timesteps - 1) as f64;
    let mut betas: Vec<f64> = (0..num_timesteps).map(|i| i as f64 * step + start).collect();
    betas[num_timesteps - 1] = end;
    Ok(betas)
}

/// ᾱ(t) of the cosine schedule for t ∈ [0, 1] (before normalising by ᾱ(0)):
/// `cos²(((t + s) / (1 + s)) · π / 2)`.
pub fn cosine_alpha_bar(t: f64) -> f64 {
    ((t + COSINE_S) / (1.0 + COSINE_S) * std::f64::consts::PI / 2.0).cos().powi(2)
}

/// The cosine schedule of Nichol & Dhariwal (2021), Eq. 17, discretised as
/// β_t = min(1 − ᾱ(t/T) / ᾱ((t−1)/T), 0.999).
pub fn cosine_betas(num_timesteps: usize) -> Result<Vec<f64>> {
    betas_for_alpha_bar(num_timesteps, cosine_alpha_bar, COSINE_MAX_BETA)
}

/// Rescales `betas` to zero terminal SNR (Lin et al. 2023, Algorithm 1; diffusers'
/// `rescale_zero_terminal_snr`): √ᾱ is shifted so that its last value is 0 and scaled so that
/// its first is unchanged, then β_t = 1 − ᾱ_t/ᾱ_{t−1}. The last β is then 1 (ᾱ_{T−1} = 0: pure
/// noise at the last step).
///
/// A process built from these betas needs v-prediction ([`crate::GaussianDiffusion::new`]
/// refuses any other mean); [`crate::ProcessSpec::zero_terminal_snr`] applies the rescaling.
/// The σ-parameterised samplers put ᾱ_T = 2⁻²⁴ in place of 0, as diffusers does
/// ([`crate::training_sigmas`]).
pub fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    let sqrt_ab: Vec<f64> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let (Some(&first), Some(&last)) = (sqrt_ab.first(), sqrt_ab.last()) else { return Vec::new() };
    let ab: Vec<f64> = sqrt_ab.iter().map(|s| ((s - last) * first / (first - last)).powi(2)).collect();
    (0..ab.len()).map(|t| if t == 0 { 1.0 - ab[0] } else { 1.0 - ab[t] / ab[t - 1] }).collect()
}

/// Discretises a continuous ᾱ(t), t ∈ [0, 1], into T betas:
/// β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), `max_beta`).
pub fn betas_for_alpha_bar(
    num_timesteps: usize,
    alpha_bar: impl Fn(f64) -> f64,
    max_beta: f64,
) -> Result<Vec<f64>> {
    if num_timesteps == 0 {
        return Err(Error::NoTimesteps);
    }
    let n = num_timesteps as f64;
    let betas = (0..num_timesteps)
        .map(|i| {
            let t1 = i as f64 / n;
            let t2 = (i + 1) as f64 / n;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect();
    Ok(betas)
}

/// β from a user-given ᾱ: β_t = 1 − ᾱ_t / ᾱ_{t−1}, with ᾱ before the first step equal to 1.
///
/// ᾱ must be finite, in (0, 1) and strictly decreasing; otherwise the error names the first
/// offending index.
pub fn betas_from_alphas_cumprod(alphas_cumprod: &[f64]) -> Result<Vec<f64>> {
    if alphas_cumprod.is_empty() {
        return Err(Error::NoTimesteps);
    }
    if let Some(index) = alphas_cumprod.iter().position(|a| !(*a > 0.0 && *a < 1.0)) {
        return Err(Error::AlphaBarOutOfRange { index, value: alphas_cumprod[index] });
    }
    if let Some(index) = (1..alphas_cumprod.len()).find(|&i| alphas_cumprod[i] >= alphas_cumprod[i - 1]) {
        return Err(Error::AlphaBarNotDecreasing {
            index,
            value: alphas_cumprod[index],
            prev_value: alphas_cumprod[index - 1],
        });
    }
    let mut last = 1.0;
    Ok(alphas_cumprod
        .iter()
        .map(|&a| {
            let beta = 1.0 - a / last;
            last = a;
            beta
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_endpoints_follow_ho_et_al_scaled_by_1000_over_t() {
        // Ho et al. 2020 §4: beta_1 = 1e-4, beta_T = 0.02 at T = 1000.
        let b = linear_betas(1000).unwrap();
        assert_eq!(b.len(), 1000);
        assert_eq!(b[0], 1e-4);
        assert_eq!(b[999], 0.02);
        // At T = 4000 the endpoints scale by 1000 / 4000.
        let b = linear_betas(4000).unwrap();
        assert_eq!(b[0], 0.25 * 0.0001);
        assert_eq!(b[3999], 0.25 * 0.02);
    }

    #[test]
    fn cosine_alpha_bar_product_matches_the_continuous_curve() {
        // prod(1 - beta_i) telescopes to alpha_bar(t/T) / alpha_bar(0) wherever no beta is clipped.
        let t = 1000;
        let b = cosine_betas(t).unwrap();
        let mut prod = 1.0;
        for (i, beta) in b.iter().enumerate().take(900) {
            prod *= 1.0 - beta;
            let expect = cosine_alpha_bar((i + 1) as f64 / t as f64) / cosine_alpha_bar(0.0);
            assert!((prod - expect).abs() < 1e-12 * expect.max(1e-3), "step {i}: {prod} vs {expect}");
        }
        // The last beta is clipped at 0.999 (alpha_bar(1) = cos^2(pi/2) ~ 0).
        assert_eq!(b[t - 1], COSINE_MAX_BETA);
    }

    #[test]
    fn user_alphas_cumprod_round_trip_and_errors() {
        let ab = [0.9, 0.5, 0.1];
        let b = betas_from_alphas_cumprod(&ab).unwrap();
        let mut prod = 1.0;
        for (beta, a) in b.iter().zip(ab) {
            prod *= 1.0 - beta;
            assert!((prod - a).abs() < 1e-15);
        }
        assert_eq!(
            betas_from_alphas_cumprod(&[0.9, 0.9]),
            Err(Error::AlphaBarNotDecreasing { index: 1, value: 0.9, prev_value: 0.9 })
        );
        assert_eq!(
            betas_from_alphas_cumprod(&[0.9, 0.0]),
            Err(Error::AlphaBarOutOfRange { index: 1, value: 0.0 })
        );
        assert_eq!(betas_from_alphas_cumprod(&[]), Err(Error::NoTimesteps));
    }

    #[test]
    fn invalid_betas_name_the_index() {
        let err = BetaSchedule::Betas { betas: vec![0.1, 1.5] }.betas().unwrap_err();
        assert_eq!(err, Error::BetaOutOfRange { index: 1, value: 1.5 });
        assert!(err.to_string().contains("beta[1] = 1.5"));
        let err = BetaSchedule::Betas { betas: vec![0.0] }.betas().unwrap_err();
        assert_eq!(err, Error::BetaOutOfRange { index: 0, value: 0.0 });
        assert!(BetaSchedule::Betas { betas: vec![f64::NAN] }.betas().is_err());
        assert_eq!(linear_betas(0), Err(Error::NoTimesteps));
        assert_eq!(BetaSchedule::named("quadratic", 10), Err(Error::UnknownSchedule("quadratic".into())));
    }
}

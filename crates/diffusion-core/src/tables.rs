//! The schedule-derived host tables of a Gaussian diffusion process, in `f64`.
//!
//! | field | symbol | formula |
//! |---|---|---|
//! | `betas` | β_t | the schedule |
//! | `alphas_cumprod` | ᾱ_t | ∏_{s≤t} (1 − β_s) |
//! | `alphas_cumprod_prev` | ᾱ_{t−1} | ᾱ shifted right, 1 before the first step |
//! | `alphas_cumprod_next` | ᾱ_{t+1} | ᾱ shifted left, 0 after the last step |
//! | `sqrt_alphas_cumprod` | √ᾱ_t | mean coefficient of q(x_t∣x_0) |
//! | `sqrt_one_minus_alphas_cumprod` | √(1 − ᾱ_t) | standard deviation of q(x_t∣x_0) |
//! | `log_one_minus_alphas_cumprod` | log(1 − ᾱ_t) | log-variance of q(x_t∣x_0) |
//! | `sqrt_recip_alphas_cumprod` | 1/√ᾱ_t | x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1)·ε |
//! | `sqrt_recipm1_alphas_cumprod` | √(1/ᾱ_t − 1) | (same) |
//! | `posterior_variance` | β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) | variance of q(x_{t−1}∣x_t, x_0) |
//! | `posterior_log_variance_clipped` | log β̃_t, with log β̃_1 at t = 0 | β̃ is 0 at t = 0 |
//! | `posterior_mean_coef1` | β_t √ᾱ_{t−1} / (1 − ᾱ_t) | multiplies x_0 in μ̃_t |
//! | `posterior_mean_coef2` | (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t) | multiplies x_t in μ̃_t |
//!
//! Each formula is evaluated in the same order of operations as improved-diffusion
//! (commit 1bc7bbb), so the tables agree with it to the last bit or two.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::schedule::validate_betas;

/// All `f64` tables of a process (index `t` = timestep `t`, 0-based).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffusionTables {
    /// β_t.
    pub betas: Vec<f64>,
    /// ᾱ_t.
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ_{t−1} (1 at t = 0).
    pub alphas_cumprod_prev: Vec<f64>,
    /// ᾱ_{t+1} (0 at t = T − 1).
    pub alphas_cumprod_next: Vec<f64>,
    /// √ᾱ_t.
    pub sqrt_alphas_cumprod: Vec<f64>,
    /// √(1 − ᾱ_t).
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    /// log(1 − ᾱ_t).
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    /// 1/√ᾱ_t.
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    /// √(1/ᾱ_t − 1).
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// β̃_t, the variance of q(x_{t−1} ∣ x_t, x_0).
    pub posterior_variance: Vec<f64>,
    /// log β̃_t, with the value at t = 1 copied to t = 0 (where β̃ = 0).
    pub posterior_log_variance_clipped: Vec<f64>,
    /// Coefficient of x_0 in the posterior mean μ̃_t.
    pub posterior_mean_coef1: Vec<f64>,
    /// Coefficient of x_t in the posterior mean μ̃_t.
    pub posterior_mean_coef2: Vec<f64>,
    /// The "fixed large" variance: β_t, with β̃_1 at t = 0 (for a better decoder likelihood).
    pub fixed_large_variance: Vec<f64>,
    /// log of `fixed_large_variance`.
    pub fixed_large_log_variance: Vec<f64>,
    /// log β_t (the upper end of the learned-range interpolation).
    pub log_betas: Vec<f64>,
}

impl DiffusionTables {
    /// Computes every table from β. Needs `T ≥ 2` and every β in (0, 1].
    pub fn new(betas: Vec<f64>) -> Result<Self> {
        validate_betas(&betas)?;
        let n = betas.len();
        if n < 2 {
            return Err(Error::TooFewTimesteps(n));
        }
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alphas_cumprod.push(acc);
        }
        let mut alphas_cumprod_prev = Vec::with_capacity(n);
        alphas_cumprod_prev.push(1.0);
        alphas_cumprod_prev.extend_from_slice(&alphas_cumprod[..n - 1]);
        let mut alphas_cumprod_next = alphas_cumprod[1..].to_vec();
        alphas_cumprod_next.push(0.0);

        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let ac = &alphas_cumprod;
        let acp = &alphas_cumprod_prev;
        let sqrt_alphas_cumprod = map(&|t| ac[t].sqrt());
        let sqrt_one_minus_alphas_cumprod = map(&|t| (1.0 - ac[t]).sqrt());
        let log_one_minus_alphas_cumprod = map(&|t| (1.0 - ac[t]).ln());
        let sqrt_recip_alphas_cumprod = map(&|t| (1.0 / ac[t]).sqrt());
        let sqrt_recipm1_alphas_cumprod = map(&|t| (1.0 / ac[t] - 1.0).sqrt());
        let posterior_variance = map(&|t| betas[t] * (1.0 - acp[t]) / (1.0 - ac[t]));
        let posterior_log_variance_clipped =
            map(&|t| if t == 0 { posterior_variance[1].ln() } else { posterior_variance[t].ln() });
        let posterior_mean_coef1 = map(&|t| betas[t] * acp[t].sqrt() / (1.0 - ac[t]));
        let posterior_mean_coef2 = map(&|t| (1.0 - acp[t]) * alphas[t].sqrt() / (1.0 - ac[t]));
        let fixed_large_variance = map(&|t| if t == 0 { posterior_variance[1] } else { betas[t] });
        let fixed_large_log_variance = fixed_large_variance.iter().map(|v| v.ln()).collect();
        let log_betas = betas.iter().map(|b| b.ln()).collect();

        Ok(Self {
            betas,
            alphas_cumprod,
            alphas_cumprod_prev,
            alphas_cumprod_next,
            sqrt_alphas_cumprod,
            sqrt_one_minus_alphas_cumprod,
            log_one_minus_alphas_cumprod,
            sqrt_recip_alphas_cumprod,
            sqrt_recipm1_alphas_cumprod,
            posterior_variance,
            posterior_log_variance_clipped,
            posterior_mean_coef1,
            posterior_mean_coef2,
            fixed_large_variance,
            fixed_large_log_variance,
            log_betas,
        })
    }

    /// T, the number of steps.
    pub fn num_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021).
    pub fn snr(&self) -> Vec<f64> {
        self.alphas_cumprod.iter().map(|a| a / (1.0 - a)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_step_process_by_hand() {
        // beta = [0.1, 0.2]: alpha = [0.9, 0.8], alpha_bar = [0.9, 0.72].
        let t = DiffusionTables::new(vec![0.1, 0.2]).unwrap();
        assert_eq!(t.alphas_cumprod, vec![0.9, 0.9 * 0.8]);
        assert_eq!(t.alphas_cumprod_prev, vec![1.0, 0.9]);
        assert_eq!(t.alphas_cumprod_next, vec![0.9 * 0.8, 0.0]);
        // beta~_1 = 0.2 * (1 - 0.9) / (1 - 0.72) = 0.02 / 0.28.
        let pv1 = 0.2 * (1.0 - 0.9) / (1.0 - 0.9 * 0.8);
        assert_eq!(t.posterior_variance, vec![0.0, pv1]);
        assert_eq!(t.posterior_log_variance_clipped, vec![pv1.ln(), pv1.ln()]);
        assert_eq!(t.fixed_large_variance, vec![pv1, 0.2]);
        // mu~_0 = x_0 exactly at t = 0: coef1 = beta_0 * 1 / (1 - (1 - beta_0)) = 1, coef2 = 0.
        assert!((t.posterior_mean_coef1[0] - 1.0).abs() < 1e-15);
        assert_eq!(t.posterior_mean_coef2[0], 0.0);
    }

    #[test]
    fn one_step_is_a_typed_error() {
        assert_eq!(DiffusionTables::new(vec![0.5]), Err(Error::TooFewTimesteps(1)));
    }
}

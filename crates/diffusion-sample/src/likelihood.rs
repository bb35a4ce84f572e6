//! Likelihood in bits/dim: the full variational bound (prior + every L_t + decoder, the reference's
//! convention for 8-bit data in [−1, 1]) and an unbiased stratified estimator of it that draws one
//! timestep per stratum and reports a 95 % confidence interval.

use burn::tensor::{Int, Tensor, TensorData};
use diffusion_core::{BpdBreakdown, GaussianDiffusion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::noise::NoiseSource;
use crate::sampler::Denoiser;

/// Steps of the likelihood noise live in their own range, apart from the samplers' steps.
const NLL_STEP: u64 = 1 << 40;

/// The full bound of each image (`x0` in [−1, 1], 8-bit grid), with noise for image `id` at
/// timestep `t` keyed by `(seed, id, t)`.
///
/// # Shapes
/// `x0: [N, …]`, `ids.len() = N`.
pub fn full_bound<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x0: Tensor<D>,
    ids: &[u64],
    noise: &NoiseSource,
    clip_denoised: bool,
) -> BpdBreakdown {
    let mut item = x0.dims();
    item[0] = 1;
    let device = x0.device();
    diffusion.calc_bpd_loop(
        x0,
        clip_denoised,
        |x, t| model.denoise(x, t),
        |t| noise.batch(ids, NLL_STEP + t as u64, item, &device),
    )
}

/// An estimate of the bound per image and its summary.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundEstimate {
    /// Estimated bits/dim per image.
    pub per_image: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Half-width of the 95 % confidence interval of the mean (1.96 standard errors; includes the
    /// spread over images and over the drawn timesteps).
    pub ci95: f64,
}

impl BoundEstimate {
    /// Mean and 95 % interval of per-image values.
    pub fn from_values(per_image: Vec<f64>) -> Self {
        let n = per_image.len().max(1) as f64;
        let mean = per_image.iter().sum::<f64>() / n;
        let var = if per_image.len() > 1 {
            per_image.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Self { per_image, mean, ci95: 1.96 * (var / n).sqrt() }
    }
}

/// Stratified estimate of the bound: the T steps are split into `strata` contiguous ranges; each
/// image draws one t per range (seeded by `(seed, id, range)`), and
/// bound ≈ L_T + Σ_k |range_k| · L_{t_k}. Unbiased; with `strata = T` it is the full bound exactly
/// (same noise keys).
///
/// # Shapes
/// `x0: [N, …]`, `ids.len() = N`.
#[allow(clippy::too_many_arguments)]
pub fn stratified_bound<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x0: Tensor<D>,
    ids: &[u64],
    noise: &NoiseSource,
    strata: usize,
    seed: u64,
    clip_denoised: bool,
) -> BoundEstimate {
    let num_t = diffusion.num_timesteps();
    let strata = strata.clamp(1, num_t);
    let n = ids.len();
    let device = x0.device();
    let mut item = x0.dims();
    item[0] = 1;
    let mut totals: Vec<f64> = values(diffusion.prior_bpd(x0.clone()));
    for k in 0..strata {
        let (lo, hi) = (k * num_t / strata, (k + 1) * num_t / strata);
        let ts: Vec<usize> = ids
            .iter()
            .map(|&id| {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64) << 32,
                );
                rng.random_range(lo..hi)
            })
            .collect();
        let t = Tensor::<1, Int>::from_data(
            TensorData::new(ts.iter().map(|&v| v as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        let steps: Vec<u64> = ts.iter().map(|&v| NLL_STEP + v as u64).collect();
        let eps = noise.batch_steps(ids, &steps, item, &device);
        let x_t = diffusion.q_sample(x0.clone(), t.clone(), eps);
        let out = model.denoise(x_t.clone(), diffusion.model_timesteps(t.clone()));
        let terms = values(diffusion.vb_terms_bpd(out, x0.clone(), x_t, t, clip_denoised).output);
        for (total, term) in totals.iter_mut().zip(terms) {
            *total += (hi - lo) as f64 * term;
        }
    }
    BoundEstimate::from_values(totals)
}

fn values(t: Tensor<1>) -> Vec<f64> {
    diffusion_core::sync::read_f32(t).into_iter().map(f64::from).collect()
}

/// The variational bound for continuous data (e.g. 2-D points), in nats per example (summed over
/// dimensions): KL(q(x_T∣x_0) ‖ N(0, I)) + Σ_{t≥1} KL(q(x_{t−1}∣x_t, x_0) ‖ p_θ(x_{t−1}∣x_t))
/// − log N(x_0; μ_θ(x_1, 0), Σ_θ) — an upper bound on −log p_θ(x_0) with a continuous Gaussian
/// decoder (the discretised decoder of [`full_bound`] is for 8-bit images). Noise keyed like
/// [`full_bound`]'s.
///
/// # Shapes
/// `x0: [N, …]`, `ids.len() = N`; the result is `[N]`.
pub fn continuous_bound<const D: usize>(
    diffusion: &GaussianDiffusion,
    model: &dyn Denoiser<D>,
    x0: Tensor<D>,
    ids: &[u64],
    noise: &NoiseSource,
) -> Tensor<1> {
    use diffusion_core::likelihood::{normal_kl, normal_kl_standard};
    let n = x0.dims()[0];
    let mut item = x0.dims();
    item[0] = 1;
    let device = x0.device();
    let sum_flat = |x: Tensor<D>| -> Tensor<1> { x.reshape([n as i32, -1]).sum_dim(1).reshape([n]) };
    // Prior: q(x_T | x_0) against N(0, I).
    let last = diffusion.num_timesteps() - 1;
    let t_last = Tensor::<1, Int>::full([n], last as i64, &device);
    let q = diffusion.q_mean_variance(x0.clone(), t_last);
    let mut total = sum_flat(normal_kl_standard(q.mean, q.log_variance));
    for t in 0..diffusion.num_timesteps() {
        let tt = Tensor::<1, Int>::full([n], t as i64, &device);
        let eps = noise.batch(ids, NLL_STEP + t as u64, item, &device);
        let x_t = diffusion.q_sample(x0.clone(), tt.clone(), eps);
        let out = model.denoise(x_t.clone(), diffusion.model_timesteps(tt.clone()));
        let p = diffusion.p_mean_variance(out, x_t.clone(), tt.clone(), false);
        let term = if t == 0 {
            // −log N(x_0; μ, Σ) per dimension, with Σ = exp(log Σ): the fixed-small variance
            // at t = 0 is β̃_0 = 0, whose log the reference clips to log β̃_1.
            let d = x0.clone() - p.mean;
            let inv_var = p.log_variance.clone().neg().exp();
            (p.log_variance + d.clone() * d * inv_var)
                .add_scalar((2.0 * std::f64::consts::PI).ln())
                .mul_scalar(0.5)
        } else {
            let post = diffusion.q_posterior_mean_variance(x0.clone(), x_t, tt);
            normal_kl(post.mean, post.log_variance_clipped, p.mean, p.log_variance)
        };
        total = total + sum_flat(term);
    }
    total
}

/// The full bound's terms summed over images, batch after batch ([`full_bound`]'s outputs), for
/// per-timestep reports: means per t of L_t, the x̂_0 and ε MSEs, the prior and decoder terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TermTotals {
    /// Images added.
    pub images: usize,
    /// Σ over images of L_t (bits/dim), per t (t = 0: the decoder term).
    pub vb: Vec<f64>,
    /// Σ over images of the x̂_0 MSE, per t.
    pub x0_mse: Vec<f64>,
    /// Σ over images of the ε MSE, per t.
    pub eps_mse: Vec<f64>,
    /// Σ over images of the prior term L_T.
    pub prior: f64,
    /// Total bits/dim of each image, in order.
    pub per_image: Vec<f64>,
}

impl TermTotals {
    /// Adds one batch's bound (read back to the host once).
    pub fn add(&mut self, r: BpdBreakdown) {
        let [b, num_t] = r.vb.dims();
        let flat = |t: Tensor<2>| t.reshape([-1]);
        let all = Tensor::cat(vec![flat(r.vb), flat(r.x0_mse), flat(r.eps_mse), r.total_bpd, r.prior_bpd], 0);
        let all: Vec<f64> = diffusion_core::sync::read_f32(all).into_iter().map(f64::from).collect();
        let n = b * num_t;
        let (vb, x0m, em) = (&all[..n], &all[n..2 * n], &all[2 * n..3 * n]);
        let (tot, prior) = (&all[3 * n..3 * n + b], &all[3 * n + b..]);
        if self.vb.len() != num_t {
            self.vb = vec![0.0; num_t];
            self.x0_mse = vec![0.0; num_t];
            self.eps_mse = vec![0.0; num_t];
        }
        for row in 0..b {
            for t in 0..num_t {
                self.vb[t] += vb[row * num_t + t];
                self.x0_mse[t] += x0m[row * num_t + t];
                self.eps_mse[t] += em[row * num_t + t];
            }
            self.prior += prior[row];
            self.per_image.push(tot[row]);
        }
        self.images += b;
    }

    fn mean(&self, v: f64) -> f64 {
        v / self.images.max(1) as f64
    }

    /// Mean L_t per t (bits/dim).
    pub fn mean_vb(&self) -> Vec<f64> {
        self.vb.iter().map(|&v| self.mean(v)).collect()
    }

    /// Mean x̂_0 MSE per t.
    pub fn mean_x0_mse(&self) -> Vec<f64> {
        self.x0_mse.iter().map(|&v| self.mean(v)).collect()
    }

    /// Mean ε MSE per t.
    pub fn mean_eps_mse(&self) -> Vec<f64> {
        self.eps_mse.iter().map(|&v| self.mean(v)).collect()
    }

    /// Mean prior term L_T (bits/dim).
    pub fn mean_prior(&self) -> f64 {
        self.mean(self.prior)
    }

    /// Mean decoder term L_0 (bits/dim).
    pub fn mean_decoder(&self) -> f64 {
        self.mean(self.vb.first().copied().unwrap_or(0.0))
    }

    /// Mean Σ_{t ≥ 1} L_t (bits/dim).
    pub fn mean_sum_of_terms(&self) -> f64 {
        self.mean(self.vb.iter().skip(1).sum())
    }
}

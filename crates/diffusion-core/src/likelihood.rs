//! Small pure likelihood helpers: Gaussian KL, the discretised decoder likelihood, `mean_flat`.
//!
//! These are the building blocks of the variational bound
//! L_VLB = L_T + Σ_{t>1} L_{t−1} + L_0 (survey, "Parameterization of L_t"): every L_t is a KL
//! between Gaussians ([`normal_kl`]) and L_0 is the negative log-likelihood of 8-bit data under a
//! Gaussian discretised to 256 bins ([`discretized_gaussian_log_likelihood`], Ho et al. 2020 Eq. 13).

use burn::tensor::Tensor;

/// KL(𝒩(μ₁, e^{ℓ₁}) ‖ 𝒩(μ₂, e^{ℓ₂})) elementwise, in nats:
/// ½ (−1 + ℓ₂ − ℓ₁ + e^{ℓ₁−ℓ₂} + (μ₁ − μ₂)² e^{−ℓ₂}).
///
/// # Shapes
/// All four inputs share one shape; the output has it too.
pub fn normal_kl<const D: usize>(
    mean1: Tensor<D>,
    logvar1: Tensor<D>,
    mean2: Tensor<D>,
    logvar2: Tensor<D>,
) -> Tensor<D> {
    let diff = mean1 - mean2;
    let ratio = (logvar1.clone() - logvar2.clone()).exp();
    let inv_var2 = logvar2.clone().neg().exp();
    (logvar2.add_scalar(-1.0) - logvar1 + ratio + diff.clone() * diff * inv_var2).mul_scalar(0.5)
}

/// KL(𝒩(μ, e^ℓ) ‖ 𝒩(0, 1)) elementwise, in nats: [`normal_kl`] with μ₂ = 0, ℓ₂ = 0.
///
/// # Shapes
/// `mean` and `logvar` share one shape; the output has it too.
pub fn normal_kl_standard<const D: usize>(mean: Tensor<D>, logvar: Tensor<D>) -> Tensor<D> {
    (logvar.clone().neg().add_scalar(-1.0) + logvar.exp() + mean.clone() * mean).mul_scalar(0.5)
}

/// The tanh approximation of the standard normal CDF used by improved-diffusion:
/// Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³))).
///
/// # Shapes
/// Elementwise.
pub fn approx_standard_normal_cdf<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x + cube.mul_scalar(0.044715)).mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    inner.tanh().add_scalar(1.0).mul_scalar(0.5)
}

/// Log-likelihood, in nats, of 8-bit data rescaled to [−1, 1] under 𝒩(`means`, e^{2·`log_scales`})
/// discretised to bins of width 2/255 (Ho et al. 2020, Eq. 13).
///
/// The edge bins extend to ±∞: for x < −0.999 the log-probability is log Φ(x⁺), for x > 0.999 it
/// is log(1 − Φ(x⁻)), elsewhere log(Φ(x⁺) − Φ(x⁻)), with x± = (x − μ ± 1/255)/σ and every
/// probability clamped at 10⁻¹² before the log — exactly the reference's convention.
///
/// # Shapes
/// `x`, `means` and `log_scales` share one shape; the output has it too.
pub fn discretized_gaussian_log_likelihood<const D: usize>(
    x: Tensor<D>,
    means: Tensor<D>,
    log_scales: Tensor<D>,
) -> Tensor<D> {
    assert_eq!(x.dims(), means.dims(), "discretized_gaussian_log_likelihood: x and means must share a shape");
    assert_eq!(
        x.dims(),
        log_scales.dims(),
        "discretized_gaussian_log_likelihood: x and log_scales must share a shape"
    );
    let centered = x.clone() - means;
    let inv_stdv = log_scales.neg().exp();
    let plus_in = inv_stdv.clone() * centered.clone().add_scalar(1.0 / 255.0);
    let cdf_plus = approx_standard_normal_cdf(plus_in);
    let min_in = inv_stdv * centered.add_scalar(-1.0 / 255.0);
    let cdf_min = approx_standard_normal_cdf(min_in);
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = cdf_min.clone().neg().add_scalar(1.0).clamp_min(1e-12).log();
    let log_cdf_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    log_cdf_delta
        .mask_where(x.clone().greater_elem(0.999), log_one_minus_cdf_min)
        .mask_where(x.lower_elem(-0.999), log_cdf_plus)
}

/// Mean over every dimension but the first (the batch).
///
/// # Shapes
/// `[B, …] → [B]`.
pub fn mean_flat<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let dims = x.dims();
    let b = dims[0];
    let n: usize = dims[1..].iter().product();
    x.reshape([b, n.max(1)]).mean_dim(1).reshape([b])
}

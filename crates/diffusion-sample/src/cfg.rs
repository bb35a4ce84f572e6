//! Classifier-free guidance (Ho & Salimans 2022) for a UNet trained with a null class (labels
//! dropped with some probability, `diffusion_train`'s `label_dropout`): each network call
//! evaluates the conditional output c = f(x, t, y) and the unconditional u = f(x, t, ∅) in one
//! batched forward and returns u + s (c − u) on the prediction channels (the learned-variance
//! channels, if any, are c's, as in GLIDE).
//!
//! s is diffusers' `guidance_scale`: s = 1 is plain conditional sampling, s = 0 unconditional;
//! Ho & Salimans write the same as (1 + w) c − w u, w = s − 1. With `rescale` φ > 0 (Lin et al.
//! 2023, Eq. 15–16; diffusers' `guidance_rescale`) the guided output g is rescaled towards c's
//! standard deviation per sample: φ g σ_c/σ_g + (1 − φ) g.
//!
//! The guided network is an ordinary [`Denoiser`], so it works with every sampler and combines
//! with classifier guidance.

use burn::tensor::{Int, Tensor};
use diffusion_models::UNet;

use crate::error::{Result, SampleError};
use crate::step::Denoiser;

/// The guidance settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifierFree {
    /// s: 1 conditional, > 1 guided.
    pub scale: f64,
    /// φ ∈ [0, 1]: guidance rescale (0: off).
    pub rescale: f64,
}

impl ClassifierFree {
    /// Checked settings.
    pub fn new(scale: f64, rescale: f64) -> Result<Self> {
        if !scale.is_finite() {
            return Err(SampleError::InvalidOption(format!(
                "the guidance scale must be finite, got {scale}"
            )));
        }
        if !(0.0..=1.0).contains(&rescale) {
            return Err(SampleError::InvalidOption(format!(
                "the guidance rescale must be in [0, 1], got {rescale}"
            )));
        }
        Ok(Self { scale, rescale })
    }

    /// u + s (c − u), rescaled by φ (both `[B, C, …]`).
    pub fn combine<const D: usize>(&self, cond: Tensor<D>, uncond: Tensor<D>) -> Tensor<D> {
        let guided = uncond.clone() + (cond.clone() - uncond).mul_scalar(self.scale);
        if self.rescale == 0.0 {
            return guided;
        }
        let std = |x: &Tensor<D>| {
            let b = x.dims()[0];
            let flat: Tensor<2> = x.clone().reshape([b as i32, -1]);
            flat.var(1).sqrt()
        };
        let b = guided.dims()[0];
        let mut shape = [1; D];
        shape[0] = b;
        let ratio: Tensor<D> = (std(&cond) / std(&guided)).reshape(shape);
        let rescaled = guided.clone() * ratio;
        rescaled.mul_scalar(self.rescale) + guided.mul_scalar(1.0 - self.rescale)
    }
}

/// A UNet with a null class under classifier-free guidance, for a batch's labels.
#[derive(Debug, Clone)]
pub struct GuidedUnet<'a> {
    unet: &'a UNet,
    labels: Tensor<1, Int>,
    null: usize,
    cfg: ClassifierFree,
}

impl<'a> GuidedUnet<'a> {
    /// Guides `unet` towards `labels` (one per sample); an error if the network has no null
    /// class (it was trained without label dropout).
    pub fn new(unet: &'a UNet, labels: Tensor<1, Int>, cfg: ClassifierFree) -> Result<Self> {
        let null = unet.null_label().ok_or_else(|| {
            SampleError::InvalidOption(
                "classifier-free guidance needs a network trained with a null class (train with \
                 --label-dropout, i.e. label_dropout > 0 and model.null_class); this one has none"
                    .into(),
            )
        })?;
        Ok(Self { unet, labels, null, cfg })
    }
}

impl Denoiser<4> for GuidedUnet<'_> {
    fn denoise(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        let b = x.dims()[0];
        let null = Tensor::<1, Int>::full([b], self.null as i64, &x.device());
        let out = self.unet.forward(
            Tensor::cat(vec![x.clone(), x], 0),
            Tensor::cat(vec![t.clone(), t], 0),
            Some(Tensor::cat(vec![self.labels.clone(), null], 0)),
        );
        let [_, c, h, w] = out.dims();
        let (cond, uncond) =
            (out.clone().slice([0..b, 0..c, 0..h, 0..w]), out.slice([b..2 * b, 0..c, 0..h, 0..w]));
        let k = self.unet.in_channels;
        if c == 2 * k {
            // Learned variance: guide the prediction channels, keep the conditional variance.
            let mean = self.cfg.combine(
                cond.clone().slice([0..b, 0..k, 0..h, 0..w]),
                uncond.slice([0..b, 0..k, 0..h, 0..w]),
            );
            Tensor::cat(vec![mean, cond.slice([0..b, k..c, 0..h, 0..w])], 1)
        } else {
            self.cfg.combine(cond, uncond)
        }
    }
}

//! Classifier guidance from a noise-aware classifier (Dhariwal & Nichol 2021): the gradient
//! s ∇_x log p(y∣x_t) through an autodiff copy of the classifier, as guided-diffusion's
//! `scripts/classifier_sample.py` computes it (log-softmax of the logits, the label's entry,
//! summed over the batch, differentiated with respect to x).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::SeedStream;
use diffusion_models::EncoderUNet;

use crate::error::{Result, SampleError};
use crate::step::Guidance;

/// A classifier and a guidance scale; [`Self::for_labels`] gives the [`Guidance`] of a batch.
#[derive(Debug, Clone)]
pub struct ClassifierGuidance {
    classifier: EncoderUNet,
    scale: f64,
}

impl ClassifierGuidance {
    /// Guidance by `classifier` (on an autodiff device, e.g. `device.clone().autodiff()`) with
    /// scale s = `scale`.
    pub fn new(classifier: EncoderUNet, scale: f64) -> Result<Self> {
        if !scale.is_finite() {
            return Err(SampleError::InvalidOption(format!(
                "the guidance scale must be finite, got {scale}"
            )));
        }
        Ok(Self { classifier, scale })
    }

    /// Classes the classifier tells apart.
    pub fn num_classes(&self) -> usize {
        self.classifier.out_classes()
    }

    /// The scale s.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The guidance towards `labels` (one per sample of the batch it will see).
    pub fn for_labels(&self, labels: Tensor<1, Int>) -> LabelGuidance<'_> {
        LabelGuidance { guidance: self, labels }
    }
}

/// [`ClassifierGuidance`] towards given labels: a [`Guidance`].
#[derive(Debug, Clone)]
pub struct LabelGuidance<'a> {
    guidance: &'a ClassifierGuidance,
    labels: Tensor<1, Int>,
}

impl Guidance<4> for LabelGuidance<'_> {
    fn gradient(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        let x = x.detach().autodiff().require_grad();
        let logits = self.guidance.classifier.forward(x.clone(), t.autodiff());
        let b = logits.dims()[0];
        let picked = log_softmax(logits, 1).gather(1, self.labels.clone().autodiff().reshape([b, 1]));
        let grads = picked.sum().backward();
        // `x` was marked as requiring a gradient above, so the graph always holds one for it.
        x.grad(&grads).expect("x requires grad").mul_scalar(self.guidance.scale)
    }
}

/// One class label per sample id: `fixed` for every sample, or drawn uniformly from `0..classes`
/// as a function of (seed, id) only ([`SeedStream::ClassLabels`]), so any batching or sharding
/// gives the same labels.
pub fn class_labels(
    ids: &[u64],
    classes: usize,
    fixed: Option<usize>,
    seed: u64,
    device: &Device,
) -> Result<Tensor<1, Int>> {
    if let Some(c) = fixed
        && c >= classes.max(1)
    {
        return Err(SampleError::InvalidOption(format!(
            "class {c} is out of range: the model has {classes} classes"
        )));
    }
    let source = SeedStream::ClassLabels.source(seed);
    let v: Vec<i64> = ids
        .iter()
        .map(|&i| match fixed {
            Some(c) => c as i64,
            None => source.index(i, 0, classes) as i64,
        })
        .collect();
    Ok(Tensor::from_data(TensorData::new(v, [ids.len()]), device))
}

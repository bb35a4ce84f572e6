//! Sample sets from a checkpoint's network in batches: the loop `diffusion sample` runs, as a
//! library call (class labels per sample id, classifier guidance, progress per network call).
//!
//! Sample `id`'s noise and label depend on (seed, id) only, so any batch size and any split of
//! the ids over machines give the same samples.

use std::cell::Cell;

use burn::tensor::{Device, Int, Tensor};
use diffusion_core::GaussianDiffusion;
use diffusion_models::{Mlp, UNet};

use crate::cfg::{ClassifierFree, GuidedUnet};
use crate::checkpoint::ConditionalUnet;
use crate::error::{Result, SampleError};
use crate::guidance::{ClassifierGuidance, class_labels};
use crate::noise::NoiseSource;
use crate::sampler::{Method, SampleOptions, SampleOutput, sample};
use crate::step::{Denoiser, Guidance};

/// Where a sampling job stands, reported after every network evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Batch (from 1).
    pub batch: usize,
    /// Batches in all.
    pub batches: usize,
    /// Network evaluations done in this batch.
    pub evaluations: usize,
    /// Network evaluations a batch takes.
    pub evaluations_per_batch: usize,
}

/// What to sample and how.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// The process to sample (respaced as wanted).
    pub diffusion: &'a GaussianDiffusion,
    /// The sampler.
    pub method: Method,
    /// Clipping and trajectory recording (the trajectory is kept for the first batch).
    pub options: SampleOptions,
    /// The seed of the noise and of drawn labels.
    pub seed: u64,
    /// Samples per batch (≥ 1).
    pub batch_size: usize,
    /// Classifier-free guidance (image models with a null class).
    pub cfg: Option<ClassifierFree>,
}

/// Samples of an image model.
#[derive(Debug, Clone)]
pub struct ImageSamples {
    /// `[N, C, H, W]` in the data range.
    pub samples: Tensor<4>,
    /// The class label of each sample (0 for an unguided unconditional model).
    pub labels: Vec<i64>,
    /// The first batch's sampler output (with its trajectory when one was recorded).
    pub first_batch: Option<SampleOutput<4>>,
}

/// Counts network calls and reports them.
struct Counting<'a, const D: usize> {
    inner: &'a dyn Denoiser<D>,
    calls: Cell<usize>,
    report: &'a dyn Fn(usize),
}

impl<const D: usize> Denoiser<D> for Counting<'_, D> {
    fn denoise(&self, x: Tensor<D>, t: Tensor<1>) -> Tensor<D> {
        let out = self.inner.denoise(x, t);
        self.calls.set(self.calls.get() + 1);
        (self.report)(self.calls.get());
        out
    }
}

fn check_job(job: &Job<'_>, ids: &[u64]) -> Result<()> {
    if job.batch_size == 0 {
        return Err(SampleError::InvalidOption("the batch size must be at least 1".into()));
    }
    if ids.is_empty() {
        return Err(SampleError::InvalidOption("nothing to sample: the number of samples is 0".into()));
    }
    Ok(())
}

/// Samples `ids` from a UNet: labels `class` for every sample or drawn per id (for a
/// class-conditional UNet, or for the classifier's classes when guided), batches of
/// `job.batch_size`, `progress` after every network evaluation.
pub fn sample_images(
    job: &Job<'_>,
    unet: &UNet,
    ids: &[u64],
    class: Option<usize>,
    guidance: Option<&ClassifierGuidance>,
    device: &Device,
    progress: &dyn Fn(Progress),
) -> Result<ImageSamples> {
    check_job(job, ids)?;
    // The classes the labels choose among: the model's or the classifier's. Neither conditioned
    // nor guided, a label is only recorded with the samples (`class`, or 0).
    let classes = if unet.num_classes > 0 {
        Some(unet.num_classes)
    } else {
        guidance.map(ClassifierGuidance::num_classes)
    };
    if let (Some(g), true) = (guidance, unet.num_classes > 0)
        && g.num_classes() != unet.num_classes
    {
        return Err(SampleError::InvalidOption(format!(
            "the classifier tells {} classes apart, the model is conditioned on {}",
            g.num_classes(),
            unet.num_classes
        )));
    }
    let noise = NoiseSource::new(job.seed);
    let item = [1, unet.in_channels, unet.image_size, unet.image_size];
    let batches = ids.len().div_ceil(job.batch_size);
    let per_batch = job.method.evaluations(job.diffusion);
    let mut chunks = Vec::with_capacity(batches);
    let mut labels = Vec::with_capacity(ids.len());
    let mut first_batch = None;
    for (b, chunk) in ids.chunks(job.batch_size).enumerate() {
        let y = match classes {
            Some(classes) => class_labels(chunk, classes, class, job.seed, device)?,
            None => Tensor::full([chunk.len()], class.unwrap_or(0) as i64, device),
        };
        labels.extend(y.clone().into_data().convert::<i64>().try_to_vec::<i64>().unwrap_or_default());
        let plain = ConditionalUnet { unet, labels: (unet.num_classes > 0).then(|| y.clone()) };
        let guided = match job.cfg {
            Some(cfg) => Some(GuidedUnet::new(unet, y.clone(), cfg)?),
            None => None,
        };
        let net: &dyn Denoiser<4> = match &guided {
            Some(g) => g,
            None => &plain,
        };
        let report = |evaluations| {
            progress(Progress { batch: b + 1, batches, evaluations, evaluations_per_batch: per_batch })
        };
        let counted = Counting { inner: net, calls: Cell::new(0), report: &report };
        let g = guidance.map(|g| g.for_labels(y));
        let out = sample(
            job.diffusion,
            &counted,
            chunk,
            item,
            &noise,
            job.method,
            &job.options,
            g.as_ref().map(|g| g as &dyn Guidance<4>),
            device,
        )?;
        chunks.push(out.sample.clone());
        if b == 0 {
            first_batch = Some(out);
        }
    }
    Ok(ImageSamples { samples: Tensor::cat(chunks, 0), labels, first_batch })
}

/// Samples `ids` from a point MLP (x̂_0 never clipped: points are not confined to [−1, 1]).
pub fn sample_points(
    job: &Job<'_>,
    mlp: &Mlp,
    ids: &[u64],
    device: &Device,
    progress: &dyn Fn(Progress),
) -> Result<Tensor<2>> {
    check_job(job, ids)?;
    if job.cfg.is_some() {
        return Err(SampleError::InvalidOption(
            "classifier-free guidance needs a class-conditional image model, not a point MLP".into(),
        ));
    }
    let noise = NoiseSource::new(job.seed);
    let dim = mlp.input.weight.dims()[0];
    let options = SampleOptions { clip_denoised: false, ..job.options.clone() };
    let batches = ids.len().div_ceil(job.batch_size);
    let per_batch = job.method.evaluations(job.diffusion);
    let mut chunks = Vec::with_capacity(batches);
    for (b, chunk) in ids.chunks(job.batch_size).enumerate() {
        let report = |evaluations| {
            progress(Progress { batch: b + 1, batches, evaluations, evaluations_per_batch: per_batch })
        };
        let counted = Counting { inner: mlp, calls: Cell::new(0), report: &report };
        let out =
            sample(job.diffusion, &counted, chunk, [1, dim], &noise, job.method, &options, None, device)?;
        chunks.push(out.sample);
    }
    Ok(Tensor::cat(chunks, 0))
}

/// Labels of a class-conditional UNet for `n` samples at fixed class `class` (`None` for an
/// unconditional one), for the deterministic DDIM chains of interpolation and inversion.
pub fn fixed_labels(unet: &UNet, n: usize, class: usize, device: &Device) -> Result<Option<Tensor<1, Int>>> {
    if unet.num_classes == 0 {
        return Ok(None);
    }
    let ids: Vec<u64> = (0..n as u64).collect();
    class_labels(&ids, unet.num_classes, Some(class), 0, device).map(Some)
}

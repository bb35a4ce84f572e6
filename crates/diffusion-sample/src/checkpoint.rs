//! Opening checkpoints for sampling: a denoiser with its diffusion process, a classifier as a
//! guidance object.
//!
//! A diffusion-rs checkpoint (see `diffusion_models::checkpoint`) records its network's full
//! configuration and, when a training run (or `diffusion model --save`) wrote it, the process the
//! network was trained for ([`ProcessRecord`]). [`open_denoiser`] builds both and checks that
//! they fit each other (a learned variance needs twice the data channels); nothing is inferred
//! from channel counts. A checkpoint without a process (imported PyTorch weights) needs one
//! from the caller.
//!
//! ```no_run
//! use burn::tensor::{Device, Distribution, Tensor};
//! use diffusion_sample::checkpoint::{DenoiserNetwork, open_denoiser};
//! use diffusion_sample::step::{StepOptions, ancestral_step, model_output};
//!
//! let device = Device::flex();
//! let ckpt = open_denoiser("runs/default/checkpoints/step-00001200.ckpt".as_ref(), &device, None)?;
//! let DenoiserNetwork::Unet(unet) = &ckpt.network else { unreachable!("an image model") };
//! let d = ckpt.diffusion.respace_spec("ddim50")?;
//! let x = Tensor::<4>::random([4, unet.in_channels, unet.image_size, unet.image_size], Distribution::Normal(0.0, 1.0), &device);
//! let labels = Tensor::<1, burn::tensor::Int>::from_ints([0, 1, 2, 3], &device);
//! let net = ckpt.network.conditional(Some(labels))?;
//! let out = model_output(&d, &net, x.clone(), 49)?;
//! let noise = x.random_like(Distribution::Normal(0.0, 1.0));
//! let step = ancestral_step(&d, x, 49, out, Some(noise), &StepOptions::default())?;
//! # Ok::<(), diffusion_sample::SampleError>(())
//! ```

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor};
use diffusion_core::{GaussianDiffusion, ModelVariance, ProcessRecord, ProcessSpec};
use diffusion_models::checkpoint::{AnyModel, CheckpointHeader, load_checkpoint};
use diffusion_models::{EncoderUNet, Mlp, UNet};
use serde::Deserialize;

use crate::error::{Result, SampleError};
use crate::guidance::ClassifierGuidance;
use crate::step::Denoiser;

/// A denoising network as a checkpoint holds it.
#[derive(Debug)]
// One value per opened checkpoint: boxing the UNet would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum DenoiserNetwork {
    /// An image UNet (`[B, C, H, W]`).
    Unet(UNet),
    /// A 2-D (or n-D) point MLP (`[B, D]`).
    Mlp(Mlp),
}

impl DenoiserNetwork {
    /// Data channels (`C` of an image, `D` of a point).
    pub fn data_channels(&self) -> usize {
        match self {
            DenoiserNetwork::Unet(u) => u.in_channels,
            DenoiserNetwork::Mlp(m) => m.input.weight.dims()[0],
        }
    }

    /// Output channels.
    pub fn output_channels(&self) -> usize {
        match self {
            DenoiserNetwork::Unet(u) => u.out_channels,
            DenoiserNetwork::Mlp(m) => m.output.weight.dims()[1],
        }
    }

    /// Classes of a class-conditional UNet (0: unconditional).
    pub fn num_classes(&self) -> usize {
        match self {
            DenoiserNetwork::Unet(u) => u.num_classes,
            DenoiserNetwork::Mlp(_) => 0,
        }
    }

    /// The shape of one sample, `[1, C, H, W]` for a UNet.
    pub fn image_item(&self) -> Option<[usize; 4]> {
        match self {
            DenoiserNetwork::Unet(u) => Some([1, u.in_channels, u.image_size, u.image_size]),
            DenoiserNetwork::Mlp(_) => None,
        }
    }

    /// The UNet as a [`Denoiser`] conditioned on `labels` (one per sample; `None` for an
    /// unconditional model). An MLP is an error: it is a `Denoiser<2>` itself.
    pub fn conditional(&self, labels: Option<Tensor<1, Int>>) -> Result<ConditionalUnet<'_>> {
        match self {
            DenoiserNetwork::Unet(unet) => Ok(ConditionalUnet { unet, labels }),
            DenoiserNetwork::Mlp(_) => Err(SampleError::InvalidOption(
                "an MLP takes no class labels: use the Mlp itself as the Denoiser".into(),
            )),
        }
    }
}

impl Denoiser<4> for UNet {
    fn denoise(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward(x, t, None)
    }
}

impl Denoiser<2> for Mlp {
    fn denoise(&self, x: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        self.forward(x, t)
    }
}

/// A UNet with its class labels, as a [`Denoiser`].
#[derive(Debug, Clone)]
pub struct ConditionalUnet<'a> {
    /// The network.
    pub unet: &'a UNet,
    /// One label per sample, for a class-conditional network.
    pub labels: Option<Tensor<1, Int>>,
}

impl Denoiser<4> for ConditionalUnet<'_> {
    fn denoise(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.unet.forward(x, t, self.labels.clone())
    }
}

/// What the header says besides the network and the process.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMetadata {
    /// The file.
    pub path: PathBuf,
    /// The whole header (network configuration, the layers' extra fields, sections).
    pub header: CheckpointHeader,
    /// Whether the process used is the one the checkpoint records.
    pub process_recorded: bool,
    /// Optimiser steps of the training run that wrote it, if one did.
    pub step: Option<u64>,
}

/// A denoiser checkpoint, opened: the network, its process, and the metadata.
#[derive(Debug)]
pub struct DenoiserCheckpoint {
    /// The network (a run's checkpoint holds its first EMA copy here).
    pub network: DenoiserNetwork,
    /// The process the network was trained for (not respaced).
    pub diffusion: GaussianDiffusion,
    /// The same process as data.
    pub process: ProcessSpec,
    /// The rest of the header.
    pub metadata: CheckpointMetadata,
}

/// The training step of a run checkpoint (the trainer's typed state has more fields).
#[derive(Deserialize)]
struct TrainingStep {
    step: u64,
}

#[derive(Deserialize)]
struct RunStep {
    #[serde(default)]
    training: Option<TrainingStep>,
}

fn bad(path: &Path, reason: impl Into<String>) -> SampleError {
    SampleError::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

/// Checks that a network with `out` output channels for `data` data channels fits `variance`.
pub fn check_fits(path: &Path, variance: ModelVariance, data: usize, out: usize) -> Result<()> {
    let needed = if variance.is_learned() { 2 * data } else { data };
    if out != needed {
        return Err(bad(
            path,
            format!(
                "the network outputs {out} channels for {data} data channels, but the process's {variance:?} \
                 variance needs {needed}"
            ),
        ));
    }
    Ok(())
}

/// Opens a denoiser (UNet or MLP) checkpoint onto `device` with the process it records, or
/// `fallback` when it records none (an error names what to pass when there is neither).
pub fn open_denoiser(
    path: &Path,
    device: &Device,
    fallback: Option<&ProcessSpec>,
) -> Result<DenoiserCheckpoint> {
    open_denoiser_with(path, device, |recorded| match (recorded, fallback) {
        (Some(p), _) => Ok(p),
        (None, Some(f)) => Ok(f.clone()),
        (None, None) => Err(bad(
            path,
            "records no diffusion process (imported or hand-saved weights): give one (schedule, steps and \
             variance; on the command line --schedule, --steps and --variance)",
        )),
    })
}

/// Opens a denoiser checkpoint with `process` instead of the one it records (checked to fit the
/// network all the same).
pub fn open_denoiser_as(path: &Path, device: &Device, process: &ProcessSpec) -> Result<DenoiserCheckpoint> {
    open_denoiser_with(path, device, |_| Ok(process.clone()))
}

/// Opens a denoiser checkpoint with the process `choose` makes of the recorded one (`None` when
/// the checkpoint records none) — e.g. the recorded process with some fields replaced.
pub fn open_denoiser_with(
    path: &Path,
    device: &Device,
    choose: impl FnOnce(Option<ProcessSpec>) -> Result<ProcessSpec>,
) -> Result<DenoiserCheckpoint> {
    if path.is_dir() {
        return Err(bad(
            path,
            "is a directory: pass a checkpoint file (a run keeps them in checkpoints/step-N.ckpt)",
        ));
    }
    let (header, model) = load_checkpoint(path, device)?;
    let network = match model {
        AnyModel::Unet(u) => DenoiserNetwork::Unet(u),
        AnyModel::Mlp(m) => DenoiserNetwork::Mlp(m),
        AnyModel::Classifier(_) => {
            return Err(bad(
                path,
                "holds a classifier, not a denoiser (use it for guidance: open_classifier)",
            ));
        }
    };
    let record: ProcessRecord = header.extra_as(path)?;
    let recorded = record.diffusion.clone();
    let process = choose(record.diffusion)?;
    let process_recorded = recorded.as_ref() == Some(&process);
    check_fits(path, process.config.variance, network.data_channels(), network.output_channels())?;
    let diffusion = process.build()?;
    let step = header.extra_as::<RunStep>(path)?.training.map(|t| t.step);
    Ok(DenoiserCheckpoint {
        network,
        diffusion,
        process,
        metadata: CheckpointMetadata { path: path.to_path_buf(), header, process_recorded, step },
    })
}

/// Opens a noise-aware classifier checkpoint as classifier guidance with scale `scale`: the
/// classifier is loaded onto `device`'s autodiff twin, so its input gradient can be taken.
pub fn open_classifier(path: &Path, device: &Device, scale: f64) -> Result<ClassifierGuidance> {
    if path.is_dir() {
        return Err(bad(path, "is a directory: pass a classifier checkpoint file"));
    }
    let (_, model) = load_checkpoint(path, &device.clone().autodiff())?;
    let classifier: EncoderUNet = match model {
        AnyModel::Classifier(c) => c,
        _ => return Err(bad(path, "is not a classifier checkpoint")),
    };
    ClassifierGuidance::new(classifier, scale)
}

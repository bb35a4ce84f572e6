//! A training run as data: network, process, data, optimiser, EMA, checkpoints — written in full
//! to the run directory (`config.json`), read from JSON or TOML, with named presets.

use std::path::Path;

use diffusion_core::{BetaSchedule, DiffusionConfig, LossKind, ModelMean, ModelVariance, ProcessSpec};
use diffusion_models::checkpoint::ModelSpec;
use diffusion_models::{MlpConfig, UNetConfig};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// How training timesteps are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSamplerKind {
    /// Uniform over 0..T (weights 1).
    #[default]
    Uniform,
    /// p_t ∝ √E\[L_t²\] after every t has 10 losses, uniform before (Nichol & Dhariwal 2021, §3.3).
    LossSecondMoment,
}

/// AdamW and its schedule. Defaults are the reference's (lr 1e-4, ε 1e-8, β 0.9/0.999, no
/// weight decay, no warm-up, no anneal, no clipping).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Adam ε.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Adam β₁.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Adam β₂.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Linear warm-up from lr/warmup to lr over this many optimiser steps (0: none).
    #[serde(default)]
    pub warmup_steps: u64,
    /// Linear anneal lr·(1 − step/lr_anneal_steps), as improved-diffusion's `lr_anneal_steps`
    /// (0: none).
    #[serde(default)]
    pub lr_anneal_steps: u64,
    /// Clip the global gradient norm (over every parameter) to this value.
    #[serde(default)]
    pub grad_clip: Option<f64>,
}

fn default_lr() -> f64 {
    1e-4
}
fn default_eps() -> f64 {
    1e-8
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            weight_decay: 0.0,
            eps: default_eps(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            warmup_steps: 0,
            lr_anneal_steps: 0,
            grad_clip: None,
        }
    }
}

/// The sampler of the periodic grids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridSampler {
    /// Ancestral sampling on the respaced chain (robust early in training).
    #[default]
    Ddpm,
    /// Deterministic DDIM (η = 0).
    Ddim,
}

/// Periodic sample grids (drawn from the first EMA copy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Draw a grid every this many checkpoints (0: never).
    #[serde(default = "one")]
    pub every_checkpoints: u64,
    /// Number of samples in a grid.
    #[serde(default = "default_sample_num")]
    pub num: usize,
    /// Sampler.
    #[serde(default)]
    pub sampler: GridSampler,
    /// Steps of the respaced chain.
    #[serde(default = "default_sample_steps")]
    pub steps: usize,
}

fn one() -> u64 {
    1
}
fn default_sample_num() -> usize {
    16
}
fn default_sample_steps() -> usize {
    50
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            every_checkpoints: 1,
            num: default_sample_num(),
            sampler: GridSampler::Ddpm,
            steps: default_sample_steps(),
        }
    }
}

/// Everything that defines a training run. Two runs with equal configs compute the same weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The network (a UNet for images, an MLP for 2-D points).
    pub model: ModelSpec,
    /// The diffusion process and objective.
    pub process: ProcessSpec,
    /// The data spec (`shapes`, `swissroll`, `mnist:DIR`, …; see [`crate::data`]).
    pub data: String,
    /// Image side (images are resized/cropped or box-filtered to it).
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// Train a class-conditional model (the UNet must have `num_classes`).
    #[serde(default)]
    pub class_cond: bool,
    /// Classifier-free guidance: drop each example's class label with this probability,
    /// training the UNet's null class (`model.null_class`) alongside the classes (GLIDE and Ho &
    /// Salimans use 0.1–0.2; 0: off).
    #[serde(default)]
    pub label_dropout: f64,
    /// Random horizontal flips.
    #[serde(default)]
    pub random_flip: bool,
    /// Timestep sampling.
    #[serde(default)]
    pub timestep_sampler: TimestepSamplerKind,
    /// Optimiser steps.
    pub steps: u64,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Split each batch into microbatches of this size and accumulate gradients (the loss keeps
    /// the mean over the whole batch).
    #[serde(default)]
    pub microbatch: Option<usize>,
    /// AdamW settings.
    #[serde(default)]
    pub optim: OptimConfig,
    /// EMA rates; the first one's weights are the checkpoint's primary network.
    #[serde(default)]
    pub ema_rates: Vec<f64>,
    /// EMA warm-up (diffusers' `EMAModel(use_ema_warmup=True)`): each rate is reached gradually
    /// along 1 − (1 + k/inv_gamma)^−power; `None`: every rate from the first step.
    #[serde(default)]
    pub ema_warmup: Option<EmaWarmup>,
    /// Min-SNR-γ loss weighting (Hang et al. 2023): the MSE term of example t is weighted by
    /// min(SNR_t, γ)/SNR_t (ε), min(SNR_t, γ) (x_0) or min(SNR_t, γ)/(SNR_t + 1) (v), SNR_t =
    /// ᾱ_t/(1 − ᾱ_t); the paper uses γ = 5. `None`: unweighted.
    #[serde(default)]
    pub min_snr_gamma: Option<f64>,
    /// Offset noise (Guttenberg 2023): each example's noise gets `offset_noise` · δ_c added, one
    /// δ_c ~ 𝒩(0, 1) per channel (0.1 is usual; 0: off).
    #[serde(default)]
    pub offset_noise: f64,
    /// A checkpoint every this many optimiser steps.
    pub checkpoint_every: u64,
    /// Checkpoints kept (the newest ones).
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// Held-out examples for the validation loss.
    #[serde(default = "default_valid_size")]
    pub valid_size: usize,
    /// Sample grids.
    #[serde(default)]
    pub sample: SampleConfig,
    /// Seed of everything random (initial weights, data order, t, noise, dropout).
    #[serde(default)]
    pub seed: u64,
}

fn default_image_size() -> usize {
    32
}
fn default_keep_last() -> usize {
    3
}
fn default_valid_size() -> usize {
    64
}

/// The EMA warm-up schedule of diffusers' `EMAModel`: at optimiser step k (from 1), the decay is
/// 0 at k = 1 and otherwise min(rate, max(min_decay, 1 − (1 + (k − 1)/inv_gamma)^−power)).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaWarmup {
    /// γ⁻¹ (diffusers' default 1).
    #[serde(default = "default_inv_gamma")]
    pub inv_gamma: f64,
    /// The power (diffusers' default 2/3; 3/4 for short runs).
    #[serde(default = "default_power")]
    pub power: f64,
    /// The smallest decay after the first step (diffusers' default 0).
    #[serde(default)]
    pub min_decay: f64,
}

fn default_inv_gamma() -> f64 {
    1.0
}
fn default_power() -> f64 {
    2.0 / 3.0
}

impl Default for EmaWarmup {
    fn default() -> Self {
        Self { inv_gamma: 1.0, power: 2.0 / 3.0, min_decay: 0.0 }
    }
}

impl EmaWarmup {
    /// The decay at optimiser step `k` (1-based) for the target `rate`.
    pub fn decay(&self, rate: f64, k: u64) -> f64 {
        let step = k.saturating_sub(1);
        if step == 0 {
            return 0.0;
        }
        let d = 1.0 - (1.0 + step as f64 / self.inv_gamma).powf(-self.power);
        d.max(self.min_decay).min(rate)
    }
}

/// The preset names, in the order `--help` lists them.
pub const PRESETS: [&str; 7] =
    ["default", "swissroll", "mnist", "cifar10-hybrid", "cifar10-vlb", "tiny", "tiny-mlp"];

impl TrainConfig {
    /// The label dropout of the batches, when on.
    pub fn label_dropout(&self) -> Option<crate::loader::LabelDropout> {
        match &self.model {
            ModelSpec::Unet(u) if self.label_dropout > 0.0 => Some(crate::loader::LabelDropout {
                probability: self.label_dropout,
                null_label: u.num_classes.unwrap_or(0) as i64,
            }),
            _ => None,
        }
    }

    /// A named preset: `default` (class-conditional shapes at 16×16, minutes on a CPU),
    /// `swissroll` (2-D MLP), `mnist` (`mnist:data/mnist`), `cifar10-hybrid` (iDDPM's CIFAR-10
    /// L_hybrid recipe), `cifar10-vlb` (L_VLB with importance sampling), `tiny` and `tiny-mlp`
    /// (seconds; for tests).
    pub fn preset(name: &str) -> Result<Self, TrainError> {
        let process = |schedule, mean, variance, loss| {
            ProcessSpec::new(schedule, DiffusionConfig { mean, variance, loss, ..Default::default() })
        };
        let eps = ModelMean::Epsilon;
        let cfg = match name {
            "default" => Self {
                model: ModelSpec::Unet(
                    UNetConfig::new(16, 3, 32, 3, 1, vec![8], vec![1, 2])
                        .with_num_heads(2)
                        .with_use_scale_shift_norm(true)
                        .with_num_classes(Some(4)),
                ),
                process: process(
                    BetaSchedule::Cosine { num_timesteps: 1000 },
                    eps,
                    ModelVariance::FixedSmall,
                    LossKind::Mse,
                ),
                data: "shapes".into(),
                image_size: 16,
                class_cond: true,
                random_flip: true,
                label_dropout: 0.0,
                offset_noise: 0.0,
                timestep_sampler: TimestepSamplerKind::Uniform,
                steps: 1200,
                batch_size: 32,
                microbatch: None,
                optim: OptimConfig {
                    lr: 2e-3,
                    warmup_steps: 50,
                    lr_anneal_steps: 1200,
                    ..Default::default()
                },
                ema_rates: vec![0.995],
                ema_warmup: None,
                min_snr_gamma: None,
                checkpoint_every: 300,
                keep_last: 3,
                valid_size: 64,
                sample: SampleConfig { every_checkpoints: 1, num: 16, sampler: GridSampler::Ddpm, steps: 25 },
                seed: 0,
            },
            "swissroll" | "tiny-mlp" => {
                let tiny = name == "tiny-mlp";
                Self {
                    model: ModelSpec::Mlp(MlpConfig::new().with_hidden(if tiny { 32 } else { 256 })),
                    process: process(
                        BetaSchedule::Linear { num_timesteps: if tiny { 50 } else { 1000 } },
                        eps,
                        ModelVariance::FixedLarge,
                        LossKind::Mse,
                    ),
                    data: "swissroll".into(),
                    image_size: 32,
                    class_cond: false,
                    random_flip: false,
                    label_dropout: 0.0,
                    offset_noise: 0.0,
                    timestep_sampler: TimestepSamplerKind::Uniform,
                    steps: if tiny { 6 } else { 10_000 },
                    batch_size: if tiny { 16 } else { 256 },
                    microbatch: None,
                    optim: OptimConfig {
                        lr: 2e-3,
                        lr_anneal_steps: if tiny { 0 } else { 10_000 },
                        ..Default::default()
                    },
                    ema_rates: vec![if tiny { 0.9 } else { 0.995 }],
                    ema_warmup: None,
                    min_snr_gamma: None,
                    checkpoint_every: if tiny { 2 } else { 2500 },
                    keep_last: 3,
                    valid_size: if tiny { 16 } else { 512 },
                    sample: SampleConfig {
                        every_checkpoints: 1,
                        num: if tiny { 64 } else { 1000 },
                        sampler: GridSampler::Ddpm,
                        steps: 50,
                    },
                    seed: 0,
                }
            }
            "tiny" => Self {
                model: ModelSpec::Unet(
                    UNetConfig::new(8, 3, 8, 6, 1, vec![4], vec![1, 2])
                        .with_num_heads(2)
                        .with_norm_groups(4)
                        .with_use_scale_shift_norm(true)
                        .with_resblock_updown(true)
                        .with_num_classes(Some(4)),
                ),
                process: process(
                    BetaSchedule::Cosine { num_timesteps: 20 },
                    eps,
                    ModelVariance::LearnedRange,
                    LossKind::RescaledMse,
                ),
                data: "shapes".into(),
                image_size: 8,
                class_cond: true,
                random_flip: true,
                label_dropout: 0.0,
                offset_noise: 0.0,
                timestep_sampler: TimestepSamplerKind::LossSecondMoment,
                steps: 6,
                batch_size: 4,
                microbatch: None,
                optim: OptimConfig { lr: 1e-3, ..Default::default() },
                ema_rates: vec![0.9, 0.99],
                ema_warmup: None,
                min_snr_gamma: None,
                checkpoint_every: 2,
                keep_last: 2,
                valid_size: 4,
                sample: SampleConfig { every_checkpoints: 0, num: 4, sampler: GridSampler::Ddpm, steps: 4 },
                seed: 0,
            },
            "mnist" => Self {
                // The mnist UNet preset learns Σ (two output channels): L_hybrid.
                model: ModelSpec::Unet(UNetConfig::mnist()),
                process: process(
                    BetaSchedule::Linear { num_timesteps: 1000 },
                    eps,
                    ModelVariance::LearnedRange,
                    LossKind::RescaledMse,
                ),
                data: "mnist:data/mnist".into(),
                image_size: 28,
                class_cond: false,
                random_flip: false,
                label_dropout: 0.0,
                offset_noise: 0.0,
                timestep_sampler: TimestepSamplerKind::Uniform,
                steps: 50_000,
                batch_size: 128,
                microbatch: None,
                optim: OptimConfig { lr: 2e-4, warmup_steps: 500, ..Default::default() },
                ema_rates: vec![0.9999],
                ema_warmup: None,
                min_snr_gamma: None,
                checkpoint_every: 1000,
                keep_last: 3,
                valid_size: 256,
                sample: SampleConfig { every_checkpoints: 5, num: 64, sampler: GridSampler::Ddpm, steps: 50 },
                seed: 0,
            },
            "cifar10-hybrid" | "cifar10-vlb" => {
                let vlb = name == "cifar10-vlb";
                Self {
                    model: ModelSpec::Unet(UNetConfig::cifar10_iddpm()),
                    // iDDPM: cosine schedule, T = 4000, learned-range Σ; L_hybrid with uniform t,
                    // or L_VLB with the loss-second-moment sampler.
                    process: process(
                        BetaSchedule::Cosine { num_timesteps: 4000 },
                        eps,
                        ModelVariance::LearnedRange,
                        if vlb { LossKind::RescaledKl } else { LossKind::RescaledMse },
                    ),
                    data: "cifar10:data/cifar-10-batches-bin".into(),
                    image_size: 32,
                    class_cond: false,
                    random_flip: true,
                    label_dropout: 0.0,
                    offset_noise: 0.0,
                    timestep_sampler: if vlb {
                        TimestepSamplerKind::LossSecondMoment
                    } else {
                        TimestepSamplerKind::Uniform
                    },
                    steps: 500_000,
                    batch_size: 128,
                    microbatch: None,
                    optim: OptimConfig { lr: 1e-4, ..Default::default() },
                    ema_rates: vec![0.9999],
                    ema_warmup: None,
                    min_snr_gamma: None,
                    checkpoint_every: 10_000,
                    keep_last: 3,
                    valid_size: 256,
                    sample: SampleConfig {
                        every_checkpoints: 1,
                        num: 64,
                        sampler: GridSampler::Ddpm,
                        steps: 50,
                    },
                    seed: 0,
                }
            }
            other => {
                return Err(TrainError::Config(format!(
                    "unknown preset {other:?} (expected one of {})",
                    PRESETS.join(", ")
                )));
            }
        };
        Ok(cfg)
    }

    /// Reads a config from a `.json` or `.toml` file (unknown fields are errors).
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        let cfg: Self = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => {
                toml::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?
            }
            Some("json") => serde_json::from_str(&text)
                .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?,
            _ => {
                return Err(TrainError::Config(format!(
                    "{}: a config must be a .json or .toml file",
                    path.display()
                )));
            }
        };
        Ok(cfg)
    }

    /// The config as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("configs serialise")
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> Result<String, TrainError> {
        toml::to_string(self).map_err(|e| TrainError::Config(format!("cannot write TOML: {e}")))
    }

    /// Examples per microbatch.
    pub fn micro_size(&self) -> usize {
        self.microbatch.unwrap_or(self.batch_size)
    }

    /// Microbatches per optimiser step.
    pub fn micro_per_step(&self) -> usize {
        self.batch_size / self.micro_size().max(1)
    }

    /// Checks everything that does not need the data: sizes, rates, the network against the
    /// process (output channels) and the class conditioning.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if let Some(w) = &self.ema_warmup
            && !(w.inv_gamma > 0.0
                && w.inv_gamma.is_finite()
                && w.power > 0.0
                && w.power.is_finite()
                && (0.0..1.0).contains(&w.min_decay))
        {
            return bad(format!(
                "ema_warmup needs inv_gamma > 0, power > 0 and min_decay in [0, 1), got {w:?}"
            ));
        }
        if let Some(g) = self.min_snr_gamma {
            if !(g > 0.0 && g.is_finite()) {
                return bad(format!("min_snr_gamma must be a positive number, got {g}"));
            }
            if self.process.config.loss.is_vb() {
                return bad("min_snr_gamma weights the MSE term, and this loss (the VLB) has none".into());
            }
            if self.process.config.mean == diffusion_core::ModelMean::PreviousX {
                return bad("min_snr_gamma is defined for ε, x_0 and v predictions, not x_{t−1}".into());
            }
        }
        if let Err(e) = self.process.build() {
            return bad(format!("process: {e}"));
        }
        if !(0.0..=1.0).contains(&self.offset_noise) {
            return bad(format!("offset_noise must be in [0, 1], got {}", self.offset_noise));
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return bad(format!("label_dropout must be in [0, 1), got {}", self.label_dropout));
        }
        if self.label_dropout > 0.0 && !self.class_cond {
            return bad("label_dropout needs a class-conditional run (class_cond = true)".into());
        }
        if let Some(m) = self.microbatch
            && (m == 0 || !self.batch_size.is_multiple_of(m))
        {
            return bad(format!("microbatch {m} must divide batch_size {}", self.batch_size));
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every must be at least 1".into());
        }
        if self.keep_last == 0 {
            return bad("keep_last must be at least 1 (a run must be able to resume)".into());
        }
        for &r in &self.ema_rates {
            if !(0.0..1.0).contains(&r) {
                return bad(format!("EMA rate {r} must be in [0, 1)"));
            }
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad(format!("optim.lr {} must be positive", o.lr));
        }
        if o.eps.is_nan() || o.eps <= 0.0 || !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2)
        {
            return bad(format!(
                "optim: eps {} must be > 0 and betas ({}, {}) in [0, 1)",
                o.eps, o.beta1, o.beta2
            ));
        }
        if o.weight_decay.is_nan() || o.weight_decay < 0.0 {
            return bad(format!("optim.weight_decay {} must be >= 0", o.weight_decay));
        }
        if let Some(c) = o.grad_clip
            && (c.is_nan() || c <= 0.0)
        {
            return bad(format!("optim.grad_clip {c} must be positive"));
        }
        let diffusion = self.process.build().map_err(|e| TrainError::Config(format!("process: {e}")))?;
        match &self.model {
            ModelSpec::Unet(u) => {
                u.validate().map_err(|e| TrainError::Config(format!("model: {e}")))?;
                if u.image_size != self.image_size {
                    return bad(format!(
                        "model.image_size {} differs from image_size {}",
                        u.image_size, self.image_size
                    ));
                }
                let want = diffusion.model_output_channels(u.in_channels);
                if u.out_channels != want {
                    return bad(format!(
                        "model.out_channels is {} but the process needs {want} ({} data channels{})",
                        u.out_channels,
                        u.in_channels,
                        if self.process.config.variance.is_learned() {
                            ", doubled for a learned variance"
                        } else {
                            ""
                        }
                    ));
                }
                if self.class_cond != u.num_classes.is_some() {
                    return bad(format!(
                        "class_cond is {} but model.num_classes is {:?}",
                        self.class_cond, u.num_classes
                    ));
                }
                if self.label_dropout > 0.0 && !u.null_class {
                    return bad(format!(
                        "label_dropout {} needs a UNet with a null class (model.null_class = true)",
                        self.label_dropout
                    ));
                }
            }
            ModelSpec::Mlp(m) => {
                m.validate().map_err(|e| TrainError::Config(format!("model: {e}")))?;
                let want = diffusion.model_output_channels(m.data_dim);
                if m.out_dim != want {
                    return bad(format!("model.out_dim is {} but the process needs {want}", m.out_dim));
                }
                if self.class_cond {
                    return bad("class_cond needs a UNet with num_classes".into());
                }
            }
            ModelSpec::Classifier(_) => {
                return bad("a classifier is trained with `diffusion train-classifier`, not `train`".into());
            }
        }
        Ok(())
    }
}

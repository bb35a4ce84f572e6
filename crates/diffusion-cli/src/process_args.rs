//! Flags that describe a diffusion process, for checkpoints that record none (or to override the
//! one they record), and for `diffusion model --save`.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use diffusion_core::{BetaSchedule, DiffusionConfig, ModelMean, ModelVariance, ProcessSpec};
use diffusion_sample::checkpoint::{DenoiserCheckpoint, open_denoiser, open_denoiser_with};

/// `--variance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VarianceArg {
    /// Σ = β̃_t.
    FixedSmall,
    /// Σ = β_t.
    FixedLarge,
    /// log Σ from the network's extra channels.
    Learned,
    /// Σ interpolated between β̃_t and β_t by the network's extra channels.
    LearnedRange,
}

impl From<VarianceArg> for ModelVariance {
    fn from(v: VarianceArg) -> Self {
        match v {
            VarianceArg::FixedSmall => ModelVariance::FixedSmall,
            VarianceArg::FixedLarge => ModelVariance::FixedLarge,
            VarianceArg::Learned => ModelVariance::Learned,
            VarianceArg::LearnedRange => ModelVariance::LearnedRange,
        }
    }
}

/// `--mean`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MeanArg {
    /// ε.
    Epsilon,
    /// x_0.
    StartX,
    /// x_{t−1}.
    PreviousX,
    /// v.
    Velocity,
}

impl From<MeanArg> for ModelMean {
    fn from(m: MeanArg) -> Self {
        match m {
            MeanArg::Epsilon => ModelMean::Epsilon,
            MeanArg::StartX => ModelMean::StartX,
            MeanArg::PreviousX => ModelMean::PreviousX,
            MeanArg::Velocity => ModelMean::Velocity,
        }
    }
}

/// The process flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ProcessArgs {
    /// The process's β schedule (`linear` or `cosine`): for a checkpoint that records no process,
    /// or to use another than the one it records.
    #[arg(long)]
    pub schedule: Option<String>,
    /// The process's number of steps (with the flags above; default 1000).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The process's variance (default fixed-small; learned ones need 2C output channels).
    #[arg(long, value_enum)]
    pub variance: Option<VarianceArg>,
    /// What the network predicts (default epsilon).
    #[arg(long, value_enum)]
    pub mean: Option<MeanArg>,
    /// The process's β rescaled to zero terminal SNR (Lin et al. 2023; needs `--mean velocity`).
    #[arg(long)]
    pub zero_terminal_snr: bool,
}

impl ProcessArgs {
    /// Whether any process flag was given.
    pub fn given(&self) -> bool {
        self.schedule.is_some()
            || self.steps.is_some()
            || self.variance.is_some()
            || self.mean.is_some()
            || self.zero_terminal_snr
    }

    /// The process the flags describe, on top of `base` (defaults: linear, 1000 steps, ε, and
    /// `variance`).
    pub fn spec_over(&self, base: Option<&ProcessSpec>, variance: ModelVariance) -> Result<ProcessSpec> {
        let steps_of = |s: &BetaSchedule| match s {
            BetaSchedule::Linear { num_timesteps } | BetaSchedule::Cosine { num_timesteps } => {
                Some(*num_timesteps)
            }
            _ => None,
        };
        let schedule = match (&self.schedule, self.steps, base) {
            (None, None, Some(b)) => b.schedule.clone(),
            (name, steps, base) => {
                let base_name = base.and_then(|b| match b.schedule {
                    BetaSchedule::Linear { .. } => Some("linear"),
                    BetaSchedule::Cosine { .. } => Some("cosine"),
                    _ => None,
                });
                let name = name.as_deref().or(base_name).unwrap_or("linear");
                let steps = steps.or_else(|| base.and_then(|b| steps_of(&b.schedule))).unwrap_or(1000);
                BetaSchedule::named(name, steps)?
            }
        };
        let mut config = base.map(|b| b.config).unwrap_or(DiffusionConfig { variance, ..Default::default() });
        if let Some(v) = self.variance {
            config.variance = v.into();
        }
        if let Some(m) = self.mean {
            config.mean = m.into();
        }
        let zero_terminal_snr = self.zero_terminal_snr || base.is_some_and(|b| b.zero_terminal_snr);
        let spec = ProcessSpec { schedule, config, zero_terminal_snr };
        spec.build().context("the process (--schedule/--steps/--variance/--mean/--zero-terminal-snr)")?;
        Ok(spec)
    }

    /// The process the flags describe alone.
    pub fn spec(&self, variance: ModelVariance) -> Result<ProcessSpec> {
        self.spec_over(None, variance)
    }

    /// Opens a denoiser checkpoint with the process it records, the flags replacing the parts they
    /// name (the flags alone when it records none).
    pub fn open(&self, path: &Path, device: &Device) -> Result<DenoiserCheckpoint> {
        if !self.given() {
            return Ok(open_denoiser(path, device, None)?);
        }
        let ckpt = open_denoiser_with(path, device, |recorded| {
            self.spec_over(recorded.as_ref(), ModelVariance::FixedSmall)
                .map_err(|e| diffusion_sample::SampleError::InvalidOption(format!("{e:#}")))
        })?;
        if !ckpt.metadata.process_recorded
            && ckpt.metadata.header.extra_as::<diffusion_core::ProcessRecord>(path)?.diffusion.is_some()
        {
            eprintln!("note: using the process of the flags instead of the one {} records", path.display());
        }
        Ok(ckpt)
    }
}

/// `K/N` → the contiguous range of sample ids of shard K.
pub fn shard_range(num: usize, shard: Option<&str>) -> Result<std::ops::Range<u64>> {
    let Some(s) = shard else { return Ok(0..num as u64) };
    let (k, n) = s.split_once('/').with_context(|| format!("--shard {s:?}: expected K/N, e.g. 0/4"))?;
    let (k, n): (usize, usize) = (
        k.parse().with_context(|| format!("--shard {s:?}: K"))?,
        n.parse().with_context(|| format!("--shard {s:?}: N"))?,
    );
    if n == 0 || k >= n {
        anyhow::bail!("--shard {s:?}: need 0 <= K < N");
    }
    Ok((num * k / n) as u64..(num * (k + 1) / n) as u64)
}

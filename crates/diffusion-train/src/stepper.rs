//! Optimiser steps without the Learner's loop, for benchmarks and profiling: the same trainer
//! module, loss, gradient clipping, AdamW and EMA as a run, on a few pre-built batches.

use std::sync::{Arc, Mutex};

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use burn::train::{Interrupter, TrainStep};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::loader::{Batch, BatchPlan, TrainLoader};
use crate::trainer::{DiffusionTrainer, Net, SamplerState, Shared, StepRecord};

/// A trainer and its optimiser, stepped by hand.
pub struct Stepper {
    trainer: Option<DiffusionTrainer>,
    optim: ModuleOptimizer,
    lr: f64,
    batches: Vec<Batch>,
    next: usize,
}

impl Stepper {
    /// Builds the run's trainer on `device` and `num_batches` batches of its data.
    pub fn new(cfg: &TrainConfig, device: &Device, num_batches: usize) -> Result<Self> {
        cfg.validate()?;
        let (train_set, _) = crate::run::load_split(cfg)?;
        let diffusion = cfg.process.build().map_err(|e| TrainError::Config(format!("process: {e}")))?;
        let num_t = diffusion.num_timesteps();
        let plan = BatchPlan {
            steps: num_batches.max(1) as u64,
            steps_per_epoch: num_batches.max(1) as u64,
            batch_size: cfg.batch_size,
            micro_size: cfg.batch_size,
            seed: cfg.seed,
            random_flip: cfg.random_flip,
            class_cond: cfg.class_cond,
            label_dropout: cfg.label_dropout(),
            offset_noise: cfg.offset_noise,
        };
        let shared = Arc::new(Shared {
            diffusion,
            sampler: Mutex::new(SamplerState::new(cfg.timestep_sampler, num_t)?),
            snapshots: Mutex::new(Default::default()),
            checkpoint_steps: Box::new(|_| false),
            failure: Mutex::new(None),
            interrupter: Interrupter::new(),
            grad_norm_slot: Mutex::new(None),
            noise: diffusion_core::NoiseSource::new(cfg.seed),
            seed: cfg.seed,
            micro_per_step: 1,
            batch_size: cfg.batch_size,
            ema_rates: cfg.ema_rates.clone(),
            ema_warmup: cfg.ema_warmup,
            min_snr_gamma: cfg.min_snr_gamma,
            last_step: Mutex::new(0),
            grad_clip: cfg.optim.grad_clip,
            dropout: Net::has_dropout(&cfg.model),
            stop_after_steps: None,
            inject_nan_at_step: None,
        });
        let ad = if device.is_autodiff() { device.clone() } else { device.clone().autodiff() };
        let trainer = DiffusionTrainer::new(cfg, &ad, shared)?;
        let loader = TrainLoader::new(train_set, plan, ad, 1);
        let batches: Vec<Batch> = burn::data::dataloader::DataLoader::iter(&loader)
            .filter_map(|b| b.ok())
            .take(num_batches.max(1))
            .collect();
        let optim = crate::run::adamw(&cfg.optim);
        Ok(Self { trainer: Some(trainer), optim, lr: cfg.optim.lr, batches, next: 0 })
    }

    /// One optimiser step (forward, loss, backward, clipping, AdamW, EMA) on the next batch;
    /// returns the batch's mean loss. It reads the device back once (the per-example losses,
    /// which the host checks for non-finite values before the update), and not for the gradient
    /// norm, which stays on the device.
    pub fn step(&mut self) -> f32 {
        let record = self.advance();
        record.loss.iter().sum::<f32>() / record.loss.len().max(1) as f32
    }

    /// [`step`](Self::step), reporting the loss, the per-example losses and the gradient norm
    /// (one more read-back, for the norm).
    pub fn step_report(&mut self) -> StepReport {
        let record = self.advance();
        StepReport {
            loss: record.loss.iter().sum::<f32>() / record.loss.len().max(1) as f32,
            losses: record.loss.clone(),
            timesteps: record.timesteps.clone(),
            grad_norm: record.grad_norm.get().unwrap_or(f64::NAN),
        }
    }

    fn advance(&mut self) -> Arc<StepRecord> {
        let batch = self.batches[self.next % self.batches.len()].clone();
        self.next += 1;
        let trainer = self.trainer.take().expect("a trainer");
        let out = TrainStep::step(&trainer, batch);
        let record = out.item.record.clone();
        let trainer = TrainStep::optimize(trainer, &mut self.optim, self.lr.into(), out.grads);
        self.trainer = Some(trainer);
        record
    }

    /// The online network, as the last step left it.
    pub fn network(&self) -> &Net {
        &self.trainer.as_ref().expect("a trainer").net
    }

    /// The EMA copies (one per `ema_rates` entry).
    pub fn ema(&self) -> &[Net] {
        &self.trainer.as_ref().expect("a trainer").ema
    }
}

/// What one [`Stepper::step_report`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Mean loss of the batch (before importance weights).
    pub loss: f32,
    /// Per-example losses.
    pub losses: Vec<f32>,
    /// The timestep of each example.
    pub timesteps: Vec<usize>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

//! Noise-aware classifiers for classifier guidance (Dhariwal & Nichol 2021): the UNet's encoder
//! trained with cross-entropy on x_t ~ q(x_t∣x_0), t uniform over the process, so that
//! ∇ log p(y∣x_t) is meaningful at every noise level. Same Learner, loaders, checkpoints and
//! resume as [`crate::run::train`]; the held-out split reports top-1 accuracy (overall and per
//! quarter of the timesteps, in `metrics.csv`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::{InferenceStep, Interrupter, Learner, TrainOutput, TrainStep};
use diffusion_core::{ProcessRecord, ProcessSpec};
use diffusion_models::checkpoint::{ModelSpec, save_checkpoint_with_sections, write_atomic};
use diffusion_models::{EncoderUNet, EncoderUNetConfig, UNetConfig};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    CheckpointStore, RunExtra, WriteFn, ckpt_err, latest_valid, list_checkpoints, load_parts, training_extra,
};
use crate::config::OptimConfig;
use crate::data::{Data, DataSpec, load};
use crate::error::{Result, TrainError};
use crate::loader::{Batch, BatchPlan, Examples, TrainLoader, ValidLoader, tag};
use crate::log::RunLog;
use crate::lr::DiffusionLr;
use crate::run::{Launch, Resume, RunOptions, adamw, launch, outcome};
use crate::trainer::{SamplerState, Shared, StepOutput, StepRecord};

/// A classifier run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// The classifier (`unet.out_channels` = number of classes).
    pub model: EncoderUNetConfig,
    /// The diffusion process whose x_t it classifies (that of the model it will guide).
    pub process: ProcessSpec,
    /// Labelled image data.
    pub data: String,
    /// Image side.
    pub image_size: usize,
    /// Random horizontal flips.
    #[serde(default)]
    pub random_flip: bool,
    /// Classify noised x_t (true, for guidance) or clean x_0 at t = 0.
    #[serde(default = "yes")]
    pub noised: bool,
    /// Optimiser steps.
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Microbatch size.
    #[serde(default)]
    pub microbatch: Option<usize>,
    /// AdamW (guided-diffusion: lr 3e-4).
    #[serde(default)]
    pub optim: OptimConfig,
    /// A checkpoint every this many steps.
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    #[serde(default = "three")]
    pub keep_last: usize,
    /// Held-out examples (accuracy).
    #[serde(default = "valid_default")]
    pub valid_size: usize,
    /// Seed.
    #[serde(default)]
    pub seed: u64,
}

fn yes() -> bool {
    true
}
fn three() -> usize {
    3
}
fn valid_default() -> usize {
    256
}

/// The process a classifier's x_t come from. A classifier only noises (q(x_t∣x_0)): the
/// denoiser's parameterisation does not matter, so a zero-terminal-SNR process, which a denoiser
/// may only use with v-prediction, is built with that mean whatever the config says.
fn noising_process(spec: &ProcessSpec) -> Result<diffusion_core::GaussianDiffusion> {
    let mut spec = spec.clone();
    if spec.zero_terminal_snr {
        spec.config.mean = diffusion_core::ModelMean::Velocity;
    }
    spec.build().map_err(|e| TrainError::Config(format!("process: {e}")))
}

/// Classifier presets: `shapes` (guides the `default` diffusion preset: 16×16 shapes, cosine
/// T = 1000) and `tiny` (8×8, T = 20; tests).
pub const CLASSIFIER_PRESETS: [&str; 2] = ["shapes", "tiny"];

impl ClassifierConfig {
    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self> {
        let diffusion = crate::config::TrainConfig::preset(match name {
            "shapes" => "default",
            "tiny" => "tiny",
            other => {
                return Err(TrainError::Config(format!(
                    "unknown classifier preset {other:?} (expected {})",
                    CLASSIFIER_PRESETS.join(", ")
                )));
            }
        })?;
        let tiny = name == "tiny";
        let unet = if tiny {
            UNetConfig::new(8, 3, 8, 4, 1, vec![4], vec![1, 2]).with_num_heads(2).with_norm_groups(4)
        } else {
            UNetConfig::new(16, 3, 32, 4, 1, vec![8], vec![1, 2, 2])
                .with_num_heads(2)
                .with_resblock_updown(true)
        }
        .with_use_scale_shift_norm(true);
        Ok(Self {
            model: EncoderUNetConfig::new(unet),
            process: diffusion.process,
            data: "shapes".into(),
            image_size: diffusion.image_size,
            random_flip: true,
            noised: true,
            steps: if tiny { 4 } else { 600 },
            batch_size: if tiny { 4 } else { 64 },
            microbatch: None,
            optim: OptimConfig { lr: 1e-3, ..Default::default() },
            checkpoint_every: if tiny { 2 } else { 200 },
            keep_last: 2,
            valid_size: if tiny { 8 } else { 256 },
            seed: 0,
        })
    }

    /// Checks the config.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        self.model.validate().map_err(|e| TrainError::Config(format!("model: {e}")))?;
        noising_process(&self.process)?;
        if self.model.unet.image_size != self.image_size {
            return bad(format!(
                "model.unet.image_size {} differs from image_size {}",
                self.model.unet.image_size, self.image_size
            ));
        }
        if self.steps == 0 || self.batch_size == 0 || self.checkpoint_every == 0 || self.keep_last == 0 {
            return bad("steps, batch_size, checkpoint_every and keep_last must be at least 1".into());
        }
        if let Some(m) = self.microbatch
            && (m == 0 || !self.batch_size.is_multiple_of(m))
        {
            return bad(format!("microbatch {m} must divide batch_size {}", self.batch_size));
        }
        Ok(())
    }
}

/// The training state in a classifier checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierState {
    /// Completed steps.
    pub step: u64,
    /// Learner epoch.
    pub epoch: usize,
    /// The run's config.
    pub config: ClassifierConfig,
}

/// The classifier trainer module.
#[derive(Module, Debug)]
pub struct ClassifierTrainer {
    /// The classifier.
    pub net: EncoderUNet,
    #[module(skip)]
    shared: Arc<Shared>,
    #[module(skip)]
    noised: bool,
}

impl ClassifierTrainer {
    fn losses(&self, batch: Batch, train: bool) -> StepOutput {
        let shared = &self.shared;
        let device = batch.x0.device();
        let n = batch.x0.dims()[0];
        let num_t = shared.diffusion.num_timesteps();
        let timesteps: Vec<usize> = match (&batch.timesteps, self.noised) {
            (_, false) => vec![0; n],
            (Some(t), true) => t.clone(),
            (None, true) => batch
                .ids
                .iter()
                .map(|&g| shared.noise.rng(tag::TIMESTEPS, g).random_range(0..num_t))
                .collect(),
        };
        let t = Tensor::<1, Int>::from_data(
            TensorData::new(timesteps.iter().map(|&t| t as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        let x =
            if self.noised { shared.diffusion.q_sample(batch.x0, t.clone(), batch.noise) } else { batch.x0 };
        let logits = self.net.forward(x, shared.diffusion.model_timesteps(t));
        let y = batch.y.expect("classifier batches carry labels");
        let per_example = {
            // −log softmax(logits)[y], per example.
            let logp = burn::tensor::activation::log_softmax(logits.clone(), 1);
            logp.gather(1, y.clone().reshape([n, 1])).reshape([n]).neg()
        };
        let scale = if train { n as f64 / shared.batch_size as f64 } else { 1.0 };
        let loss =
            CrossEntropyLossConfig::new().init(&device).forward(logits.clone(), y.clone()).mul_scalar(scale);
        // One read-back: the per-example losses and whether each prediction was right.
        let pred = logits.detach().argmax(1).reshape([n]);
        let right = pred.equal(y).float();
        let host = diffusion_core::sync::read_f32(Tensor::cat(vec![per_example.detach(), right], 0));
        let (per_example, right) = host.split_at(n.min(host.len()));
        let correct: Vec<bool> = right.iter().map(|&c| c > 0.5).collect();
        let per_example = per_example.to_vec();
        StepOutput {
            loss: loss.reshape([1]),
            record: Arc::new(StepRecord {
                train,
                step: batch.step,
                micro: batch.micro,
                timesteps,
                loss: per_example,
                mse: None,
                vb: None,
                correct: Some(correct),
                num_timesteps: num_t,
                grad_norm: crate::trainer::GradNorm::default(),
                at: Instant::now(),
            }),
        }
    }
}

impl TrainStep for ClassifierTrainer {
    type Input = Batch;
    type Output = StepOutput;

    fn step(&self, batch: Batch) -> TrainOutput<StepOutput> {
        let out = self.losses(batch, true);
        let ok = self.shared.after_step(&out.record);
        *self.shared.grad_norm_slot.lock().expect("slot lock") = Some(out.record.grad_norm.clone());
        let grads =
            if ok { GradientsParams::from_grads(out.loss.backward(), self) } else { GradientsParams::new() };
        TrainOutput { grads, item: out }
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        mut grads: GradientsParams,
    ) -> Self {
        self.shared.clone().clip_and_record(&self.net, &mut grads);
        optim.step(lr, self, grads)
    }
}

impl InferenceStep for ClassifierTrainer {
    type Input = Batch;
    type Output = StepOutput;

    fn step(&self, batch: Batch) -> StepOutput {
        self.losses(batch, false)
    }
}

/// What a classifier run did.
#[derive(Debug, Clone)]
pub struct ClassifierSummary {
    /// Steps done.
    pub steps_done: u64,
    /// Step resumed from.
    pub resumed_from: Option<u64>,
    /// Newest checkpoint (a classifier checkpoint that `diffusion sample --classifier` reads).
    pub last_checkpoint: Option<std::path::PathBuf>,
    /// Held-out top-1 accuracy at the end (from the last validation).
    pub final_accuracy: Option<f64>,
    /// The trained classifier.
    pub net: EncoderUNet,
}

#[derive(Module, Debug)]
struct ClassifierNet {
    net: EncoderUNet,
}

fn writer(cfg: ClassifierConfig, device: burn::tensor::Device) -> WriteFn {
    Box::new(move |path, step, epoch, trainer, sections| {
        let net = ClassifierNet { net: cfg.model.try_init(&device.clone().inner())? };
        let record = ModuleRecord::from_bytes(trainer.clone()).map_err(|e| ckpt_err(path, e.to_string()))?;
        let net = net.load_record(record).net;
        let state = ClassifierState { step, epoch, config: cfg.clone() };
        let extra =
            RunExtra { process: ProcessRecord { diffusion: Some(cfg.process.clone()) }, training: state }
                .to_value(path)?;
        save_checkpoint_with_sections(path, &ModelSpec::Classifier(cfg.model.clone()), &net, extra, sections)
            .map_err(|e| ckpt_err(path, e.to_string()))
    })
}

/// Trains a noise-aware classifier.
pub fn train_classifier(cfg: ClassifierConfig, opts: RunOptions) -> Result<ClassifierSummary> {
    cfg.validate()?;
    let device = opts.devices.first().cloned().ok_or_else(|| TrainError::Config("no device given".into()))?;
    let run_dir = opts.run_dir.clone();
    let ckpt_dir = run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(|source| TrainError::Io { path: ckpt_dir.clone(), source })?;
    let resume: Option<(u64, usize, [Vec<u8>; 3])> = match &opts.resume {
        Resume::No => {
            crate::run::refuse_existing(&run_dir, &ckpt_dir)?;
            None
        }
        Resume::Auto | Resume::Path(_) => {
            let path = match &opts.resume {
                Resume::Path(p) => Some(p.clone()),
                _ => latest_valid(&ckpt_dir, |p| load_parts(p).map(|_| ())),
            };
            match path {
                None => None,
                Some(p) => {
                    let (header, parts) = load_parts(&p)?;
                    let state: ClassifierState = training_extra(&p, &header)?;
                    let mut saved = state.config.clone();
                    saved.steps = cfg.steps;
                    if saved != cfg {
                        return Err(TrainError::Resume(format!(
                            "the config differs from the one in {} (only `steps` may change on resume)",
                            p.display()
                        )));
                    }
                    Some((state.step, state.epoch, parts))
                }
            }
        }
    };
    write_atomic(
        &run_dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).expect("serialises").as_bytes(),
    )?;

    let spec: DataSpec = cfg.data.parse()?;
    let data = load(&spec, cfg.image_size, cfg.seed)?;
    let Data::Images(set) = &data else {
        return Err(TrainError::Config(format!(
            "data {:?} has no labels: a classifier needs labelled images",
            cfg.data
        )));
    };
    let classes = cfg.model.unet.out_channels;
    if set.num_classes > classes || set.channels != cfg.model.unet.in_channels || set.size != cfg.image_size {
        return Err(TrainError::Config(format!(
            "the data ({} classes, {} channels, {}×{}) does not fit the classifier ({classes} classes, {} channels, {}×{})",
            set.num_classes,
            set.channels,
            set.size,
            set.size,
            cfg.model.unet.in_channels,
            cfg.image_size,
            cfg.image_size
        )));
    }
    let n = set.len();
    let valid = cfg.valid_size.min(n / 2);
    let data = Arc::new(data);
    let train_set = Examples::new(data.clone(), (0..n - valid).collect());
    let valid_set = Examples::new(data, (n - valid..n).collect());

    let micro = cfg.microbatch.unwrap_or(cfg.batch_size);
    let plan = BatchPlan {
        steps: cfg.steps,
        steps_per_epoch: cfg.checkpoint_every,
        batch_size: cfg.batch_size,
        micro_size: micro,
        seed: cfg.seed,
        random_flip: cfg.random_flip,
        class_cond: true,
        label_dropout: None,
        offset_noise: 0.0,
    };
    let diffusion = noising_process(&cfg.process)?;
    let num_t = diffusion.num_timesteps();
    let (start_step, start_epoch) = resume.as_ref().map(|r| (r.0, r.1)).unwrap_or((0, 0));
    let interrupter = Interrupter::new();
    let shared = Arc::new(Shared {
        diffusion,
        sampler: Mutex::new(SamplerState::new(crate::config::TimestepSamplerKind::Uniform, num_t)?),
        snapshots: Mutex::new(Default::default()),
        checkpoint_steps: Box::new(|_| false),
        failure: Mutex::new(None),
        interrupter: interrupter.clone(),
        grad_norm_slot: Mutex::new(None),
        noise: diffusion_core::NoiseSource::new(cfg.seed),
        seed: cfg.seed,
        micro_per_step: cfg.batch_size / micro,
        batch_size: cfg.batch_size,
        ema_rates: vec![],
        ema_warmup: None,
        min_snr_gamma: None,
        last_step: Mutex::new(0),
        grad_clip: cfg.optim.grad_clip,
        dropout: cfg.model.unet.dropout > 0.0,
        stop_after_steps: opts.stop_after_steps,
        inject_nan_at_step: opts.inject_nan_at_step,
    });
    let ad = if device.is_autodiff() { device.clone() } else { device.clone().autodiff() };
    ad.seed(cfg.seed);
    let net = crate::trainer::init_seeded(cfg.seed, &ad, |host| Ok(cfg.model.try_init(host)?))?;
    let trainer = ClassifierTrainer { net, shared: shared.clone(), noised: cfg.noised };
    let learner = Learner::new(trainer, adamw(&cfg.optim), DiffusionLr::new(&cfg.optim));
    let plain = opts.progress.plain();
    let log = Arc::new(RunLog::open(&run_dir, resume.as_ref().map(|r| r.0), cfg.steps, plain)?);
    let store = Arc::new(CheckpointStore::new(
        ckpt_dir.clone(),
        cfg.keep_last,
        Box::new(move |e| plan.epoch_end(e)),
        writer(cfg.clone(), device.clone()),
        resume.map(|(step, epoch, parts)| (epoch, step, parts)),
        opts.on_checkpoint.clone(),
    ));
    let result = launch(
        &opts,
        Launch {
            plan,
            start_epoch,
            micro_per_step: cfg.batch_size / micro,
            plain,
            log,
            store: store.clone(),
            interrupter,
        },
        learner,
        TrainLoader::new(train_set, plan, ad.clone(), start_epoch + 1),
        ValidLoader::new(&valid_set, num_t, valid.max(1), plan, device.clone(), start_epoch + 1),
    );
    let last_step = *store.last_step.lock().expect("last step");
    outcome(&shared, last_step, result.error)?;
    let rows = crate::log::read_metrics(&run_dir.join("metrics.csv")).unwrap_or_default();
    let final_accuracy =
        rows.iter().rev().find(|r| r.split == "valid").map(|r| r.accuracy).filter(|a| a.is_finite());
    Ok(ClassifierSummary {
        steps_done: last_step.max(start_step),
        resumed_from: (start_epoch > 0).then_some(start_step),
        last_checkpoint: list_checkpoints(&ckpt_dir).pop().map(|(_, p)| p),
        final_accuracy,
        net: result.model.net,
    })
}

//! A training run, end to end: data, trainer, burn's `SupervisedTraining` + `Learner`,
//! checkpoints, resume.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Device;
use burn::train::metric::LossMetric;
use burn::train::{
    ExecutionStrategy, InferenceStep, Interrupter, Learner, LearnerModel, LearningResult, MultiDeviceOptim,
    SupervisedTraining, TrainStep,
};
use diffusion_models::checkpoint::ModelSpec;
use diffusion_models::checkpoint::write_atomic;

use crate::checkpoint::{
    CheckpointHook, CheckpointStore, EveryEpoch, LoadedCheckpoint, Part, diffusion_writer,
    latest_valid_checkpoint, load_training_checkpoint,
};
use crate::config::{OptimConfig, TrainConfig};
use crate::data::{Data, DataSpec, load};
use crate::error::{Result, TrainError};
use crate::loader::{Batch, BatchPlan, Examples, TrainLoader, ValidLoader};
use crate::log::{QuietRenderer, RunLog, RunLogMetric};
use crate::lr::DiffusionLr;
use crate::trainer::{DiffusionTrainer, Net, SamplerState, Shared, StepOutput};

/// Where a run starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resume {
    /// A fresh run; refuses a run directory that already has checkpoints.
    #[default]
    No,
    /// The newest checkpoint of the run directory that verifies, or a fresh start if none.
    Auto,
    /// This checkpoint file.
    Path(PathBuf),
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressStyle {
    /// burn's TUI when stdout is a terminal (and the binary enables it), plain lines otherwise.
    #[default]
    Auto,
    /// A plain progress line on stderr every few seconds.
    Plain,
    /// Nothing (tests).
    Quiet,
}

impl ProgressStyle {
    /// Whether progress goes out as plain lines (no terminal for burn's TUI, or asked for).
    pub fn plain(self) -> bool {
        match self {
            Self::Auto => !std::io::stdout().is_terminal(),
            Self::Plain => true,
            Self::Quiet => false,
        }
    }
}

/// How to run (as opposed to what to train, which is the [`TrainConfig`]).
#[derive(Clone, Default)]
pub struct RunOptions {
    /// The run directory (config, metrics, checkpoints, images).
    pub run_dir: PathBuf,
    /// Where to start.
    pub resume: Resume,
    /// Devices (one: single device; several: data parallel). Empty is an error.
    pub devices: Vec<Device>,
    /// Progress display.
    pub progress: ProgressStyle,
    /// Called after every checkpoint (sample grids, plots).
    pub on_checkpoint: Option<CheckpointHook>,
    /// A dataset built in code (your own points or images) instead of the one `config.data`
    /// names; `config.data` then only labels it in logs and checkpoints. The run is a function
    /// of this data and the seed like any other (resume needs the same data again).
    pub data: Option<Arc<Data>>,
    /// Stop (as if killed, without a checkpoint) once this many steps are done. For tests of
    /// resume.
    pub stop_after_steps: Option<u64>,
    /// Pretend the loss is NaN at this step. For tests of the non-finite guard.
    pub inject_nan_at_step: Option<u64>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Steps completed, in total (including those before a resume).
    pub steps_done: u64,
    /// The step the run resumed from, if it did.
    pub resumed_from: Option<u64>,
    /// The newest checkpoint on disk.
    pub last_checkpoint: Option<PathBuf>,
    /// Whether the run stopped before `config.steps` (a stop request).
    pub interrupted: bool,
    /// The trained networks (online and EMA copies), on the first device.
    pub trainer: TrainedNets,
}

/// The networks of a finished run.
#[derive(Debug, Clone)]
pub struct TrainedNets {
    /// The online network.
    pub net: Net,
    /// EMA copies by rate.
    pub ema: Vec<Net>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// Checks that the data fits the network and the conditioning.
fn check_data(cfg: &TrainConfig, data: &Data) -> Result<()> {
    let bad = |m: String| Err(TrainError::Config(m));
    match (&cfg.model, data) {
        (ModelSpec::Unet(u), Data::Images(s)) => {
            if s.channels != u.in_channels {
                return bad(format!(
                    "the data has {} channels but model.in_channels is {}",
                    s.channels, u.in_channels
                ));
            }
            if s.size != u.image_size {
                return bad(format!(
                    "the data's images are {0}×{0} but model.image_size is {1}",
                    s.size, u.image_size
                ));
            }
            if let Some(k) = u.num_classes
                && s.num_classes > k
            {
                return bad(format!("the data has {} classes but model.num_classes is {k}", s.num_classes));
            }
            Ok(())
        }
        (ModelSpec::Mlp(m), Data::Points(_)) => {
            if m.data_dim != 2 {
                return bad(format!("2-D points need model.data_dim = 2 (got {})", m.data_dim));
            }
            Ok(())
        }
        (ModelSpec::Mlp(_), Data::Images(_)) => {
            bad(format!("data {:?} is images but the model is an MLP (for 2-D points)", cfg.data))
        }
        (_, Data::Points(_)) => bad(format!("data {:?} is 2-D points but the model is not an MLP", cfg.data)),
        (ModelSpec::Classifier(_), _) => bad("a classifier is trained with train-classifier".into()),
    }
}

/// Loads the run's data and splits off the held-out examples (the last `valid_size`).
pub fn load_split(cfg: &TrainConfig) -> Result<(Examples, Examples)> {
    let spec: DataSpec = cfg.data.parse()?;
    split(cfg, Arc::new(load(&spec, cfg.image_size, cfg.seed)?))
}

/// Checks `data` against the config and splits off the held-out examples (the last
/// `valid_size`).
pub fn split(cfg: &TrainConfig, data: Arc<Data>) -> Result<(Examples, Examples)> {
    check_data(cfg, &data)?;
    let n = match data.as_ref() {
        Data::Points(p) => p.len(),
        Data::Images(s) => s.len(),
    };
    let valid = cfg.valid_size.min(n / 2);
    if n - valid == 0 {
        return Err(TrainError::Config(format!("data {:?} has no examples to train on", cfg.data)));
    }
    Ok((Examples::new(data.clone(), (0..n - valid).collect()), Examples::new(data, (n - valid..n).collect())))
}

/// Trains `cfg` as `opts` says. Returns when the run finishes, is stopped, or fails; a failure
/// (bad data, non-finite loss, unwritable checkpoint) leaves every checkpoint already written
/// intact.
pub fn train(cfg: TrainConfig, opts: RunOptions) -> Result<RunSummary> {
    cfg.validate()?;
    let device = opts.devices.first().cloned().ok_or_else(|| TrainError::Config("no device given".into()))?;
    let run_dir = opts.run_dir.clone();
    let ckpt_dir = run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(io(&ckpt_dir))?;

    // Where to start.
    let resume: Option<LoadedCheckpoint> = match &opts.resume {
        Resume::No => {
            refuse_existing(&run_dir, &ckpt_dir)?;
            None
        }
        Resume::Auto => {
            let (found, skipped) = latest_valid_checkpoint(&ckpt_dir);
            for e in skipped {
                eprintln!("warning: skipping a checkpoint that does not verify: {e}");
            }
            found
        }
        Resume::Path(p) => Some(load_training_checkpoint(p)?),
    };
    if let Some(r) = &resume {
        let mut saved = r.state.config.clone();
        saved.steps = cfg.steps;
        saved.sample = cfg.sample.clone();
        if saved != cfg {
            return Err(TrainError::Resume(format!(
                "the config differs from the one in {} (only `steps` and `sample` may change on resume)",
                r.path.display()
            )));
        }
        if r.state.step > cfg.steps {
            return Err(TrainError::Resume(format!(
                "{} is at step {} beyond steps = {}",
                r.path.display(),
                r.state.step,
                cfg.steps
            )));
        }
    }
    let config_path = run_dir.join("config.json");
    write_atomic(&config_path, cfg.to_json().as_bytes())
        .map_err(|e| TrainError::Checkpoint { path: config_path.clone(), reason: e.to_string() })?;

    let plan = BatchPlan {
        steps: cfg.steps,
        steps_per_epoch: cfg.checkpoint_every,
        batch_size: cfg.batch_size,
        micro_size: cfg.micro_size(),
        seed: cfg.seed,
        random_flip: cfg.random_flip,
        class_cond: cfg.class_cond,
        label_dropout: cfg.label_dropout(),
        offset_noise: cfg.offset_noise,
    };
    // Epochs are renumbered so that a resumed run's epochs continue the original's (a later
    // `steps` keeps the epoch of every step).
    let start_epoch = resume.as_ref().map(|r| r.state.epoch).unwrap_or(0);
    let start_step = resume.as_ref().map(|r| r.state.step).unwrap_or(0);
    if let Some(done) = resume.as_ref().filter(|_| start_step >= cfg.steps) {
        let trainer = rebuild(&cfg, done, &device)?;
        return Ok(RunSummary {
            steps_done: start_step,
            resumed_from: Some(start_step),
            last_checkpoint: resume.map(|r| r.path),
            interrupted: false,
            trainer,
        });
    }

    let (train_set, valid_set) = match &opts.data {
        Some(data) => split(&cfg, data.clone())?,
        None => load_split(&cfg)?,
    };
    let diffusion = cfg.process.build().map_err(|e| TrainError::Config(format!("process: {e}")))?;
    let num_timesteps = diffusion.num_timesteps();
    let sampler = match &resume {
        Some(r) => r.state.timestep_sampler.clone(),
        None => SamplerState::new(cfg.timestep_sampler, num_timesteps)?,
    };
    let interrupter = Interrupter::new();
    let shared = Arc::new(Shared {
        diffusion,
        sampler: Mutex::new(sampler),
        snapshots: Mutex::new(Default::default()),
        checkpoint_steps: Box::new(move |s| s % plan.steps_per_epoch == 0 || s == plan.steps),
        failure: Mutex::new(None),
        interrupter: interrupter.clone(),
        grad_norm_slot: Mutex::new(None),
        noise: diffusion_core::NoiseSource::new(cfg.seed),
        seed: cfg.seed,
        micro_per_step: cfg.micro_per_step(),
        batch_size: cfg.batch_size,
        ema_rates: cfg.ema_rates.clone(),
        ema_warmup: cfg.ema_warmup,
        min_snr_gamma: cfg.min_snr_gamma,
        last_step: Mutex::new(0),
        grad_clip: cfg.optim.grad_clip,
        dropout: Net::has_dropout(&cfg.model),
        stop_after_steps: opts.stop_after_steps,
        inject_nan_at_step: opts.inject_nan_at_step,
    });

    let ad = if device.is_autodiff() { device.clone() } else { device.clone().autodiff() };
    let trainer = DiffusionTrainer::new(&cfg, &ad, shared.clone())?;
    let learner = Learner::new(trainer, adamw(&cfg.optim), DiffusionLr::new(&cfg.optim));

    let plain = opts.progress.plain();
    let log = Arc::new(RunLog::open(&run_dir, resume.as_ref().map(|r| r.state.step), cfg.steps, plain)?);
    let train_loader = TrainLoader::new(train_set, plan, ad.clone(), start_epoch + 1);
    let valid_loader = ValidLoader::new(
        &valid_set,
        num_timesteps,
        cfg.valid_size.max(1),
        plan,
        device.clone(),
        start_epoch + 1,
    );

    let resume_parts = resume.map(|r| (r.state.epoch, r.state.step, r.into_parts()));
    let store = Arc::new(CheckpointStore::new(
        ckpt_dir.clone(),
        cfg.keep_last,
        Box::new(move |e| plan.epoch_end(e)),
        diffusion_writer(cfg.clone(), device.clone(), shared.clone()),
        resume_parts,
        opts.on_checkpoint.clone(),
    ));
    let result = launch(
        &opts,
        Launch {
            plan,
            start_epoch,
            micro_per_step: cfg.micro_per_step(),
            plain,
            log,
            store: store.clone(),
            interrupter,
        },
        learner,
        train_loader,
        valid_loader,
    );
    let last_step = *store.last_step.lock().expect("last step");
    let last_checkpoint = crate::checkpoint::list_checkpoints(&ckpt_dir).pop().map(|(_, p)| p);
    outcome(&shared, last_step, result.error)?;
    let model = result.model;
    Ok(RunSummary {
        steps_done: last_step.max(start_step),
        resumed_from: (start_epoch > 0).then_some(start_step),
        last_checkpoint,
        interrupted: result.interrupted.is_some(),
        trainer: TrainedNets { net: model.net.clone(), ema: model.ema.clone() },
    })
}

/// The networks stored in a checkpoint, on `device`.
fn rebuild(cfg: &TrainConfig, ckpt: &LoadedCheckpoint, device: &Device) -> Result<TrainedNets> {
    let nets = crate::checkpoint::TrainerNets::new(cfg, device)?;
    let nets = nets.load_from_checkpoint(ckpt)?;
    Ok(nets)
}

/// Refuses a fresh run in a directory that already holds checkpoints (it would lose them).
pub(crate) fn refuse_existing(run_dir: &Path, ckpt_dir: &Path) -> Result<()> {
    match crate::checkpoint::list_checkpoints(ckpt_dir).last() {
        Some((_, p)) => Err(TrainError::Resume(format!(
            "{} already holds checkpoints (newest {}); pass --resume auto to continue it, or choose another --out",
            run_dir.display(),
            p.display()
        ))),
        None => Ok(()),
    }
}

/// AdamW with the run's settings.
pub(crate) fn adamw(o: &OptimConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_1(o.beta1 as f32)
        .with_beta_2(o.beta2 as f32)
        .with_epsilon(o.eps as f32)
        .with_weight_decay(o.weight_decay as f32)
        .init()
}

/// What both trainers (diffusion, classifier) hand to burn's `SupervisedTraining`.
pub(crate) struct Launch {
    pub plan: BatchPlan,
    /// The Learner epoch the run resumes after (0: fresh).
    pub start_epoch: usize,
    pub micro_per_step: usize,
    pub plain: bool,
    pub log: Arc<RunLog>,
    pub store: Arc<CheckpointStore>,
    pub interrupter: Interrupter,
}

/// Runs the Learner: our metrics, the joined checkpointers, resume, gradient accumulation, the
/// renderer, and burn's multi-device strategy for several devices.
pub(crate) fn launch<M>(
    opts: &RunOptions,
    l: Launch,
    learner: Learner<M>,
    train: TrainLoader,
    valid: ValidLoader,
) -> LearningResult<M>
where
    M: LearnerModel
        + TrainStep<Input = Batch, Output = StepOutput>
        + InferenceStep<Input = Batch, Output = StepOutput>,
{
    let mut training = SupervisedTraining::new(opts.run_dir.join("burn"), Arc::new(train), Arc::new(valid))
        .metrics((LossMetric::new(),))
        .metric_train(RunLogMetric::new(l.log.clone()))
        .metric_valid(RunLogMetric::new(l.log.clone()))
        .with_custom_checkpointers(
            Part::trainer(l.store.clone()),
            Part::optimizer(l.store.clone()),
            Part::scheduler(l.store.clone()),
        )
        .with_checkpointing_strategy(EveryEpoch)
        .with_application_logger(None)
        .with_interrupter(l.interrupter)
        .num_epochs(l.plan.epochs());
    if l.start_epoch > 0 {
        training = training.checkpoint(l.start_epoch);
    }
    if l.micro_per_step > 1 {
        training = training.grads_accumulation(l.micro_per_step);
    }
    if opts.progress != ProgressStyle::Auto || l.plain {
        training = training.renderer(Box::new(QuietRenderer));
    }
    if opts.devices.len() > 1 {
        training = training.with_training_strategy(
            ExecutionStrategy::MultiDevice(opts.devices.clone(), MultiDeviceOptim::OptimMainDevice).into(),
        );
    }
    let result = training.launch(learner);
    l.log.flush();
    result
}

/// The run's error, if it failed: a non-finite loss (with the newest checkpoint on disk) or an
/// error of the Learner.
pub(crate) fn outcome(
    shared: &Shared,
    last_step: u64,
    error: Option<Arc<burn::train::TrainingError>>,
) -> Result<()> {
    if let Some(f) = shared.failure.lock().expect("failure lock").take() {
        return Err(TrainError::NonFinite {
            step: f.step,
            micro: f.micro,
            detail: f.detail,
            last_checkpoint: last_step,
        });
    }
    match error {
        Some(e) => Err(TrainError::Learner(e.to_string())),
        None => Ok(()),
    }
}

//! Training checkpoints: one self-describing file per checkpoint, `checkpoints/step-NNNNNNNN.ckpt`.
//!
//! The file is a diffusion-models checkpoint (so `diffusion sample` reads it directly: its
//! primary network is the first EMA copy) whose header also carries the run config, the step,
//! the timestep-sampler state and the process, and whose sections carry the Learner's three
//! records: the trainer module (online network + every EMA copy), the optimiser and the LR
//! scheduler. burn's Learner hands those records to three checkpointers, each on its own thread;
//! here they meet in `CheckpointStore`, which writes the file atomically (temporary file, fsync,
//! rename) once all three have arrived, then deletes checkpoints beyond `keep_last` — never
//! before the new one is on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::lr_scheduler::LrSchedulerRecord;
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use burn::train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn::train::metric::store::EventStoreClient;
use diffusion_models::checkpoint::{
    CheckpointHeader, read_checkpoint_sections, save_checkpoint_with_sections,
};
use serde::{Deserialize, Serialize};

use diffusion_core::ProcessRecord;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::trainer::{Net, SamplerState, Shared};

/// Section names.
const TRAINER: &str = "trainer";
const OPTIMIZER: &str = "optimizer";
const SCHEDULER: &str = "scheduler";

/// The training state in a checkpoint header (`extra.training`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingState {
    /// Completed optimiser steps.
    pub step: u64,
    /// The Learner epoch that ended here.
    pub epoch: usize,
    /// The run's config.
    pub config: TrainConfig,
    /// The timestep sampler after `step` steps.
    pub timestep_sampler: SamplerState,
    /// Which weights are the primary network (`ema_<rate>` or `online`).
    pub weights: String,
}

/// The `extra` fields a training run writes into its checkpoints' headers: diffusion-core's
/// [`ProcessRecord`] (the process, which samplers read) and the training state `T` beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunExtra<T> {
    /// The process the network is trained for.
    #[serde(flatten)]
    pub process: ProcessRecord,
    /// The run's state.
    pub training: T,
}

impl<T: Serialize> RunExtra<T> {
    /// The header value.
    pub(crate) fn to_value(&self, path: &Path) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| ckpt_err(path, format!("cannot encode the header: {e}")))
    }
}

/// A checkpoint read back for resuming.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The file.
    pub path: PathBuf,
    /// Header.
    pub header: CheckpointHeader,
    /// Training state.
    pub state: TrainingState,
    trainer: Vec<u8>,
    optimizer: Vec<u8>,
    scheduler: Vec<u8>,
}

pub(crate) fn ckpt_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

/// File name of the checkpoint after `step` steps.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}.ckpt")
}

/// Checkpoints in `dir`, oldest first, by step.
pub fn list_checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.strip_suffix(".ckpt")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Reads and verifies a run checkpoint's header and the Learner's three records (checksum,
/// presence, each record decodes).
pub(crate) fn load_parts(path: &Path) -> Result<(CheckpointHeader, [Vec<u8>; 3])> {
    let (header, _weights, sections) =
        read_checkpoint_sections(path).map_err(|e| ckpt_err(path, e.to_string()))?;
    let mut sections: BTreeMap<String, Vec<u8>> = sections.into_iter().collect();
    let mut take = |name: &str| {
        sections.remove(name).ok_or_else(|| ckpt_err(path, format!("section `{name}` is missing")))
    };
    let parts = [take(TRAINER)?, take(OPTIMIZER)?, take(SCHEDULER)?];
    ModuleRecord::from_bytes(Bytes::from_bytes_vec(parts[0].clone()))
        .map_err(|e| ckpt_err(path, format!("trainer record: {e}")))?;
    OptimizerRecord::from_bytes(Bytes::from_bytes_vec(parts[1].clone()))
        .map_err(|e| ckpt_err(path, format!("optimizer record: {e}")))?;
    LrSchedulerRecord::from_bytes(Bytes::from_bytes_vec(parts[2].clone()))
        .map_err(|e| ckpt_err(path, format!("scheduler record: {e}")))?;
    Ok((header, parts))
}

/// The training state of a checkpoint header, parsed.
pub(crate) fn training_extra<T: serde::de::DeserializeOwned>(
    path: &Path,
    header: &CheckpointHeader,
) -> Result<T> {
    #[derive(Deserialize)]
    struct Training<T> {
        training: Option<T>,
    }
    let view: Training<T> =
        header.extra_as(path).map_err(|e| ckpt_err(path, format!("unreadable training state: {e}")))?;
    view.training.ok_or_else(|| {
        ckpt_err(path, "holds a network but no training state (not written by a training run)")
    })
}

/// Reads and fully verifies a training checkpoint (checksum, header, the three records).
pub fn load_training_checkpoint(path: &Path) -> Result<LoadedCheckpoint> {
    let (header, [trainer, optimizer, scheduler]) = load_parts(path)?;
    let state: TrainingState = training_extra(path, &header)?;
    Ok(LoadedCheckpoint { path: path.to_path_buf(), header, state, trainer, optimizer, scheduler })
}

impl LoadedCheckpoint {
    /// The trainer, optimiser and scheduler records.
    pub(crate) fn into_parts(self) -> [Vec<u8>; 3] {
        [self.trainer, self.optimizer, self.scheduler]
    }
}

/// The newest checkpoint in `dir` that verifies, skipping (and reporting) broken ones.
pub fn latest_valid_checkpoint(dir: &Path) -> (Option<LoadedCheckpoint>, Vec<TrainError>) {
    let mut skipped = Vec::new();
    for (_, path) in list_checkpoints(dir).into_iter().rev() {
        match load_training_checkpoint(&path) {
            Ok(c) => return (Some(c), skipped),
            Err(e) => skipped.push(e),
        }
    }
    (None, skipped)
}

/// The newest checkpoint in `dir` that passes `check`, warning about each one skipped.
pub(crate) fn latest_valid(dir: &Path, check: impl Fn(&Path) -> Result<()>) -> Option<PathBuf> {
    for (_, path) in list_checkpoints(dir).into_iter().rev() {
        match check(&path) {
            Ok(()) => return Some(path),
            Err(e) => eprintln!("warning: skipping a checkpoint that does not verify: {e}"),
        }
    }
    None
}

/// A checkpoint that was just written.
#[derive(Debug, Clone)]
pub struct SavedCheckpoint {
    /// The file.
    pub path: PathBuf,
    /// Completed steps.
    pub step: u64,
    /// Ordinal of this checkpoint in the run (1 for the first epoch).
    pub epoch: usize,
}

/// Called after each checkpoint is written (on a checkpointer thread).
pub type CheckpointHook = Arc<dyn Fn(&SavedCheckpoint) + Send + Sync>;

#[derive(Default)]
struct Pending {
    trainer: Option<Bytes>,
    optimizer: Option<Bytes>,
    scheduler: Option<Bytes>,
}

/// Writes checkpoint `path` (after `step` steps, Learner epoch `epoch`) from the trainer
/// record and the three sections; the caller knows the model and the header.
pub(crate) type WriteFn =
    Box<dyn Fn(&Path, u64, usize, &Bytes, &[(&str, &[u8])]) -> Result<()> + Send + Sync>;

/// Joins the Learner's three records of an epoch into one checkpoint file.
pub(crate) struct CheckpointStore {
    dir: PathBuf,
    keep_last: usize,
    epoch_end: Box<dyn Fn(usize) -> u64 + Send + Sync>,
    writer: WriteFn,
    pending: Mutex<BTreeMap<usize, Pending>>,
    resume: Mutex<Option<(usize, LoadedParts)>>,
    hook: Option<CheckpointHook>,
    /// Step of the newest checkpoint on disk (0: none).
    pub last_step: Mutex<u64>,
}

impl CheckpointStore {
    /// A store writing into `dir`, resuming (if at all) from `resume` = (epoch, step, records).
    pub fn new(
        dir: PathBuf,
        keep_last: usize,
        epoch_end: Box<dyn Fn(usize) -> u64 + Send + Sync>,
        writer: WriteFn,
        resume: Option<(usize, u64, [Vec<u8>; 3])>,
        hook: Option<CheckpointHook>,
    ) -> Self {
        let last = resume.as_ref().map(|r| r.1).unwrap_or(0);
        Self {
            dir,
            keep_last,
            epoch_end,
            writer,
            pending: Mutex::new(BTreeMap::new()),
            resume: Mutex::new(resume.map(|(e, _, [trainer, optimizer, scheduler])| {
                (e, LoadedParts { trainer, optimizer, scheduler })
            })),
            hook,
            last_step: Mutex::new(last),
        }
    }

    fn put(&self, epoch: usize, f: impl FnOnce(&mut Pending)) -> std::result::Result<(), CheckpointerError> {
        let ready = {
            let mut pending = self.pending.lock().expect("pending lock");
            let p = pending.entry(epoch).or_default();
            f(p);
            if p.trainer.is_some() && p.optimizer.is_some() && p.scheduler.is_some() {
                pending.remove(&epoch)
            } else {
                None
            }
        };
        match ready {
            Some(p) => self.write(epoch, p).map_err(|e| CheckpointerError::Unknown(e.to_string())),
            None => Ok(()),
        }
    }

    fn write(&self, epoch: usize, p: Pending) -> Result<()> {
        let step = (self.epoch_end)(epoch);
        let path = self.dir.join(checkpoint_name(step));
        let trainer = p.trainer.expect("complete");
        let (o, s) = (p.optimizer.expect("complete").to_vec(), p.scheduler.expect("complete").to_vec());
        let t = trainer.to_vec();
        (self.writer)(&path, step, epoch, &trainer, &[(TRAINER, &t), (OPTIMIZER, &o), (SCHEDULER, &s)])?;
        *self.last_step.lock().expect("last step") = step;
        // Only now that the new checkpoint is on disk: drop the oldest beyond keep_last.
        let all = list_checkpoints(&self.dir);
        let excess = all.len().saturating_sub(self.keep_last);
        for (_, old) in all.into_iter().take(excess) {
            let _ = std::fs::remove_file(old);
        }
        if let Some(hook) = &self.hook {
            hook(&SavedCheckpoint { path, step, epoch });
        }
        Ok(())
    }

    fn restore(&self, epoch: usize) -> std::result::Result<LoadedParts, CheckpointerError> {
        let guard = self.resume.lock().expect("resume lock");
        match &*guard {
            Some((e, parts)) if *e == epoch => Ok(parts.clone()),
            _ => Err(CheckpointerError::Unknown(format!("no verified checkpoint for epoch {epoch}"))),
        }
    }
}

/// The writer of diffusion checkpoints: the primary network (first EMA copy) as the weights,
/// the process and the training state in the header.
pub(crate) fn diffusion_writer(config: TrainConfig, device: Device, shared: Arc<Shared>) -> WriteFn {
    Box::new(move |path, step, epoch, trainer, sections| {
        let sampler = shared.snapshots.lock().expect("snapshot lock").remove(&step).ok_or_else(|| {
            ckpt_err(path, format!("no timestep-sampler state was recorded at step {step}"))
        })?;
        let timestep_sampler: SamplerState =
            serde_json::from_value(sampler).map_err(|e| ckpt_err(path, e.to_string()))?;
        // The primary network: rebuild the trainer from its record and take the first EMA copy.
        let net = {
            let nets = TrainerNets::new(&config, &device.clone().inner())?;
            let record =
                ModuleRecord::from_bytes(trainer.clone()).map_err(|e| ckpt_err(path, e.to_string()))?;
            nets.load_record(record).primary()
        };
        let weights = match config.ema_rates.first() {
            Some(r) => format!("ema_{r}"),
            None => "online".into(),
        };
        let state = TrainingState { step, epoch, config: config.clone(), timestep_sampler, weights };
        let extra =
            RunExtra { process: ProcessRecord { diffusion: Some(config.process.clone()) }, training: state }
                .to_value(path)?;
        match &net {
            Net::Unet(u) => save_checkpoint_with_sections(path, &config.model, u, extra, sections),
            Net::Mlp(m) => save_checkpoint_with_sections(path, &config.model, m, extra, sections),
        }
        .map_err(|e| ckpt_err(path, e.to_string()))
    })
}

#[derive(Clone)]
struct LoadedParts {
    trainer: Vec<u8>,
    optimizer: Vec<u8>,
    scheduler: Vec<u8>,
}

/// The trainer's module structure without its shared state (to read records back).
#[derive(Module, Debug)]
pub(crate) struct TrainerNets {
    net: Net,
    ema: Vec<Net>,
}

impl TrainerNets {
    pub fn new(cfg: &TrainConfig, device: &Device) -> Result<Self> {
        Ok(Self {
            net: Net::init(&cfg.model, device)?,
            ema: cfg.ema_rates.iter().map(|_| Net::init(&cfg.model, device)).collect::<Result<_>>()?,
        })
    }

    fn primary(self) -> Net {
        self.ema.into_iter().next().unwrap_or(self.net)
    }
}

/// Which of the three records a [`Part`] carries.
#[derive(Clone, Copy)]
enum Kind {
    Trainer,
    Optimizer,
    Scheduler,
}

/// One of the three checkpointers the Learner drives.
pub(crate) struct Part {
    store: Arc<CheckpointStore>,
    kind: Kind,
}

impl Part {
    pub fn trainer(store: Arc<CheckpointStore>) -> Self {
        Self { store, kind: Kind::Trainer }
    }
    pub fn optimizer(store: Arc<CheckpointStore>) -> Self {
        Self { store, kind: Kind::Optimizer }
    }
    pub fn scheduler(store: Arc<CheckpointStore>) -> Self {
        Self { store, kind: Kind::Scheduler }
    }

    fn save_bytes(&self, epoch: usize, bytes: Bytes) -> std::result::Result<(), CheckpointerError> {
        let kind = self.kind;
        self.store.put(epoch, move |p| match kind {
            Kind::Trainer => p.trainer = Some(bytes),
            Kind::Optimizer => p.optimizer = Some(bytes),
            Kind::Scheduler => p.scheduler = Some(bytes),
        })
    }

    fn restore_bytes(&self, epoch: usize) -> std::result::Result<Bytes, CheckpointerError> {
        let parts = self.store.restore(epoch)?;
        Ok(Bytes::from_bytes_vec(match self.kind {
            Kind::Trainer => parts.trainer,
            Kind::Optimizer => parts.optimizer,
            Kind::Scheduler => parts.scheduler,
        }))
    }
}

impl<R: Checkpoint> Checkpointer<R> for Part {
    fn save(&self, epoch: usize, record: R) -> std::result::Result<(), CheckpointerError> {
        let bytes = record.checkpoint_into_bytes().map_err(CheckpointerError::Record)?;
        self.save_bytes(epoch, bytes)
    }

    fn delete(&self, _epoch: usize) -> std::result::Result<(), CheckpointerError> {
        // Retention is the store's job (after a new checkpoint is safely written).
        Ok(())
    }

    fn restore(&self, epoch: usize) -> std::result::Result<R, CheckpointerError> {
        R::checkpoint_from_bytes(self.restore_bytes(epoch)?).map_err(CheckpointerError::Record)
    }
}

/// Save at the end of every epoch; never ask the checkpointers to delete (the store does).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EveryEpoch;

impl CheckpointingStrategy for EveryEpoch {
    fn checkpointing(&mut self, _epoch: usize, _store: &EventStoreClient) -> Vec<CheckpointingAction> {
        vec![CheckpointingAction::Save]
    }
}

impl TrainerNets {
    /// Loads the trainer record of `ckpt` (online network and EMA copies).
    pub fn load_from_checkpoint(self, ckpt: &LoadedCheckpoint) -> Result<crate::run::TrainedNets> {
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(ckpt.trainer.clone()))
            .map_err(|e| ckpt_err(&ckpt.path, format!("trainer record: {e}")))?;
        let n = self.load_record(record);
        Ok(crate::run::TrainedNets { net: n.net, ema: n.ema })
    }
}

/// The online network and every EMA copy stored in a training checkpoint, on `device`.
pub fn load_trained_nets(path: &Path, device: &Device) -> Result<crate::run::TrainedNets> {
    let ckpt = load_training_checkpoint(path)?;
    TrainerNets::new(&ckpt.state.config, device)?.load_from_checkpoint(&ckpt)
}

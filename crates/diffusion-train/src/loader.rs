//! Batches for the Learner: every example, flip, noise and held-out batch is a function of the
//! run's seed and the optimiser step, never of a loader's history — which is what makes a resumed
//! run bit-identical to an uninterrupted one.
//!
//! Batches are assembled on a producer thread (pixels decoded and scaled in parallel with rayon)
//! and handed to the training thread in order through a bounded channel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_core::NoiseSource;
use rand::Rng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::data::{Data, ImageSet};

/// Stream tags of the seed-keyed random draws (one stream each).
pub(crate) mod tag {
    /// The permutation of data pass `p`.
    pub const PERMUTATION: u64 = 1;
    /// The training noise ε of example `g`.
    pub const NOISE: u64 = 2;
    /// The flip of example `g`.
    pub const FLIP: u64 = 3;
    /// The timesteps of microbatch (step, micro).
    pub const TIMESTEPS: u64 = 4;
    /// The held-out noise.
    pub const VALID_NOISE: u64 = 5;
    /// Dropout masks of microbatch (step, micro).
    pub const DROPOUT: u64 = 6;
    /// Whether example `g`'s label is dropped (classifier-free guidance).
    pub const LABEL_DROP: u64 = 7;
    /// Example `g`'s per-channel offset noise.
    pub const OFFSET_NOISE: u64 = 8;
}

/// Examples a model learns from, on the host: images `[C, S, S]` or points `[2, 1, 1]`.
#[derive(Debug, Clone)]
pub struct Examples {
    data: Arc<Data>,
    /// Indices into `data` that belong to this split.
    index: Vec<usize>,
}

impl Examples {
    /// The examples `index` of `data`.
    pub fn new(data: Arc<Data>, index: Vec<usize>) -> Self {
        Self { data, index }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Shape of one example, `[C, H, W]` (`[2, 1, 1]` for points).
    pub fn item_shape(&self) -> [usize; 3] {
        match &*self.data {
            Data::Points(_) => [2, 1, 1],
            Data::Images(s) => [s.channels, s.size, s.size],
        }
    }

    fn values(&self, k: usize, flip: bool) -> Vec<f32> {
        let i = self.index[k];
        match &*self.data {
            Data::Points(p) => p[i].to_vec(),
            Data::Images(s) => s.image_f32(i, flip),
        }
    }

    fn label(&self, k: usize) -> i64 {
        match &*self.data {
            Data::Points(_) => 0,
            Data::Images(ImageSet { labels, .. }) => labels[self.index[k]] as i64,
        }
    }
}

/// A host batch: what the producer thread builds.
#[derive(Debug, Clone)]
pub(crate) struct HostBatch {
    x0: Vec<f32>,
    noise: Vec<f32>,
    labels: Vec<i64>,
    shape: [usize; 4],
    step: u64,
    micro: usize,
    timesteps: Option<Vec<usize>>,
    ids: Vec<u64>,
}

impl HostBatch {
    fn to_device(&self, device: &Device, class_cond: bool) -> Batch {
        let n = self.shape[0];
        Batch {
            x0: Tensor::from_data(TensorData::new(self.x0.clone(), self.shape), device),
            noise: Tensor::from_data(TensorData::new(self.noise.clone(), self.shape), device),
            y: class_cond.then(|| Tensor::from_data(TensorData::new(self.labels.clone(), [n]), device)),
            step: self.step,
            micro: self.micro,
            timesteps: self.timesteps.clone(),
            ids: self.ids.clone(),
        }
    }
}

/// One microbatch on the device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Clean examples, `[B, C, H, W]` in [−1, 1] (points as `[B, 2, 1, 1]`).
    pub x0: Tensor<4>,
    /// The noise ε of q(x_t∣x_0).
    pub noise: Tensor<4>,
    /// Class labels (class-conditional runs).
    pub y: Option<Tensor<1, Int>>,
    /// Optimiser step this microbatch belongs to (0-based).
    pub step: u64,
    /// Microbatch index within the step.
    pub micro: usize,
    /// Fixed timesteps (held-out batches); `None`: drawn by the timestep sampler.
    pub timesteps: Option<Vec<usize>>,
    /// Global example positions (for the record).
    pub ids: Vec<u64>,
}

/// The schedule of a run's batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchPlan {
    /// Optimiser steps in total.
    pub steps: u64,
    /// Optimiser steps per Learner epoch (= per checkpoint).
    pub steps_per_epoch: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Examples per microbatch.
    pub micro_size: usize,
    /// Seed.
    pub seed: u64,
    /// Random horizontal flips.
    pub random_flip: bool,
    /// Labels go to the model.
    pub class_cond: bool,
    /// Classifier-free guidance training: each example's label is replaced by the null label
    /// with this probability (a pure function of (seed, example position)); `None`: never.
    pub label_dropout: Option<LabelDropout>,
    /// Offset noise: each example's noise gets this times one 𝒩(0, 1) draw per channel added
    /// (0: off).
    pub offset_noise: f64,
}

/// Label dropout for classifier-free guidance (Ho & Salimans 2022).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelDropout {
    /// Probability of dropping a label.
    pub probability: f64,
    /// The null label (the network's `num_classes`).
    pub null_label: i64,
}

impl BatchPlan {
    /// Microbatches per step.
    pub fn micro_per_step(&self) -> usize {
        self.batch_size / self.micro_size
    }

    /// Steps `[first, end)` of 1-based epoch `epoch`.
    pub fn epoch_steps(&self, epoch: usize) -> (u64, u64) {
        let first = (epoch as u64 - 1) * self.steps_per_epoch;
        (first.min(self.steps), (first + self.steps_per_epoch).min(self.steps))
    }

    /// Number of epochs.
    pub fn epochs(&self) -> usize {
        self.steps.div_ceil(self.steps_per_epoch) as usize
    }

    /// The step at which epoch `epoch` ends (its checkpoint's step).
    pub fn epoch_end(&self, epoch: usize) -> u64 {
        self.epoch_steps(epoch).1
    }
}

/// Permutations of the training set, one per pass over it, cached.
struct Permutations {
    n: usize,
    noise: NoiseSource,
    cache: Mutex<Option<(u64, Arc<Vec<usize>>)>>,
}

impl Permutations {
    fn pass(&self, p: u64) -> Arc<Vec<usize>> {
        let mut cache = self.cache.lock().expect("permutation cache");
        if let Some((q, perm)) = &*cache
            && *q == p
        {
            return perm.clone();
        }
        let mut perm: Vec<usize> = (0..self.n).collect();
        perm.shuffle(&mut self.noise.rng(tag::PERMUTATION, p));
        let perm = Arc::new(perm);
        *cache = Some((p, perm.clone()));
        perm
    }
}

/// Builds microbatch `(step, micro)` restricted to in-batch positions `range`.
fn build_train(
    examples: &Examples,
    perms: &Permutations,
    plan: &BatchPlan,
    step: u64,
    micro: usize,
    range: (usize, usize),
) -> HostBatch {
    let noise = NoiseSource::new(plan.seed);
    let [c, h, w] = examples.item_shape();
    let item = c * h * w;
    let n = examples.len() as u64;
    let ids: Vec<u64> = (range.0..range.1)
        .map(|i| step * plan.batch_size as u64 + (micro * plan.micro_size + i) as u64)
        .collect();
    let rows: Vec<(Vec<f32>, Vec<f32>, i64)> = ids
        .par_iter()
        .map(|&g| {
            let perm = perms.pass(g / n);
            let k = perm[(g % n) as usize];
            let flip = plan.random_flip && noise.rng(tag::FLIP, g).random_bool(0.5);
            let label = match plan.label_dropout {
                Some(drop) if noise.rng(tag::LABEL_DROP, g).random_bool(drop.probability) => drop.null_label,
                _ => examples.label(k),
            };
            let mut eps = noise.sample_values(g, tag::NOISE, item);
            if plan.offset_noise > 0.0 {
                let offsets = noise.sample_values(g, tag::OFFSET_NOISE, c);
                for (channel, o) in eps.chunks_mut(h * w).zip(offsets) {
                    let o = o * plan.offset_noise as f32;
                    channel.iter_mut().for_each(|v| *v += o);
                }
            }
            (examples.values(k, flip), eps, label)
        })
        .collect();
    let mut batch = HostBatch {
        x0: Vec::with_capacity(ids.len() * item),
        noise: Vec::with_capacity(ids.len() * item),
        labels: Vec::with_capacity(ids.len()),
        shape: [ids.len(), c, h, w],
        step,
        micro,
        timesteps: None,
        ids,
    };
    for (x, e, y) in rows {
        batch.x0.extend_from_slice(&x);
        batch.noise.extend_from_slice(&e);
        batch.labels.push(y);
    }
    batch
}

/// The training loader: epoch `e` yields the microbatches of steps
/// [`BatchPlan::epoch_steps`]`(e)`. Each call to `iter` starts the next epoch.
#[derive(Clone)]
pub struct TrainLoader {
    examples: Arc<Examples>,
    perms: Arc<Permutations>,
    plan: BatchPlan,
    device: Device,
    next_epoch: Arc<AtomicUsize>,
    /// In-batch positions this (sliced) loader yields, as fractions `num/den` of a microbatch.
    part: (usize, usize, usize),
}

impl TrainLoader {
    /// A loader whose first `iter` yields epoch `first_epoch` (1-based).
    pub fn new(examples: Examples, plan: BatchPlan, device: Device, first_epoch: usize) -> Self {
        let n = examples.len();
        Self {
            examples: Arc::new(examples),
            perms: Arc::new(Permutations { n, noise: NoiseSource::new(plan.seed), cache: Mutex::new(None) }),
            plan,
            device,
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
            part: (0, 1, 1),
        }
    }

    fn range(&self) -> (usize, usize) {
        let (a, b, den) = self.part;
        (a * self.plan.micro_size / den, b * self.plan.micro_size / den)
    }
}

struct TrainIter {
    rx: Receiver<HostBatch>,
    device: Device,
    class_cond: bool,
    done: usize,
    total: usize,
}

impl Iterator for TrainIter {
    type Item = Result<Batch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let host = self.rx.recv().ok()?;
        self.done += host.shape[0];
        Some(Ok(host.to_device(&self.device, self.class_cond)))
    }
}

impl DataLoaderIterator<Batch> for TrainIter {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total, Some("examples".into()))
    }
}

impl DataLoader<Batch> for TrainLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<Batch> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        let (first, end) = self.plan.epoch_steps(epoch);
        let (tx, rx) = sync_channel(2);
        let (examples, perms, plan, range) =
            (self.examples.clone(), self.perms.clone(), self.plan, self.range());
        let total = (end - first) as usize * plan.micro_per_step() * (range.1 - range.0);
        std::thread::spawn(move || {
            for step in first..end {
                for micro in 0..plan.micro_per_step() {
                    let b = build_train(&examples, &perms, &plan, step, micro, range);
                    if tx.send(b).is_err() {
                        return;
                    }
                }
            }
        });
        Box::new(TrainIter {
            rx,
            device: self.device.clone(),
            class_cond: self.plan.class_cond,
            done: 0,
            total,
        })
    }

    fn num_items(&self) -> usize {
        self.plan.steps_per_epoch as usize * self.plan.batch_size
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<Batch>> {
        Arc::new(Self { device: device.clone(), ..self.clone() })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<Batch>> {
        // A slice of the items of an epoch becomes the same slice of every microbatch, so that
        // devices train on their share of each step in lock-step.
        let n = self.num_items().max(1);
        let (a, b, den) = self.part;
        let width = b - a;
        Arc::new(Self {
            part: (a * n + start * width, a * n + end * width, den * n),
            next_epoch: Arc::new(AtomicUsize::new(self.next_epoch.load(Ordering::SeqCst))),
            ..self.clone()
        })
    }
}

/// The held-out loader: the same batches at every validation, timesteps stratified over 0..T
/// (`t_i = ⌊(2i + 1)·T / 2n⌋`) and noise fixed by the seed.
#[derive(Clone)]
pub struct ValidLoader {
    batches: Arc<Vec<HostBatch>>,
    device: Device,
    class_cond: bool,
    /// Completed optimiser steps when the held-out batches are evaluated (updated per epoch).
    step_of_epoch: Arc<dyn Fn(usize) -> u64 + Send + Sync>,
    next_epoch: Arc<AtomicUsize>,
}

impl ValidLoader {
    /// Held-out batches of at most `batch_size` examples from `examples`.
    pub fn new(
        examples: &Examples,
        num_timesteps: usize,
        batch_size: usize,
        plan: BatchPlan,
        device: Device,
        first_epoch: usize,
    ) -> Self {
        let noise = NoiseSource::new(plan.seed);
        let [c, h, w] = examples.item_shape();
        let n = examples.len();
        let mut batches = Vec::new();
        let mut start = 0;
        while start < n {
            let end = (start + batch_size.max(1)).min(n);
            let mut b = HostBatch {
                x0: Vec::new(),
                noise: Vec::new(),
                labels: Vec::new(),
                shape: [end - start, c, h, w],
                step: 0,
                micro: 0,
                timesteps: Some(
                    (start..end)
                        .map(|i| ((2 * i + 1) * num_timesteps / (2 * n)).min(num_timesteps - 1))
                        .collect(),
                ),
                ids: (start as u64..end as u64).collect(),
            };
            for k in start..end {
                b.x0.extend(examples.values(k, false));
                b.noise.extend(noise.sample_values(k as u64, tag::VALID_NOISE, c * h * w));
                b.labels.push(examples.label(k));
            }
            batches.push(b);
            start = end;
        }
        Self {
            batches: Arc::new(batches),
            device,
            class_cond: plan.class_cond,
            step_of_epoch: Arc::new(move |e| plan.epoch_end(e)),
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
        }
    }
}

struct ValidIter {
    batches: Vec<Batch>,
    done: usize,
    total: usize,
}

impl Iterator for ValidIter {
    type Item = Result<Batch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.batches.is_empty() {
            return None;
        }
        let b = self.batches.remove(0);
        self.done += b.x0.dims()[0];
        Some(Ok(b))
    }
}

impl DataLoaderIterator<Batch> for ValidIter {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total, Some("examples".into()))
    }
}

impl DataLoader<Batch> for ValidLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<Batch> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        let step = (self.step_of_epoch)(epoch);
        let batches: Vec<Batch> = self
            .batches
            .iter()
            .map(|b| {
                let mut d = b.to_device(&self.device, self.class_cond);
                d.step = step;
                d
            })
            .collect();
        Box::new(ValidIter { batches, done: 0, total: self.num_items() })
    }

    fn num_items(&self) -> usize {
        self.batches.iter().map(|b| b.shape[0]).sum()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<Batch>> {
        Arc::new(Self { device: device.clone(), ..self.clone() })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<Batch>> {
        let mut acc = 0;
        let batches: Vec<HostBatch> = self
            .batches
            .iter()
            .filter(|b| {
                let keep = acc >= start && acc < end;
                acc += b.shape[0];
                keep
            })
            .cloned()
            .collect();
        Arc::new(Self { batches: Arc::new(batches), ..self.clone() })
    }
}

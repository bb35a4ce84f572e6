//! The module the Learner trains: the network, its EMA copies, and (outside the record) the
//! state a Learner does not hold — the timestep sampler, the last gradient norm, the run's
//! stop switch.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, Interrupter, ItemLazy, TrainOutput, TrainStep};
use diffusion_core::{
    GaussianDiffusion, LossSecondMomentSampler, NoiseSource, TimestepSampler, UniformSampler,
};
use diffusion_models::checkpoint::ModelSpec;
use diffusion_models::{Mlp, UNet};
use rand::RngCore;

use crate::config::{TimestepSamplerKind, TrainConfig};
use crate::ema::ema_update;
use crate::error::{Result, TrainError};
use crate::loader::{Batch, tag};

/// The denoising network of a run.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per run; boxing would only add indirection
pub enum Net {
    /// An image UNet.
    Unet(UNet),
    /// A 2-D MLP.
    Mlp(Mlp),
}

impl Net {
    /// Builds the network `spec` describes (a UNet or an MLP).
    pub fn init(spec: &ModelSpec, device: &Device) -> Result<Self> {
        match spec {
            ModelSpec::Unet(c) => Ok(Self::Unet(c.try_init(device)?)),
            ModelSpec::Mlp(c) => {
                c.validate()?;
                Ok(Self::Mlp(c.init(device)))
            }
            ModelSpec::Classifier(_) => Err(TrainError::Config("a classifier is not a denoiser".into())),
        }
    }

    /// `(x_t [B, C, H, W], t [B], y) → output [B, C', H, W]`; points travel as `[B, 2, 1, 1]`.
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, y: Option<Tensor<1, Int>>) -> Tensor<4> {
        match self {
            Self::Unet(u) => u.forward(x, t, y),
            Self::Mlp(m) => {
                let [b, c, _, _] = x.dims();
                let out = m.forward(x.reshape([b, c]), t);
                let o = out.dims()[1];
                out.reshape([b, o, 1, 1])
            }
        }
    }

    /// Whether any layer uses dropout (so its masks must be seeded for reproducibility).
    pub fn has_dropout(spec: &ModelSpec) -> bool {
        matches!(spec, ModelSpec::Unet(c) if c.dropout > 0.0)
    }
}

/// Builds modules with the initial weights of `seed` — the same on every backend — and moves
/// them to `device`.
///
/// burn draws initial weights from the generator of the device they are created on, and each
/// backend has its own (wgpu's gives other numbers than the CPU's for the same seed), and it
/// draws them lazily, at a parameter's first use, so the order in which a forward pass touches
/// them (fused kernels or composite ops) would change them too. Here `build` runs on burn's CPU
/// backend seeded with `seed`, every parameter is drawn at once in visiting order, and the
/// modules then move to `device` (as tracked leaves on an autodiff device): a run starts from the
/// same weights wherever it runs.
pub fn init_seeded<M: Module>(
    seed: u64,
    device: &Device,
    build: impl FnOnce(&Device) -> Result<M>,
) -> Result<M> {
    struct Materialise;
    impl ModuleVisitor for Materialise {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    struct Track;
    impl burn::module::ModuleMapper for Track {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.autodiff().require_grad())
        }
    }
    // burn's CPU generator is one per process: hold it while this build draws from it, so that
    // concurrent builds (threads, parallel tests) cannot interleave their draws.
    static HOST_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let host = Device::flex();
    let modules = {
        let _guard = HOST_RNG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        host.seed(seed);
        let modules = build(&host)?;
        modules.visit(&mut Materialise);
        modules
    };
    let modules = modules.to_device(device);
    // Moved onto an autodiff device, the parameters become leaves of its graph again.
    Ok(if device.is_autodiff() { modules.map(&mut Track) } else { modules })
}

/// The timestep sampler of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SamplerState {
    /// Uniform.
    Uniform(UniformSampler),
    /// Loss-second-moment importance sampling.
    LossSecondMoment(LossSecondMomentSampler),
}

impl SamplerState {
    /// A fresh sampler of `kind` over `num_timesteps`.
    pub fn new(kind: TimestepSamplerKind, num_timesteps: usize) -> Result<Self> {
        let e = |e: diffusion_core::Error| TrainError::Config(format!("timestep sampler: {e}"));
        Ok(match kind {
            TimestepSamplerKind::Uniform => Self::Uniform(UniformSampler::new(num_timesteps).map_err(e)?),
            TimestepSamplerKind::LossSecondMoment => {
                Self::LossSecondMoment(LossSecondMomentSampler::new(num_timesteps).map_err(e)?)
            }
        })
    }

    fn as_sampler(&mut self) -> &mut dyn TimestepSampler {
        match self {
            Self::Uniform(s) => s,
            Self::LossSecondMoment(s) => s,
        }
    }

    /// Whether the sampler has left its uniform warm-up (always false for uniform).
    pub fn warmed_up(&self) -> bool {
        matches!(self, Self::LossSecondMoment(s) if s.warmed_up())
    }
}

/// What stopped a run from inside the training step.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub step: u64,
    pub micro: usize,
    pub detail: String,
}

/// Hang et al.'s min-SNR-γ weight of the MSE term at ᾱ: min(SNR, γ)/SNR for ε, min(SNR, γ) for
/// x_0, min(SNR, γ)/(SNR + 1) for v (SNR = ᾱ/(1 − ᾱ)); 1 for x_{t−1}.
pub fn min_snr_weight(alpha_bar: f64, gamma: f64, mean: diffusion_core::ModelMean) -> f64 {
    let snr = alpha_bar / (1.0 - alpha_bar);
    let clipped = snr.min(gamma);
    match mean {
        diffusion_core::ModelMean::Epsilon => clipped / snr,
        diffusion_core::ModelMean::StartX => clipped,
        diffusion_core::ModelMean::Velocity => clipped / (snr + 1.0),
        diffusion_core::ModelMean::PreviousX => 1.0,
    }
}

/// State shared by every clone of the trainer (the Learner clones modules freely), outside the
/// module record.
pub(crate) struct Shared {
    pub diffusion: GaussianDiffusion,
    pub sampler: Mutex<SamplerState>,
    /// Sampler state right after the last microbatch of each checkpointed step, by step.
    pub snapshots: Mutex<BTreeMap<u64, serde_json::Value>>,
    pub checkpoint_steps: Box<dyn Fn(u64) -> bool + Send + Sync>,
    pub failure: Mutex<Option<Failure>>,
    pub interrupter: Interrupter,
    /// The gradient-norm slot of the newest training item (filled by `optimize`).
    pub grad_norm_slot: Mutex<Option<GradNorm>>,
    pub noise: NoiseSource,
    pub seed: u64,
    pub micro_per_step: usize,
    pub batch_size: usize,
    pub ema_rates: Vec<f64>,
    pub ema_warmup: Option<crate::config::EmaWarmup>,
    /// Min-SNR-γ weighting of the MSE term.
    pub min_snr_gamma: Option<f64>,
    /// The optimiser step (0-based) of the newest training microbatch, for the EMA warm-up.
    pub last_step: Mutex<u64>,
    pub grad_clip: Option<f64>,
    pub dropout: bool,
    pub stop_after_steps: Option<u64>,
    pub inject_nan_at_step: Option<u64>,
}

impl Shared {
    /// Checks the losses, feeds the sampler and stops the run on a non-finite value.
    pub fn after_step(&self, record: &StepRecord) -> bool {
        let shared = self;
        let injected = shared.inject_nan_at_step == Some(record.step);
        let bad = |v: &[f32]| v.iter().any(|x| !x.is_finite());
        if injected || bad(&record.loss) {
            let mut terms = Vec::new();
            if let Some(m) = &record.mse
                && bad(m)
            {
                terms.push("mse");
            }
            if let Some(v) = &record.vb
                && bad(v)
            {
                terms.push("vb");
            }
            let ts: Vec<usize> = record
                .loss
                .iter()
                .zip(&record.timesteps)
                .filter(|(l, _)| injected || !l.is_finite())
                .map(|(_, &t)| t)
                .collect();
            let detail = format!(
                "{}loss term{} {} non-finite at timesteps {ts:?}",
                if injected { "(injected) " } else { "" },
                if terms.len() == 1 { "" } else { "s" },
                if terms.is_empty() { "loss".to_string() } else { terms.join(" and ") },
            );
            *shared.failure.lock().expect("failure lock") =
                Some(Failure { step: record.step, micro: record.micro, detail: detail.clone() });
            shared.interrupter.stop(Some(&detail));
            return false;
        }
        let mut sampler = shared.sampler.lock().expect("sampler lock");
        let losses: Vec<f64> = record.loss.iter().map(|&x| f64::from(x)).collect();
        // The uniform sampler ignores updates; the importance sampler records per-t losses.
        let _ = sampler.as_sampler().update(&record.timesteps, &losses);
        if record.micro + 1 == shared.micro_per_step && (shared.checkpoint_steps)(record.step + 1) {
            let snap = serde_json::to_value(&*sampler).expect("sampler state serialises");
            shared.snapshots.lock().expect("snapshot lock").insert(record.step + 1, snap);
        }
        if record.micro + 1 == shared.micro_per_step && shared.stop_after_steps == Some(record.step + 1) {
            shared.interrupter.stop(Some("stop requested after this step"));
        }
        true
    }

    /// Global gradient norm (clipping it when configured), recorded for the newest item — all on
    /// the device: nothing is read back here (the log reads the norm when it writes the row).
    pub fn clip_and_record<M: Module>(&self, module: &M, grads: &mut GradientsParams) {
        let Some(sq) = grad_sq_sum(module, grads) else { return };
        if let Some(c) = self.grad_clip {
            clip_by(module, grads, &sq, c);
        }
        if let Some(slot) = self.grad_norm_slot.lock().expect("slot lock").as_ref() {
            slot.set_squared(sq);
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("seed", &self.seed).finish_non_exhaustive()
    }
}

/// The trainer module: the online network and one EMA copy per rate.
#[derive(Module, Debug)]
pub struct DiffusionTrainer {
    /// The network the optimiser updates.
    pub net: Net,
    /// EMA copies (same order as the config's `ema_rates`).
    pub ema: Vec<Net>,
    #[module(skip)]
    pub(crate) shared: Arc<Shared>,
}

impl DiffusionTrainer {
    pub(crate) fn new(cfg: &TrainConfig, device: &Device, shared: Arc<Shared>) -> Result<Self> {
        device.seed(cfg.seed);
        let (net, ema) = init_seeded(cfg.seed, device, |host| {
            let net = Net::init(&cfg.model, host)?;
            // Fresh modules (fresh parameter ids, so the optimiser never touches them) holding
            // the online weights.
            let ema = cfg
                .ema_rates
                .iter()
                .map(|_| Net::init(&cfg.model, host).map(|e| ema_update(e, &net, 0.0)))
                .collect::<Result<Vec<_>>>()?;
            Ok((net, ema))
        })?;
        Ok(Self { net, ema, shared })
    }

    /// The network whose weights a checkpoint offers for sampling: the first EMA copy, or the
    /// online network without EMA.
    pub fn primary(&self) -> &Net {
        self.ema.first().unwrap_or(&self.net)
    }

    fn losses(&self, batch: Batch, train: bool) -> StepOutput {
        let shared = &self.shared;
        let device = batch.x0.device();
        let n = batch.x0.dims()[0];
        let (timesteps, weights) = match &batch.timesteps {
            Some(t) => (t.clone(), vec![1.0; t.len()]),
            None => {
                // One draw per example, keyed by its global position: the same example gets the
                // same t whatever the microbatching.
                let mut rngs: Vec<_> =
                    batch.ids.iter().map(|&g| shared.noise.rng(tag::TIMESTEPS, g)).collect();
                let mut each = rngs.iter_mut().map(|r| r as &mut dyn RngCore);
                let tb = shared.sampler.lock().expect("sampler lock").as_sampler().sample_each(&mut each);
                (tb.timesteps, tb.weights)
            }
        };
        if train && shared.dropout {
            device.seed(
                shared
                    .noise
                    .rng(tag::DROPOUT, batch.step * shared.micro_per_step as u64 + batch.micro as u64)
                    .next_u64(),
            );
        }
        let t = Tensor::<1, Int>::from_data(
            TensorData::new(timesteps.iter().map(|&t| t as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        let w = Tensor::<1>::from_data(
            TensorData::new(weights.iter().map(|&w| w as f32).collect::<Vec<_>>(), [n]),
            &device,
        );
        let y = batch.y.clone();
        if train {
            *shared.last_step.lock().expect("step lock") = batch.step;
        }
        let mut out =
            shared.diffusion.training_losses(batch.x0, t, batch.noise, |x, tt| self.net.forward(x, tt, y));
        if let (Some(gamma), Some(mse)) = (shared.min_snr_gamma, &out.mse) {
            // Min-SNR-γ: the MSE term weighted per example (the VLB term, if any, unchanged).
            let ab = &shared.diffusion.tables().alphas_cumprod;
            let mean = shared.diffusion.config().mean;
            let w: Vec<f32> = timesteps.iter().map(|&t| min_snr_weight(ab[t], gamma, mean) as f32).collect();
            let w = Tensor::<1>::from_data(TensorData::new(w, [n]), &device);
            // (L − mse) + w · mse: exactly w · mse for L_simple (no cancellation when w ≪ 1).
            out.loss = (out.loss.clone() - mse.clone()) + mse.clone() * w;
        }
        // The reference's objective: mean over the batch of w_t · L, each microbatch weighted by
        // its share of the batch so that accumulated gradients are the full batch's.
        let scale = if train { n as f64 / shared.batch_size as f64 } else { 1.0 };
        let loss = (out.loss.clone() * w).mean().mul_scalar(scale);
        // One read-back for the per-example loss and its terms: the host needs them now, to stop
        // before a non-finite loss reaches the weights and to feed the importance sampler.
        let parts: Vec<Tensor<1>> = std::iter::once(&out.loss)
            .chain(out.mse.as_ref())
            .chain(out.vb.as_ref())
            .map(|x| x.clone().detach())
            .collect();
        let host = diffusion_core::sync::read_f32(Tensor::cat(parts, 0));
        let mut chunks = host.chunks(n.max(1)).map(<[f32]>::to_vec);
        let per_example = chunks.next().unwrap_or_default();
        let mse = out.mse.as_ref().map(|_| chunks.next().unwrap_or_default());
        let vb = out.vb.as_ref().map(|_| chunks.next().unwrap_or_default());
        StepOutput {
            loss,
            record: Arc::new(StepRecord {
                train,
                step: batch.step,
                micro: batch.micro,
                timesteps,
                loss: per_example,
                mse,
                vb,
                correct: None,
                num_timesteps: shared.diffusion.num_timesteps(),
                grad_norm: GradNorm::default(),
                at: Instant::now(),
            }),
        }
    }
}

/// Everything one microbatch reports, on the host.
#[derive(Debug)]
pub struct StepRecord {
    /// Training (true) or held-out (false).
    pub train: bool,
    /// Optimiser step (held-out: completed steps).
    pub step: u64,
    /// Microbatch within the step.
    pub micro: usize,
    /// Timestep of each example.
    pub timesteps: Vec<usize>,
    /// Per-example loss (before importance weights).
    pub loss: Vec<f32>,
    /// Per-example MSE term, if any.
    pub mse: Option<Vec<f32>>,
    /// Per-example VLB term, if any.
    pub vb: Option<Vec<f32>>,
    /// Per-example top-1 correctness (classifiers).
    pub correct: Option<Vec<bool>>,
    /// T.
    pub num_timesteps: usize,
    /// Global gradient norm of the optimiser step this microbatch completed (training only).
    pub grad_norm: GradNorm,
    /// When the step finished.
    pub at: Instant,
}

/// The output of a step: the scalar loss for burn's `LossMetric` and the host record.
pub struct StepOutput {
    /// Mean weighted loss, `[1]`.
    pub loss: Tensor<1>,
    /// Host-side record.
    pub record: Arc<StepRecord>,
}

impl ItemLazy for StepOutput {
    fn sync(self) -> std::result::Result<Self, burn::tensor::ExecutionError> {
        self.loss.device().flush()?;
        Ok(Self { loss: self.loss.without_autodiff(), record: self.record })
    }
}

impl Adaptor<LossInput> for StepOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl Adaptor<Arc<StepRecord>> for StepOutput {
    fn adapt(&self) -> Arc<StepRecord> {
        self.record.clone()
    }
}

/// The global gradient norm of one optimiser step, kept on the device until it is first read
/// (by the log, on its own thread, or by a test), then cached: the training thread never waits
/// for it.
#[derive(Clone, Default)]
pub struct GradNorm(Arc<Mutex<NormState>>);

#[derive(Default)]
enum NormState {
    #[default]
    Unset,
    Squared(Box<Tensor<1>>),
    Read(f64),
}

impl GradNorm {
    /// Records Σ g² (a `[1]` tensor on the training device).
    pub fn set_squared(&self, sq: Tensor<1>) {
        *self.0.lock().expect("grad norm") = NormState::Squared(Box::new(sq));
    }

    /// Records a norm already on the host.
    pub fn set(&self, norm: f64) {
        *self.0.lock().expect("grad norm") = NormState::Read(norm);
    }

    /// The norm (reading it back on first use), or `None` before the step recorded it.
    pub fn get(&self) -> Option<f64> {
        let mut state = self.0.lock().expect("grad norm");
        if let NormState::Squared(sq) = &*state {
            let v = diffusion_core::sync::read_f32((**sq).clone()).first().copied().unwrap_or(f32::NAN);
            *state = NormState::Read(f64::from(v).sqrt());
        }
        match *state {
            NormState::Read(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Debug for GradNorm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0.lock().expect("grad norm") {
            NormState::Unset => f.write_str("GradNorm(unset)"),
            NormState::Squared(_) => f.write_str("GradNorm(on the device)"),
            NormState::Read(v) => write!(f, "GradNorm({v})"),
        }
    }
}

/// Σ g² over `module`'s parameters, on the device (`None` without gradients).
pub fn grad_sq_sum<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    struct Sum<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Sum<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = (g.clone() * g).sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut v = Sum { grads, sum: None };
    module.visit(&mut v);
    v.sum
}

/// Scales every gradient by PyTorch's `clip_grad_norm_` factor min(1, max_norm / (‖g‖ + 1e-6)),
/// computed on the device from `sq` = Σ g².
fn clip_by<M: Module>(module: &M, grads: &mut GradientsParams, sq: &Tensor<1>, max_norm: f64) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: Tensor<1>,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let f = self.factor.clone().reshape([1; D]);
                self.grads.register(param.id, g * f);
            }
        }
    }
    let factor = sq.clone().sqrt().add_scalar(1e-6).recip().mul_scalar(max_norm).clamp_max(1.0);
    module.visit(&mut Scale { grads, factor });
}

/// Global L2 norm of the gradients of `module`'s parameters (one read-back).
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    grad_sq_sum(module, grads)
        .map(|s| f64::from(diffusion_core::sync::read_f32(s).first().copied().unwrap_or(f32::NAN)).sqrt())
        .unwrap_or(0.0)
}

/// Scales every gradient of `module` so that the global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`); returns the norm before clipping (one read-back).
pub fn clip_grad_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let Some(sq) = grad_sq_sum(module, grads) else { return 0.0 };
    clip_by(module, grads, &sq, max_norm);
    f64::from(diffusion_core::sync::read_f32(sq).first().copied().unwrap_or(f32::NAN)).sqrt()
}

impl TrainStep for DiffusionTrainer {
    type Input = Batch;
    type Output = StepOutput;

    fn step(&self, batch: Batch) -> TrainOutput<StepOutput> {
        let out = self.losses(batch, true);
        let ok = self.shared.after_step(&out.record);
        *self.shared.grad_norm_slot.lock().expect("slot lock") = Some(out.record.grad_norm.clone());
        let grads = if ok {
            GradientsParams::from_grads(out.loss.backward(), self)
        } else {
            // Never let a non-finite gradient reach the weights (the run is stopping anyway).
            GradientsParams::new()
        };
        TrainOutput { grads, item: out }
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        mut grads: GradientsParams,
    ) -> Self {
        let shared = self.shared.clone();
        shared.clip_and_record(&self.net, &mut grads);
        let mut m = optim.step(lr, self, grads);
        let ema = std::mem::take(&mut m.ema);
        let k = *shared.last_step.lock().expect("step lock") + 1;
        let decay = |rate: f64| shared.ema_warmup.map_or(rate, |w| w.decay(rate, k));
        m.ema = ema
            .into_iter()
            .zip(&shared.ema_rates)
            .map(|(e, &rate)| ema_update(e, &m.net, decay(rate)))
            .collect();
        m
    }
}

impl InferenceStep for DiffusionTrainer {
    type Input = Batch;
    type Output = StepOutput;

    fn step(&self, batch: Batch) -> StepOutput {
        self.losses(batch, false)
    }
}

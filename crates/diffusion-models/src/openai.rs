//! Configurations written as the command-line flags of openai/guided-diffusion and
//! improved-diffusion (`model_and_diffusion_defaults()`, `classifier_defaults()`), so that the
//! flags from their READMEs describe our networks directly.
//!
//! ```json
//! {"image_size": 64, "num_channels": 192, "num_res_blocks": 3, "attention_resolutions": "32,16,8",
//!  "num_head_channels": 64, "resblock_updown": true, "use_new_attention_order": true,
//!  "learn_sigma": true, "class_cond": true, "dropout": 0.1}
//! ```
//!
//! Missing flags take guided-diffusion's defaults. Diffusion flags (`diffusion_steps`,
//! `noise_schedule`, …) are accepted and ignored here; any other unknown flag is an error.

use serde_json::{Map, Value};

use crate::blocks::AttentionOrder;
use crate::classifier::{EncoderUNetConfig, Pool};
use crate::error::{ModelError, Result};
use crate::unet::UNetConfig;

const UNET_FLAGS: &[&str] = &[
    "image_size",
    "num_channels",
    "num_res_blocks",
    "num_heads",
    "num_heads_upsample",
    "num_head_channels",
    "attention_resolutions",
    "channel_mult",
    "dropout",
    "class_cond",
    "use_checkpoint",
    "use_scale_shift_norm",
    "resblock_updown",
    "use_fp16",
    "use_new_attention_order",
    "learn_sigma",
];
const CLASSIFIER_FLAGS: &[&str] = &[
    "image_size",
    "classifier_use_fp16",
    "classifier_width",
    "classifier_depth",
    "classifier_attention_resolutions",
    "classifier_use_scale_shift_norm",
    "classifier_resblock_updown",
    "classifier_pool",
];
const DIFFUSION_FLAGS: &[&str] = &[
    "diffusion_steps",
    "noise_schedule",
    "timestep_respacing",
    "use_kl",
    "predict_xstart",
    "rescale_timesteps",
    "rescale_learned_sigmas",
];

fn bad(m: String) -> ModelError {
    ModelError::InvalidConfig(m)
}

struct Flags<'a>(&'a Map<String, Value>);

impl Flags<'_> {
    fn check_known(&self, known: &[&str]) -> Result<()> {
        match self.0.keys().find(|k| !known.contains(&k.as_str()) && !DIFFUSION_FLAGS.contains(&k.as_str())) {
            Some(k) => Err(bad(format!("unknown flag {k:?}"))),
            None => Ok(()),
        }
    }
    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("{key} must be a non-negative integer, got {v}"))),
        }
    }
    /// `-1` means "unset", as in the reference.
    fn opt(&self, key: &str) -> Result<Option<usize>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) if v.as_i64() == Some(-1) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| bad(format!("{key} must be -1 or a positive integer, got {v}"))),
        }
    }
    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.0.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(bad(format!("{key} must be true or false, got {v}"))),
        }
    }
    fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| bad(format!("{key} must be a number, got {v}"))),
        }
    }
    fn list(&self, key: &str, default: &str) -> Result<Vec<usize>> {
        let text = match self.0.get(key) {
            None => default.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(v) => {
                return Err(bad(format!("{key} must be a comma-separated string like \"16,8\", got {v}")));
            }
        };
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        text.split(',')
            .map(|s| {
                s.trim().parse::<usize>().map_err(|_| bad(format!("{key}: {s:?} is not a positive integer")))
            })
            .collect()
    }
}

/// The reference's channel multipliers by image size (guided-diffusion, plus improved-diffusion's 32).
fn default_channel_mult(image_size: usize) -> Result<Vec<usize>> {
    Ok(match image_size {
        256 => vec![1, 1, 2, 2, 4, 4],
        128 => vec![1, 1, 2, 3, 4],
        64 => vec![1, 2, 3, 4],
        32 => vec![1, 2, 2, 2],
        512 => {
            return Err(
                bad("image_size 512 uses a channel multiplier of 0.5, which is not supported".into()),
            );
        }
        other => {
            return Err(bad(format!("no default channel_mult for image_size {other}: give channel_mult")));
        }
    })
}

/// A UNet from guided-diffusion / improved-diffusion model flags (3 input channels; 6 outputs
/// with `learn_sigma`; 1000 classes with `class_cond`).
pub fn unet_from_flags(flags: &Map<String, Value>) -> Result<UNetConfig> {
    let f = Flags(flags);
    f.check_known(UNET_FLAGS)?;
    let image_size = f.usize("image_size", 64)?;
    let channel_mult = match f.list("channel_mult", "")? {
        m if m.is_empty() => default_channel_mult(image_size)?,
        m => m,
    };
    let learn_sigma = f.bool("learn_sigma", false)?;
    let config = UNetConfig::new(
        image_size,
        3,
        f.usize("num_channels", 128)?,
        if learn_sigma { 6 } else { 3 },
        f.usize("num_res_blocks", 2)?,
        f.list("attention_resolutions", "16,8")?,
        channel_mult,
    )
    .with_dropout(f.f64("dropout", 0.0)?)
    .with_num_classes(f.bool("class_cond", false)?.then_some(1000))
    .with_num_heads(f.usize("num_heads", 4)?)
    .with_num_head_channels(f.opt("num_head_channels")?)
    .with_num_heads_upsample(f.opt("num_heads_upsample")?)
    .with_use_scale_shift_norm(f.bool("use_scale_shift_norm", true)?)
    .with_resblock_updown(f.bool("resblock_updown", false)?)
    .with_attention_order(if f.bool("use_new_attention_order", false)? {
        AttentionOrder::New
    } else {
        AttentionOrder::Legacy
    });
    config.validate()?;
    Ok(config)
}

/// A classifier from guided-diffusion's classifier flags (`create_classifier`: 64 channels per
/// head, 1000 classes).
pub fn classifier_from_flags(flags: &Map<String, Value>) -> Result<EncoderUNetConfig> {
    let f = Flags(flags);
    f.check_known(CLASSIFIER_FLAGS)?;
    let image_size = f.usize("image_size", 64)?;
    let pool = match flags.get("classifier_pool").and_then(Value::as_str).unwrap_or("attention") {
        "adaptive" => Pool::Adaptive,
        "attention" => Pool::Attention,
        "spatial" => Pool::Spatial,
        "spatial_v2" => Pool::SpatialV2,
        other => return Err(bad(format!("unknown classifier_pool {other:?}"))),
    };
    let unet = UNetConfig::new(
        image_size,
        3,
        f.usize("classifier_width", 128)?,
        1000,
        f.usize("classifier_depth", 2)?,
        f.list("classifier_attention_resolutions", "32,16,8")?,
        default_channel_mult(image_size)?,
    )
    .with_num_head_channels(Some(64))
    .with_use_scale_shift_norm(f.bool("classifier_use_scale_shift_norm", true)?)
    .with_resblock_updown(f.bool("classifier_resblock_updown", true)?);
    let config = EncoderUNetConfig::new(unet).with_pool(pool);
    config.validate()?;
    Ok(config)
}

/// Whether a JSON object looks like reference flags (a model or a classifier).
pub fn looks_like_flags(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.contains_key("num_channels") || o.keys().any(|k| k.starts_with("classifier_")))
}

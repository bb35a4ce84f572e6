//! `diffusion model`: architecture summaries, parameter counts and PyTorch import.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use diffusion_core::{ModelVariance, ProcessRecord};
use diffusion_models::checkpoint::{
    AnyModel, ModelSpec, import_pytorch_classifier, import_pytorch_unet, load_checkpoint, save_checkpoint,
};
use diffusion_models::summary::Summary;
use diffusion_models::{EncoderUNetConfig, MlpConfig, UNetConfig};
use diffusion_sample::checkpoint::check_fits;

use crate::process_args::ProcessArgs;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table of parts and parameter counts.
    Table,
    /// `{"kind", "config", "rows", "total_params"}`.
    Json,
}

/// Arguments of `diffusion model`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["preset", "config", "checkpoint"])))]
pub struct ModelArgs {
    /// A named network: cifar10_iddpm, imagenet64_adm, mnist, tiny, tiny_mnist (UNets),
    /// imagenet64_classifier, tiny_classifier (classifiers), mlp.
    #[arg(long)]
    pub preset: Option<String>,
    /// A JSON file: `{"kind": "unet"|"classifier"|"mlp", "config": {…}}`, a bare UNet config, or
    /// guided-/improved-diffusion flags (`{"num_channels": 128, "attention_resolutions": "16,8", …}`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A diffusion-rs checkpoint (its header holds the configuration).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// How to print the summary.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Import a PyTorch state dict (improved-/guided-diffusion `.pt`) into the chosen network…
    #[arg(long, requires = "save")]
    pub import_pytorch: Option<PathBuf>,
    /// Save the network (imported, or freshly initialised) as a diffusion-rs checkpoint here; a
    /// denoiser's checkpoint records the process of the flags below.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// The process a saved denoiser is for (default: linear, 1000 steps, ε; the variance
    /// learned-range when the network outputs twice its input channels — the presets'
    /// `learn_sigma` —, fixed-small otherwise).
    #[command(flatten)]
    pub process: ProcessArgs,
}

/// The `extra` header fields of a saved network: the process (for a denoiser) and the source.
#[derive(serde::Serialize)]
struct SavedExtra {
    #[serde(flatten)]
    process: ProcessRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    imported_from: Option<PathBuf>,
}

/// The spec of a preset name.
pub fn preset_spec(name: &str) -> Result<ModelSpec> {
    let key = name.replace('-', "_");
    Ok(match key.as_str() {
        "imagenet64_classifier" => ModelSpec::Classifier(EncoderUNetConfig::imagenet64_classifier()),
        "tiny_classifier" => ModelSpec::Classifier(EncoderUNetConfig::tiny(10)),
        "mlp" => ModelSpec::Mlp(MlpConfig::new()),
        _ => ModelSpec::Unet(UNetConfig::preset(&key).map_err(|_| {
            anyhow::anyhow!(
                "unknown preset {name:?}: expected cifar10_iddpm, imagenet64_adm, mnist, tiny, tiny_mnist, \
                 imagenet64_classifier, tiny_classifier or mlp"
            )
        })?),
    })
}

fn config_spec(path: &Path) -> Result<ModelSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let spec = if diffusion_models::openai::looks_like_flags(&v) {
        let flags = v.as_object().expect("flags are an object");
        if flags.keys().any(|k| k.starts_with("classifier_")) {
            ModelSpec::Classifier(diffusion_models::openai::classifier_from_flags(flags)?)
        } else {
            ModelSpec::Unet(diffusion_models::openai::unet_from_flags(flags)?)
        }
    } else if v.get("kind").is_some() {
        ModelSpec::from_json(&v)?
    } else {
        ModelSpec::Unet(UNetConfig::from_json(&v)?)
    };
    Ok(spec)
}

fn summarise(model: &AnyModel) -> Summary {
    match model {
        AnyModel::Unet(m) => Summary::of_unet(m),
        AnyModel::Classifier(m) => Summary::of_classifier(m),
        AnyModel::Mlp(m) => Summary::of_mlp(m),
    }
}

fn build(spec: &ModelSpec, device: &Device) -> Result<AnyModel> {
    Ok(match spec {
        ModelSpec::Unet(c) => AnyModel::Unet(c.try_init(device)?),
        ModelSpec::Classifier(c) => AnyModel::Classifier(c.try_init(device)?),
        ModelSpec::Mlp(c) => {
            c.validate()?;
            AnyModel::Mlp(c.init(device))
        }
    })
}

/// Runs the command.
pub fn run(args: &ModelArgs, device: &Device, out: &mut dyn Write) -> Result<()> {
    let (spec, model) = if let Some(path) = &args.checkpoint {
        let (header, model) = load_checkpoint(path, device)?;
        (header.model, model)
    } else {
        let spec = match (&args.preset, &args.config) {
            (Some(name), _) => preset_spec(name)?,
            (None, Some(path)) => config_spec(path)?,
            (None, None) => unreachable!("clap requires a source"),
        };
        let model = match &args.import_pytorch {
            Some(pt) => match &spec {
                ModelSpec::Unet(c) => AnyModel::Unet(import_pytorch_unet(pt, c, device)?),
                ModelSpec::Classifier(c) => AnyModel::Classifier(import_pytorch_classifier(pt, c, device)?),
                ModelSpec::Mlp(_) => bail!("--import-pytorch supports UNets and classifiers, not the MLP"),
            },
            None => build(&spec, device)?,
        };
        (spec, model)
    };
    if let Some(dest) = &args.save {
        // A denoiser's (data, output) channels; its variance defaults to guided-diffusion's
        // `learn_sigma` convention (learned range with 2C outputs).
        let channels = match &spec {
            ModelSpec::Unet(c) => Some((c.in_channels, c.out_channels)),
            ModelSpec::Mlp(c) => Some((c.data_dim, c.out_dim)),
            ModelSpec::Classifier(_) if args.process.given() => {
                bail!(
                    "--schedule/--steps/--variance/--mean/--zero-terminal-snr describe a denoiser's process, not a classifier's"
                )
            }
            ModelSpec::Classifier(_) => None,
        };
        let diffusion = match channels {
            Some((data, out)) => {
                let default =
                    if out == 2 * data { ModelVariance::LearnedRange } else { ModelVariance::FixedSmall };
                let p = args.process.spec(default)?;
                check_fits(dest, p.config.variance, data, out)?;
                Some(p)
            }
            None => None,
        };
        let extra = serde_json::to_value(SavedExtra {
            process: ProcessRecord { diffusion },
            imported_from: args.import_pytorch.clone(),
        })?;
        match &model {
            AnyModel::Unet(m) => save_checkpoint(dest, &spec, m, extra)?,
            AnyModel::Classifier(m) => save_checkpoint(dest, &spec, m, extra)?,
            AnyModel::Mlp(m) => save_checkpoint(dest, &spec, m, extra)?,
        }
        eprintln!("wrote {}", dest.display());
    }
    let summary = summarise(&model);
    let (kind, config) = match &spec {
        ModelSpec::Unet(c) => ("unet", serde_json::to_value(c)?),
        ModelSpec::Classifier(c) => ("classifier", serde_json::to_value(c)?),
        ModelSpec::Mlp(c) => ("mlp", serde_json::to_value(c)?),
    };
    match args.format {
        Format::Json => {
            let v = serde_json::json!({
                "kind": kind,
                "config": config,
                "rows": summary.rows,
                "total_params": summary.total_params,
            });
            serde_json::to_writer_pretty(&mut *out, &v)?;
            writeln!(out)?;
        }
        Format::Table => {
            writeln!(out, "# {kind}: {}", serde_json::to_string(&config)?)?;
            writeln!(out, "{:<18} {:<44} {:>14}", "part", "layers", "parameters")?;
            for r in &summary.rows {
                writeln!(out, "{:<18} {:<44} {:>14}", r.name, r.kind, group_digits(r.params))?;
            }
            writeln!(out, "{:<18} {:<44} {:>14}", "total", "", group_digits(summary.total_params))?;
        }
    }
    Ok(())
}

/// `52546438` → `52,546,438`.
fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

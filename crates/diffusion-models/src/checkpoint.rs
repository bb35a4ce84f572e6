//! Self-describing checkpoints, and import of PyTorch state dicts saved by openai/improved-diffusion
//! and openai/guided-diffusion.
//!
//! # Checkpoint file
//!
//! One file, written atomically (temporary file, fsync, rename):
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `DIFFRS\0\x01` |
//! | 8 | length of the header, little-endian |
//! | n | header: JSON [`CheckpointHeader`] (format version, model spec with its full config) |
//! | 8 | length of the payload |
//! | m | payload: the weights in burn's burnpack format |
//! | 8 | FNV-1a 64 checksum of header and payload |
//!
//! Loading needs no flags: the header says which network to build.

use std::fs;
use std::io::Write;
use std::path::Path;

use burn::module::Module;
use burn::store::{BurnpackStore, KeyRemapper, ModuleSnapshot, PytorchStore};
use burn::tensor::{Bytes, Device};
use serde::{Deserialize, Serialize};

use crate::classifier::{EncoderUNet, EncoderUNetConfig, Pool};
use crate::error::{ModelError, Result};
use crate::mlp::{Mlp, MlpConfig};
use crate::unet::{UNet, UNetConfig};

const MAGIC: &[u8; 8] = b"DIFFRS\0\x01";
/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;

/// Which network a checkpoint holds, with its full configuration.
///
/// Deserialised through [`ModelSpec::from_json`], so a field added to a configuration later (with
/// its default) does not make older checkpoints and run configs unreadable.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "config", rename_all = "snake_case")]
pub enum ModelSpec {
    /// A [`UNet`].
    Unet(UNetConfig),
    /// An [`EncoderUNet`] classifier.
    Classifier(EncoderUNetConfig),
    /// An [`Mlp`].
    Mlp(MlpConfig),
}

/// The JSON header of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The network.
    pub model: ModelSpec,
    /// Free-form extra state (training step, EMA rate, …) that other crates attach.
    #[serde(default)]
    pub extra: serde_json::Value,
    /// Named binary sections stored after the weights, in this order (e.g. a training run's
    /// optimizer state). Readers that only want the network ignore them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<SectionInfo>,
}

impl CheckpointHeader {
    /// `extra` read as the typed struct of the layer that wrote it (e.g. diffusion-core's
    /// `ProcessRecord`); fields of other layers are ignored, a missing or malformed field of `T`
    /// is an error naming the file.
    pub fn extra_as<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<T> {
        let extra = if self.extra.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            self.extra.clone()
        };
        serde_json::from_value(extra).map_err(|e| invalid(path, format!("unreadable header metadata: {e}")))
    }
}

/// Name and length of one binary section of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionInfo {
    /// Section name, unique within a checkpoint.
    pub name: String,
    /// Length in bytes.
    pub len: u64,
}

/// A network of any kind, as loaded from a checkpoint.
#[derive(Debug)]
pub enum AnyModel {
    /// A UNet.
    Unet(UNet),
    /// A classifier.
    Classifier(EncoderUNet),
    /// An MLP.
    Mlp(Mlp),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.display().to_string(), source }
}

fn invalid(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidCheckpoint { path: path.display().to_string(), reason: reason.into() }
}

/// FNV-1a, 64-bit: detects truncation and bit rot (not an adversary).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Serialises a module's weights to burnpack bytes.
pub fn module_to_bytes<M: Module>(module: &M) -> Result<Vec<u8>> {
    let mut store = BurnpackStore::from_bytes(None);
    module
        .save_into(&mut store)
        .map_err(|e| ModelError::InvalidConfig(format!("cannot serialise the module: {e}")))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| ModelError::InvalidConfig(format!("cannot serialise the module: {e}")))?;
    Ok(bytes.to_vec())
}

/// Loads burnpack bytes into a module built with the same configuration (every tensor must match).
pub fn module_from_bytes<M: Module>(mut module: M, bytes: Vec<u8>, path: &Path) -> Result<M> {
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)));
    let result =
        module.load_from(&mut store).map_err(|e| invalid(path, format!("weights do not load: {e}")))?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(invalid(
            path,
            format!("weights do not fit the model: missing {:?}, errors {:?}", result.missing, result.errors),
        ));
    }
    Ok(module)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
/// A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // Persist the rename itself.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// Writes a checkpoint of `module` described by `spec` (and optional `extra` state).
pub fn save_checkpoint<M: Module>(
    path: &Path,
    spec: &ModelSpec,
    module: &M,
    extra: serde_json::Value,
) -> Result<()> {
    save_checkpoint_with_sections(path, spec, module, extra, &[])
}

/// Writes a checkpoint of `module` followed by named binary `sections`, atomically.
///
/// Layout: magic, header length (u64 LE), JSON header, weights length, weights, then each
/// section's bytes (lengths in the header), then an FNV-1a checksum of header, weights and
/// sections.
pub fn save_checkpoint_with_sections<M: Module>(
    path: &Path,
    spec: &ModelSpec,
    module: &M,
    extra: serde_json::Value,
    sections: &[(&str, &[u8])],
) -> Result<()> {
    let mut names = std::collections::BTreeSet::new();
    for (name, _) in sections {
        if !names.insert(*name) {
            return Err(invalid(path, format!("section `{name}` given twice")));
        }
    }
    let header = CheckpointHeader {
        format_version: FORMAT_VERSION,
        model: spec.clone(),
        extra,
        sections: sections
            .iter()
            .map(|(name, bytes)| SectionInfo { name: (*name).to_string(), len: bytes.len() as u64 })
            .collect(),
    };
    let header = serde_json::to_vec(&header).expect("checkpoint headers serialise");
    let payload = module_to_bytes(module)?;
    let body: usize = sections.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(32 + header.len() + payload.len() + body);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let mut parts: Vec<&[u8]> = vec![&header, &payload];
    for (_, bytes) in sections {
        out.extend_from_slice(bytes);
        parts.push(bytes);
    }
    out.extend_from_slice(&fnv1a(&parts).to_le_bytes());
    write_atomic(path, &out)
}

/// Reads and verifies a checkpoint's header and payload.
pub fn read_checkpoint(path: &Path) -> Result<(CheckpointHeader, Vec<u8>)> {
    let (header, payload, _) = read_checkpoint_sections(path)?;
    Ok((header, payload))
}

/// Named binary sections of a checkpoint, in file order.
pub type Sections = Vec<(String, Vec<u8>)>;

/// Reads and verifies a checkpoint: header, weights and its named sections.
pub fn read_checkpoint_sections(path: &Path) -> Result<(CheckpointHeader, Vec<u8>, Sections)> {
    let data = fs::read(path).map_err(io_err(path))?;
    let take = |at: usize, n: usize, what: &str| {
        data.get(at..at.saturating_add(n))
            .ok_or_else(|| invalid(path, format!("truncated: the file ends inside the {what}")))
    };
    let len_at = |at: usize, what: &str| -> Result<usize> {
        let b = take(at, 8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    if take(0, 8, "magic number")
        .map_err(|_| invalid(path, "not a diffusion-rs checkpoint (file too short)"))?
        != MAGIC
    {
        return Err(invalid(path, "not a diffusion-rs checkpoint (wrong magic number)"));
    }
    let hlen = len_at(8, "header length")?;
    let header_bytes = take(16, hlen, "header")?;
    let header: CheckpointHeader =
        serde_json::from_slice(header_bytes).map_err(|e| invalid(path, format!("unreadable header: {e}")))?;
    let plen = len_at(16 + hlen, "payload length")?;
    let payload = take(24 + hlen, plen, "weights")?;
    let mut at = 24 + hlen + plen;
    let mut parts: Vec<&[u8]> = vec![header_bytes, payload];
    let mut sections = Vec::with_capacity(header.sections.len());
    for s in &header.sections {
        let bytes = take(at, s.len as usize, &format!("section `{}`", s.name))?;
        parts.push(bytes);
        sections.push((s.name.clone(), bytes.to_vec()));
        at += s.len as usize;
    }
    let sum = len_at(at, "checksum")? as u64;
    if data.len() != at + 8 {
        return Err(invalid(path, format!("{} unexpected trailing bytes", data.len() - (at + 8))));
    }
    if fnv1a(&parts) != sum {
        return Err(invalid(path, "checksum mismatch: the file is corrupt"));
    }
    if header.format_version != FORMAT_VERSION {
        return Err(invalid(
            path,
            format!("format version {} is not supported (expected {FORMAT_VERSION})", header.format_version),
        ));
    }
    Ok((header, payload.to_vec(), sections))
}

/// Loads a checkpoint onto `device`, building the network its header describes.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<(CheckpointHeader, AnyModel)> {
    let (header, payload) = read_checkpoint(path)?;
    let bad_config = |e: ModelError| invalid(path, format!("its model configuration is invalid: {e}"));
    let model = match &header.model {
        ModelSpec::Unet(c) => {
            AnyModel::Unet(module_from_bytes(c.try_init(device).map_err(bad_config)?, payload, path)?)
        }
        ModelSpec::Classifier(c) => {
            AnyModel::Classifier(module_from_bytes(c.try_init(device).map_err(bad_config)?, payload, path)?)
        }
        ModelSpec::Mlp(c) => {
            c.validate().map_err(bad_config)?;
            AnyModel::Mlp(module_from_bytes(c.init(device), payload, path)?)
        }
    };
    Ok((header, model))
}

/// The renames from PyTorch `nn.Sequential` indices to our field names, shared by the UNet and
/// the classifier.
fn common_remaps() -> KeyRemapper {
    let pairs = [
        (r"^time_embed\.0\.", "time_embed.linear_1."),
        (r"^time_embed\.2\.", "time_embed.linear_2."),
        (r"\.in_layers\.0\.", ".in_layers.norm."),
        (r"\.in_layers\.2\.", ".in_layers.conv."),
        (r"\.emb_layers\.1\.", ".emb_layers.linear."),
        (r"\.out_layers\.0\.", ".out_layers.norm."),
        (r"\.out_layers\.3\.", ".out_layers.conv."),
    ];
    let mut r = KeyRemapper::new();
    for (from, to) in pairs {
        r = r.add_pattern(from, to).expect("valid regex");
    }
    r
}

fn import<M: Module>(path: &Path, mut module: M, remapper: KeyRemapper) -> Result<M> {
    let fail = |reason: String| ModelError::Import { path: path.display().to_string(), reason };
    if !path.exists() {
        return Err(fail("no such file".into()));
    }
    let mut store = PytorchStore::from_file(path)
        .remap(remapper)
        .skip_enum_variants(true)
        .map_indices_contiguous(false)
        .allow_partial(true);
    let result = module.load_from(&mut store).map_err(|e| fail(e.to_string()))?;
    if !result.missing.is_empty() || !result.unused.is_empty() || !result.errors.is_empty() {
        let missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
        return Err(fail(format!(
            "the state dict does not match the configuration: missing {missing:?}, unused {:?}, errors {:?}",
            result.unused, result.errors
        )));
    }
    Ok(module)
}

/// Imports a UNet state dict (`model*.pt` or `ema_*.pt`) written by improved-diffusion or
/// guided-diffusion with `torch.save(model.state_dict())`, into a UNet built from `config` (which
/// must match the hyperparameters the checkpoint was trained with).
pub fn import_pytorch_unet(path: &Path, config: &UNetConfig, device: &Device) -> Result<UNet> {
    let model = config.try_init(device)?;
    let remapper = common_remaps()
        .add_pattern(r"^out\.0\.", "out.norm.")
        .and_then(|r| r.add_pattern(r"^out\.2\.", "out.conv."))
        .expect("valid regex");
    import(path, model, remapper)
}

/// Imports a guided-diffusion classifier state dict into a classifier built from `config`.
pub fn import_pytorch_classifier(
    path: &Path,
    config: &EncoderUNetConfig,
    device: &Device,
) -> Result<EncoderUNet> {
    let model = config.try_init(device)?;
    let pairs: &[(&str, &str)] = match config.pool {
        Pool::Adaptive => &[(r"^out\.0\.", "out.norm."), (r"^out\.3\.", "out.conv.")],
        Pool::Attention => &[(r"^out\.0\.", "out.norm."), (r"^out\.2\.", "out.pool.")],
        Pool::Spatial => &[(r"^out\.0\.", "out.linear_1."), (r"^out\.2\.", "out.linear_2.")],
        Pool::SpatialV2 => {
            &[(r"^out\.0\.", "out.linear_1."), (r"^out\.1\.", "out.norm."), (r"^out\.3\.", "out.linear_2.")]
        }
    };
    let mut remapper = common_remaps();
    for (from, to) in pairs {
        remapper = remapper.add_pattern(*from, *to).expect("valid regex");
    }
    import(path, model, remapper)
}

//! Reading configurations from JSON written by people: fields with defaults may be left out,
//! required fields and unknown (misspelt) fields are named in the error.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::checkpoint::ModelSpec;
use crate::classifier::EncoderUNetConfig;
use crate::error::{ModelError, Result};
use crate::mlp::MlpConfig;
use crate::unet::UNetConfig;

fn bad(m: String) -> ModelError {
    ModelError::InvalidConfig(m)
}

/// Overlays `user` on the serialised `defaults`: every key of `user` must exist in `defaults`,
/// every key of `required` must be in `user`.
pub fn merge<T: Serialize + DeserializeOwned>(
    user: &Value,
    defaults: &T,
    required: &[&str],
    what: &str,
) -> Result<T> {
    let obj = user.as_object().ok_or_else(|| bad(format!("a {what} must be a JSON object, got {user}")))?;
    let Value::Object(mut merged) = serde_json::to_value(defaults).expect("configs serialise") else {
        unreachable!("configs serialise to objects")
    };
    if let Some(k) = obj.keys().find(|k| !merged.contains_key(*k)) {
        let mut known: Vec<&String> = merged.keys().collect();
        known.sort();
        return Err(bad(format!("unknown {what} field {k:?} (known fields: {known:?})")));
    }
    if let Some(k) = required.iter().find(|k| !obj.contains_key(**k)) {
        return Err(bad(format!("the {what} needs the field {k:?}")));
    }
    for (k, v) in obj {
        merged.insert(k.clone(), v.clone());
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| bad(format!("{what}: {e}")))
}

const UNET_REQUIRED: [&str; 7] = [
    "image_size",
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "attention_resolutions",
    "channel_mult",
];

impl UNetConfig {
    /// A UNet configuration from JSON; optional fields take their defaults.
    pub fn from_json(v: &Value) -> Result<Self> {
        let c: Self = merge(v, &Self::new(0, 0, 0, 0, 0, vec![], vec![]), &UNET_REQUIRED, "UNet config")?;
        c.validate()?;
        Ok(c)
    }
}

impl EncoderUNetConfig {
    /// A classifier configuration from JSON (`{"unet": {…}, "pool": "attention"}`).
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad(format!("a classifier config must be a JSON object, got {v}")))?;
        let unet = UNetConfig::from_json(
            obj.get("unet").ok_or_else(|| bad("the classifier config needs the field \"unet\"".into()))?,
        )?;
        let mut rest: Map<String, Value> = obj.clone();
        rest.insert("unet".into(), serde_json::to_value(&unet).expect("configs serialise"));
        let c: Self = merge(&Value::Object(rest), &Self::new(unet), &[], "classifier config")?;
        c.validate()?;
        Ok(c)
    }
}

impl MlpConfig {
    /// An MLP configuration from JSON; every field has a default.
    pub fn from_json(v: &Value) -> Result<Self> {
        let c: Self = merge(v, &Self::new(), &[], "MLP config")?;
        c.validate()?;
        Ok(c)
    }
}

impl ModelSpec {
    /// `{"kind": "unet" | "classifier" | "mlp", "config": {…}}`, with defaults filled in.
    pub fn from_json(v: &Value) -> Result<Self> {
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a model spec needs a \"kind\"".into()))?;
        let config = v.get("config").ok_or_else(|| bad("a model spec needs a \"config\"".into()))?;
        match kind {
            "unet" => Ok(Self::Unet(UNetConfig::from_json(config)?)),
            "classifier" => Ok(Self::Classifier(EncoderUNetConfig::from_json(config)?)),
            "mlp" => Ok(Self::Mlp(MlpConfig::from_json(config)?)),
            other => Err(bad(format!("unknown model kind {other:?} (expected unet, classifier or mlp)"))),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ModelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(deserializer)?;
        Self::from_json(&v).map_err(serde::de::Error::custom)
    }
}

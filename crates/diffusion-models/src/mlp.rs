//! A small MLP denoiser for 2-D point data (the survey's swiss roll, Fig. 3).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::error::{ModelError, Result};

/// Configuration of an [`Mlp`].
#[derive(Config, Debug, PartialEq)]
pub struct MlpConfig {
    /// Data dimension (2 for points in the plane).
    #[config(default = 2)]
    pub data_dim: usize,
    /// Output dimension (`data_dim`, or twice it for a learned variance).
    #[config(default = 2)]
    pub out_dim: usize,
    /// Hidden width.
    #[config(default = 128)]
    pub hidden: usize,
    /// Hidden layers (at least 1).
    #[config(default = 3)]
    pub layers: usize,
    /// Width of the sinusoidal timestep embedding.
    #[config(default = 64)]
    pub time_dim: usize,
}

/// An MLP `(x_t, t) → output`: the sinusoidal embedding of t goes through its own Linear + SiLU and
/// is added to every hidden layer's pre-activation.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Embedding projection.
    pub time_proj: Linear,
    /// Input layer.
    pub input: Linear,
    /// Hidden layers.
    pub hidden: Vec<Linear>,
    /// Output layer.
    pub output: Linear,
    /// Width of the sinusoidal embedding.
    pub time_dim: usize,
}

impl MlpConfig {
    /// Checks the invariants.
    pub fn validate(&self) -> Result<()> {
        if self.data_dim == 0
            || self.out_dim == 0
            || self.hidden == 0
            || self.layers == 0
            || self.time_dim < 2
        {
            return Err(ModelError::InvalidConfig(format!(
                "MLP sizes must be positive (layers ≥ 1, time_dim ≥ 2): {self:?}"
            )));
        }
        Ok(())
    }

    /// Builds the MLP.
    ///
    /// # Panics
    /// If [`Self::validate`] fails.
    pub fn init(&self, device: &Device) -> Mlp {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        Mlp {
            time_proj: LinearConfig::new(self.time_dim, self.hidden).init(device),
            input: LinearConfig::new(self.data_dim, self.hidden).init(device),
            hidden: (1..self.layers)
                .map(|_| LinearConfig::new(self.hidden, self.hidden).init(device))
                .collect(),
            output: LinearConfig::new(self.hidden, self.out_dim).init(device),
            time_dim: self.time_dim,
        }
    }
}

impl Mlp {
    /// # Shapes
    /// `x: [B, data_dim]`, `timesteps: [B]` → `[B, out_dim]`.
    pub fn forward(&self, x: Tensor<2>, timesteps: Tensor<1>) -> Tensor<2> {
        crate::ops::mlp(self, x, timesteps)
    }
}

//! The noise-aware classifier of classifier guidance: the UNet's encoder and middle block with a
//! pooling head (guided-diffusion's `EncoderUNetModel`), mapping `(x_t, t)` to class logits.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, Initializer, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use crate::blocks::{AttentionOrder, Layer, forward_seq, group_norm, qkv_attention};
use crate::embedding::{MAX_PERIOD, timestep_embedding};
use crate::error::{ModelError, Result};
use crate::unet::{TimeEmbed, UNetConfig};

/// The classifier's pooling head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// GroupNorm, SiLU, global average pool, zero-initialised 1×1 conv.
    #[default]
    Adaptive,
    /// GroupNorm, SiLU, CLIP-style attention pooling (needs `num_head_channels`).
    Attention,
    /// Mean of every block's features, concatenated, then Linear(2048), ReLU, Linear.
    Spatial,
    /// Like `Spatial` with GroupNorm + SiLU instead of ReLU.
    SpatialV2,
}

/// A noise-aware classifier: the encoder half of a [`UNetConfig`] and a [`Pool`] head.
#[derive(Config, Debug, PartialEq)]
pub struct EncoderUNetConfig {
    /// The encoder's hyperparameters (`out_channels` = number of classes; `num_classes` unused).
    pub unet: UNetConfig,
    /// The pooling head.
    #[config(default = "Pool::Adaptive")]
    pub pool: Pool,
}

impl EncoderUNetConfig {
    /// guided-diffusion's ImageNet 64×64 classifier: 128 channels, 4 res blocks, mult 1,2,3,4,
    /// attention at 32/16/8 with 64 channels per head (legacy order, as `create_classifier`),
    /// BigGAN down, AdaGN, attention pooling, 1000 classes.
    pub fn imagenet64_classifier() -> Self {
        let unet = UNetConfig::new(64, 3, 128, 1000, 4, vec![32, 16, 8], vec![1, 2, 3, 4])
            .with_num_head_channels(Some(64))
            .with_resblock_updown(true)
            .with_use_scale_shift_norm(true);
        Self::new(unet).with_pool(Pool::Attention)
    }

    /// A small classifier for tests and the CPU demo (the tiny UNet's encoder, `classes` outputs).
    pub fn tiny(classes: usize) -> Self {
        let mut unet = UNetConfig::tiny();
        unet.out_channels = classes;
        Self::new(unet)
    }

    /// Checks every invariant.
    pub fn validate(&self) -> Result<()> {
        self.unet.validate()?;
        if self.pool == Pool::Attention && self.unet.num_head_channels.is_none() {
            return Err(ModelError::InvalidConfig("attention pooling needs num_head_channels".into()));
        }
        Ok(())
    }

    /// Builds the classifier, or says which invariant fails.
    pub fn try_init(&self, device: &Device) -> Result<EncoderUNet> {
        self.validate()?;
        Ok(self.build(device))
    }

    /// Builds the classifier.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`Self::validate`]).
    pub fn init(&self, device: &Device) -> EncoderUNet {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        self.build(device)
    }

    fn build(&self, device: &Device) -> EncoderUNet {
        // The encoder and middle block are exactly the UNet's.
        let full = self.unet.init(device);
        let c = &self.unet;
        let levels = c.channel_mult.len();
        let ch = c.channel_mult[levels - 1] * c.model_channels;
        let feature_size: usize = {
            let mut total = c.channel_mult[0] * c.model_channels;
            for (level, &m) in c.channel_mult.iter().enumerate() {
                total += c.num_res_blocks * m * c.model_channels;
                if level != levels - 1 {
                    total += m * c.model_channels;
                }
            }
            total + ch
        };
        let k = c.out_channels;
        let out = match self.pool {
            Pool::Adaptive => ClassifierHead::Adaptive(AdaptiveHead {
                norm: group_norm(c.norm_groups, ch, device),
                conv: Conv2dConfig::new([ch, k], [1, 1]).with_initializer(Initializer::Zeros).init(device),
            }),
            Pool::Attention => {
                let hc = c.num_head_channels.expect("validated");
                let spatial = c.image_size >> (levels - 1);
                ClassifierHead::Attention(AttentionHead {
                    norm: group_norm(c.norm_groups, ch, device),
                    pool: AttentionPool2d::new(spatial, ch, hc, k, device),
                })
            }
            Pool::Spatial => ClassifierHead::Spatial(SpatialHead {
                linear_1: LinearConfig::new(feature_size, 2048).init(device),
                norm: None,
                linear_2: LinearConfig::new(2048, k).init(device),
            }),
            Pool::SpatialV2 => ClassifierHead::Spatial(SpatialHead {
                linear_1: LinearConfig::new(feature_size, 2048).init(device),
                norm: Some(group_norm(c.norm_groups, 2048, device)),
                linear_2: LinearConfig::new(2048, k).init(device),
            }),
        };
        EncoderUNet {
            time_embed: full.time_embed,
            input_blocks: full.input_blocks,
            middle_block: full.middle_block,
            out,
            model_channels: c.model_channels,
            num_classes: k,
        }
    }
}

/// Adaptive pooling head: `out.0` norm, `out.3` conv.
#[derive(Module, Debug)]
pub struct AdaptiveHead {
    /// `out.0`.
    pub norm: GroupNorm,
    /// `out.3` (zero-initialised 1×1).
    pub conv: Conv2d,
}

/// Attention pooling head: `out.0` norm, `out.2` pool.
#[derive(Module, Debug)]
pub struct AttentionHead {
    /// `out.0`.
    pub norm: GroupNorm,
    /// `out.2`.
    pub pool: AttentionPool2d,
}

/// Spatial pooling head: `out.0` linear, (`out.1` norm for v2), last linear.
#[derive(Module, Debug)]
pub struct SpatialHead {
    /// `out.0`.
    pub linear_1: Linear,
    /// `out.1` (spatial_v2 only).
    pub norm: Option<GroupNorm>,
    /// `out.2` (spatial) or `out.3` (spatial_v2).
    pub linear_2: Linear,
}

/// The classifier head.
#[derive(Module, Debug)]
pub enum ClassifierHead {
    /// [`Pool::Adaptive`].
    Adaptive(AdaptiveHead),
    /// [`Pool::Attention`].
    Attention(AttentionHead),
    /// [`Pool::Spatial`] and [`Pool::SpatialV2`].
    Spatial(SpatialHead),
}

/// CLIP's attention pooling: the mean token attends over all positions (with a learned
/// positional embedding), projected to the outputs.
#[derive(Module, Debug)]
pub struct AttentionPool2d {
    /// `[C, HW + 1]`, initialised 𝒩(0, 1/C).
    pub positional_embedding: Param<Tensor<2>>,
    /// 1×1 projection to q, k, v.
    pub qkv_proj: Conv1d,
    /// 1×1 output projection.
    pub c_proj: Conv1d,
    /// Heads = C / channels per head.
    pub num_heads: usize,
}

impl AttentionPool2d {
    /// For a `spatial`×`spatial` feature map of `embed_dim` channels.
    pub fn new(spatial: usize, embed_dim: usize, head_channels: usize, out: usize, device: &Device) -> Self {
        let std = 1.0 / (embed_dim as f64).sqrt();
        let pe =
            Tensor::<2>::random([embed_dim, spatial * spatial + 1], Distribution::Normal(0.0, std), device);
        Self {
            positional_embedding: Param::from_tensor(pe),
            qkv_proj: Conv1dConfig::new(embed_dim, 3 * embed_dim, 1).init(device),
            c_proj: Conv1dConfig::new(embed_dim, out, 1).init(device),
            num_heads: embed_dim / head_channels,
        }
    }

    /// # Shapes
    /// `[B, C, H, W] → [B, out]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [b, c, h, w] = x.dims();
        let x = x.reshape([b, c, h * w]);
        let mean = x.clone().mean_dim(2);
        let x = Tensor::cat(vec![mean, x], 2) + self.positional_embedding.val().unsqueeze_dim::<3>(0);
        let a = qkv_attention(crate::ops::conv1d(&self.qkv_proj, x), self.num_heads, AttentionOrder::New);
        let y = crate::ops::conv1d(&self.c_proj, a);
        let k = y.dims()[1];
        y.narrow(2, 0, 1).reshape([b, k])
    }
}

/// The noise-aware classifier network.
#[derive(Module, Debug)]
pub struct EncoderUNet {
    /// Timestep MLP.
    pub time_embed: TimeEmbed,
    /// Encoder blocks.
    pub input_blocks: Vec<Vec<Layer>>,
    /// Middle block.
    pub middle_block: Vec<Layer>,
    /// Pooling head.
    pub out: ClassifierHead,
    /// Width of the sinusoidal embedding.
    pub model_channels: usize,
    /// Number of classes (outputs).
    pub num_classes: usize,
}

impl EncoderUNet {
    /// Number of classes (outputs).
    pub fn out_classes(&self) -> usize {
        self.num_classes
    }

    /// Class logits of noised inputs.
    ///
    /// # Shapes
    /// `x: [B, C, H, W]`, `timesteps: [B]` → `[B, classes]`.
    pub fn forward(&self, x: Tensor<4>, timesteps: Tensor<1>) -> Tensor<2> {
        let emb = self.time_embed.forward(timestep_embedding(timesteps, self.model_channels, MAX_PERIOD));
        let spatial = matches!(self.out, ClassifierHead::Spatial(_));
        let mut feats = Vec::new();
        let mut h = x;
        let pool_mean = |h: &Tensor<4>| {
            let [b, c, hh, ww] = h.dims();
            h.clone().reshape([b, c, hh * ww]).mean_dim(2).reshape([b, c])
        };
        for block in &self.input_blocks {
            h = forward_seq(block, h, &emb);
            if spatial {
                feats.push(pool_mean(&h));
            }
        }
        h = forward_seq(&self.middle_block, h, &emb);
        match &self.out {
            ClassifierHead::Adaptive(head) => {
                let [b, c, hh, ww] = h.dims();
                let pooled = crate::ops::silu(head.norm.forward(h))
                    .reshape([b, c, hh * ww])
                    .mean_dim(2)
                    .reshape([b, c, 1, 1]);
                let y = crate::ops::conv2d(&head.conv, pooled);
                let k = y.dims()[1];
                y.reshape([b, k])
            }
            ClassifierHead::Attention(head) => head.pool.forward(crate::ops::silu(head.norm.forward(h))),
            ClassifierHead::Spatial(head) => {
                feats.push(pool_mean(&h));
                let f = Tensor::cat(feats, 1);
                let z = head.linear_1.forward(f);
                let z = match &head.norm {
                    Some(norm) => crate::ops::silu(norm.forward(z)),
                    None => relu(z),
                };
                head.linear_2.forward(z)
            }
        }
    }
}

//! The building blocks of the ADM UNet (Dhariwal & Nichol 2021, guided-diffusion's `unet.py`):
//! residual blocks with AdaGN, multi-head self-attention in both head orders, and resampling.
//!
//! Field names follow the PyTorch modules so that imported state dicts map by a fixed set of
//! renames (see [`crate::checkpoint`]).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use burn::nn::{
    Dropout, DropoutConfig, GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::Tensor;
use burn::tensor::module::{avg_pool2d, interpolate};
use burn::tensor::ops::{AvgPoolOptions, InterpolateMode, InterpolateOptions};
use serde::{Deserialize, Serialize};

/// GroupNorm over `groups` groups with ε = 1e-5 and an affine transform (ADM's `normalization`).
pub fn group_norm(groups: usize, channels: usize, device: &burn::tensor::Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels).with_epsilon(1e-5).init(device)
}

/// A 3×3 convolution with padding 1 (and an optional stride).
pub fn conv3x3(c_in: usize, c_out: usize, stride: usize, device: &burn::tensor::Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// A 3×3 convolution initialised to zero (ADM's `zero_module`), so a residual branch starts as
/// the identity.
pub fn zero_conv3x3(c_in: usize, c_out: usize, device: &burn::tensor::Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_initializer(Initializer::Zeros)
        .init(device)
}

/// Nearest-neighbour ×2 upsampling (PyTorch `interpolate(scale_factor=2, mode="nearest")`).
///
/// # Shapes
/// `[B, C, H, W] → [B, C, 2H, 2W]`.
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * h, 2 * w]))
}

/// 2×2 average pooling with stride 2.
///
/// # Shapes
/// `[B, C, H, W] → [B, C, H/2, W/2]`.
pub fn avg_pool2x(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(x, AvgPoolOptions::new([2, 2]).with_stride([2, 2]))
}

/// How an attention block splits its `qkv` projection into heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionOrder {
    /// Split heads first, then q/k/v within each head (`QKVAttentionLegacy`; improved-diffusion).
    #[default]
    Legacy,
    /// Split q/k/v first, then heads (`QKVAttention`; guided-diffusion's `use_new_attention_order`).
    New,
}

/// Scaled dot-product attention over a packed `qkv` tensor, with ADM's scaling (q and k each by
/// `ch^{-1/4}`) and head split.
///
/// # Shapes
/// `qkv: [B, 3·H·ch, L]` → `[B, H·ch, L]`.
pub fn qkv_attention(qkv: Tensor<3>, num_heads: usize, order: AttentionOrder) -> Tensor<3> {
    crate::ops::qkv_attention(qkv, num_heads, order)
}

/// Configuration of an [`AttentionBlock`].
#[derive(Config, Debug)]
pub struct AttentionBlockConfig {
    /// Channels C.
    pub channels: usize,
    /// Number of heads (C must be divisible by it).
    #[config(default = 1)]
    pub num_heads: usize,
    /// Head split order.
    #[config(default = "AttentionOrder::Legacy")]
    pub order: AttentionOrder,
    /// GroupNorm groups.
    #[config(default = 32)]
    pub norm_groups: usize,
}

impl AttentionBlockConfig {
    /// Builds the block; panics if C is not divisible by the heads or the GroupNorm groups.
    pub fn init(&self, device: &burn::tensor::Device) -> AttentionBlock {
        assert!(
            self.channels.is_multiple_of(self.num_heads),
            "{} channels cannot be split into {} heads",
            self.channels,
            self.num_heads
        );
        AttentionBlock {
            norm: group_norm(self.norm_groups, self.channels, device),
            qkv: Conv1dConfig::new(self.channels, 3 * self.channels, 1).init(device),
            proj_out: Conv1dConfig::new(self.channels, self.channels, 1)
                .with_initializer(Initializer::Zeros)
                .init(device),
            num_heads: self.num_heads,
            order: self.order,
        }
    }
}

/// Self-attention over all spatial positions, with a residual connection (ADM `AttentionBlock`).
#[derive(Module, Debug)]
pub struct AttentionBlock {
    /// GroupNorm before the projection.
    pub norm: GroupNorm,
    /// 1×1 projection to q, k, v.
    pub qkv: Conv1d,
    /// Zero-initialised 1×1 output projection.
    pub proj_out: Conv1d,
    /// Heads.
    pub num_heads: usize,
    /// Head split order.
    #[module(skip)]
    pub order: AttentionOrder,
}

impl AttentionBlock {
    /// # Shapes
    /// `[B, C, H, W] → [B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let normed =
            crate::ops::norm_scale_shift_silu(&self.norm, x.clone(), None, false).reshape([b, c, h * w]);
        let x = x.reshape([b, c, h * w]);
        let qkv = crate::ops::conv1d(&self.qkv, normed);
        let a = qkv_attention(qkv, self.num_heads, self.order);
        (x + crate::ops::conv1d(&self.proj_out, a)).reshape([b, c, h, w])
    }
}

/// Whether a residual block also resamples (BigGAN-style up/down blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// Same resolution.
    #[default]
    None,
    /// Nearest ×2 upsampling inside the block.
    Up,
    /// 2×2 average pooling inside the block.
    Down,
}

impl Resample {
    fn apply(self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::None => x,
            Self::Up => upsample_nearest2x(x),
            Self::Down => avg_pool2x(x),
        }
    }
}

/// Configuration of a [`ResBlock`].
#[derive(Config, Debug)]
pub struct ResBlockConfig {
    /// Input channels.
    pub channels: usize,
    /// Width of the timestep embedding.
    pub emb_channels: usize,
    /// Output channels (the input channels when `None`).
    pub out_channels: Option<usize>,
    /// Dropout before the last convolution.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// AdaGN: `GroupNorm(h)·(1 + scale) + shift` from the embedding, instead of adding it.
    #[config(default = false)]
    pub use_scale_shift_norm: bool,
    /// A 3×3 (instead of 1×1) convolution on the skip path when channels change.
    #[config(default = false)]
    pub use_conv_skip: bool,
    /// Resample inside the block.
    #[config(default = "Resample::None")]
    pub resample: Resample,
    /// Divide the output by √2 (the survey's residual rescaling; not in ADM's code).
    #[config(default = false)]
    pub rescale_residual: bool,
    /// GroupNorm groups.
    #[config(default = 32)]
    pub norm_groups: usize,
}

/// `in_layers`: GroupNorm, SiLU, conv (PyTorch indices 0, 1, 2).
#[derive(Module, Debug)]
pub struct InLayers {
    /// `in_layers.0`.
    pub norm: GroupNorm,
    /// `in_layers.2`.
    pub conv: Conv2d,
}

/// `emb_layers`: SiLU, Linear (indices 0, 1).
#[derive(Module, Debug)]
pub struct EmbLayers {
    /// `emb_layers.1`.
    pub linear: Linear,
}

/// `out_layers`: GroupNorm, SiLU, Dropout, zero conv (indices 0–3).
#[derive(Module, Debug)]
pub struct OutLayers {
    /// `out_layers.0`.
    pub norm: GroupNorm,
    /// `out_layers.2`.
    pub dropout: Dropout,
    /// `out_layers.3`.
    pub conv: Conv2d,
}

/// A residual block conditioned on the timestep embedding (ADM `ResBlock`).
#[derive(Module, Debug)]
pub struct ResBlock {
    /// Norm + conv on the way in.
    pub in_layers: InLayers,
    /// Embedding projection.
    pub emb_layers: EmbLayers,
    /// Norm + dropout + zero conv on the way out.
    pub out_layers: OutLayers,
    /// Skip projection when the channel count changes.
    pub skip_connection: Option<Conv2d>,
    /// Up/down sampling inside the block.
    #[module(skip)]
    pub resample: Resample,
    /// AdaGN.
    pub use_scale_shift_norm: bool,
    /// Divide by √2.
    pub rescale_residual: bool,
}

impl ResBlockConfig {
    /// Builds the block.
    pub fn init(&self, device: &burn::tensor::Device) -> ResBlock {
        let out = self.out_channels.unwrap_or(self.channels);
        let emb_out = if self.use_scale_shift_norm { 2 * out } else { out };
        let skip_connection = (out != self.channels).then(|| {
            if self.use_conv_skip {
                conv3x3(self.channels, out, 1, device)
            } else {
                Conv2dConfig::new([self.channels, out], [1, 1]).init(device)
            }
        });
        ResBlock {
            in_layers: InLayers {
                norm: group_norm(self.norm_groups, self.channels, device),
                conv: conv3x3(self.channels, out, 1, device),
            },
            emb_layers: EmbLayers { linear: LinearConfig::new(self.emb_channels, emb_out).init(device) },
            out_layers: OutLayers {
                norm: group_norm(self.norm_groups, out, device),
                dropout: DropoutConfig::new(self.dropout).init(),
                conv: zero_conv3x3(out, out, device),
            },
            skip_connection,
            resample: self.resample,
            use_scale_shift_norm: self.use_scale_shift_norm,
            rescale_residual: self.rescale_residual,
        }
    }
}

impl ResBlock {
    /// # Shapes
    /// `x: [B, C, H, W]`, `emb: [B, E]` → `[B, C_out, H', W']` (H' = 2H up, H/2 down).
    pub fn forward(&self, x: Tensor<4>, emb: Tensor<2>) -> Tensor<4> {
        let h = crate::ops::norm_scale_shift_silu(&self.in_layers.norm, x.clone(), None, true);
        let (h, x) = match self.resample {
            Resample::None => (h, x),
            r => (r.apply(h), r.apply(x)),
        };
        let h = crate::ops::conv2d(&self.in_layers.conv, h);
        let [b, c, _, _] = h.dims();
        let emb_out = self.emb_layers.linear.forward(crate::ops::silu(emb));
        let e = emb_out.dims()[1];
        let emb_out = emb_out.reshape([b, e, 1, 1]);
        let h = if self.use_scale_shift_norm {
            let mut parts = emb_out.chunk(2, 1);
            let shift = parts.pop().expect("2 parts");
            let scale = parts.pop().expect("2 parts");
            let h = crate::ops::norm_scale_shift_silu(&self.out_layers.norm, h, Some((scale, shift)), true);
            crate::ops::conv2d(&self.out_layers.conv, crate::ops::dropout(&self.out_layers.dropout, h))
        } else {
            debug_assert_eq!(e, c);
            let h = crate::ops::norm_scale_shift_silu(&self.out_layers.norm, h + emb_out, None, true);
            crate::ops::conv2d(&self.out_layers.conv, crate::ops::dropout(&self.out_layers.dropout, h))
        };
        let skip = match &self.skip_connection {
            Some(conv) => crate::ops::conv2d(conv, x),
            None => x,
        };
        let out = skip + h;
        if self.rescale_residual { out.div_scalar(std::f64::consts::SQRT_2) } else { out }
    }
}

/// Downsampling between levels: a stride-2 3×3 convolution or 2×2 average pooling (`op`).
#[derive(Module, Debug)]
pub struct Downsample {
    /// The strided convolution (`op`), absent for average pooling.
    pub op: Option<Conv2d>,
}

impl Downsample {
    /// A learned (`conv = true`) or average-pool downsampler.
    pub fn new(channels: usize, conv: bool, device: &burn::tensor::Device) -> Self {
        Self { op: conv.then(|| conv3x3(channels, channels, 2, device)) }
    }

    /// # Shapes
    /// `[B, C, H, W] → [B, C, H/2, W/2]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.op {
            Some(conv) => crate::ops::conv2d(conv, x),
            None => avg_pool2x(x),
        }
    }
}

/// Upsampling between levels: nearest ×2, then an optional 3×3 convolution (`conv`).
#[derive(Module, Debug)]
pub struct Upsample {
    /// The convolution after upsampling.
    pub conv: Option<Conv2d>,
}

impl Upsample {
    /// With (`conv = true`) or without a convolution.
    pub fn new(channels: usize, conv: bool, device: &burn::tensor::Device) -> Self {
        Self { conv: conv.then(|| conv3x3(channels, channels, 1, device)) }
    }

    /// # Shapes
    /// `[B, C, H, W] → [B, C, 2H, 2W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = upsample_nearest2x(x);
        match &self.conv {
            Some(conv) => crate::ops::conv2d(conv, x),
            None => x,
        }
    }
}

/// One layer of a UNet block (PyTorch's `TimestepEmbedSequential` children).
///
/// Variants are stored inline (a UNet has a few dozen layers; the size difference is harmless and
/// keeps the module tree, hence checkpoint paths, free of boxes).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Layer {
    /// The input convolution.
    Conv(Conv2d),
    /// A residual block.
    Res(ResBlock),
    /// An attention block.
    Attn(AttentionBlock),
    /// A downsampler.
    Down(Downsample),
    /// An upsampler.
    Up(Upsample),
}

impl Layer {
    /// Applies the layer; residual blocks also see the embedding.
    pub fn forward(&self, x: Tensor<4>, emb: &Tensor<2>) -> Tensor<4> {
        match self {
            Self::Conv(c) => crate::ops::conv2d(c, x),
            Self::Res(r) => r.forward(x, emb.clone()),
            Self::Attn(a) => a.forward(x),
            Self::Down(d) => d.forward(x),
            Self::Up(u) => u.forward(x),
        }
    }
}

/// Applies a sequence of layers.
pub fn forward_seq(layers: &[Layer], mut x: Tensor<4>, emb: &Tensor<2>) -> Tensor<4> {
    for layer in layers {
        x = layer.forward(x, emb);
    }
    x
}

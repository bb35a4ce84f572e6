//! The ADM UNet (Dhariwal & Nichol 2021; guided-diffusion's `UNetModel`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::blocks::{
    AttentionBlockConfig, AttentionOrder, Downsample, Layer, ResBlockConfig, Resample, Upsample, conv3x3,
    forward_seq, group_norm, zero_conv3x3,
};
use crate::embedding::{MAX_PERIOD, timestep_embedding};
use crate::error::{ModelError, Result};

/// Every option of guided-diffusion's `UNetModel`, plus the survey's 1/√2 residual rescale.
///
/// Paper setups are named constructors: [`UNetConfig::cifar10_iddpm`],
/// [`UNetConfig::imagenet64_adm`], [`UNetConfig::mnist`], [`UNetConfig::tiny`].
#[derive(Config, Debug, PartialEq)]
pub struct UNetConfig {
    /// Input height and width; must be divisible by 2^(levels − 1).
    pub image_size: usize,
    /// Input channels (1 for grayscale, 3 for RGB).
    pub in_channels: usize,
    /// Base channel count (multiplied per level by `channel_mult`).
    pub model_channels: usize,
    /// Output channels: C for a fixed variance, 2C when the variance is learned.
    pub out_channels: usize,
    /// Residual blocks per level.
    pub num_res_blocks: usize,
    /// Resolutions (in pixels, e.g. `[16, 8]`) at which blocks get self-attention.
    pub attention_resolutions: Vec<usize>,
    /// Channel multiplier per level; its length is the number of levels.
    pub channel_mult: Vec<usize>,
    /// Dropout in the residual blocks.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Learned (convolutional) up/down sampling instead of nearest/average pooling.
    #[config(default = true)]
    pub conv_resample: bool,
    /// Class-conditional with this many classes (a label embedding added to the time embedding).
    pub num_classes: Option<usize>,
    /// One more label embedding, label `num_classes`: "no class", for classifier-free guidance
    /// (Ho & Salimans 2022; trained by dropping labels, sampled with `ClassifierFree`).
    #[config(default = false)]
    pub null_class: bool,
    /// Attention heads (ignored when `num_head_channels` is set).
    #[config(default = 1)]
    pub num_heads: usize,
    /// Fixed channels per head (overrides `num_heads`).
    pub num_head_channels: Option<usize>,
    /// Heads in the upsampling half (defaults to `num_heads`).
    pub num_heads_upsample: Option<usize>,
    /// Head split order.
    #[config(default = "AttentionOrder::Legacy")]
    pub attention_order: AttentionOrder,
    /// AdaGN (scale-shift norm) in the residual blocks.
    #[config(default = false)]
    pub use_scale_shift_norm: bool,
    /// BigGAN-style residual blocks for up/down sampling.
    #[config(default = false)]
    pub resblock_updown: bool,
    /// Divide every residual block's output by √2 (the survey lists it; ADM's code does not).
    #[config(default = false)]
    pub rescale_residual: bool,
    /// GroupNorm groups (ADM: 32).
    #[config(default = 32)]
    pub norm_groups: usize,
}

impl UNetConfig {
    /// iDDPM's CIFAR-10 model (Nichol & Dhariwal 2021): 128 channels, 3 res blocks, mult 1,2,2,2,
    /// attention at 16 and 8 with 4 heads, AdaGN, learned σ (6 outputs), dropout 0.3.
    /// 52,546,438 parameters.
    pub fn cifar10_iddpm() -> Self {
        Self::new(32, 3, 128, 6, 3, vec![16, 8], vec![1, 2, 2, 2])
            .with_dropout(0.3)
            .with_num_heads(4)
            .with_use_scale_shift_norm(true)
    }

    /// ADM's class-conditional ImageNet 64×64 model (Dhariwal & Nichol 2021): 192 channels, 3 res
    /// blocks, mult 1,2,3,4, attention at 32/16/8 with 64 channels per head, BigGAN up/down, new
    /// attention order, AdaGN, learned σ, 1000 classes, dropout 0.1.
    pub fn imagenet64_adm() -> Self {
        Self::new(64, 3, 192, 6, 3, vec![32, 16, 8], vec![1, 2, 3, 4])
            .with_dropout(0.1)
            .with_num_head_channels(Some(64))
            .with_resblock_updown(true)
            .with_attention_order(AttentionOrder::New)
            .with_use_scale_shift_norm(true)
            .with_num_classes(Some(1000))
    }

    /// MNIST at its native 28×28 (three levels: 28, 14, 7): 64 channels, mult 1,2,2, 2 res
    /// blocks, attention at 14 with 4 heads, AdaGN, learned σ (2 outputs), 10 classes available
    /// but unconditional by default, dropout 0.1.
    pub fn mnist() -> Self {
        Self::new(28, 1, 64, 2, 2, vec![14], vec![1, 2, 2])
            .with_dropout(0.1)
            .with_num_heads(4)
            .with_use_scale_shift_norm(true)
    }

    /// A small RGB 32×32 model for tests and the CPU demo: 32 channels, mult 1,2,2, 1 res block,
    /// attention at 16 with 4 heads, AdaGN, BigGAN up/down, learned σ.
    pub fn tiny() -> Self {
        Self::new(32, 3, 32, 6, 1, vec![16], vec![1, 2, 2])
            .with_num_heads(4)
            .with_use_scale_shift_norm(true)
            .with_resblock_updown(true)
    }

    /// The `tiny-mnist` benchmark model: 32×32×1, 32 channels, mult 1,2,2, 2 res blocks,
    /// attention at 16 with 4 heads, AdaGN, BigGAN up/down, learned σ.
    pub fn tiny_mnist() -> Self {
        Self::new(32, 1, 32, 2, 2, vec![16], vec![1, 2, 2])
            .with_num_heads(4)
            .with_use_scale_shift_norm(true)
            .with_resblock_updown(true)
    }

    /// A preset by name: `cifar10_iddpm`, `imagenet64_adm`, `mnist`, `tiny`, `tiny_mnist`
    /// (dashes accepted for underscores).
    pub fn preset(name: &str) -> Result<Self> {
        match name.replace('-', "_").as_str() {
            "cifar10_iddpm" | "cifar10" => Ok(Self::cifar10_iddpm()),
            "imagenet64_adm" | "imagenet64" => Ok(Self::imagenet64_adm()),
            "mnist" => Ok(Self::mnist()),
            "tiny" => Ok(Self::tiny()),
            "tiny_mnist" => Ok(Self::tiny_mnist()),
            other => Err(ModelError::InvalidConfig(format!(
                "unknown UNet preset {other:?} (expected cifar10_iddpm, imagenet64_adm, mnist, tiny, tiny_mnist)"
            ))),
        }
    }

    /// Resolutions of the levels, from the input down.
    pub fn level_resolutions(&self) -> Vec<usize> {
        (0..self.channel_mult.len()).map(|l| self.image_size >> l).collect()
    }

    /// Heads of an attention block with `channels` channels (`upsample` for the decoder half).
    fn heads(&self, channels: usize, upsample: bool) -> usize {
        match self.num_head_channels {
            Some(hc) => channels / hc,
            None if upsample => self.num_heads_upsample.unwrap_or(self.num_heads),
            None => self.num_heads,
        }
    }

    /// Checks every invariant, naming the first that fails.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return bad(format!("channel_mult {:?} must be non-empty and positive", self.channel_mult));
        }
        let levels = self.channel_mult.len();
        let factor = 1usize << (levels - 1);
        if self.image_size == 0 || !self.image_size.is_multiple_of(factor) {
            return bad(format!(
                "image_size {} must be divisible by 2^(levels - 1) = {factor} for {levels} levels",
                self.image_size
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.model_channels == 0 {
            return bad("in_channels, out_channels and model_channels must be positive".into());
        }
        if self.num_res_blocks == 0 {
            return bad("num_res_blocks must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        let resolutions = self.level_resolutions();
        if let Some(r) = self.attention_resolutions.iter().find(|r| !resolutions.contains(r)) {
            return bad(format!(
                "attention resolution {r} is not one of the UNet's resolutions {resolutions:?}"
            ));
        }
        for &m in &self.channel_mult {
            let ch = m * self.model_channels;
            if !ch.is_multiple_of(self.norm_groups) {
                return bad(format!(
                    "{ch} channels are not divisible into {} GroupNorm groups",
                    self.norm_groups
                ));
            }
            if self.attention_resolutions.is_empty() {
                continue;
            }
            for up in [false, true] {
                let heads = self.heads(ch, up);
                if let Some(hc) = self.num_head_channels
                    && (hc == 0 || !ch.is_multiple_of(hc))
                {
                    return bad(format!("{ch} channels are not divisible by num_head_channels {hc}"));
                }
                if heads == 0 || !ch.is_multiple_of(heads) {
                    return bad(format!("{ch} channels cannot be split into {heads} attention heads"));
                }
            }
        }
        if self.num_classes == Some(0) {
            return bad("num_classes must be positive when set".into());
        }
        if self.null_class && self.num_classes.is_none() {
            return bad(
                "null_class (classifier-free guidance) needs a class-conditional UNet (num_classes)".into()
            );
        }
        Ok(())
    }

    /// Builds the network, or says which invariant the configuration breaks.
    pub fn try_init(&self, device: &Device) -> Result<UNet> {
        self.validate()?;
        Ok(self.build(device))
    }

    /// Builds the network.
    ///
    /// # Panics
    /// If the configuration is invalid ([`Self::validate`] names the problem; use
    /// [`Self::try_init`] to get it as an error).
    pub fn init(&self, device: &Device) -> UNet {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        self.build(device)
    }

    fn res(&self, c_in: usize, c_out: usize, emb: usize, resample: Resample) -> ResBlockConfig {
        ResBlockConfig::new(c_in, emb)
            .with_out_channels(Some(c_out))
            .with_dropout(self.dropout)
            .with_use_scale_shift_norm(self.use_scale_shift_norm)
            .with_resample(resample)
            .with_rescale_residual(self.rescale_residual)
            .with_norm_groups(self.norm_groups)
    }

    fn attn(&self, ch: usize, upsample: bool) -> AttentionBlockConfig {
        AttentionBlockConfig::new(ch)
            .with_num_heads(self.heads(ch, upsample))
            .with_order(self.attention_order)
            .with_norm_groups(self.norm_groups)
    }

    fn build(&self, device: &Device) -> UNet {
        let mc = self.model_channels;
        let emb = 4 * mc;
        let time_embed = TimeEmbed {
            linear_1: LinearConfig::new(mc, emb).init(device),
            linear_2: LinearConfig::new(emb, emb).init(device),
        };
        let label_emb = self
            .num_classes
            .map(|n| EmbeddingConfig::new(n + usize::from(self.null_class), emb).init(device));
        let attn_at = |ds: usize| self.attention_resolutions.contains(&(self.image_size / ds));

        let mut ch = self.channel_mult[0] * mc;
        let input_ch = ch;
        let mut input_blocks = vec![vec![Layer::Conv(conv3x3(self.in_channels, ch, 1, device))]];
        let mut chans = vec![ch];
        let mut ds = 1;
        let levels = self.channel_mult.len();
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                let out = mult * mc;
                let mut layers = vec![Layer::Res(self.res(ch, out, emb, Resample::None).init(device))];
                ch = out;
                if attn_at(ds) {
                    layers.push(Layer::Attn(self.attn(ch, false).init(device)));
                }
                input_blocks.push(layers);
                chans.push(ch);
            }
            if level != levels - 1 {
                let layer = if self.resblock_updown {
                    Layer::Res(self.res(ch, ch, emb, Resample::Down).init(device))
                } else {
                    Layer::Down(Downsample::new(ch, self.conv_resample, device))
                };
                input_blocks.push(vec![layer]);
                chans.push(ch);
                ds *= 2;
            }
        }
        let middle_block = vec![
            Layer::Res(self.res(ch, ch, emb, Resample::None).init(device)),
            Layer::Attn(self.attn(ch, false).init(device)),
            Layer::Res(self.res(ch, ch, emb, Resample::None).init(device)),
        ];
        let mut output_blocks = Vec::new();
        for (level, &mult) in self.channel_mult.iter().enumerate().rev() {
            for i in 0..=self.num_res_blocks {
                let ich = chans.pop().expect("one skip per input block");
                let out = mc * mult;
                let mut layers = vec![Layer::Res(self.res(ch + ich, out, emb, Resample::None).init(device))];
                ch = out;
                if attn_at(ds) {
                    layers.push(Layer::Attn(self.attn(ch, true).init(device)));
                }
                if level > 0 && i == self.num_res_blocks {
                    layers.push(if self.resblock_updown {
                        Layer::Res(self.res(ch, ch, emb, Resample::Up).init(device))
                    } else {
                        Layer::Up(Upsample::new(ch, self.conv_resample, device))
                    });
                    ds /= 2;
                }
                output_blocks.push(layers);
            }
        }
        let out = OutHead {
            norm: group_norm(self.norm_groups, ch, device),
            conv: zero_conv3x3(input_ch, self.out_channels, device),
        };
        UNet {
            time_embed,
            label_emb,
            input_blocks,
            middle_block,
            output_blocks,
            out,
            model_channels: mc,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            image_size: self.image_size,
            num_classes: self.num_classes.unwrap_or(0),
        }
    }
}

/// `time_embed`: Linear, SiLU, Linear (PyTorch indices 0, 2).
#[derive(Module, Debug)]
pub struct TimeEmbed {
    /// `time_embed.0`.
    pub linear_1: Linear,
    /// `time_embed.2`.
    pub linear_2: Linear,
}

impl TimeEmbed {
    /// The MLP on the sinusoidal embedding.
    ///
    /// # Shapes
    /// `[B, model_channels] → [B, 4·model_channels]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(crate::ops::silu(self.linear_1.forward(x)))
    }
}

/// `out`: GroupNorm, SiLU, zero conv (indices 0, 2).
#[derive(Module, Debug)]
pub struct OutHead {
    /// `out.0`.
    pub norm: GroupNorm,
    /// `out.2`.
    pub conv: Conv2d,
}

/// The ADM UNet: `(x_t, t, optional class) → ε̂ (and variance channels)`.
#[derive(Module, Debug)]
pub struct UNet {
    /// Timestep MLP.
    pub time_embed: TimeEmbed,
    /// Class embedding, for class-conditional models.
    pub label_emb: Option<Embedding>,
    /// Encoder blocks (each saved for a skip connection).
    pub input_blocks: Vec<Vec<Layer>>,
    /// Res, attention, res at the lowest resolution.
    pub middle_block: Vec<Layer>,
    /// Decoder blocks (each takes a skip connection).
    pub output_blocks: Vec<Vec<Layer>>,
    /// Output head.
    pub out: OutHead,
    /// Width of the sinusoidal embedding.
    pub model_channels: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input resolution.
    pub image_size: usize,
    /// Number of classes (0: unconditional).
    pub num_classes: usize,
}

impl UNet {
    /// The "no class" label of a network with a null class (classifier-free guidance): label
    /// `num_classes`, the embedding row past the classes.
    pub fn null_label(&self) -> Option<usize> {
        let rows = self.label_emb.as_ref()?.weight.dims()[0];
        (rows > self.num_classes).then_some(self.num_classes)
    }

    /// The network output.
    ///
    /// # Shapes
    /// `x: [B, in_channels, H, W]`, `timesteps: [B]` (may be fractional), `y: [B]` class labels
    /// (exactly when the model is class-conditional) → `[B, out_channels, H, W]`.
    ///
    /// # Panics
    /// If `y` is given to an unconditional model or missing for a conditional one.
    pub fn forward(&self, x: Tensor<4>, timesteps: Tensor<1>, y: Option<Tensor<1, Int>>) -> Tensor<4> {
        let mut emb = self.time_embed.forward(timestep_embedding(timesteps, self.model_channels, MAX_PERIOD));
        match (&self.label_emb, y) {
            (Some(label_emb), Some(y)) => {
                let b = y.dims()[0];
                let e = label_emb.forward(y.reshape([b, 1]));
                let d = e.dims()[2];
                emb = emb + e.reshape([b, d]);
            }
            (None, None) => {}
            (Some(_), None) => panic!("a class-conditional UNet needs class labels y"),
            (None, Some(_)) => panic!("class labels given to an unconditional UNet"),
        }
        let mut hs = Vec::with_capacity(self.input_blocks.len());
        let mut h = x;
        for block in &self.input_blocks {
            h = forward_seq(block, h, &emb);
            hs.push(h.clone());
        }
        h = forward_seq(&self.middle_block, h, &emb);
        for block in &self.output_blocks {
            let skip = hs.pop().expect("one skip per output block");
            h = forward_seq(block, Tensor::cat(vec![h, skip], 1), &emb);
        }
        crate::ops::conv2d(&self.out.conv, crate::ops::norm_scale_shift_silu(&self.out.norm, h, None, true))
    }
}

//! Architecture summaries: parameter counts per top-level part.

use burn::module::Module;
use serde::Serialize;

use crate::classifier::EncoderUNet;
use crate::mlp::Mlp;
use crate::unet::UNet;

/// One line of a summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    /// Part name (PyTorch-style path).
    pub name: String,
    /// What it is.
    pub kind: String,
    /// Its parameters.
    pub params: usize,
}

/// A network's parts and total parameter count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Parts in forward order.
    pub rows: Vec<SummaryRow>,
    /// Sum of all parameters.
    pub total_params: usize,
}

fn layer_kind(l: &crate::blocks::Layer) -> &'static str {
    use crate::blocks::Layer;
    match l {
        Layer::Conv(_) => "Conv2d",
        Layer::Res(r) => match r.resample {
            crate::blocks::Resample::None => "ResBlock",
            crate::blocks::Resample::Up => "ResBlock(up)",
            crate::blocks::Resample::Down => "ResBlock(down)",
        },
        Layer::Attn(_) => "AttentionBlock",
        Layer::Down(_) => "Downsample",
        Layer::Up(_) => "Upsample",
    }
}

fn blocks(rows: &mut Vec<SummaryRow>, prefix: &str, blocks: &[Vec<crate::blocks::Layer>]) {
    for (i, b) in blocks.iter().enumerate() {
        rows.push(SummaryRow {
            name: format!("{prefix}.{i}"),
            kind: b.iter().map(layer_kind).collect::<Vec<_>>().join(" + "),
            params: b.iter().map(Module::num_params).sum(),
        });
    }
}

fn finish(rows: Vec<SummaryRow>, total: usize) -> Summary {
    debug_assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), total, "every parameter is in one row");
    Summary { rows, total_params: total }
}

impl Summary {
    /// The UNet's parts.
    pub fn of_unet(m: &UNet) -> Self {
        let mut rows = vec![SummaryRow {
            name: "time_embed".into(),
            kind: "MLP".into(),
            params: m.time_embed.num_params(),
        }];
        if let Some(l) = &m.label_emb {
            rows.push(SummaryRow {
                name: "label_emb".into(),
                kind: "Embedding".into(),
                params: l.num_params(),
            });
        }
        blocks(&mut rows, "input_blocks", &m.input_blocks);
        blocks(&mut rows, "middle_block", std::slice::from_ref(&m.middle_block));
        blocks(&mut rows, "output_blocks", &m.output_blocks);
        rows.push(SummaryRow {
            name: "out".into(),
            kind: "GroupNorm + SiLU + Conv2d".into(),
            params: m.out.num_params(),
        });
        finish(rows, m.num_params())
    }

    /// The classifier's parts.
    pub fn of_classifier(m: &EncoderUNet) -> Self {
        let mut rows = vec![SummaryRow {
            name: "time_embed".into(),
            kind: "MLP".into(),
            params: m.time_embed.num_params(),
        }];
        blocks(&mut rows, "input_blocks", &m.input_blocks);
        blocks(&mut rows, "middle_block", std::slice::from_ref(&m.middle_block));
        rows.push(SummaryRow { name: "out".into(), kind: "pooling head".into(), params: m.out.num_params() });
        finish(rows, m.num_params())
    }

    /// The MLP's parts.
    pub fn of_mlp(m: &Mlp) -> Self {
        let mut rows = vec![
            SummaryRow { name: "time_proj".into(), kind: "Linear".into(), params: m.time_proj.num_params() },
            SummaryRow { name: "input".into(), kind: "Linear".into(), params: m.input.num_params() },
        ];
        for (i, l) in m.hidden.iter().enumerate() {
            rows.push(SummaryRow {
                name: format!("hidden.{i}"),
                kind: "Linear".into(),
                params: l.num_params(),
            });
        }
        rows.push(SummaryRow { name: "output".into(), kind: "Linear".into(), params: m.output.num_params() });
        finish(rows, m.num_params())
    }
}

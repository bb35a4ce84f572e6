//! Classifier-free guidance training: label dropout in the batches, and the config's checks.

use std::sync::Arc;

use burn::data::dataloader::DataLoader;
use burn::tensor::Device;
use diffusion_train::TrainConfig;
use diffusion_train::loader::{BatchPlan, Examples, LabelDropout, TrainLoader};

fn labels(dropout: Option<LabelDropout>, seed: u64) -> Vec<i64> {
    let data = diffusion_train::data::load(&"shapes".parse().unwrap(), 16, 0).unwrap();
    let n = data.as_images().unwrap().len();
    let examples = Examples::new(Arc::new(data), (0..n).collect());
    let plan = BatchPlan {
        steps: 4,
        steps_per_epoch: 4,
        batch_size: 64,
        micro_size: 64,
        seed,
        random_flip: false,
        class_cond: true,
        label_dropout: dropout,
    };
    let loader = TrainLoader::new(examples, plan, Device::flex(), 1);
    loader
        .iter()
        .flat_map(|b| b.unwrap().y.unwrap().into_data().convert::<i64>().try_to_vec::<i64>().unwrap())
        .collect()
}

/// With p = 0.25 about a quarter of 256 labels become the null label 4 (binomial: 64 ± 7; the
/// bounds are 4.5 σ), the same ones for the same seed and others for another seed, and the
/// kept labels are the data's own (p = 0 gives them all, none null).
#[test]
fn label_dropout_replaces_that_share_of_labels_by_the_null_label() {
    let drop = Some(LabelDropout { probability: 0.25, null_label: 4 });
    let plain = labels(None, 1);
    let dropped = labels(drop, 1);
    assert_eq!(plain.len(), 256);
    assert!(plain.iter().all(|&y| (0..4).contains(&y)), "the shapes data has 4 classes");
    let nulls = dropped.iter().filter(|&&y| y == 4).count();
    assert!((33..=95).contains(&nulls), "{nulls} of 256 dropped at p = 0.25");
    for (a, b) in plain.iter().zip(&dropped) {
        assert!(b == a || *b == 4, "a kept label changed: {a} → {b}");
    }
    assert_eq!(labels(drop, 1), dropped, "a pure function of the seed and the example");
    let other: Vec<bool> = labels(drop, 2).iter().map(|&y| y == 4).collect();
    let here: Vec<bool> = dropped.iter().map(|&y| y == 4).collect();
    assert_ne!(other, here, "another seed drops other labels");
}

/// The config refuses label dropout without a null class or outside [0, 1), and the trainer's
/// batches use it.
#[test]
fn label_dropout_needs_a_null_class() {
    let mut cfg = TrainConfig::preset("default").unwrap();
    cfg.label_dropout = 0.1;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("null class"), "{err}");
    if let diffusion_models::checkpoint::ModelSpec::Unet(u) = &mut cfg.model {
        u.null_class = true;
    }
    cfg.validate().unwrap();
    assert_eq!(cfg.label_dropout().map(|d| d.null_label), Some(4));
    cfg.label_dropout = 1.0;
    assert!(cfg.validate().unwrap_err().to_string().contains("[0, 1)"));
    cfg.label_dropout = 0.1;
    cfg.class_cond = false;
    assert!(cfg.validate().is_err());
}

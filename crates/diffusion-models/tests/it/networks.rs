//! Whole networks: shapes, gradients, checkpoints.

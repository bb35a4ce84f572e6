//! Device → host reads, counted.
//!
//! A read-back (`into_data`, `into_scalar`) makes the host wait for the device to finish
//! everything queued before it: on a GPU, one per step is enough to keep the device idle while the
//! host prepares the next. Every read of the workspace's hot paths (the training step, the sampler
//! steps and loops, the likelihood bound) goes through [`read_back`], which counts it on the
//! calling thread, so that tests can assert how many a step makes (see ARCHITECTURE.md,
//! "Synchronisation").

use std::cell::Cell;

use burn::tensor::kind::Basic;
use burn::tensor::{Tensor, TensorData};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Reads `tensor` back to the host, counting one synchronisation on the calling thread.
pub fn read_back<const D: usize, K: Basic>(tensor: Tensor<D, K>) -> TensorData {
    READS.with(|r| r.set(r.get() + 1));
    tensor.into_data()
}

/// `read_back` as `f32` values.
pub fn read_f32<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    read_back(tensor).convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
}

/// How many [`read_back`]s the calling thread has made since it started.
pub fn host_reads() -> u64 {
    READS.with(|r| r.get())
}

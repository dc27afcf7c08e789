//! Data-parallel training over several devices (`train.device = "cuda:0,cuda:1"`).
//!
//! The encoder, where nearly all the work is, runs data-parallel: every device encodes its
//! share of the batch's rows with its own copy of the encoder, forked from the model each step
//! (burn's `Module::fork`: same parameter ids, fresh leaves on that device). The first-token
//! states are gathered on the main (first) device, so the heads and the loss weighting see the
//! whole batch as they would on one device: DAO's λ, class statistics and task weights are the
//! batch's, not a shard's. The one backward reaches every copy; each copy's gradients are read
//! off it and summed per parameter on the main device, where the model, AdamW's state,
//! checkpoints and validation stay.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Gradients, Int, Tensor};
use encoder::{Encoder, EncoderInput};

use crate::model::SentimentModel;

/// The training devices, the first one the main device (autodiff devices).
#[derive(Debug, Clone)]
pub struct DataParallel {
    devices: Vec<Device>,
}

/// The gathered first-token states of one batch, and the encoder copies that made them.
pub struct ParallelForward {
    /// `[batch, hidden]` on the main device, rows in the batch's order.
    pub first_token: Tensor<2>,
    replicas: Vec<(Encoder, Device)>,
}

impl DataParallel {
    /// `devices[0]` is the main device.
    ///
    /// # Panics
    /// If `devices` is empty.
    pub fn new(devices: Vec<Device>) -> Self {
        assert!(!devices.is_empty(), "data-parallel training needs a device");
        Self { devices }
    }

    /// Where the model lives between steps.
    pub fn main(&self) -> &Device {
        &self.devices[0]
    }

    /// Whether there is more than one device.
    pub fn is_parallel(&self) -> bool {
        self.devices.len() > 1
    }

    /// `(device index, first row, rows)` of each non-empty share: as even as possible, the
    /// first devices taking one more row when the batch does not divide.
    fn shards(&self, rows: usize) -> Vec<(usize, usize, usize)> {
        let n = self.devices.len();
        let mut start = 0;
        (0..n)
            .map(|k| {
                let len = rows / n + usize::from(k < rows % n);
                let shard = (k, start, len);
                start += len;
                shard
            })
            .filter(|&(_, _, len)| len > 0)
            .collect()
    }

    /// Encodes the batch, each device its share, with device `k` seeded `seed + k` for its
    /// dropout masks.
    pub fn forward(&self, encoder: &Encoder, input: &EncoderInput, seed: u64) -> ParallelForward {
        let [rows, _] = input.input_ids.dims();
        let mut parts = Vec::new();
        let mut replicas = Vec::new();
        for (k, start, len) in self.shards(rows) {
            let device = &self.devices[k];
            let take = |t: &Tensor<2, Int>| t.clone().narrow(0, start, len).to_device(device);
            let shard = EncoderInput {
                input_ids: take(&input.input_ids),
                attention_mask: take(&input.attention_mask),
                token_type_ids: take(&input.token_type_ids),
            };
            device.seed(seed.wrapping_add(k as u64));
            let replica = encoder.clone().fork(device);
            let h = replica.first_token(shard);
            parts.push(h.to_device(self.main()));
            replicas.push((replica, device.clone()));
        }
        ParallelForward {
            first_token: Tensor::cat(parts, 0),
            replicas,
        }
    }

    /// The gradients of one backward as one set on the main device: each parameter's
    /// gradient summed over the copies (the heads have theirs on the main device only).
    pub fn gradients(
        &self,
        mut grads: Gradients,
        model: &SentimentModel,
        forward: ParallelForward,
    ) -> GradientsParams {
        let mut total = GradientsParams::from_module(&mut grads, &model.heads);
        let parts: Vec<GradientsParams> = forward
            .replicas
            .iter()
            .map(|(replica, _)| GradientsParams::from_module(&mut grads, replica))
            .collect();
        model.encoder.visit(&mut Summer {
            parts,
            total: &mut total,
            device: self.main(),
        });
        total
    }
}

/// Sums each parameter's gradient over the copies, on the main device.
struct Summer<'a> {
    parts: Vec<GradientsParams>,
    total: &'a mut GradientsParams,
    device: &'a Device,
}

impl ModuleVisitor for Summer<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let device = self.device.clone().without_autodiff();
        let sum = self
            .parts
            .iter_mut()
            .filter_map(|part| part.remove::<D>(param.id))
            .map(|grad| grad.to_device(&device))
            .reduce(|a, b| a + b);
        if let Some(sum) = sum {
            self.total.register(param.id, sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        let dp = DataParallel::new(vec![Device::flex(); 3]);
        assert_eq!(dp.shards(10), vec![(0, 0, 4), (1, 4, 3), (2, 7, 3)]);
        assert_eq!(dp.shards(2), vec![(0, 0, 1), (1, 1, 1)]);
        assert_eq!(dp.shards(3), vec![(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
        let one = DataParallel::new(vec![Device::flex()]);
        assert_eq!(one.shards(5), vec![(0, 0, 5)]);
        assert!(!one.is_parallel());
    }
}

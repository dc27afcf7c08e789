//! The run's loss weighting, with state that a checkpoint can hold.
//!
//! Every `dao` strategy saves and loads its own state (parameters, their Adam, loss history:
//! `LossWeighting::save`/`load`), so a resumed run continues exactly for all eight.

use std::path::Path;

use burn::tensor::{Device, Gradients};
use dao::{LossWeighting, StrategyConfig};

use crate::train::TrainError;

/// A weighting strategy as the run uses it.
pub struct RunWeighting {
    strategy: Box<dyn LossWeighting>,
}

impl RunWeighting {
    /// Builds the strategy on the training (autodiff) device.
    pub fn new(config: &StrategyConfig, device: &Device) -> Result<Self, TrainError> {
        Ok(Self {
            strategy: config.build(device)?,
        })
    }

    /// The strategy, to call `weigh` on.
    pub fn strategy(&mut self) -> &mut dyn LossWeighting {
        self.strategy.as_mut()
    }

    /// Steps the strategy's own parameters from the step's gradients (left in `grads`).
    pub fn update(&mut self, grads: &Gradients) {
        self.strategy.update(grads);
    }

    pub fn end_epoch(&mut self) {
        self.strategy.end_epoch();
    }

    /// Writes the strategy's state into the checkpoint folder `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        Ok(self.strategy.save(dir)?)
    }

    /// Restores what [`save`](Self::save) wrote.
    pub fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        Ok(self.strategy.load(dir)?)
    }
}

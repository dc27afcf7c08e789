//! The run's loss weighting, with state that a checkpoint can hold.
//!
//! `dao::Dao` keeps its Adam private, so an interrupted run could not restore it. Here the
//! trainer steps DAO's module with an Adam of its own, the same one `Dao::update` uses
//! (torch defaults, ε 1e-8, lr `dao.lr`, DAO-SPEC step 5), whose state goes into the
//! checkpoint. The other strategies run as the `dao` crate builds them; their internal state
//! (uncertainty's Adam, DWA's loss history, GradNorm's weights) restarts on resume.

use std::path::Path;

use burn::optim::{AdamConfig, ModuleOptimizer};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Device, Gradients};
use dao::{Dao, DaoConfig, DaoModule, LossWeighting, StrategyConfig};

use crate::train::TrainError;

const MODULE_FILE: &str = "weighting.bpk";
const OPTIMIZER_FILE: &str = "weighting_optimizer.bpk";

/// A weighting strategy and, for DAO, its checkpointable optimizer.
#[allow(clippy::large_enum_variant)] // one per run
pub enum RunWeighting {
    Dao {
        dao: Dao,
        config: DaoConfig,
        adam: ModuleOptimizer,
    },
    Other(Box<dyn LossWeighting>),
}

impl RunWeighting {
    /// Builds the strategy on the training (autodiff) device.
    pub fn new(config: &StrategyConfig, device: &Device) -> Result<Self, TrainError> {
        Ok(match config {
            StrategyConfig::Dao(c) => Self::Dao {
                dao: Dao::new(c.clone(), device)?,
                config: c.clone(),
                adam: AdamConfig::new().with_epsilon(1e-8).init(),
            },
            other => Self::Other(other.build(device)?),
        })
    }

    /// The strategy, to call `weigh` on.
    pub fn strategy(&mut self) -> &mut dyn LossWeighting {
        match self {
            Self::Dao { dao, .. } => dao,
            Self::Other(w) => w.as_mut(),
        }
    }

    /// Steps the strategy's own parameters from the step's gradients (left in `grads`).
    pub fn update(&mut self, grads: &Gradients) -> Result<(), TrainError> {
        match self {
            Self::Dao { dao, config, adam } => {
                let module = dao.module().clone();
                let params = dao::gradients_of(&module, grads);
                if !params.is_empty() {
                    let module = adam.step(config.lr, module, params);
                    *dao = Dao::with_module(config.clone(), module)?;
                }
            }
            Self::Other(w) => w.update(grads),
        }
        Ok(())
    }

    pub fn end_epoch(&mut self) {
        self.strategy().end_epoch();
    }

    /// Writes DAO's module and Adam state into `dir` (nothing for the other strategies).
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        if let Self::Dao { dao, adam, .. } = self {
            let path = dir.join(MODULE_FILE);
            let mut store = BurnpackStore::from_file(&path).overwrite(true);
            dao.module()
                .save_into(&mut store)
                .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
            let path = dir.join(OPTIMIZER_FILE);
            adam.save(&path)
                .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
        }
        Ok(())
    }

    /// Restores what [`save`](Self::save) wrote.
    pub fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        if let Self::Dao { dao, config, adam } = self {
            let path = dir.join(MODULE_FILE);
            let mut module: DaoModule = dao.module().clone();
            let mut store = BurnpackStore::from_file(&path);
            let result = module
                .load_from(&mut store)
                .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
            if !result.errors.is_empty() || !result.missing.is_empty() {
                return Err(TrainError::checkpoint(
                    &path,
                    format!("errors {:?}, missing {:?}", result.errors, result.missing),
                ));
            }
            *dao = Dao::with_module(config.clone(), module)?;
            let path = dir.join(OPTIMIZER_FILE);
            *adam = adam
                .clone()
                .load(&path)
                .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
        }
        Ok(())
    }
}

//! Snapshot state of a virtio-blk device. Requests are served synchronously by the worker, so
//! none is in flight between two batches (where a snapshot reads the queue): the rings in guest
//! memory and the queue positions are the whole of the I/O state. The image itself is not
//! copied: a restore opens the same path (or the one the host gives) and checks its size.

use vmr_hypervisor::Persist;

use super::{Block, BlockState, DiskConfig};
use crate::RestoreError;

pub(crate) const KIND: &str = "virtio-blk";

/// What the host gives a restored disk: its configuration (path, limits) and its index.
pub struct BlockHost {
    pub config: DiskConfig,
    pub index: usize,
}

impl Persist for Block {
    type State = BlockState;
    type Host = BlockHost;
    type Error = RestoreError;

    fn save(&self) -> BlockState {
        BlockState {
            path: self.path.clone(),
            read_only: self.read_only,
            serial: String::from_utf8_lossy(&self.serial).trim_end_matches('\0').to_owned(),
            capacity_sectors: self.swap.capacity_sectors(),
            acked_features: self.acked_features,
        }
    }

    fn restore(host: BlockHost, state: &BlockState) -> Result<Self, RestoreError> {
        let mut config = host.config;
        config.serial = Some(state.serial.clone());
        config.read_only = state.read_only;
        let block = Block::new(&config, host.index).map_err(|e| RestoreError::Backend(e.to_string()))?;
        if block.capacity_sectors != state.capacity_sectors {
            return Err(RestoreError::Mismatch(format!(
                "disk {} has {} sectors, the snapshot was taken with {}",
                config.path.display(),
                block.capacity_sectors,
                state.capacity_sectors
            )));
        }
        Ok(block)
    }
}

//! The test partition of SPEC §6: `POST /cluster/partition` makes this
//! member exchange Raft messages only with the members it lists, `POST
//! /cluster/heal` lifts that.
//!
//! Owns the list of allowed members and `partition.json`, which holds it
//! across crashes and restarts (replaced atomically, fsynced). The network
//! asks [`Partition::allows`] before sending and on receiving. It must
//! never touch client requests: `/kv` and `/cluster` are never partitioned.

use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::info;

use crate::cluster::log_store::{self, LogStoreError};
use crate::cluster::members::{self, Members, MembersError};
use crate::storage::datadir::Layout;
use crate::storage::snapshot::{self, WriteError};

#[derive(Debug, Error)]
pub enum PartitionError {
    #[error(transparent)]
    Id(#[from] MembersError),
    #[error("{0} is not a member of this cluster; list members by their IDs")]
    NotAMember(String),
    #[error(transparent)]
    Save(#[from] WriteError),
    #[error("cannot remove {path}: {error}")]
    Remove { path: String, error: std::io::Error },
}

/// `partition.json` and the body of `POST /cluster/partition`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionFile {
    pub peers: Vec<String>,
}

pub struct Partition {
    layout: Layout,
    /// The engine node numbers this member may exchange messages with;
    /// `None` when no partition is in force. A bit per node number.
    allowed: RwLock<Option<u128>>,
}

impl Partition {
    /// Reads the partition in force, if any.
    pub fn load(layout: &Layout, members: &Members) -> Result<Partition, LogStoreError> {
        let allowed = match log_store::read_json::<PartitionFile>(&layout.partition())? {
            None => None,
            Some(file) => {
                let mask = mask(&file.peers, members).map_err(|e| LogStoreError::BadFile {
                    path: layout.partition(),
                    reason: e.to_string(),
                })?;
                info!(
                    "a test partition is in force: exchanging Raft messages only with [{}] (POST /cluster/heal lifts it)",
                    file.peers.join(", ")
                );
                Some(mask)
            }
        };
        Ok(Partition {
            layout: layout.clone(),
            allowed: RwLock::new(allowed),
        })
    }

    /// Whether messages may go to and come from engine node `node`.
    pub fn allows(&self, node: u64) -> bool {
        match *self.allowed.read().unwrap_or_else(|p| p.into_inner()) {
            None => true,
            Some(mask) => node < 128 && mask & (1 << node) != 0,
        }
    }

    /// Allows only `peers` from now on, durably. Blocking: it fsyncs.
    pub fn set(&self, peers: &[String], members: &Members) -> Result<(), PartitionError> {
        let mask = mask(peers, members)?;
        let normalized: Vec<String> = peers
            .iter()
            .map(|p| members::normalize(p, "peer"))
            .collect::<Result<_, _>>()?;
        let file = PartitionFile { peers: normalized };
        log_store::write_json(&self.layout.partition(), &file)?;
        *self.allowed.write().unwrap_or_else(|p| p.into_inner()) = Some(mask);
        info!(
            "test partition: exchanging Raft messages only with [{}]",
            file.peers.join(", ")
        );
        Ok(())
    }

    /// Lifts any partition, durably. Blocking: it fsyncs.
    pub fn heal(&self) -> Result<(), PartitionError> {
        let path = self.layout.partition();
        match std::fs::remove_file(&path) {
            Ok(()) => snapshot::sync_dir(&path).map_err(|error| PartitionError::Remove {
                path: path.display().to_string(),
                error,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(PartitionError::Remove {
                    path: path.display().to_string(),
                    error,
                });
            }
        }
        let was = self
            .allowed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if was.is_some() {
            info!("test partition healed: exchanging Raft messages with every member");
        }
        Ok(())
    }
}

fn mask(peers: &[String], members: &Members) -> Result<u128, PartitionError> {
    let mut mask = 0u128;
    for peer in peers {
        let id = members::normalize(peer, "peer")?;
        let node = members
            .node_of(&id)
            .filter(|&n| n < 128)
            .ok_or(PartitionError::NotAMember(id))?;
        mask |= 1 << node;
    }
    Ok(mask)
}

//! Who is in the cluster: this member's ID and the others', as the command
//! line and environment give them (SPEC §6), and the small numbers the
//! Raft engine knows them by.
//!
//! Owns the one normal form of a member ID (`HOST:PORT`, `:PORT` meaning
//! `127.0.0.1:PORT`) and the mapping between IDs and engine node numbers.
//! It must never do I/O: what it is given, it checks and names.

use std::fmt;

use thiserror::Error;

/// The host a bare `:PORT` stands for.
const LOOPBACK: &str = "127.0.0.1";

/// A member list or ID that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MembersError {
    #[error("{what} {given:?} is not HOST:PORT or :PORT (for example 10.0.42.101:8080 or :8002)")]
    BadId { what: &'static str, given: String },
    #[error(
        "this member's ID would be {id}, which other members cannot reach; give --addr (or ADDR) with an address they can"
    )]
    Unroutable { id: String },
}

/// The members of a static cluster, this one included, in one fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// Every member's ID, sorted, without repeats. A member's engine node
    /// number is its position here plus one (the engine reserves 0), so
    /// every member derives the same numbers from the same list, whatever
    /// order it was given in.
    ids: Vec<String>,
    /// This member's position in `ids`.
    me: usize,
}

impl Members {
    /// Builds the member list from this member's ID and the `--peers` list,
    /// which may or may not name this member too.
    pub fn new(me: &str, peers: &[String]) -> Result<Members, MembersError> {
        let me = normalize(me, "--addr")?;
        let mut ids = vec![me.clone()];
        for peer in peers {
            ids.push(normalize(peer, "--peers entry")?);
        }
        ids.sort();
        ids.dedup();
        let me = ids.binary_search(&me).expect("the list holds this member");
        Ok(Members { ids, me })
    }

    /// This member's ID.
    pub fn me(&self) -> &str {
        &self.ids[self.me]
    }

    /// This member's engine node number.
    pub fn my_node(&self) -> u64 {
        self.me as u64 + 1
    }

    /// Every member's ID, sorted.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Every member's engine node number.
    pub fn nodes(&self) -> impl Iterator<Item = u64> + '_ {
        1..=self.ids.len() as u64
    }

    /// The other members' IDs, sorted.
    pub fn others(&self) -> impl Iterator<Item = &str> {
        self.ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.me)
            .map(|(_, id)| id.as_str())
    }

    /// The ID of engine node `node`, if it is a member.
    pub fn id_of(&self, node: u64) -> Option<&str> {
        let index = usize::try_from(node.checked_sub(1)?).ok()?;
        self.ids.get(index).map(String::as_str)
    }

    /// The engine node number of the member `id` (in either form).
    pub fn node_of(&self, id: &str) -> Option<u64> {
        let id = normalize(id, "ID").ok()?;
        self.ids
            .binary_search(&id)
            .ok()
            .map(|index| index as u64 + 1)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl fmt::Display for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ids.join(","))
    }
}

/// Splits a comma-separated `--peers` value, dropping empty items (so an
/// empty or trailing-comma list means what it looks like).
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The normal form of a member ID: `HOST:PORT`, with `:PORT` meaning the
/// loopback address. `what` names the input in the error.
pub fn normalize(id: &str, what: &'static str) -> Result<String, MembersError> {
    let bad = || MembersError::BadId {
        what,
        given: id.to_owned(),
    };
    let id = id.trim();
    let (host, port) = id.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    let host = if host.is_empty() { LOOPBACK } else { host };
    let valid_host = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':'));
    if !valid_host {
        return Err(bad());
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// Refuses an ID that names no particular machine: other members could
/// never reach it.
pub fn check_routable(id: &str) -> Result<(), MembersError> {
    let host = id.rsplit_once(':').map_or(id, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Err(MembersError::Unroutable { id: id.to_owned() }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_both_forms() {
        assert_eq!(normalize(":8002", "x").unwrap(), "127.0.0.1:8002");
        assert_eq!(
            normalize("10.0.42.101:8080", "x").unwrap(),
            "10.0.42.101:8080"
        );
        assert_eq!(normalize("Node-1:80", "x").unwrap(), "node-1:80");
        for bad in ["", "8001", "host:", "host:port", "a b:1", ":0", ":70000"] {
            assert!(normalize(bad, "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_member_numbers_the_list_the_same_way() {
        let lsfr = Members::new("127.0.0.1:8002", &split_list(":8001,:8002,:8003")).unwrap();
        let clstr = Members::new("127.0.0.1:8003", &split_list("127.0.0.1:8002,:8001,")).unwrap();
        assert_eq!(lsfr.ids(), clstr.ids());
        assert_eq!(lsfr.my_node(), 2);
        assert_eq!(clstr.my_node(), 3);
        assert_eq!(
            lsfr.others().collect::<Vec<_>>(),
            ["127.0.0.1:8001", "127.0.0.1:8003"]
        );
        assert_eq!(lsfr.node_of(":8003"), Some(3));
        assert_eq!(lsfr.id_of(1), Some("127.0.0.1:8001"));
        assert_eq!(lsfr.id_of(0), None);
        assert_eq!(lsfr.id_of(4), None);
        assert_eq!(lsfr.nodes().collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn unspecified_addresses_are_not_ids() {
        assert!(check_routable("0.0.0.0:8001").is_err());
        assert!(check_routable("[::]:8001").is_err());
        assert!(check_routable("127.0.0.1:8001").is_ok());
        assert!(check_routable("node1:8001").is_ok());
    }
}

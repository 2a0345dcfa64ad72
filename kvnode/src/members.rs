//! The address book: where each node's peer service and client API listen.
//!
//! The configuration (who votes, who learns) is the protocol's
//! (`consensus::membership`); where to reach a node is the runtime's. A node
//! learns addresses from its initial member list (`--peers`), from the
//! member it asked when joining (`--join`), from every configuration entry
//! that adds a node (it carries the new node's addresses as
//! `PEER_ADDR/CLIENT_ADDR`), and from the header of each peer stream (a
//! node that caught up by a snapshot may have missed the entry). The book
//! is kept in the node's storage, so a restart keeps what it learned.

use std::collections::BTreeMap;
use std::sync::Mutex;

use consensus::{Membership, NodeId, lock};

use crate::config::Member;

/// Addresses by node id, shared by the runtime, the transport and the
/// client service.
#[derive(Default)]
pub struct AddressBook {
    members: Mutex<BTreeMap<NodeId, Member>>,
    /// The configuration in force at this node, as the runtime last saw it.
    membership: Mutex<Membership>,
    /// Where the book is saved when it changes.
    storage: Option<std::sync::Arc<crate::storage::Storage>>,
}

impl std::fmt::Debug for AddressBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressBook")
            .field("members", &self.all())
            .finish_non_exhaustive()
    }
}

impl AddressBook {
    /// A book holding `members`, not saved anywhere.
    pub fn new(members: BTreeMap<NodeId, Member>) -> Self {
        AddressBook {
            members: Mutex::new(members),
            ..AddressBook::default()
        }
    }

    /// A book holding what `storage` saved, with `given` (the addresses
    /// this start was given) over it; saved there whenever it changes.
    pub fn stored(
        storage: std::sync::Arc<crate::storage::Storage>,
        given: BTreeMap<NodeId, Member>,
    ) -> Result<Self, crate::storage::StorageError> {
        let mut members = decode_book(&storage.addresses()?);
        members.extend(given);
        storage.save_addresses(&encode_book(&members))?;
        Ok(AddressBook {
            members: Mutex::new(members),
            membership: Mutex::default(),
            storage: Some(storage),
        })
    }

    /// Where node `id` listens, if known.
    pub fn get(&self, id: NodeId) -> Option<Member> {
        lock(&self.members).get(&id).cloned()
    }

    /// Records node `id`'s addresses; true when they are new or changed.
    pub fn learn(&self, id: NodeId, member: Member) -> bool {
        let mut members = lock(&self.members);
        if members.get(&id) == Some(&member) {
            return false;
        }
        tracing::info!(
            node = id,
            peer_addr = %member.peer_addr,
            client_addr = %member.client_addr,
            "learned where a node listens"
        );
        members.insert(id, member);
        if let Some(storage) = &self.storage
            && let Err(error) = storage.save_addresses(&encode_book(&members))
        {
            tracing::error!(%error, "cannot save the address book");
        }
        true
    }

    /// Every address known.
    pub fn all(&self) -> BTreeMap<NodeId, Member> {
        lock(&self.members).clone()
    }

    /// The configuration in force, as the runtime last reported it.
    pub fn membership(&self) -> Membership {
        *lock(&self.membership)
    }

    /// The runtime reports the configuration in force.
    pub fn set_membership(&self, membership: Membership) {
        *lock(&self.membership) = membership;
    }

    /// Whether a peer stream from `id` is taken: a member of the
    /// configuration in force, or a node whose address this node was given
    /// (an initial member, or one added by an entry it holds: a node
    /// behind may not know yet the configuration that made it a member).
    pub fn accepts(&self, id: NodeId) -> bool {
        self.membership().contains(id) || lock(&self.members).contains_key(&id)
    }
}

/// A node's addresses as a configuration entry carries them:
/// `PEER_ADDR/CLIENT_ADDR`.
pub fn format_address(member: &Member) -> String {
    format!("{}/{}", member.peer_addr, member.client_addr)
}

/// The addresses `format_address` wrote, or why they are not valid.
pub fn parse_address(text: &str) -> Result<Member, String> {
    let (peer, client) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: expected PEER_ADDR/CLIENT_ADDR"))?;
    for (what, addr) in [("peer", peer), ("client", client)] {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|_| format!("{what} address {addr:?} is not IP:PORT"))?;
    }
    Ok(Member {
        peer_addr: peer.to_string(),
        client_addr: client.to_string(),
    })
}

/// The book as storage keeps it: one `ID=PEER_ADDR/CLIENT_ADDR` per line.
pub fn encode_book(members: &BTreeMap<NodeId, Member>) -> String {
    members
        .iter()
        .map(|(id, m)| format!("{id}={}\n", format_address(m)))
        .collect()
}

/// The book `encode_book` wrote (lines that do not parse are skipped).
pub fn decode_book(text: &str) -> BTreeMap<NodeId, Member> {
    text.lines()
        .filter_map(|line| {
            let (id, address) = line.split_once('=')?;
            Some((id.parse().ok()?, parse_address(address).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_bad_ones_are_refused() {
        let member = parse_address("127.0.0.1:7004/127.0.0.1:6004").expect("valid");
        assert_eq!(format_address(&member), "127.0.0.1:7004/127.0.0.1:6004");
        for bad in ["127.0.0.1:7004", "x/127.0.0.1:6004", "127.0.0.1:7004/"] {
            assert!(parse_address(bad).is_err(), "{bad:?}");
        }
        let book = BTreeMap::from([(4, member.clone()), (9, member)]);
        assert_eq!(decode_book(&encode_book(&book)), book);
    }

    #[test]
    fn streams_are_taken_from_members_and_known_nodes_only() {
        let book = AddressBook::new(BTreeMap::from([(
            1,
            parse_address("127.0.0.1:7001/127.0.0.1:6001").unwrap(),
        )]));
        book.set_membership(Membership::of_voters([1, 2]));
        assert!(book.accepts(1) && book.accepts(2));
        assert!(!book.accepts(3));
    }
}

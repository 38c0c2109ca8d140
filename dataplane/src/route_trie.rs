//! The routes of a snapshot by prefix: a persistent hash array mapped trie
//! (HAMT), so that the snapshot after one change shares every node but the
//! few on the changed prefix's path, and a change costs O(log n).
//!
//! Written for routes rather than taken from a crate: a general persistent
//! map (rpds, which the gate and the snapshot's skipped entries use) keeps
//! each entry in two allocations of its own (an entry and a leaf node);
//! here a route sits in its parent's slot array (16 bytes), keyed by the
//! prefix it already holds. Measured with the routes (the `routes/memory`
//! lines of `cargo bench -p apiproxy-dataplane --bench routes`): 196 bytes
//! a mapping at 100,000 against rpds's 290, a third less.
//!
//! Each level takes 6 bits of the prefix's 64-bit FNV hash; a node keeps a
//! bitmap of the slots in use and an array of just those. Prefixes whose
//! whole hashes are equal share a collision list.

use std::hash::Hasher;
use std::sync::Arc;

use crate::route::Route;

const BITS: u32 = 6;
const MASK: u64 = (1 << BITS) - 1;

#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTrie {
    root: Arc<Node>,
    len: usize,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Which of the 64 slots are in use: `slots` holds those, in order.
    bitmap: u64,
    slots: Box<[Slot]>,
}

#[derive(Debug, Clone)]
enum Slot {
    Route(Arc<Route>),
    Node(Arc<Node>),
    /// Routes whose prefixes hash alike: never from FNV on real prefixes,
    /// but possible.
    Collision(Arc<Vec<Arc<Route>>>),
}

fn hash(prefix: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(prefix.as_bytes());
    h.finish()
}

/// The slot of `hash` at the level `shift` bits deep, and whether it is
/// in use. Two different hashes part at some level: `shift` stays ≤ 60.
fn place(node: &Node, hash: u64, shift: u32) -> (usize, u64, bool) {
    let bit = 1u64 << ((hash >> shift) & MASK);
    let index = (node.bitmap & (bit - 1)).count_ones() as usize;
    (index, bit, node.bitmap & bit != 0)
}

impl RouteTrie {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn get(&self, prefix: &str) -> Option<&Arc<Route>> {
        get(&self.root, hash(prefix), prefix)
    }

    /// Adds `route` under its prefix, returning the route it replaces.
    /// Nodes shared with another trie are copied first (path copying):
    /// the other trie never changes.
    pub(crate) fn insert(&mut self, route: Arc<Route>) -> Option<Arc<Route>> {
        let h = hash(&route.prefix);
        let old = insert(Arc::make_mut(&mut self.root), 0, h, route, hash);
        self.len += usize::from(old.is_none());
        old
    }

    /// Takes the route of `prefix` out, copying shared nodes as
    /// [`RouteTrie::insert`] does; nothing is copied when it is not there.
    pub(crate) fn remove(&mut self, prefix: &str) -> Option<Arc<Route>> {
        let h = hash(prefix);
        get(&self.root, h, prefix)?;
        let old = remove(Arc::make_mut(&mut self.root), 0, h, prefix);
        self.len -= usize::from(old.is_some());
        old
    }

    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            stack: vec![self.root.slots.iter()],
            collision: [].iter(),
        }
    }
}

fn get<'t>(mut node: &'t Node, hash: u64, prefix: &str) -> Option<&'t Arc<Route>> {
    let mut shift = 0;
    loop {
        let (index, _, used) = place(node, hash, shift);
        if !used {
            return None;
        }
        match &node.slots[index] {
            Slot::Route(route) => return (*route.prefix == *prefix).then_some(route),
            Slot::Node(child) => node = child,
            Slot::Collision(routes) => return routes.iter().find(|r| *r.prefix == *prefix),
        }
        shift += BITS;
    }
}

/// `hash_of` hashes the prefix of a route met on the way (the trie's
/// [`hash`]; another in tests, to make collisions).
fn insert(
    node: &mut Node,
    shift: u32,
    hash: u64,
    route: Arc<Route>,
    hash_of: fn(&str) -> u64,
) -> Option<Arc<Route>> {
    let (index, bit, used) = place(node, hash, shift);
    if !used {
        let mut slots = std::mem::take(&mut node.slots).into_vec();
        slots.insert(index, Slot::Route(route));
        node.slots = slots.into_boxed_slice();
        node.bitmap |= bit;
        return None;
    }
    let slot = &mut node.slots[index];
    match slot {
        Slot::Route(old) if old.prefix == route.prefix => Some(std::mem::replace(old, route)),
        Slot::Route(old) => {
            let old_hash = hash_of(&old.prefix);
            *slot = if old_hash == hash {
                Slot::Collision(Arc::new(vec![old.clone(), route]))
            } else {
                // Both go one level down, where their hashes may part.
                let mut child = Node::default();
                insert(&mut child, shift + BITS, old_hash, old.clone(), hash_of);
                insert(&mut child, shift + BITS, hash, route, hash_of);
                Slot::Node(Arc::new(child))
            };
            None
        }
        Slot::Node(child) => insert(Arc::make_mut(child), shift + BITS, hash, route, hash_of),
        Slot::Collision(routes) => {
            let routes = Arc::make_mut(routes);
            match routes.iter_mut().find(|r| r.prefix == route.prefix) {
                Some(old) => Some(std::mem::replace(old, route)),
                None => {
                    routes.push(route);
                    None
                }
            }
        }
    }
}

/// Removes a prefix known to be there, keeping every node below the root
/// holding two routes or more: a node left with one route (or one
/// collision list) gives it back to its parent's slot.
fn remove(node: &mut Node, shift: u32, hash: u64, prefix: &str) -> Option<Arc<Route>> {
    let (index, bit, used) = place(node, hash, shift);
    if !used {
        return None;
    }
    let removed = match &mut node.slots[index] {
        Slot::Route(route) if *route.prefix == *prefix => route.clone(),
        Slot::Route(_) => return None,
        Slot::Node(child) => {
            let child = Arc::make_mut(child);
            let removed = remove(child, shift + BITS, hash, prefix);
            if let [only @ (Slot::Route(_) | Slot::Collision(_))] = &*child.slots {
                node.slots[index] = only.clone();
            }
            return removed;
        }
        Slot::Collision(routes) => {
            let routes = Arc::make_mut(routes);
            let at = routes.iter().position(|r| *r.prefix == *prefix)?;
            let removed = routes.remove(at);
            if let [only] = &routes[..] {
                node.slots[index] = Slot::Route(only.clone());
            }
            return Some(removed);
        }
    };
    let mut slots = std::mem::take(&mut node.slots).into_vec();
    slots.remove(index);
    node.slots = slots.into_boxed_slice();
    node.bitmap &= !bit;
    Some(removed)
}

/// Every route, in no particular order.
pub(crate) struct Iter<'t> {
    stack: Vec<std::slice::Iter<'t, Slot>>,
    collision: std::slice::Iter<'t, Arc<Route>>,
}

impl<'t> Iterator for Iter<'t> {
    type Item = &'t Arc<Route>;

    fn next(&mut self) -> Option<&'t Arc<Route>> {
        loop {
            if let Some(route) = self.collision.next() {
                return Some(route);
            }
            let top = self.stack.last_mut()?;
            match top.next() {
                None => {
                    self.stack.pop();
                }
                Some(Slot::Route(route)) => return Some(route),
                Some(Slot::Node(child)) => self.stack.push(child.slots.iter()),
                Some(Slot::Collision(routes)) => self.collision = routes.iter(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn route(prefix: &str, target: &str) -> Arc<Route> {
        Arc::new(Route::new(prefix, target).unwrap())
    }

    /// A trie and what it must hold, compared in full.
    fn check(trie: &RouteTrie, model: &BTreeMap<String, String>) -> Result<(), TestCaseError> {
        prop_assert_eq!(trie.len(), model.len());
        let listed: BTreeMap<String, String> = trie
            .iter()
            .map(|r| (r.prefix.to_string(), r.raw_target().to_owned()))
            .collect();
        prop_assert_eq!(&listed, model);
        for (prefix, target) in model {
            prop_assert_eq!(
                trie.get(prefix).map(|r| r.raw_target()),
                Some(target.as_str())
            );
        }
        prop_assert!(trie.get("/not-there").is_none());
        Ok(())
    }

    /// Below the root, a node holds at least two routes.
    fn compact(node: &Node, root: bool) -> bool {
        let routes = |n: &Node| n.slots.len();
        (root || routes(node) >= 2 || matches!(&*node.slots, [Slot::Node(_)]))
            && node.slots.iter().all(|s| match s {
                Slot::Node(child) => compact(child, false),
                Slot::Collision(list) => list.len() >= 2,
                Slot::Route(_) => true,
            })
            && node.bitmap.count_ones() as usize == node.slots.len()
    }

    proptest! {
        /// Any sequence of inserts and removes, on prefixes many enough
        /// to build several levels: the trie holds what a map would, and
        /// a copy taken before a change never sees it.
        #[test]
        fn behaves_as_a_map_and_copies_never_change(
            ops in proptest::collection::vec((0..300u32, proptest::option::of(0..3u8)), 1..400)
        ) {
            let mut trie = RouteTrie::default();
            let mut model = BTreeMap::new();
            for (i, (key, target)) in ops.into_iter().enumerate() {
                let prefix = format!("/p{key}");
                let before = (trie.clone(), model.clone());
                match target {
                    Some(t) => {
                        let target = format!("http://t{t}");
                        let old = trie.insert(route(&prefix, &target));
                        prop_assert_eq!(
                            old.map(|r| r.raw_target().to_owned()),
                            model.insert(prefix, target)
                        );
                    }
                    None => {
                        let old = trie.remove(&prefix);
                        prop_assert_eq!(old.map(|r| r.raw_target().to_owned()), model.remove(&prefix));
                    }
                }
                if i % 37 == 0 {
                    check(&before.0, &before.1)?;
                }
                prop_assert!(compact(&trie.root, true));
            }
            check(&trie, &model)?;
        }
    }

    #[test]
    fn whole_hash_collisions_share_a_list() {
        // Built by hand with one hash for all: FNV never collides on these.
        let mut node = Node::default();
        let routes: Vec<_> = (0..3)
            .map(|i| route(&format!("/c{i}"), "http://c"))
            .collect();
        let same = |_: &str| 42;
        for r in &routes {
            assert!(insert(&mut node, 0, 42, r.clone(), same).is_none());
        }
        assert!(matches!(&*node.slots, [Slot::Collision(list)] if list.len() == 3));
        for r in &routes {
            assert!(Arc::ptr_eq(get(&node, 42, &r.prefix).unwrap(), r));
        }
        assert!(get(&node, 42, "/c9").is_none());
        let replaced = insert(&mut node, 0, 42, route("/c1", "http://new"), same).unwrap();
        assert!(Arc::ptr_eq(&replaced, &routes[1]));
        assert!(remove(&mut node, 0, 42, "/c0").is_some());
        assert!(remove(&mut node, 0, 42, "/c9").is_none());
        assert!(remove(&mut node, 0, 42, "/c2").is_some());
        // One left: a plain route again.
        assert!(matches!(&*node.slots, [Slot::Route(r)] if r.raw_target() == "http://new"));
    }
}

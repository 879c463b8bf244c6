//! The prefix cache: token sequences whose KV entries are kept in llama.cpp sequences of their
//! own, so a request that starts with one of them copies its KV instead of evaluating it again.
//!
//! A radix tree over token ids: each edge holds a run of tokens, each node that ends a cached
//! sequence knows the KV sequence id holding the whole path to it. A lookup walks the tree as
//! far as the request's tokens match; any cached sequence below the deepest matched point holds
//! that matched prefix. Entries are evicted least recently used first when the cache holds more
//! tokens than its budget or needs a sequence id back.

use llama_cpp_2::token::LlamaToken;

#[derive(Default)]
struct Node {
    /// Outgoing edges, each with the run of tokens it spells.
    children: Vec<(Vec<LlamaToken>, Node)>,
    /// The cache entry ending exactly here.
    entry: Option<usize>,
}

/// One cached sequence.
#[derive(Clone, Debug)]
pub struct Entry {
    pub seq: i32,
    pub len: usize,
    pub last_used: u64,
}

#[derive(Default)]
pub struct PrefixCache {
    root: Node,
    /// Entries by id; `None` once evicted (ids are reused through `free_ids`).
    entries: Vec<Option<Entry>>,
    free_ids: Vec<usize>,
    clock: u64,
    total_tokens: usize,
}

/// Where a lookup ended: how many tokens matched and which sequence holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub seq: i32,
    pub len: usize,
}

pub fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn total_tokens(&self) -> usize {
        self.total_tokens
    }

    pub fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Walks down as far as `tokens` match: the node reached (the child of an edge matched
    /// part way) and how many tokens matched.
    fn descend(&self, tokens: &[LlamaToken]) -> (&Node, usize) {
        let mut node = &self.root;
        let mut matched = 0;
        while matched < tokens.len() {
            let rest = &tokens[matched..];
            let Some((edge, child)) = node
                .children
                .iter()
                .find(|(edge, _)| edge.first() == rest.first())
            else {
                break;
            };
            let n = common_prefix(edge, rest);
            matched += n;
            node = child;
            if n < edge.len() {
                break;
            }
        }
        (node, matched)
    }

    /// The longest cached prefix of `tokens`, and a sequence that holds it.
    pub fn lookup(&mut self, tokens: &[LlamaToken]) -> Option<Hit> {
        let (node, matched) = self.descend(tokens);
        if matched == 0 {
            return None;
        }
        let id = Self::any_entry(node, &self.entries)?;
        self.clock += 1;
        let entry = self.entries[id].as_mut()?;
        entry.last_used = self.clock;
        Some(Hit {
            seq: entry.seq,
            len: matched,
        })
    }

    fn any_entry(node: &Node, entries: &[Option<Entry>]) -> Option<usize> {
        if let Some(id) = node.entry.filter(|id| entries[*id].is_some()) {
            return Some(id);
        }
        node.children
            .iter()
            .find_map(|(_, child)| Self::any_entry(child, entries))
    }

    /// True when `tokens` (or a longer sequence starting with them) is already cached.
    pub fn covers(&self, tokens: &[LlamaToken]) -> bool {
        self.descend(tokens).1 == tokens.len()
    }

    /// Records that sequence `seq` holds `tokens`. Returns the sequence ids of entries that
    /// became redundant (a prefix of the new one): the caller frees their KV.
    pub fn insert(&mut self, tokens: &[LlamaToken], seq: i32) -> Vec<i32> {
        self.clock += 1;
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                self.entries.push(None);
                self.entries.len() - 1
            }
        };
        self.entries[id] = Some(Entry {
            seq,
            len: tokens.len(),
            last_used: self.clock,
        });
        self.total_tokens += tokens.len();
        let mut replaced = Vec::new();
        let mut node = &mut self.root;
        let mut rest = tokens;
        loop {
            // Entries ending on the way down are prefixes of the new one and no longer needed.
            if let Some(old) = node.entry.take() {
                if let Some(entry) = self.entries[old].take() {
                    self.total_tokens -= entry.len;
                    replaced.push(entry.seq);
                }
                self.free_ids.push(old);
            }
            if rest.is_empty() {
                node.entry = Some(id);
                return replaced;
            }
            let position = node
                .children
                .iter()
                .position(|(edge, _)| edge.first() == rest.first());
            let Some(i) = position else {
                node.children.push((
                    rest.to_vec(),
                    Node {
                        children: Vec::new(),
                        entry: Some(id),
                    },
                ));
                return replaced;
            };
            let n = common_prefix(&node.children[i].0, rest);
            if n < node.children[i].0.len() {
                // Split the edge where the new sequence leaves it.
                let (edge, child) = node.children.swap_remove(i);
                let middle = Node {
                    children: vec![(edge[n..].to_vec(), child)],
                    entry: None,
                };
                node.children.push((edge[..n].to_vec(), middle));
                let last = node.children.len() - 1;
                node = &mut node.children[last].1;
            } else {
                node = &mut node.children[i].1;
            }
            rest = &rest[n..];
        }
    }

    /// Evicts the least recently used entry; returns its sequence id.
    pub fn evict_lru(&mut self) -> Option<i32> {
        let (id, _) = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, e.last_used)))
            .min_by_key(|(_, used)| *used)?;
        let entry = self.entries[id].take()?;
        self.free_ids.push(id);
        self.total_tokens -= entry.len;
        Self::prune(&mut self.root, id);
        Some(entry.seq)
    }

    /// Removes the entry mark and any branch left without entries.
    fn prune(node: &mut Node, id: usize) -> bool {
        if node.entry == Some(id) {
            node.entry = None;
        }
        node.children
            .retain_mut(|(_, child)| !Self::prune(child, id));
        node.entry.is_none() && node.children.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ids: &[i32]) -> Vec<LlamaToken> {
        ids.iter().map(|i| LlamaToken(*i)).collect()
    }

    #[test]
    fn finds_the_longest_cached_prefix() {
        let mut cache = PrefixCache::default();
        assert!(cache.insert(&t(&[1, 2, 3, 4]), 10).is_empty());
        assert!(cache.insert(&t(&[1, 2, 7]), 11).is_empty());
        assert_eq!(
            cache.lookup(&t(&[1, 2, 3, 9])),
            Some(Hit { seq: 10, len: 3 })
        );
        assert_eq!(
            cache.lookup(&t(&[1, 2, 7, 7])),
            Some(Hit { seq: 11, len: 3 })
        );
        assert_eq!(cache.lookup(&t(&[1, 5])).map(|h| h.len), Some(1));
        assert_eq!(cache.lookup(&t(&[9])), None);
        assert!(cache.covers(&t(&[1, 2, 3])));
        assert!(!cache.covers(&t(&[1, 2, 3, 4, 5])));
    }

    #[test]
    fn a_longer_entry_replaces_its_prefix_and_lru_evicts() {
        let mut cache = PrefixCache::default();
        cache.insert(&t(&[1, 2]), 10);
        assert_eq!(cache.insert(&t(&[1, 2, 3]), 11), vec![10]);
        assert_eq!(cache.total_tokens(), 3);
        cache.insert(&t(&[5, 6]), 12);
        cache.lookup(&t(&[1, 2, 3]));
        assert_eq!(cache.evict_lru(), Some(12));
        assert_eq!(cache.lookup(&t(&[5, 6])), None);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.evict_lru(), Some(11));
        assert!(cache.is_empty() && cache.total_tokens() == 0);
    }
}

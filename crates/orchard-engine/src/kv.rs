//! KV cell bookkeeping: one pool of pages shared by every sequence, and the prefix cache that
//! keeps the pages of finished sequences for reuse.
//!
//! The pool never touches KV data (that lives in `orchard_models::Context`); it only decides
//! which cells a sequence may write. A page is `PAGE` consecutive cells; a page's reference
//! count is the number of holders (live sequences plus at most one prefix-cache node), and a
//! page is on the free list exactly when its count is zero.

use orchard_core::TokenId;
use std::collections::HashMap;

/// Cells per page. Small enough that a prompt wastes little of its last page, large enough that
/// the prefix trie and cell tables stay short.
pub const PAGE: usize = 16;

/// Reference-counted pages with a free list.
#[derive(Debug)]
pub(crate) struct PagePool {
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl PagePool {
    pub fn new(n_pages: usize) -> PagePool {
        PagePool {
            refs: vec![0; n_pages],
            // Reversed so that pages are handed out from cell 0 upwards (easier to read in logs).
            free: (0..n_pages as u32).rev().collect(),
        }
    }

    pub fn n_pages(&self) -> usize {
        self.refs.len()
    }

    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    pub fn refs(&self, page: u32) -> u32 {
        self.refs[page as usize]
    }

    /// A fresh page with one reference, or `None` when the free list is empty.
    pub fn alloc(&mut self) -> Option<u32> {
        let p = self.free.pop()?;
        self.refs[p as usize] = 1;
        Some(p)
    }

    pub fn retain(&mut self, page: u32) {
        self.refs[page as usize] += 1;
    }

    /// Drops one reference; the page goes back to the free list when none is left.
    pub fn release(&mut self, page: u32) {
        let r = &mut self.refs[page as usize];
        debug_assert!(*r > 0, "page {page} released more often than retained");
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free.push(page);
        }
    }

    /// Checks the pool against the reference counts the holders claim (`expected[page]`).
    pub fn audit(&self, expected: &[u32]) -> Result<(), String> {
        let mut on_free = vec![false; self.refs.len()];
        for &p in &self.free {
            let slot = on_free
                .get_mut(p as usize)
                .ok_or_else(|| format!("free list holds page {p} outside the pool"))?;
            if *slot {
                return Err(format!("page {p} is on the free list twice"));
            }
            *slot = true;
        }
        for (p, (&have, &want)) in self.refs.iter().zip(expected).enumerate() {
            if have != want {
                return Err(format!("page {p} has {have} references but {want} holders"));
            }
            if (have == 0) != on_free[p] {
                return Err(format!(
                    "page {p} has {have} references and is{} on the free list",
                    if on_free[p] { "" } else { " not" }
                ));
            }
        }
        Ok(())
    }
}

const NO_NODE: u32 = u32::MAX;

#[derive(Debug)]
struct Node {
    page: u32,
    parent: u32,
    n_children: u32,
    last_used: u64,
    key: [TokenId; PAGE],
}

/// A trie of full pages keyed by their tokens: the path from a root to a node spells the token
/// prefix whose KV the node's page holds (positions `depth * PAGE ..`). KV at positions
/// `0..k` depends on exactly the tokens `0..k`, so a page is reusable by any sequence whose
/// prompt starts with the same path. Only leaves are evicted, so no cached page is ever
/// unreachable.
#[derive(Debug, Default)]
pub(crate) struct PrefixCache {
    nodes: Vec<Option<Node>>,
    free_ids: Vec<u32>,
    children: HashMap<(u32, [TokenId; PAGE]), u32>,
    clock: u64,
}

impl PrefixCache {
    #[cfg(test)]
    fn node(&self, id: u32) -> &Node {
        self.nodes[id as usize].as_ref().expect("live node")
    }

    fn node_mut(&mut self, id: u32) -> &mut Node {
        self.nodes[id as usize].as_mut().expect("live node")
    }

    fn page_key(tokens: &[TokenId], i: usize) -> [TokenId; PAGE] {
        let mut k = [0; PAGE];
        k.copy_from_slice(&tokens[i * PAGE..(i + 1) * PAGE]);
        k
    }

    /// The pages of the longest cached prefix of `tokens`, at most `max_pages` of them. Each
    /// returned page gets one more reference (the caller's) and its path is marked used.
    pub fn lookup(
        &mut self,
        pool: &mut PagePool,
        tokens: &[TokenId],
        max_pages: usize,
    ) -> Vec<u32> {
        self.clock += 1;
        let now = self.clock;
        let mut pages = Vec::new();
        let mut cur = NO_NODE;
        for i in 0..(tokens.len() / PAGE).min(max_pages) {
            let Some(&id) = self.children.get(&(cur, Self::page_key(tokens, i))) else {
                break;
            };
            let n = self.node_mut(id);
            n.last_used = now;
            pages.push(n.page);
            cur = id;
        }
        for &p in &pages {
            pool.retain(p);
        }
        pages
    }

    /// Offers the first `n_full` full pages of a sequence (`pages[i]` holds the KV of
    /// `tokens[i*PAGE..(i+1)*PAGE]`). New prefixes are adopted (the cache takes its own
    /// reference); prefixes already cached keep their existing page. The caller still releases
    /// its own references afterwards.
    pub fn insert(
        &mut self,
        pool: &mut PagePool,
        tokens: &[TokenId],
        pages: &[u32],
        n_full: usize,
    ) {
        self.clock += 1;
        let now = self.clock;
        let mut cur = NO_NODE;
        for (i, &page) in pages.iter().enumerate().take(n_full) {
            let key = Self::page_key(tokens, i);
            let id = match self.children.get(&(cur, key)) {
                Some(&id) => id,
                None => {
                    let node = Node {
                        page,
                        parent: cur,
                        n_children: 0,
                        last_used: now,
                        key,
                    };
                    let id = match self.free_ids.pop() {
                        Some(id) => {
                            self.nodes[id as usize] = Some(node);
                            id
                        }
                        None => {
                            self.nodes.push(Some(node));
                            self.nodes.len() as u32 - 1
                        }
                    };
                    if cur != NO_NODE {
                        self.node_mut(cur).n_children += 1;
                    }
                    self.children.insert((cur, key), id);
                    pool.retain(page);
                    id
                }
            };
            self.node_mut(id).last_used = now;
            cur = id;
        }
    }

    /// Frees the least recently used page that only the cache holds (a leaf, so its prefix
    /// stays reachable). Returns false when nothing can be evicted.
    pub fn evict_one(&mut self, pool: &mut PagePool) -> bool {
        let victim = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i as u32, n)))
            .filter(|(_, n)| n.n_children == 0 && pool.refs(n.page) == 1)
            .min_by_key(|(_, n)| n.last_used)
            .map(|(i, _)| i);
        let Some(id) = victim else {
            return false;
        };
        let node = self.nodes[id as usize].take().expect("live node");
        self.children.remove(&(node.parent, node.key));
        if node.parent != NO_NODE {
            self.node_mut(node.parent).n_children -= 1;
        }
        self.free_ids.push(id);
        pool.release(node.page);
        true
    }

    /// Pages held by the cache alone (what eviction could free right now, if every such page
    /// were a leaf; inner ones become leaves as their children go).
    pub fn n_evictable(&self, pool: &PagePool) -> usize {
        self.live().filter(|n| pool.refs(n.page) == 1).count()
    }

    pub fn n_nodes(&self) -> usize {
        self.live().count()
    }

    /// Adds one per cached page to `counts` (for the pool audit) and checks the trie's links.
    pub fn count_refs(&self, counts: &mut [u32]) -> Result<(), String> {
        let mut kids = vec![0u32; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            counts[n.page as usize] += 1;
            if n.parent != NO_NODE {
                match self.nodes.get(n.parent as usize) {
                    Some(Some(_)) => kids[n.parent as usize] += 1,
                    _ => return Err(format!("cache node {i} has a dead parent {}", n.parent)),
                }
            }
            if self.children.get(&(n.parent, n.key)) != Some(&(i as u32)) {
                return Err(format!("cache node {i} is not reachable from its parent"));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                if n.n_children != kids[i] {
                    return Err(format!(
                        "cache node {i} counts {} children but has {}",
                        n.n_children, kids[i]
                    ));
                }
            }
        }
        if self.children.len() != self.n_nodes() {
            return Err(format!(
                "cache index has {} entries for {} nodes",
                self.children.len(),
                self.n_nodes()
            ));
        }
        Ok(())
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    #[cfg(test)]
    fn depth_of_page(&self, page: u32) -> Option<usize> {
        let mut id = (0..self.nodes.len() as u32).find(|&i| {
            self.nodes[i as usize]
                .as_ref()
                .is_some_and(|n| n.page == page)
        })?;
        let mut d = 0;
        while self.node(id).parent != NO_NODE {
            id = self.node(id).parent;
            d += 1;
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(pool: &PagePool, cache: &PrefixCache, held: &[&[u32]]) {
        let mut counts = vec![0; pool.n_pages()];
        cache.count_refs(&mut counts).unwrap();
        for h in held {
            for &p in *h {
                counts[p as usize] += 1;
            }
        }
        pool.audit(&counts).unwrap();
    }

    #[test]
    fn pool_hands_out_each_page_once() {
        let mut pool = PagePool::new(3);
        let a: Vec<u32> = (0..3).map(|_| pool.alloc().unwrap()).collect();
        assert_eq!(pool.alloc(), None);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
        pool.retain(a[1]);
        pool.release(a[1]);
        assert_eq!(pool.n_free(), 0);
        pool.release(a[1]);
        assert_eq!(pool.n_free(), 1);
        assert_eq!(pool.alloc(), Some(a[1]));
    }

    #[test]
    fn audit_catches_a_leak() {
        let mut pool = PagePool::new(2);
        let p = pool.alloc().unwrap();
        assert!(pool.audit(&[0, 0]).is_err());
        let mut want = vec![0, 0];
        want[p as usize] = 1;
        pool.audit(&want).unwrap();
    }

    #[test]
    fn prefix_lookup_insert_and_leaf_eviction() {
        let mut pool = PagePool::new(8);
        let mut cache = PrefixCache::default();
        let toks: Vec<u32> = (0..40).collect();
        let pages: Vec<u32> = (0..3).map(|_| pool.alloc().unwrap()).collect();
        // Two full pages computed (32 tokens), the third is partial.
        cache.insert(&mut pool, &toks, &pages, 2);
        for &p in &pages {
            pool.release(p);
        }
        audit(&pool, &cache, &[]);
        assert_eq!(pool.n_free(), 6);
        assert_eq!(cache.n_nodes(), 2);

        // Same first page, different second page: only one page is shared.
        let mut other = toks.clone();
        other[20] = 999;
        let got = cache.lookup(&mut pool, &other, 10);
        assert_eq!(got, vec![pages[0]]);
        audit(&pool, &cache, &[&got]);
        // The shared page is held by someone else, so only the leaf can go; then nothing.
        assert!(cache.evict_one(&mut pool));
        assert_eq!(cache.depth_of_page(pages[0]), Some(0));
        assert!(!cache.evict_one(&mut pool));
        for &p in &got {
            pool.release(p);
        }
        assert!(cache.evict_one(&mut pool));
        assert_eq!(cache.n_nodes(), 0);
        audit(&pool, &cache, &[]);
        assert_eq!(pool.n_free(), 8);
    }

    #[test]
    fn lookup_respects_the_page_limit_and_duplicates_are_not_adopted() {
        let mut pool = PagePool::new(8);
        let mut cache = PrefixCache::default();
        let toks: Vec<u32> = (0..32).collect();
        let a: Vec<u32> = (0..2).map(|_| pool.alloc().unwrap()).collect();
        cache.insert(&mut pool, &toks, &a, 2);
        // A second sequence computed the same prefix into its own pages.
        let b: Vec<u32> = (0..2).map(|_| pool.alloc().unwrap()).collect();
        cache.insert(&mut pool, &toks, &b, 2);
        for &p in a.iter().chain(&b) {
            pool.release(p);
        }
        assert_eq!(cache.n_nodes(), 2);
        assert_eq!(pool.n_free(), 6);
        let got = cache.lookup(&mut pool, &toks, 1);
        assert_eq!(got, vec![a[0]]);
        audit(&pool, &cache, &[&got]);
    }
}

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
    parent: u32,
    last_used: u64,
    /// Tokens `0..len` of this node's stretch of the prefix (a full node has `PAGE`).
    len: usize,
    key: [TokenId; PAGE],
    /// The KV cell of each of those tokens. A stretch need not sit in one page: a sequence
    /// that reused part of a cached stretch keeps the shared cells and writes the rest into a
    /// page of its own.
    cells: [u32; PAGE],
    /// The distinct pages of `cells[..len]`; the node holds one reference on each.
    pages: Vec<u32>,
    children: Vec<u32>,
}

/// What [`PrefixCache::lookup`] found: the KV cells of the first `cells.len()` tokens, and the
/// distinct pages they lie in (each retained once for the caller).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Reuse {
    pub cells: Vec<u32>,
    pub pages: Vec<u32>,
}

/// A trie of token stretches: the path from a root to a node spells a token prefix in
/// `PAGE`-token steps, and the node holds the KV cells of its own stretch (positions
/// `depth * PAGE ..`). KV at positions `0..k` depends on exactly the tokens `0..k`, so any
/// sequence whose prompt starts with the same tokens can read those cells. Full stretches are
/// indexed by their tokens; the last stretch of a sequence may be partial, and a lookup that
/// leaves the indexed path takes the longest common start of any child, down to one token.
/// Cached cells are never written again: a sequence that reuses part of a stretch writes its
/// own tokens into a fresh page. Only leaves are evicted, so no cached node is unreachable.
#[derive(Debug, Default)]
pub(crate) struct PrefixCache {
    nodes: Vec<Option<Node>>,
    free_ids: Vec<u32>,
    roots: Vec<u32>,
    /// Full stretches by (parent, tokens).
    full: HashMap<(u32, [TokenId; PAGE]), u32>,
    /// References the cache holds on each page.
    page_refs: Vec<u32>,
    clock: u64,
}

/// Distinct pages of `cells`, in first-seen order.
pub(crate) fn pages_of(cells: &[u32]) -> Vec<u32> {
    let mut v: Vec<u32> = Vec::with_capacity(2);
    for &c in cells {
        let p = c / PAGE as u32;
        if !v.contains(&p) {
            v.push(p);
        }
    }
    v
}

fn common_len(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    fn node(&self, id: u32) -> &Node {
        self.nodes[id as usize].as_ref().expect("live node")
    }

    fn node_mut(&mut self, id: u32) -> &mut Node {
        self.nodes[id as usize].as_mut().expect("live node")
    }

    fn kids(&self, parent: u32) -> &[u32] {
        if parent == NO_NODE {
            &self.roots
        } else {
            &self.node(parent).children
        }
    }

    fn page_key(tokens: &[TokenId], i: usize) -> [TokenId; PAGE] {
        let mut k = [0; PAGE];
        let s = &tokens[i * PAGE..((i + 1) * PAGE).min(tokens.len())];
        k[..s.len()].copy_from_slice(s);
        k
    }

    fn cache_refs(&self, page: u32) -> u32 {
        self.page_refs.get(page as usize).copied().unwrap_or(0)
    }

    /// The cells of the longest cached prefix of `tokens`, at most `max_tokens` of them. The
    /// caller gets one reference on each returned page; the path is marked used.
    pub fn lookup(&mut self, pool: &mut PagePool, tokens: &[TokenId], max_tokens: usize) -> Reuse {
        self.clock += 1;
        let now = self.clock;
        let max_tokens = max_tokens.min(tokens.len());
        let mut cells = Vec::new();
        let mut cur = NO_NODE;
        let mut i = 0;
        loop {
            let base = i * PAGE;
            if base >= max_tokens {
                break;
            }
            if base + PAGE <= max_tokens {
                if let Some(&id) = self.full.get(&(cur, Self::page_key(tokens, i))) {
                    let n = self.node_mut(id);
                    n.last_used = now;
                    cells.extend_from_slice(&n.cells);
                    cur = id;
                    i += 1;
                    continue;
                }
            }
            // Off the indexed path: the child sharing the longest start, if any.
            let want = &tokens[base..max_tokens];
            let best = self
                .kids(cur)
                .iter()
                .map(|&id| {
                    let n = self.node(id);
                    (id, common_len(&n.key[..n.len], want))
                })
                .max_by_key(|&(id, m)| (m, std::cmp::Reverse(id)));
            if let Some((id, m)) = best.filter(|&(_, m)| m > 0) {
                let n = self.node_mut(id);
                n.last_used = now;
                cells.extend_from_slice(&n.cells[..m]);
            }
            break;
        }
        let pages = pages_of(&cells);
        for &p in &pages {
            pool.retain(p);
        }
        Reuse { cells, pages }
    }

    /// Offers a sequence's computed prefix: `cells[k]` holds the KV of `tokens[k]`, for every
    /// `k < cells.len()`. Stretches not cached yet are adopted (the cache takes its own
    /// references); stretches already cached keep their existing cells; a partial last
    /// stretch is kept unless a cached child already starts with it. The caller still releases
    /// its own references afterwards.
    pub fn insert(&mut self, pool: &mut PagePool, tokens: &[TokenId], cells: &[u32]) {
        self.clock += 1;
        let now = self.clock;
        let n = cells.len().min(tokens.len());
        let mut cur = NO_NODE;
        for i in 0..n.div_ceil(PAGE) {
            let base = i * PAGE;
            let len = (n - base).min(PAGE);
            let key = Self::page_key(tokens, i);
            let existing = if len == PAGE {
                self.full.get(&(cur, key)).copied()
            } else {
                self.kids(cur).iter().copied().find(|&id| {
                    let c = self.node(id);
                    c.len >= len && c.key[..len] == key[..len]
                })
            };
            let id = match existing {
                Some(id) => id,
                None => {
                    let mut node_cells = [0; PAGE];
                    node_cells[..len].copy_from_slice(&cells[base..base + len]);
                    let pages = pages_of(&node_cells[..len]);
                    for &p in &pages {
                        pool.retain(p);
                        if self.page_refs.len() <= p as usize {
                            self.page_refs.resize(p as usize + 1, 0);
                        }
                        self.page_refs[p as usize] += 1;
                    }
                    let node = Node {
                        parent: cur,
                        last_used: now,
                        len,
                        key,
                        cells: node_cells,
                        pages,
                        children: Vec::new(),
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
                    if cur == NO_NODE {
                        self.roots.push(id);
                    } else {
                        self.node_mut(cur).children.push(id);
                    }
                    if len == PAGE {
                        self.full.insert((cur, key), id);
                    }
                    id
                }
            };
            self.node_mut(id).last_used = now;
            if len < PAGE {
                break;
            }
            cur = id;
        }
    }

    /// Drops the least recently used leaf, preferring one whose removal frees a page (one
    /// only it holds), else one whose pages no sequence holds (it may free pages together
    /// with other nodes). Returns false when no node can help free a page.
    pub fn evict_one(&mut self, pool: &mut PagePool) -> bool {
        let leaves = || {
            self.nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.as_ref().map(|n| (i as u32, n)))
                .filter(|(_, n)| n.children.is_empty())
        };
        let frees = leaves()
            .filter(|(_, n)| n.pages.iter().any(|&p| pool.refs(p) == 1))
            .min_by_key(|(_, n)| n.last_used)
            .map(|(i, _)| i);
        let victim = frees.or_else(|| {
            leaves()
                .filter(|(_, n)| n.pages.iter().all(|&p| pool.refs(p) == self.cache_refs(p)))
                .min_by_key(|(_, n)| n.last_used)
                .map(|(i, _)| i)
        });
        let Some(id) = victim else {
            return false;
        };
        let node = self.nodes[id as usize].take().expect("live node");
        if node.len == PAGE {
            self.full.remove(&(node.parent, node.key));
        }
        let siblings = if node.parent == NO_NODE {
            &mut self.roots
        } else {
            &mut self.node_mut(node.parent).children
        };
        siblings.retain(|&k| k != id);
        self.free_ids.push(id);
        for &p in &node.pages {
            self.page_refs[p as usize] -= 1;
            pool.release(p);
        }
        true
    }

    /// Pages held by the cache alone (what eviction could free right now; inner nodes become
    /// leaves as their children go).
    pub fn n_evictable(&self, pool: &PagePool) -> usize {
        self.page_refs
            .iter()
            .enumerate()
            .filter(|&(p, &c)| c > 0 && pool.refs(p as u32) == c)
            .count()
    }

    #[cfg(test)]
    pub fn n_nodes(&self) -> usize {
        self.live().count()
    }

    /// Adds the cache's references to `counts` (for the pool audit) and checks the trie's links.
    pub fn count_refs(&self, counts: &mut [u32]) -> Result<(), String> {
        let mut mine = vec![0u32; counts.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            if n.len == 0 || n.len > PAGE {
                return Err(format!("cache node {i} holds {} tokens", n.len));
            }
            if n.pages != pages_of(&n.cells[..n.len]) {
                return Err(format!(
                    "cache node {i}: page list does not match its cells"
                ));
            }
            for &p in &n.pages {
                let slot = mine
                    .get_mut(p as usize)
                    .ok_or_else(|| format!("cache node {i} holds page {p} outside the pool"))?;
                *slot += 1;
            }
            if !self.node_alive(n.parent) {
                return Err(format!("cache node {i} has a dead parent {}", n.parent));
            }
            if !self.kids(n.parent).contains(&(i as u32)) {
                return Err(format!("cache node {i} is not reachable from its parent"));
            }
            if n.len == PAGE && self.full.get(&(n.parent, n.key)) != Some(&(i as u32)) {
                return Err(format!("cache node {i} is missing from the index"));
            }
            if n.len < PAGE && !n.children.is_empty() {
                return Err(format!("partial cache node {i} has children"));
            }
            for &k in &n.children {
                if !self.node_alive(k) || self.node(k).parent != i as u32 {
                    return Err(format!(
                        "cache node {i} lists a child {k} that is not its own"
                    ));
                }
            }
        }
        for &r in &self.roots {
            if !self.node_alive(r) || self.node(r).parent != NO_NODE {
                return Err(format!("cache root {r} is not a live root"));
            }
        }
        let n_full = self.live().filter(|n| n.len == PAGE).count();
        if self.full.len() != n_full {
            return Err(format!(
                "cache index has {} entries for {n_full} full nodes",
                self.full.len()
            ));
        }
        for (p, (&m, c)) in mine.iter().zip(counts.iter_mut()).enumerate() {
            if m != self.cache_refs(p as u32) {
                return Err(format!(
                    "page {p}: the cache counts {} references but its nodes hold {m}",
                    self.cache_refs(p as u32)
                ));
            }
            *c += m;
        }
        Ok(())
    }

    fn node_alive(&self, id: u32) -> bool {
        id == NO_NODE || matches!(self.nodes.get(id as usize), Some(Some(_)))
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
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

    /// Cells of `pages`, `PAGE` per page, cut to `n`.
    fn cells_of(pages: &[u32], n: usize) -> Vec<u32> {
        let mut v: Vec<u32> = pages
            .iter()
            .flat_map(|&p| p * PAGE as u32..(p + 1) * PAGE as u32)
            .collect();
        v.truncate(n);
        v
    }

    #[test]
    fn prefix_lookup_insert_and_leaf_eviction() {
        let mut pool = PagePool::new(8);
        let mut cache = PrefixCache::default();
        let toks: Vec<u32> = (0..40).collect();
        let pages: Vec<u32> = (0..3).map(|_| pool.alloc().unwrap()).collect();
        // 40 tokens computed: two full stretches and a partial one of 8.
        cache.insert(&mut pool, &toks, &cells_of(&pages, 40));
        for &p in &pages {
            pool.release(p);
        }
        audit(&pool, &cache, &[]);
        assert_eq!(pool.n_free(), 5);
        assert_eq!(cache.n_nodes(), 3);

        // Same first stretch, the second diverges at token 20: 16 + 4 tokens are shared.
        let mut other = toks.clone();
        other[20] = 999;
        let got = cache.lookup(&mut pool, &other, 39);
        assert_eq!(got.cells, cells_of(&pages, 20));
        assert_eq!(got.pages, vec![pages[0], pages[1]]);
        audit(&pool, &cache, &[&got.pages]);
        // Only the partial leaf's page is the cache's alone; then nothing can go.
        assert!(cache.evict_one(&mut pool));
        assert!(!cache.evict_one(&mut pool));
        for &p in &got.pages {
            pool.release(p);
        }
        assert!(cache.evict_one(&mut pool));
        assert!(cache.evict_one(&mut pool));
        assert_eq!(cache.n_nodes(), 0);
        audit(&pool, &cache, &[]);
        assert_eq!(pool.n_free(), 8);
    }

    #[test]
    fn short_prompts_reuse_partial_stretches_down_to_the_token() {
        let mut pool = PagePool::new(8);
        let mut cache = PrefixCache::default();
        // A 10-token prompt plus 3 generated tokens.
        let a: Vec<u32> = (100..113).collect();
        let pa = pool.alloc().unwrap();
        cache.insert(&mut pool, &a, &cells_of(&[pa], 13));
        pool.release(pa);
        audit(&pool, &cache, &[]);
        // The same 10-token prompt again: all but the last token (its logits are needed).
        let got = cache.lookup(&mut pool, &a[..10], 9);
        assert_eq!(got.cells, cells_of(&[pa], 9));
        // The reuser writes the rest of its stretch into a page of its own; its cells mix.
        let pb = pool.alloc().unwrap();
        let mut b = a[..10].to_vec();
        b.extend([7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        let mut cells = got.cells.clone();
        cells.extend(pb * PAGE as u32 + 9..pb * PAGE as u32 + PAGE as u32);
        assert_eq!(cells.len(), 16);
        let pc = pool.alloc().unwrap();
        cells.extend(pc * PAGE as u32..pc * PAGE as u32 + 4);
        cache.insert(&mut pool, &b, &cells);
        for p in got.pages.iter().chain(&[pb, pc]) {
            pool.release(*p);
        }
        audit(&pool, &cache, &[]);
        // a's partial stretch and b's full one (over two pages) plus b's tail.
        assert_eq!(cache.n_nodes(), 3);
        let again = cache.lookup(&mut pool, &b, 19);
        assert_eq!(again.cells, cells[..19].to_vec());
        assert_eq!(again.pages, vec![pa, pb, pc]);
        audit(&pool, &cache, &[&again.pages]);
        for &p in &again.pages {
            pool.release(p);
        }
        // A partial stretch that a cached one already starts with is not added again.
        cache.insert(&mut pool, &a[..5], &cells_of(&[pa], 5));
        assert_eq!(cache.n_nodes(), 3);
        while cache.evict_one(&mut pool) {}
        assert_eq!(cache.n_nodes(), 0);
        audit(&pool, &cache, &[]);
        assert_eq!(pool.n_free(), 8);
    }

    #[test]
    fn lookup_respects_the_token_limit_and_duplicates_are_not_adopted() {
        let mut pool = PagePool::new(8);
        let mut cache = PrefixCache::default();
        let toks: Vec<u32> = (0..32).collect();
        let a: Vec<u32> = (0..2).map(|_| pool.alloc().unwrap()).collect();
        cache.insert(&mut pool, &toks, &cells_of(&a, 32));
        // A second sequence computed the same prefix into its own pages.
        let b: Vec<u32> = (0..2).map(|_| pool.alloc().unwrap()).collect();
        cache.insert(&mut pool, &toks, &cells_of(&b, 32));
        for &p in a.iter().chain(&b) {
            pool.release(p);
        }
        assert_eq!(cache.n_nodes(), 2);
        assert_eq!(pool.n_free(), 6);
        let got = cache.lookup(&mut pool, &toks, 20);
        assert_eq!(got.cells, cells_of(&a, 20));
        audit(&pool, &cache, &[&got.pages]);
        let none = cache.lookup(&mut pool, &[5, 6, 7], 2);
        assert_eq!(none, Reuse::default());
    }
}

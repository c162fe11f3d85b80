//! Every token's bytes in one trie, laid out in depth-first order, so that a walk over the
//! whole vocabulary feeds each shared prefix once and skips a whole subtree (every token that
//! starts with a refused prefix) in one jump.

/// The trie's nodes in preorder: node 0 is the root (the empty prefix); node i's subtree is
/// `i..subtree_end[i]`.
#[derive(Debug)]
pub struct TokenTrie {
    /// The byte that leads into node i from its parent (unused for the root).
    byte: Vec<u8>,
    /// Node i's distance from the root: the length of its prefix.
    depth: Vec<u16>,
    subtree_end: Vec<u32>,
    /// Tokens whose bytes end at node i: `tokens[token_start[i]..token_start[i + 1]]`.
    token_start: Vec<u32>,
    tokens: Vec<u32>,
    vocab_size: usize,
}

impl TokenTrie {
    /// Tokens without bytes (special tokens) and tokens longer than `u16::MAX` bytes are left
    /// out: no constraint ever allows them.
    pub fn new(token_bytes: &[Vec<u8>]) -> TokenTrie {
        let mut order: Vec<u32> = (0..token_bytes.len() as u32)
            .filter(|&t| {
                let len = token_bytes[t as usize].len();
                len > 0 && len <= u16::MAX as usize
            })
            .collect();
        order.sort_by(|&a, &b| token_bytes[a as usize].cmp(&token_bytes[b as usize]).then(a.cmp(&b)));
        let mut trie = TokenTrie {
            byte: vec![0],
            depth: vec![0],
            subtree_end: vec![0],
            token_start: Vec::new(),
            tokens: Vec::new(),
            vocab_size: token_bytes.len(),
        };
        // (node, token) pairs, in node order because tokens come sorted.
        let mut ends: Vec<(u32, u32)> = Vec::with_capacity(order.len());
        // The nodes of the current path; path[d] is the node at depth d.
        let mut path: Vec<u32> = vec![0];
        let mut previous: &[u8] = &[];
        for &token in &order {
            let bytes = token_bytes[token as usize].as_slice();
            let shared = previous.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            while path.len() > shared + 1 {
                let done = path.pop().expect("the path is deeper than the shared prefix");
                trie.subtree_end[done as usize] = trie.byte.len() as u32;
            }
            for (offset, &byte) in bytes[shared..].iter().enumerate() {
                path.push(trie.byte.len() as u32);
                trie.byte.push(byte);
                trie.depth.push((shared + offset + 1) as u16);
                trie.subtree_end.push(0);
            }
            ends.push((*path.last().expect("the root is always on the path"), token));
            previous = bytes;
        }
        for done in path {
            trie.subtree_end[done as usize] = trie.byte.len() as u32;
        }
        let mut next = ends.iter().peekable();
        for node in 0..trie.byte.len() as u32 {
            trie.token_start.push(trie.tokens.len() as u32);
            while let Some(&(_, token)) = next.next_if(|(n, _)| *n == node) {
                trie.tokens.push(token);
            }
        }
        trie.token_start.push(trie.tokens.len() as u32);
        trie
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn node_count(&self) -> usize {
        self.byte.len()
    }

    /// The longest token's length in bytes.
    pub fn max_depth(&self) -> usize {
        self.depth.iter().copied().max().unwrap_or(0) as usize
    }

    pub fn byte(&self, node: usize) -> u8 {
        self.byte[node]
    }

    pub fn depth(&self, node: usize) -> usize {
        self.depth[node] as usize
    }

    /// The node after `node`'s subtree (where a walk goes when `node`'s prefix is refused).
    pub fn subtree_end(&self, node: usize) -> usize {
        self.subtree_end[node] as usize
    }

    /// The tokens whose bytes are exactly `node`'s prefix.
    pub fn tokens_at(&self, node: usize) -> &[u32] {
        &self.tokens[self.token_start[node] as usize..self.token_start[node + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every token is found at the node whose prefix is its bytes, and subtrees hold exactly
    /// the nodes whose prefixes extend theirs.
    #[test]
    fn the_preorder_layout_holds_every_token_under_its_prefix() {
        let vocabulary: Vec<Vec<u8>> = ["a", "ab", "abc", "b", "", "ab", "ba", "\u{e9}", "c"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .chain([vec![0xc3]])
            .collect();
        let trie = TokenTrie::new(&vocabulary);
        assert_eq!(trie.vocab_size(), 10);
        let mut prefixes: Vec<Vec<u8>> = vec![Vec::new(); trie.node_count()];
        for node in 1..trie.node_count() {
            let parent = (0..node).rev().find(|&p| trie.depth(p) + 1 == trie.depth(node)).unwrap();
            assert!(trie.subtree_end(parent) >= trie.subtree_end(node), "nested subtrees");
            prefixes[node] = [prefixes[parent].clone(), vec![trie.byte(node)]].concat();
        }
        let mut found = vec![None; vocabulary.len()];
        for node in 0..trie.node_count() {
            for &token in trie.tokens_at(node) {
                found[token as usize] = Some(prefixes[node].clone());
            }
            for inner in node + 1..trie.subtree_end(node) {
                assert!(prefixes[inner].starts_with(&prefixes[node]) && prefixes[inner].len() > prefixes[node].len());
            }
        }
        for (token, bytes) in vocabulary.iter().enumerate() {
            let expected = (!bytes.is_empty()).then(|| bytes.clone());
            assert_eq!(found[token], expected, "token {token}");
        }
        // Shared prefixes are shared nodes: a, ab, abc, b, ba, c, 0xc3, 0xc3 0xa9 and the root.
        assert_eq!(trie.node_count(), 9);
        assert_eq!(trie.max_depth(), 3);
    }
}

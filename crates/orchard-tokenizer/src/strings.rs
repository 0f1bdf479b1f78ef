//! Token texts in one arena with a hash index over it: loading Gemma's 262144 tokens must not
//! cost an allocation (let alone two) per token, and lookups by byte slice must not allocate.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Strings addressed by dense ids, each findable by its text.
pub(crate) struct Strings {
    text: String,
    ends: Vec<usize>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Strings {
    pub fn with_capacity(n: usize, bytes: usize) -> Strings {
        Strings {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
            index: HashTable::with_capacity(n),
            hasher: DefaultHashBuilder::default(),
        }
    }

    #[inline]
    pub fn get(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    #[inline]
    fn hash(&self, s: &[u8]) -> u64 {
        self.hasher.hash_one(s)
    }

    /// The id whose text is `s`: the last one pushed with that text, as llama.cpp's
    /// `token_to_id[word] = i` keeps.
    #[inline]
    pub fn find(&self, s: &[u8]) -> Option<u32> {
        let h = self.hash(s);
        self.index
            .find(h, |&id| self.get(id).as_bytes() == s)
            .copied()
    }

    /// Appends `s` with the next id, which from now on is what [`Strings::find`] returns for it.
    /// Returns the id that held this text before, if any.
    pub fn push(&mut self, s: &str) -> Option<u32> {
        let id = self.ends.len() as u32;
        self.text.push_str(s);
        self.ends.push(self.text.len());
        let h = self.hash(s.as_bytes());
        let Strings {
            text,
            ends,
            index,
            hasher,
        } = self;
        let get = |id: u32| {
            let i = id as usize;
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &text.as_bytes()[start..ends[i]]
        };
        match index.find_mut(h, |&other| other != id && get(other) == s.as_bytes()) {
            Some(slot) => Some(std::mem::replace(slot, id)),
            None => {
                index.insert_unique(h, id, |&other| hasher.hash_one(get(other)));
                None
            }
        }
    }

    /// The id of `s`, pushing it first if it is new.
    pub fn intern(&mut self, s: &str) -> u32 {
        match self.find(s.as_bytes()) {
            Some(id) => id,
            None => {
                let id = self.ends.len() as u32;
                self.push(s);
                id
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_duplicates_win_and_lookups_work() {
        let mut s = Strings::with_capacity(4, 16);
        assert_eq!(s.push("a"), None);
        assert_eq!(s.push("bc"), None);
        assert_eq!(s.push("a"), Some(0));
        assert_eq!(s.find(b"a"), Some(2));
        assert_eq!(s.find(b"bc"), Some(1));
        assert_eq!(s.find(b"b"), None);
        assert_eq!(s.get(1), "bc");
        assert_eq!(s.intern("bc"), 1);
        assert_eq!(s.intern("zz"), 3);
        assert_eq!(s.get(3), "zz");
    }
}

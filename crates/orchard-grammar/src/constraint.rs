//! Drives a [`JsonValidator`] over token texts: the per-step candidate filter and the per-token
//! state update that an engine's constraint hook calls.

use orchard_core::TokenId;
use orchard_sampler::Candidate;
use orchard_tokenizer::Tokenizer;

use crate::{GrammarError, JsonValidator, Schema};

/// Candidates tested per round before widening the scan; logit order means the first round
/// usually holds the answer.
const FIRST_ROUND: usize = 32;

/// A JSON / JSON-schema constraint for one generation.
#[derive(Clone, Debug)]
pub struct JsonConstraint {
    v: JsonValidator,
    keep: usize,
    /// The token texts are built once per vocabulary entry that the scan touches.
    texts: std::collections::HashMap<TokenId, Option<String>>,
}

impl JsonConstraint {
    /// A constraint that admits only JSON texts valid under `schema`. By default the 40 best
    /// allowed candidates are kept each step (llama.cpp's default top-k).
    pub fn new(schema: &Schema) -> Result<JsonConstraint, GrammarError> {
        Ok(JsonConstraint {
            v: JsonValidator::new(schema)?,
            keep: 40,
            texts: std::collections::HashMap::new(),
        })
    }

    /// How many allowed candidates a step keeps: 1 for greedy decoding (the scan stops at the first
    /// allowed token in logit order), the sampler's top-k otherwise. 0 keeps every allowed token,
    /// which scans the whole vocabulary.
    pub fn with_keep(mut self, keep: usize) -> JsonConstraint {
        self.keep = keep;
        self
    }

    /// The validator's current state.
    pub fn validator(&self) -> &JsonValidator {
        &self.v
    }

    fn text(&mut self, tok: &Tokenizer, id: TokenId) -> Option<&str> {
        self.texts
            .entry(id)
            .or_insert_with(|| {
                if tok.is_eog(id) || tok.is_control(id) {
                    return None;
                }
                String::from_utf8(tok.token_to_piece(id, false))
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .as_deref()
    }

    fn token_ok(&mut self, tok: &Tokenizer, id: TokenId, complete: bool) -> bool {
        if tok.is_eog(id) {
            return complete;
        }
        let v = self.v.clone();
        match self.text(tok, id) {
            Some(t) => v.accepts(t),
            None => false,
        }
    }

    /// Keeps the best allowed candidates (in descending logit order) and drops the rest. When the
    /// automaton allows nothing the vocabulary offers, only end-of-generation tokens are kept, so the
    /// generation stops instead of emitting invalid text.
    pub fn allowed(&mut self, tok: &Tokenizer, candidates: &mut Vec<Candidate>) {
        let complete = self.v.is_complete();
        let want = if self.keep == 0 {
            usize::MAX
        } else {
            self.keep
        };
        let n = candidates.len();
        let by_logit = |a: &Candidate, b: &Candidate| {
            b.logit
                .partial_cmp(&a.logit)
                .unwrap_or(std::cmp::Ordering::Equal)
        };
        let mut kept: Vec<Candidate> = Vec::new();
        let mut start = 0;
        let mut round = FIRST_ROUND;
        while start < n && kept.len() < want {
            let end = (start + round).min(n);
            let tail = &mut candidates[start..];
            if end - start < tail.len() {
                tail.select_nth_unstable_by(end - start - 1, by_logit);
            }
            candidates[start..end].sort_unstable_by(by_logit);
            for &c in &candidates[start..end] {
                if c.logit == f32::NEG_INFINITY {
                    continue;
                }
                if self.token_ok(tok, c.id, complete) {
                    kept.push(c);
                    if kept.len() >= want {
                        break;
                    }
                }
            }
            start = end;
            round = round.saturating_mul(4);
        }
        if kept.is_empty() {
            let eog: Vec<Candidate> = candidates
                .iter()
                .copied()
                .filter(|c| tok.is_eog(c.id))
                .collect();
            kept = if eog.is_empty() {
                tok.eog_ids()
                    .into_iter()
                    .map(|id| Candidate {
                        id,
                        logit: 0.0,
                        p: 0.0,
                    })
                    .collect()
            } else {
                eog
            };
        }
        *candidates = kept;
    }

    /// Advances the automaton over the chosen token's text. A token the automaton rejects (only
    /// possible when the caller ignored [`JsonConstraint::allowed`]) leaves the state unchanged.
    pub fn accept(&mut self, tok: &Tokenizer, id: TokenId) {
        if tok.is_eog(id) {
            return;
        }
        if let Some(t) = self.text(tok, id).map(str::to_string) {
            self.v.feed(&t);
        }
    }

    /// Whether the text generated so far is one complete, valid value.
    pub fn is_complete(&self) -> bool {
        self.v.is_complete()
    }
}

//! Constrained decoding for `response_format` and `grammar`: JSON, a JSON-schema subset and
//! llama.cpp's GBNF grammars, checked token by token.
//!
//! A [`Schema`] (built by the caller from whatever JSON library it uses, so this crate needs none) is
//! compiled into a small arena of nodes. [`JsonValidator`] is an incremental character-level automaton
//! over that arena: it accepts exactly the prefixes of JSON texts that validate against the schema.
//! [`JsonConstraint`] drives it over token texts: for each decoding step it walks the candidates in
//! logit order, keeps the first few whose text the automaton accepts, and drops the rest, so a greedy
//! step usually tests a handful of tokens rather than the whole vocabulary.
//!
//! Supported keywords: `type` (object, array, string, number, integer, boolean, null, or a list of
//! them), `properties`, `required`, `additionalProperties` (bool or schema; absent means no extra
//! keys are generated), `items` (schema, or a list for tuples), `prefixItems`, `minItems`,
//! `maxItems`, `minLength`, `maxLength`, `enum`, `const`, `anyOf`/`oneOf`. Anything else is
//! ignored, which can only make the automaton stricter than needed, never looser, for the keywords
//! it reads.

mod automaton;
mod constraint;
mod gbnf;

pub use automaton::JsonValidator;
pub use constraint::{CharMatcher, GrammarConstraint, JsonConstraint, TextConstraint};
pub use gbnf::{GbnfMatcher, Grammar};

/// A JSON schema, reduced to what constrained generation uses.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Schema {
    /// Any JSON value (`response_format: json_object` without a schema, or `{}`).
    Any,
    Null,
    Boolean,
    Integer,
    Number,
    String {
        min_len: usize,
        max_len: Option<usize>,
    },
    Array {
        /// Leading positional items (`prefixItems`, or `items` given as a list).
        prefix: Vec<Schema>,
        /// Items after the prefix; `None` means no further items.
        items: Option<Box<Schema>>,
        min_items: usize,
        max_items: Option<usize>,
    },
    Object {
        properties: Vec<(String, Schema)>,
        required: Vec<String>,
        /// Schema of keys not in `properties`; `None` means none are generated.
        additional: Option<Box<Schema>>,
    },
    /// Exactly one of these JSON texts, in canonical serialization (`enum` / `const`).
    Literal(Vec<String>),
    AnyOf(Vec<Schema>),
}

/// Why a schema cannot be used for constrained decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrammarError {
    #[error("schema nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("schema has more than {max} nodes")]
    TooLarge { max: usize },
    #[error("schema cannot match any value: {reason}")]
    Unsatisfiable { reason: String },
    #[error("invalid grammar: {message}")]
    Syntax { message: String },
}

/// How deep schemas may nest (also bounds the generated JSON's nesting for `Any`).
pub const MAX_DEPTH: usize = 32;
/// Upper bound on compiled nodes, so a hostile schema cannot exhaust memory.
pub const MAX_NODES: usize = 4096;

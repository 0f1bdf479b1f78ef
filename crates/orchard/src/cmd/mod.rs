//! One module per subcommand.

pub mod inspect;
pub mod logits;
pub mod perplexity;
pub mod run;
pub mod tokenize;

//! One module per subcommand.

pub mod bench;
pub mod inspect;
pub mod ledger;
pub mod logits;
pub mod perplexity;
pub mod quantize;
pub mod run;
pub mod tokenize;

//! BPE and SentencePiece tokenizers built from a GGUF vocabulary

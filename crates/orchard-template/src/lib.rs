//! Chat templates: Jinja templates from the GGUF rendered with minijinja, and built-in fallbacks

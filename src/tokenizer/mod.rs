//! Text to token ids and back: the tokenizer, the incremental detokenizer and chat templates.

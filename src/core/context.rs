//! What the gateway knows of a model's context window, behind one method
//! ([`Core::context_length`]) so that `/v1/models/{id}/info` does not care where it comes
//! from.
//!
//! Until the model catalogue (`--models-file`, with its built-in entries) joins this branch,
//! the figures are the original service's own table, here and nowhere else.

use super::Core;

/// The original service's context lengths, in tokens.
const BUILTIN: &[(&str, u32)] = &[
    ("openai-gpt-oss-20b", 128_000),
    ("openai-gpt-oss-120b", 128_000),
    ("llama3.3-70b-instruct", 131_000),
    ("llama3-8b-instruct", 8_000),
];

impl Core {
    /// The model's context window in tokens; `None` for a model the gateway knows nothing of.
    pub fn context_length(&self, model: &str) -> Option<u32> {
        BUILTIN
            .iter()
            .find(|(id, _)| *id == model)
            .map(|&(_, tokens)| tokens)
    }
}

//! The model catalogue: what the gateway knows of each model that the upstream's `GET /models`
//! does not say: its context length, its output limit and its capabilities. Built in for the
//! models the original service knew (with its figures), overridable by a TOML file
//! (`--models-file`).
//!
//! Two users: the model list (`upstream::Models`) enriches the upstream's entries with these
//! fields, and serves the catalogue's ids when the upstream cannot be asked; the core's chat
//! validation refuses a request whose prompt plus `max_tokens` certainly exceeds the model's
//! context (`chat::context`). It sits at the bottom layer beside `chat/` and `config/`, and
//! imports neither.
//!
//! The file:
//!
//! ```toml
//! # true: only the models below; false (default): these over the built-in ones.
//! replace = false
//!
//! [[model]]
//! id = "my-model"
//! context_length = 32000
//! max_output_tokens = 4096
//! capabilities = ["tools", "vision"]   # any of: vision, tools, reasoning
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What the catalogue says of one model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: String,
    /// Tokens of prompt and output together; `None`: unknown, no context check.
    #[serde(default)]
    pub context_length: Option<u64>,
    /// Most tokens the model writes in one answer; `None`: unknown.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Any of `vision`, `tools`, `reasoning`.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
}

/// What a model can do besides plain text chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Vision,
    Tools,
    Reasoning,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Capability::Vision => "vision",
            Capability::Tools => "tools",
            Capability::Reasoning => "reasoning",
        }
    }
}

/// The models with what the gateway knows of them, in a stable order (built-in order, then the
/// file's).
#[derive(Clone, Debug)]
pub struct Catalogue {
    models: Vec<ModelSpec>,
    by_id: HashMap<String, usize>,
}

/// The built-in models, with the original service's context lengths.
const BUILTIN: &[(&str, u64, &[Capability])] = {
    use Capability::{Reasoning, Tools};
    &[
        ("openai-gpt-oss-120b", 128_000, &[Tools, Reasoning]),
        ("openai-gpt-oss-20b", 128_000, &[Tools, Reasoning]),
        ("llama3.3-70b-instruct", 131_000, &[Tools]),
        ("llama3-8b-instruct", 8_000, &[]),
        ("deepseek-r1-distill-llama-70b", 128_000, &[Reasoning]),
        (
            "deepseek-ai/deepseek-v3.1-terminus",
            164_000,
            &[Tools, Reasoning],
        ),
        ("deepseek-ai/deepseek-v3.1", 128_000, &[Tools, Reasoning]),
        ("alibaba-qwen3-32b", 131_000, &[Tools, Reasoning]),
        ("qwen/qwen3-next-80b-a3b-instruct", 262_000, &[Tools]),
        ("moonshotai/kimi-k2-instruct-0905", 256_000, &[Tools]),
        ("mistralai/mistral-nemotron", 128_000, &[Tools]),
        ("minimaxai/minimax-m2", 128_000, &[Tools, Reasoning]),
    ]
};

/// Models MegaLLM serves whose figures the original service did not record: in the list, with
/// no context length (so never refused for length).
const NAMED_ONLY: &[&str] = &[
    "gpt-4",
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-5",
    "claude-sonnet-4",
    "gemini-2.5-flash",
    "deepseek-v3",
];

/// Why the models file cannot be used; a sentence a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read the models file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the models file {path} is not a valid catalogue: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    replace: bool,
    #[serde(default)]
    model: Vec<ModelSpec>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Catalogue::builtin()
    }
}

impl Catalogue {
    /// The built-in catalogue: the models with known figures, then the other names MegaLLM
    /// serves (listed when the upstream's own list cannot be had; no context check).
    pub fn builtin() -> Catalogue {
        let known = BUILTIN.iter().map(|(id, context, caps)| ModelSpec {
            id: (*id).to_owned(),
            context_length: Some(*context),
            max_output_tokens: None,
            capabilities: caps.to_vec(),
        });
        let named = NAMED_ONLY.iter().map(|id| ModelSpec {
            id: (*id).to_owned(),
            ..ModelSpec::default()
        });
        Catalogue::of(known.chain(named).collect())
    }

    /// The built-in catalogue, or `path`'s over (or instead of) it.
    pub fn load(path: Option<&Path>) -> Result<Catalogue, CatalogueError> {
        let Some(path) = path else {
            return Ok(Catalogue::builtin());
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: shown.clone(),
            source,
        })?;
        Catalogue::parse(&text).map_err(|message| CatalogueError::Invalid {
            path: shown,
            message,
        })
    }

    /// A catalogue file's text, over the built-in catalogue unless it says `replace = true`.
    pub fn parse(text: &str) -> Result<Catalogue, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        for (i, m) in file.model.iter().enumerate() {
            if m.id.trim().is_empty() {
                return Err(format!("model {} has an empty id", i + 1));
            }
            if m.context_length == Some(0) || m.max_output_tokens == Some(0) {
                return Err(format!(
                    "model `{}`: context_length and max_output_tokens must be at least 1",
                    m.id
                ));
            }
        }
        let mut models = if file.replace {
            Vec::new()
        } else {
            Catalogue::builtin().models
        };
        for spec in file.model {
            match models.iter_mut().find(|m| m.id == spec.id) {
                Some(known) => *known = spec,
                None => models.push(spec),
            }
        }
        Ok(Catalogue::of(models))
    }

    fn of(models: Vec<ModelSpec>) -> Catalogue {
        let by_id = models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i))
            .collect();
        Catalogue { models, by_id }
    }

    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.by_id.get(id).map(|&i| &self.models[i])
    }

    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_figures() {
        let c = Catalogue::builtin();
        assert_eq!(c.models().len(), BUILTIN.len() + NAMED_ONLY.len());
        let ctx = |id: &str| c.get(id).and_then(|m| m.context_length);
        assert_eq!(ctx("openai-gpt-oss-120b"), Some(128_000));
        assert_eq!(ctx("llama3-8b-instruct"), Some(8_000));
        assert_eq!(ctx("qwen/qwen3-next-80b-a3b-instruct"), Some(262_000));
        assert_eq!(ctx("deepseek-ai/deepseek-v3.1-terminus"), Some(164_000));
        assert!(c.get("gpt-4").is_some(), "a named model is listed");
        assert_eq!(ctx("gpt-4"), None);
    }

    #[test]
    fn a_file_overrides_or_replaces() {
        let c = Catalogue::parse(
            r#"
            [[model]]
            id = "llama3-8b-instruct"
            context_length = 16000
            max_output_tokens = 2000
            capabilities = ["tools"]

            [[model]]
            id = "mine"
            capabilities = ["vision", "reasoning"]
            "#,
        )
        .unwrap();
        assert_eq!(c.models().len(), BUILTIN.len() + NAMED_ONLY.len() + 1);
        let m = c.get("llama3-8b-instruct").unwrap();
        assert_eq!(
            (m.context_length, m.max_output_tokens),
            (Some(16_000), Some(2_000))
        );
        assert_eq!(c.get("mine").unwrap().context_length, None);
        let c = Catalogue::parse("replace = true\n[[model]]\nid = \"only\"\n").unwrap();
        assert_eq!(c.models().len(), 1);
        for bad in [
            "[[model]]\nid = \"\"",
            "[[model]]\nid = \"x\"\ncontext = 3",
            "[[model]]\nid = \"x\"\ncapabilities = [\"flying\"]",
            "[[model]]\nid = \"x\"\ncontext_length = 0",
        ] {
            assert!(Catalogue::parse(bad).is_err(), "{bad}");
        }
    }
}

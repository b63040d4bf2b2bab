//! (in progress) The transformer tier.

/// Errors from embedding.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model: {0}")]
    Model(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Per-position hidden states for token id sequences: what the static tier distils from.
pub trait TokenEncoder {
    /// For each sequence (already including [CLS]/[SEP]), the last layer's output per position.
    fn token_states(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>, EmbedError>;
    /// Width of each state vector.
    fn hidden_size(&self) -> usize;
}

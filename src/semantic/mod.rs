//! The semantic engine: every response understood. Cheap checks and the static embedding
//! tier run on every exchange; the transformer tier embeds what capacity allows.

pub mod baseline;
pub mod bert;
pub mod bert_cpu;
pub mod checks;
pub mod conformal;
pub mod engine;
pub mod incidents;
pub mod lexical;
pub mod mmd;
pub mod model;
pub mod monitors;
pub mod overlap;
pub mod review;
pub mod static_tier;
pub mod testing;
pub mod transformer;
pub mod wordpiece;

/// Turns text into a unit vector. Implemented by the static tier (every response) and the
/// transformer tier (replay, sampling, GPUs).
pub trait TextEmbedder: Send + Sync {
    /// The unit-length embedding of `text` (a zero vector for text with no tokens).
    fn embed(&self, text: &str) -> Vec<f32>;
    /// Vector width.
    fn dim(&self) -> usize;
    /// `static` or `transformer`.
    fn tier(&self) -> &'static str;
    /// Hint: these texts are about to be embedded one by one. A batching embedder embeds them
    /// now, together (replay uses it: a forward pass over a length-sorted batch is far cheaper
    /// than one per text), and serves the coming [`embed`](Self::embed) calls from memory until
    /// the next prefetch.
    fn prefetch(&self, _texts: &[&str]) {}
}
pub mod live;
pub mod load;

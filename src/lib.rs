//! semtap: a sidecar that taps LLM API traffic and watches it for the failures plain APM misses.
//!
//! Where things live: a request enters in [`tap`], its bodies are understood in [`protocol`],
//! it is measured in [`metrics`] and served on the admin endpoints in [`admin`].

pub mod metrics;
pub mod protocol;
pub mod record;

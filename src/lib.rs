//! semtap: a sidecar that taps LLM API traffic and watches it for the failures plain APM misses.
//!
//! Where things live: a request enters in [`tap`] (see `tap::forward`), its bodies are
//! understood in [`protocol`], the exchange record is assembled in [`pipeline`], measured in
//! [`metrics`] and served on the admin endpoints in [`admin`]. [`server`] wires them together;
//! [`cli`] is the command line; [`simulate`] is a simulated LLM upstream for tests and the demo.

pub mod admin;
pub mod alert;
pub mod cli;
pub mod config;
pub mod demo;
pub mod export;
pub mod metrics;
pub mod pipeline;
pub mod priority;
pub mod protocol;
pub mod record;
pub mod replay;
pub mod semantic;
pub mod server;
pub mod simulate;
pub mod tap;

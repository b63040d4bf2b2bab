//! The OpenAI and Anthropic body parsers; the property is [`checks::bodies`].
#![no_main]

#[allow(dead_code)] // each target uses one of the checks
#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|input: &[u8]| checks::bodies(input));

//! The config loader; the property is [`checks::config`].
#![no_main]

#[allow(dead_code)] // each target uses one of the checks
#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|input: &[u8]| checks::config(input));

//! Workspace-level integration tests live in `tests/tests/`; the `local_write`
//! benchmark in `tests/benches/`. This crate's docs are the README, so that its usage
//! sample is compiled as a doctest.
#![doc = include_str!("../../README.md")]

//! The one integration-test binary: every feature through the `rotator` binary or the library's
//! public entry points, against real OpenBao, moto and the Toktra simulator.

mod harness;

mod calls;
mod cli;
mod codemap;
mod crash;
mod embedded;
mod engine;
mod hardening;
mod http;
mod identity;
mod invariants;
mod leak;
mod least_privilege;
mod notify;
mod plan;
mod postgres;
mod replicas;
mod rotate;
mod serve;
mod service;
mod store;
mod terraform;
mod toktra;
mod validate;
mod vault_auth;
mod vendor;

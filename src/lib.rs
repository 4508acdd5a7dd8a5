//! rotator: rotates Toktra OAuth clients and API keys into AWS Secrets Manager, Vault and files,
//! crash-safely. See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod connect;
pub mod credential;
pub mod daemon;
pub mod demo;
pub mod duration;
pub mod engine;
pub mod journal;
pub mod leftover;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod permissions;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod reconcile;
pub mod report;
pub mod rotation;
pub mod schedule;
pub mod secret;
pub mod server;
pub mod service;
pub mod sim;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod toktra;

//! Integration tests: one binary (fast links), a real Postgres, real HTTP.

mod support;

mod account_settings;
mod aws;
mod browser;
mod chaos;
mod cli;
mod console;
mod docs;
mod drift;
mod engine;
mod hostile;
mod localstack;
mod offboard;
mod ops;
mod outbox;
mod pool;
mod region;
mod reliability;
mod rollout;
mod signup;
mod tier;

//! Ember's Firecracker-compatible API surface.
//!
//! - [`models`]: the JSON bodies of Firecracker's published API, field for
//!   field, with the same validation rules.
//! - [`config_file`]: the `--config-file` document, which is made of the same
//!   models.
//!
//! This crate knows nothing about KVM: the `ember` binary turns validated
//! models into `ember-vmm` configuration.

pub mod config_file;
pub mod models;

pub use config_file::{ConfigFileError, VmConfigFile};

//! Ember's Firecracker-compatible API surface.
//!
//! - [`models`]: the JSON bodies of Firecracker's published API (v1.16),
//!   field for field, with the same validation rules.
//! - [`resources`]: the pre-boot configuration those models build up.
//! - [`controller`]: Firecracker's state rules (what is allowed before and
//!   after boot) on top of a [`VmmBackend`] that does the real work.
//! - [`config_file`]: the `--config-file` document, made of the same models
//!   and replayed through the same controller.
//! - [`http`]: the HTTP/1.1 server on a Unix socket (one thread, epoll,
//!   non-blocking connections) that parses requests into [`ApiRequest`]s.
//! - [`endpoint`]: the channel between the HTTP thread and the VMM thread,
//!   and the VMM-side [`ApiEndpoint`] (an `event_manager` subscriber).
//!
//! This crate knows nothing about KVM: the `ember` binary implements
//! [`VmmBackend`].

pub mod config_file;
pub mod controller;
pub mod endpoint;
pub mod http;
pub mod models;
pub mod request;
pub mod resources;
pub mod testing;

pub use config_file::{ConfigFileError, VmConfigFile};
pub use controller::{
    ApiController, BackendError, InstanceDescription, PrebootChange, Telemetry, VmmBackend,
};
pub use endpoint::{api_channel, ApiEndpoint, VmmChannel};
pub use http::{ApiServer, ApiServerHandle, ServerConfig};
pub use request::{ApiError, ApiOutcome, ApiReply, ApiRequest};
pub use resources::{ResourceError, VmResources};

//! Routing: the table of every endpoint (Firecracker v1.16's, plus none of
//! Ember's own so far), and the translation of a framed HTTP request into
//! an [`ApiRequest`] or an immediate error response.
//!
//! Rules applied here, before the VMM thread is involved, mirror
//! Firecracker's request parsing: unknown path or method, a GET with a body,
//! an empty PUT/PATCH, invalid ids, JSON that does not fit the model, and a
//! path id that differs from the body id all get a 400 with a
//! `fault_message`. Features Ember does not have answer 400 naming the
//! feature, whatever the body.
//!
//! Bodies are JSON objects without arrays, except where the schema has an
//! array (`network_overrides` of `/snapshot/load`).

use serde::de::DeserializeOwned;

use crate::models::{
    find_array_outside, validate_id, Drive, EntropyDevice, InstanceActionInfo, LoggerConfig,
    MachineConfig, MachineConfigUpdate, MetricsConfig, NetworkInterface, PartialDrive,
    PartialNetworkInterface, SerialConfig, SnapshotCreateParams, SnapshotLoadParams, VmStateUpdate,
    Vsock, EMPTY_ID_MESSAGE,
};
use crate::request::{ApiError, ApiRequest};

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// PUT
    Put,
    /// PATCH
    Patch,
}

impl Method {
    /// Parses a method token (case-sensitive, as HTTP says).
    pub fn parse(token: &str) -> Option<Self> {
        match token {
            "GET" => Some(Self::Get),
            "PUT" => Some(Self::Put),
            "PATCH" => Some(Self::Patch),
            _ => None,
        }
    }

    /// The token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
        }
    }
}

/// A feature Ember does not have; its endpoints answer 400 with `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// `/balloon*`
    Balloon,
    /// `/mmds*`
    Mmds,
    /// `/cpu-config`
    CpuConfig,
    /// `/pmem/{id}`
    Pmem,
    /// `/hotplug/memory`
    MemoryHotplug,
}

impl Missing {
    /// The `fault_message`.
    pub fn message(self) -> &'static str {
        match self {
            Self::Balloon => {
                "The balloon device is not supported by Ember yet: no balloon device can be \
                 configured, queried or updated."
            }
            Self::Mmds => "The MMDS (microVM metadata service) is not supported by Ember yet.",
            Self::CpuConfig => "Custom CPU templates (/cpu-config) are not supported by Ember yet.",
            Self::Pmem => "Pmem (virtio-pmem) devices are not supported by Ember yet.",
            Self::MemoryHotplug => "Memory hotplug (virtio-mem) is not supported by Ember yet.",
        }
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    InstanceInfo,
    Version,
    VmConfig,
    GetMachineConfig,
    PutMachineConfig,
    PatchMachineConfig,
    PutBootSource,
    PutDrive,
    PatchDrive,
    PutNet,
    PatchNet,
    PutVsock,
    PutEntropy,
    PutSerial,
    PutLogger,
    PutMetrics,
    PutActions,
    PatchVm,
    PutSnapshotCreate,
    PutSnapshotLoad,
    Unsupported(Missing),
}

/// One endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path template, `{name}` for a parameter.
    pub path: &'static str,
    /// The metric key (e.g. `drive`), counted under `<method>_api_requests`.
    pub metric: &'static str,
    handler: Handler,
}

const fn route(
    method: Method,
    path: &'static str,
    metric: &'static str,
    handler: Handler,
) -> Route {
    Route {
        method,
        path,
        metric,
        handler,
    }
}

use Handler as H;
use Method::{Get, Patch, Put};
use Missing as M;

/// Every endpoint the server routes.
pub const ROUTES: &[Route] = &[
    route(Get, "/", "instance_info", H::InstanceInfo),
    route(Get, "/version", "vmm_version", H::Version),
    route(Get, "/vm/config", "vm_config", H::VmConfig),
    route(Get, "/machine-config", "machine_cfg", H::GetMachineConfig),
    route(Put, "/machine-config", "machine_cfg", H::PutMachineConfig),
    route(
        Patch,
        "/machine-config",
        "machine_cfg",
        H::PatchMachineConfig,
    ),
    route(Put, "/boot-source", "boot_source", H::PutBootSource),
    route(Put, "/drives/{drive_id}", "drive", H::PutDrive),
    route(Patch, "/drives/{drive_id}", "drive", H::PatchDrive),
    route(Put, "/network-interfaces/{iface_id}", "network", H::PutNet),
    route(
        Patch,
        "/network-interfaces/{iface_id}",
        "network",
        H::PatchNet,
    ),
    route(Put, "/vsock", "vsock", H::PutVsock),
    route(Put, "/entropy", "entropy", H::PutEntropy),
    route(Put, "/serial", "serial", H::PutSerial),
    route(Put, "/logger", "logger", H::PutLogger),
    route(Put, "/metrics", "metrics", H::PutMetrics),
    route(Put, "/actions", "actions", H::PutActions),
    route(Patch, "/vm", "vm", H::PatchVm),
    route(Get, "/balloon", "balloon", H::Unsupported(M::Balloon)),
    route(Put, "/balloon", "balloon", H::Unsupported(M::Balloon)),
    route(Patch, "/balloon", "balloon", H::Unsupported(M::Balloon)),
    route(
        Get,
        "/balloon/statistics",
        "balloon",
        H::Unsupported(M::Balloon),
    ),
    route(
        Patch,
        "/balloon/statistics",
        "balloon",
        H::Unsupported(M::Balloon),
    ),
    route(
        Patch,
        "/balloon/hinting/start",
        "balloon",
        H::Unsupported(M::Balloon),
    ),
    route(
        Get,
        "/balloon/hinting/status",
        "balloon",
        H::Unsupported(M::Balloon),
    ),
    route(
        Patch,
        "/balloon/hinting/stop",
        "balloon",
        H::Unsupported(M::Balloon),
    ),
    route(Put, "/snapshot/create", "snapshot", H::PutSnapshotCreate),
    route(Put, "/snapshot/load", "snapshot", H::PutSnapshotLoad),
    route(Get, "/mmds", "mmds", H::Unsupported(M::Mmds)),
    route(Put, "/mmds", "mmds", H::Unsupported(M::Mmds)),
    route(Patch, "/mmds", "mmds", H::Unsupported(M::Mmds)),
    route(Put, "/mmds/config", "mmds", H::Unsupported(M::Mmds)),
    route(Put, "/cpu-config", "cpu_cfg", H::Unsupported(M::CpuConfig)),
    route(Put, "/pmem/{id}", "pmem", H::Unsupported(M::Pmem)),
    route(Patch, "/pmem/{id}", "pmem", H::Unsupported(M::Pmem)),
    route(
        Get,
        "/hotplug/memory",
        "hotplug_memory",
        H::Unsupported(M::MemoryHotplug),
    ),
    route(
        Put,
        "/hotplug/memory",
        "hotplug_memory",
        H::Unsupported(M::MemoryHotplug),
    ),
    route(
        Patch,
        "/hotplug/memory",
        "hotplug_memory",
        H::Unsupported(M::MemoryHotplug),
    ),
];

/// The result of routing one request.
#[derive(Debug)]
pub enum Routed {
    /// Hand this to the VMM thread.
    Vmm(ApiRequest),
    /// Answer at once with this error.
    Error(ApiError),
}

/// Splits a path into segments, ignoring repeated and trailing slashes as
/// Firecracker does.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

enum Match<'p> {
    Found(&'static Route, Option<&'p str>),
    /// The path fits a template whose final `{id}` is missing.
    MissingId,
    /// The path exists, not with this method.
    WrongMethod,
    None,
}

fn find<'p>(method: Option<Method>, path: &'p str) -> Match<'p> {
    let segs = segments(path);
    let mut result = Match::None;
    for r in ROUTES {
        let tmpl = segments(r.path);
        let fits = tmpl.len() == segs.len()
            && tmpl
                .iter()
                .zip(&segs)
                .all(|(t, s)| t.starts_with('{') || t == s);
        if fits {
            if Some(r.method) == method {
                let param = tmpl
                    .iter()
                    .zip(&segs)
                    .find(|(t, _)| t.starts_with('{'))
                    .map(|(_, s)| *s);
                return Match::Found(r, param);
            }
            result = Match::WrongMethod;
        } else if matches!(result, Match::None)
            && tmpl.len() == segs.len() + 1
            && tmpl.last().is_some_and(|t| t.starts_with('{'))
            && tmpl.iter().zip(&segs).all(|(t, s)| t == s)
            && Some(r.method) == method
        {
            result = Match::MissingId;
        }
    }
    result
}

/// Finds the route for `method` and `path`, for metrics.
pub fn lookup(method: &str, path: &str) -> Option<&'static Route> {
    match find(Method::parse(method), path) {
        Match::Found(r, _) => Some(r),
        _ => None,
    }
}

fn invalid_path(method: &str, path: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid request method and/or path: {method} {path}."
    ))
}

/// Firecracker's 400 for a body that does not fit its model.
fn deserialize_error(why: &dyn std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "An error occurred when deserializing the json body of a request: {why}."
    ))
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    body_with_arrays(bytes, &[])
}

/// Parses a body that may hold arrays only at the paths in `arrays` (see
/// [`find_array_outside`]).
fn body_with_arrays<T: DeserializeOwned>(bytes: &[u8], arrays: &[&str]) -> Result<T, ApiError> {
    // Every API body is a JSON object with arrays only where its schema has
    // them. (serde would also fill a struct from an array of its fields in
    // order, which no client means.)
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| deserialize_error(&e))?;
    if !value.is_object() {
        return Err(deserialize_error(&"the body must be a JSON object"));
    }
    if let Some(at) = find_array_outside(&value, arrays) {
        return Err(deserialize_error(&format!(
            "unexpected JSON array at `{at}`"
        )));
    }
    // Parse the bytes again (not the value) so duplicate fields are caught.
    serde_json::from_slice(bytes).map_err(|e| deserialize_error(&e))
}

const ID_MISMATCH: &str = "The id from the path does not match the id from the body!";

fn same_id(path_id: &str, body_id: &str) -> Result<(), ApiError> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(ApiError::bad_request(ID_MISMATCH))
    }
}

/// Turns a framed request into work for the VMM thread or an error.
pub fn route_request(method: &str, path: &str, payload: &[u8]) -> Routed {
    match route_inner(method, path, payload) {
        Ok(r) => Routed::Vmm(r),
        Err(e) => Routed::Error(e),
    }
}

fn route_inner(method_token: &str, path: &str, payload: &[u8]) -> Result<ApiRequest, ApiError> {
    let Some(method) = Method::parse(method_token) else {
        return Err(ApiError::bad_request(format!(
            "Invalid HTTP Method: Unsupported HTTP method {method_token:?}; use GET, PUT or PATCH."
        )));
    };
    let (route, param) = match find(Some(method), path) {
        Match::Found(r, p) => (r, p),
        Match::MissingId => return Err(ApiError::bad_request(EMPTY_ID_MESSAGE)),
        Match::WrongMethod | Match::None => return Err(invalid_path(method.as_str(), path)),
    };
    if let H::Unsupported(missing) = route.handler {
        return Err(ApiError::bad_request(missing.message()));
    }
    match method {
        Get if !payload.is_empty() => {
            return Err(ApiError::bad_request("GET request cannot have a body."))
        }
        Put if payload.is_empty() => return Err(ApiError::bad_request("Empty PUT request.")),
        Patch if payload.is_empty() => return Err(ApiError::bad_request("Empty PATCH request.")),
        _ => {}
    }
    let id = param.unwrap_or_default();
    if param.is_some() {
        validate_id(id).map_err(ApiError::bad_request)?;
    }
    Ok(match route.handler {
        H::InstanceInfo => ApiRequest::GetInstanceInfo,
        H::Version => ApiRequest::GetVersion,
        H::VmConfig => ApiRequest::GetVmConfig,
        H::GetMachineConfig => ApiRequest::GetMachineConfig,
        H::PutMachineConfig => ApiRequest::PutMachineConfig(body::<MachineConfig>(payload)?),
        H::PatchMachineConfig => {
            let update = body::<MachineConfigUpdate>(payload)?;
            if update.is_empty() {
                return Err(ApiError::bad_request("Empty PATCH request."));
            }
            ApiRequest::PatchMachineConfig(update)
        }
        H::PutBootSource => ApiRequest::PutBootSource(body(payload)?),
        H::PutDrive => {
            let d: Drive = body(payload)?;
            same_id(id, &d.drive_id)?;
            ApiRequest::PutDrive(d)
        }
        H::PatchDrive => {
            let d: PartialDrive = body(payload)?;
            same_id(id, &d.drive_id)?;
            ApiRequest::PatchDrive(d)
        }
        H::PutNet => {
            let n: NetworkInterface = body(payload)?;
            same_id(id, &n.iface_id)?;
            ApiRequest::PutNetworkInterface(n)
        }
        H::PatchNet => {
            let n: PartialNetworkInterface = body(payload)?;
            same_id(id, &n.iface_id)?;
            ApiRequest::PatchNetworkInterface(n)
        }
        H::PutVsock => ApiRequest::PutVsock(body::<Vsock>(payload)?),
        H::PutEntropy => ApiRequest::PutEntropy(body::<EntropyDevice>(payload)?),
        H::PutSerial => ApiRequest::PutSerial(body::<SerialConfig>(payload)?),
        H::PutLogger => ApiRequest::PutLogger(body::<LoggerConfig>(payload)?),
        H::PutMetrics => ApiRequest::PutMetrics(body::<MetricsConfig>(payload)?),
        H::PutActions => ApiRequest::Action(body::<InstanceActionInfo>(payload)?.action_type),
        H::PatchVm => ApiRequest::SetVmState(body::<VmStateUpdate>(payload)?.state),
        H::PutSnapshotCreate => ApiRequest::CreateSnapshot(body::<SnapshotCreateParams>(payload)?),
        H::PutSnapshotLoad => {
            let p: SnapshotLoadParams = body_with_arrays(payload, &["network_overrides"])?;
            // Firecracker reports a missing or doubled memory source as a
            // deserialization error of the body.
            p.validate().map_err(|why| deserialize_error(&why))?;
            ApiRequest::LoadSnapshot(p)
        }
        H::Unsupported(missing) => return Err(ApiError::bad_request(missing.message())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ActionType, RequestedVmState};

    fn ok(method: &str, path: &str, body: &str) -> ApiRequest {
        match route_request(method, path, body.as_bytes()) {
            Routed::Vmm(r) => r,
            Routed::Error(e) => panic!("{method} {path}: {e}"),
        }
    }

    fn err(method: &str, path: &str, body: &str) -> String {
        match route_request(method, path, body.as_bytes()) {
            Routed::Vmm(r) => panic!("{method} {path} accepted: {r:?}"),
            Routed::Error(e) => {
                assert_eq!(e.status, 400);
                e.message
            }
        }
    }

    #[test]
    fn routes_parse_bodies() {
        assert_eq!(ok("GET", "/", ""), ApiRequest::GetInstanceInfo);
        assert_eq!(
            ok("GET", "//machine-config/", ""),
            ApiRequest::GetMachineConfig
        );
        assert_eq!(
            ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
            ApiRequest::Action(ActionType::InstanceStart)
        );
        assert_eq!(
            ok("PATCH", "/vm", r#"{"state": "Paused"}"#),
            ApiRequest::SetVmState(RequestedVmState::Paused)
        );
        assert!(matches!(
            ok(
                "PUT",
                "/drives/root",
                r#"{"drive_id": "root", "path_on_host": "/x", "is_root_device": true, "is_read_only": false}"#
            ),
            ApiRequest::PutDrive(_)
        ));
    }

    #[test]
    fn firecracker_errors() {
        assert_eq!(
            err("GET", "/nope", ""),
            "Invalid request method and/or path: GET /nope."
        );
        assert_eq!(
            err("PUT", "/version", "{}"),
            "Invalid request method and/or path: PUT /version."
        );
        assert!(err("DELETE", "/", "").starts_with("Invalid HTTP Method"));
        assert_eq!(err("GET", "/", "{}"), "GET request cannot have a body.");
        assert_eq!(err("PUT", "/boot-source", ""), "Empty PUT request.");
        assert_eq!(err("PATCH", "/vm", ""), "Empty PATCH request.");
        assert_eq!(
            err("PATCH", "/machine-config", "{}"),
            "Empty PATCH request."
        );
        assert_eq!(err("PUT", "/drives", "{}"), EMPTY_ID_MESSAGE);
        assert_eq!(
            err("PUT", "/drives/a-b", "{}"),
            crate::models::INVALID_ID_MESSAGE
        );
        assert_eq!(
            err(
                "PUT",
                "/drives/a",
                r#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": true, "is_read_only": false}"#
            ),
            ID_MISMATCH
        );
        assert_eq!(
            err("PATCH", "/network-interfaces/a", r#"{"iface_id": "b"}"#),
            ID_MISMATCH
        );
        assert!(err("PUT", "/actions", r#"{"action_type": "Explode"}"#)
            .starts_with("An error occurred when deserializing the json body of a request: "));
        assert!(err("PUT", "/machine-config", "not json").contains("deserializing"));
        assert!(err("PUT", "/drives/a/b", "{}").starts_with("Invalid request method"));
        assert!(err("PUT", "/logger", "[null, null]").contains("must be a JSON object"));
        assert!(err("PUT", "/serial", " [] ").contains("must be a JSON object"));
        assert!(err("PUT", "/entropy", r#"{"rate_limiter": [null, null]}"#)
            .contains("unexpected JSON array at `rate_limiter`"));
        assert!(err(
            "PUT",
            "/vm/../machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 1, "vcpu_count": 2}"#
        )
        .starts_with("Invalid request"));
        assert!(err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 1, "vcpu_count": 2}"#
        )
        .contains("duplicate field"));
    }

    #[test]
    fn missing_features_are_named() {
        assert!(err("GET", "/balloon", "").contains("balloon"));
        assert!(err("PATCH", "/balloon/hinting/stop", "").contains("balloon"));
        assert!(err("GET", "/mmds", "").contains("MMDS"));
        assert!(err("PUT", "/cpu-config", "{}").contains("CPU templates"));
        assert!(err("PUT", "/pmem/p1", "{}").contains("Pmem"));
        assert!(err("GET", "/hotplug/memory", "").contains("hotplug"));
    }

    #[test]
    fn snapshot_bodies() {
        use crate::models::{SnapshotType, MISSING_MEM_SOURCE, TOO_MANY_MEM_SOURCES};
        let deser = "An error occurred when deserializing the json body of a request: ";
        match ok(
            "PUT",
            "/snapshot/create",
            r#"{"mem_file_path": "m", "snapshot_path": "s", "snapshot_type": "Full"}"#,
        ) {
            ApiRequest::CreateSnapshot(p) => assert_eq!(p.kind(), SnapshotType::Full),
            other => panic!("{other:?}"),
        }
        match ok(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "s", "mem_file_path": "m",
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}]}"#,
        ) {
            ApiRequest::LoadSnapshot(p) => {
                assert_eq!((p.mem_path(), p.network_overrides().len()), ("m", 1))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err(
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "s", "mem_file_path": "m",
                    "mem_backend": {"backend_type": "File", "backend_path": "b"}}"#
            ),
            format!("{deser}{TOO_MANY_MEM_SOURCES}.")
        );
        assert_eq!(
            err("PUT", "/snapshot/load", r#"{"snapshot_path": "s"}"#),
            format!("{deser}{MISSING_MEM_SOURCE}.")
        );
        // Arrays only where the schema has them.
        assert!(err(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [["eth0", "tap1"]]}"#
        )
        .contains("unexpected JSON array at `network_overrides[0]`"));
        assert!(err(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "s", "mem_backend": ["File", "b"]}"#
        )
        .contains("unexpected JSON array at `mem_backend`"));
        assert!(err(
            "PUT",
            "/snapshot/create",
            r#"{"mem_file_path": "m", "snapshot_path": "s", "network_overrides": []}"#
        )
        .contains("unexpected JSON array at `network_overrides`"));
        assert!(err(
            "PUT",
            "/snapshot/create",
            r#"{"mem_file_path": "m", "snapshot_path": "s", "x": 1}"#
        )
        .contains("unknown field `x`"));
    }

    #[test]
    fn lookup_finds_metrics_keys() {
        assert_eq!(lookup("PUT", "/drives/x").unwrap().metric, "drive");
        assert!(lookup("PUT", "/nowhere").is_none());
    }
}

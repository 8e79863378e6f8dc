//! The controller in-process: the config-file path shares the API path,
//! `GET /vm/config` round-trips, and the VMM-side endpoint works from an
//! `event_manager` loop.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ember_api::models::{ActionType, MachineConfig, VmState};
use ember_api::testing::FakeBackend;
use ember_api::{
    api_channel, ApiController, ApiReply, ApiRequest, InstanceDescription, Telemetry, VmConfigFile,
};
use ember_telemetry::{Logger, MetricsRegistry};
use event_manager::{EventManager, SubscriberOps};

fn controller() -> (ApiController<FakeBackend>, FakeBackend, Telemetry) {
    let backend = FakeBackend::default();
    let telemetry = Telemetry {
        logger: None,
        metrics: Arc::new(MetricsRegistry::new()),
    };
    (
        ApiController::new(
            backend.clone(),
            InstanceDescription::new("cfg"),
            telemetry.clone(),
        ),
        backend,
        telemetry,
    )
}

#[test]
fn config_file_boots_through_the_same_path_as_the_api() {
    let dir = common::temp_dir("cfgfile");
    let kernel = dir.join("vmlinux");
    let disk = dir.join("disk");
    std::fs::write(&kernel, b"k").unwrap();
    std::fs::write(&disk, b"d").unwrap();
    let metrics = dir.join("metrics.json");
    let doc = format!(
        r#"{{
          "boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
          "machine-config": {{"vcpu_count": 2, "mem_size_mib": 256}},
          "drives": [{{"drive_id": "root", "path_on_host": "{}", "is_root_device": true, "is_read_only": true}}],
          "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0"}}],
          "entropy": {{}},
          "metrics": {{"metrics_path": "{}"}},
          "balloon": null, "pmem": []
        }}"#,
        kernel.display(),
        disk.display(),
        metrics.display()
    );
    let file = VmConfigFile::parse(&doc).unwrap();
    let (mut c, backend, telemetry) = controller();
    c.boot_from_config_file(file).unwrap();
    assert_eq!(c.state(), VmState::Running);
    assert_eq!(backend.calls(), [format!("start {}", kernel.display())]);
    assert!(telemetry.metrics.is_configured());
    assert_eq!(c.resources().machine_config.vcpu_count, 2);
    assert_eq!(c.resources().drives.len(), 1);

    // The exported configuration boots an identical microVM.
    let Ok(ApiReply::VmConfig(cfg)) = c.handle(ApiRequest::GetVmConfig) else {
        panic!("no config");
    };
    let mut exported = serde_json::to_value(&cfg).unwrap();
    // A second process would pick its own metrics destination.
    exported["metrics"] = serde_json::Value::Null;
    let again = VmConfigFile::parse(&exported.to_string()).unwrap();
    let (mut c2, _, _) = controller();
    c2.boot_from_config_file(again).unwrap();
    assert_eq!(c2.resources().drives, c.resources().drives);
    assert_eq!(c2.resources().machine_config, c.resources().machine_config);
    assert_eq!(
        c2.resources().network_interfaces,
        c.resources().network_interfaces
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_file_errors_are_api_errors() {
    let file =
        VmConfigFile::parse(r#"{"boot-source": {"kernel_image_path": "/nonexistent/k"}}"#).unwrap();
    let (mut c, backend, _) = controller();
    let e = c.boot_from_config_file(file).unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.message.contains("Boot source error"), "{}", e.message);
    assert_eq!(c.state(), VmState::NotStarted);
    assert!(backend.calls().is_empty());
}

#[test]
fn in_process_rules() {
    let (mut c, backend, _) = controller();
    let put = |m: MachineConfig| ApiRequest::PutMachineConfig(m);
    c.handle(put(MachineConfig {
        vcpu_count: 4,
        ..MachineConfig::default()
    }))
    .unwrap();
    assert!(c
        .handle(ApiRequest::Action(ActionType::SendCtrlAltDel))
        .is_err());
    let e = c
        .handle(ApiRequest::Action(ActionType::InstanceStart))
        .unwrap_err();
    assert_eq!(e.message, ember_api::controller::MISSING_KERNEL);
    // The run state is the backend's: a VM it reports as paused is started.
    backend.force_run_state(VmState::Paused);
    assert_eq!(c.state(), VmState::Paused);
    let e = c.handle(put(MachineConfig::default())).unwrap_err();
    assert_eq!(e.message, ember_api::controller::NOT_SUPPORTED_POST_BOOT);
    assert_eq!(
        c.handle(ApiRequest::GetMachineConfig).unwrap(),
        ApiReply::MachineConfig(MachineConfig {
            vcpu_count: 4,
            ..MachineConfig::default()
        })
    );
}

#[test]
fn logger_configuration_reaches_the_installed_logger() {
    let dir = common::temp_dir("logger");
    let log = dir.join("ember.log");
    let logger = Logger::new("log-test");
    let handle = logger.handle();
    let telemetry = Telemetry {
        logger: Some(handle.clone()),
        metrics: Arc::new(MetricsRegistry::new()),
    };
    let mut c = ApiController::new(
        FakeBackend::default(),
        InstanceDescription::new("log-test"),
        telemetry,
    );
    tracing::subscriber::with_default(logger, || {
        let cfg = serde_json::from_value(serde_json::json!({
            "log_path": log.to_str().unwrap(), "level": "Info", "show_level": true
        }))
        .unwrap();
        c.handle(ApiRequest::PutLogger(cfg)).unwrap();
        tracing::info!(target: "ember_api::test", "configured through the API");
        tracing::debug!("not at Info");
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("[log-test:"), "{text}");
    assert!(text.contains(":INFO] configured through the API"), "{text}");
    assert!(!text.contains("not at Info"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn endpoint_serves_requests_from_an_event_manager_loop() {
    let (c, _, _) = controller();
    let (channel, endpoint) = api_channel(c).unwrap();
    let mut manager: EventManager<ember_api::ApiEndpoint<FakeBackend>> =
        EventManager::new().unwrap();
    let id = manager.add_subscriber(endpoint);
    let client = std::thread::spawn(move || {
        let mut states = Vec::new();
        for _ in 0..3 {
            match channel.call(ApiRequest::GetInstanceInfo) {
                Ok(ApiReply::InstanceInfo(i)) => states.push(i.state),
                other => panic!("{other:?}"),
            }
        }
        states
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !client.is_finished() && std::time::Instant::now() < deadline {
        manager.run_with_timeout(50).unwrap();
    }
    assert_eq!(client.join().unwrap(), [VmState::NotStarted; 3]);
    // The endpoint (and its controller) stay reachable for the VMM.
    let ep = manager.subscriber_mut(id).unwrap();
    assert_eq!(ep.controller().state(), VmState::NotStarted);
}

#[test]
fn wiring_as_documented_in_docs_api_readme() {
    use ember_api::{ApiServer, ServerConfig};
    use ember_telemetry::PeriodicFlush;
    use event_manager::MutEventSubscriber;

    let dir = common::temp_dir("wiring");
    let logger = Logger::install_global("wired").unwrap();
    let metrics = MetricsRegistry::global();
    metrics.register(logger.metrics_source());
    let telemetry = Telemetry {
        logger: Some(logger),
        metrics: metrics.clone(),
    };
    let controller = ApiController::new(
        FakeBackend::default(),
        InstanceDescription::new("wired"),
        telemetry,
    );
    let (channel, endpoint) = api_channel(controller).unwrap();
    let mut cfg = ServerConfig::new(dir.join("api.sock"));
    cfg.metrics = Some(metrics.clone());
    let server = ApiServer::spawn(cfg, channel).unwrap();
    let mut manager: EventManager<Box<dyn MutEventSubscriber + Send>> =
        EventManager::new().unwrap();
    manager.add_subscriber(Box::new(endpoint));
    manager.add_subscriber(Box::new(
        PeriodicFlush::new(metrics.clone(), Duration::from_millis(50)).unwrap(),
    ));
    let sock = dir.join("api.sock");
    let metrics_path = dir.join("metrics.json");
    let body = format!(r#"{{"metrics_path": "{}"}}"#, metrics_path.display());
    let client = std::thread::spawn(move || {
        let mut c = common::Client::connect(&sock);
        c.request("PUT", "/metrics", Some(&body)).expect(204);
        c.request("GET", "/", None).expect(200).json()["id"].clone()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && !(client.is_finished() && metrics.lines_written() >= 2)
    {
        manager.run_with_timeout(20).unwrap();
    }
    assert_eq!(client.join().unwrap(), "wired");
    // The periodic flush wrote lines that include the API counters.
    let text = std::fs::read_to_string(&metrics_path).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(last["put_api_requests"].is_object());
    assert!(last["logger"]["missed_log_count"].is_u64());
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

//! The OTLP resource: who is reporting. service.name/instance/version, the host, and the
//! Kubernetes pod, namespace and node from the downward-API variables when present; user
//! attributes (`OTEL_RESOURCE_ATTRIBUTES`, `[otlp.resource]`) win over the detected ones.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use super::config::OtlpConfig;

/// Downward-API variables, in the order tried, per resource attribute.
const K8S: &[(&str, &[&str])] = &[
    ("k8s.pod.name", &["K8S_POD_NAME", "POD_NAME"]),
    ("k8s.pod.uid", &["K8S_POD_UID", "POD_UID"]),
    (
        "k8s.namespace.name",
        &["K8S_NAMESPACE_NAME", "K8S_NAMESPACE", "POD_NAMESPACE"],
    ),
    ("k8s.node.name", &["K8S_NODE_NAME", "NODE_NAME"]),
    ("k8s.container.name", &["K8S_CONTAINER_NAME"]),
];

/// The resource attributes, as (key, value).
pub fn attributes(cfg: &OtlpConfig, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let mut out: Vec<(String, String)> = vec![
        ("service.name".into(), cfg.service_name.clone()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        (
            "service.instance.id".into(),
            env("K8S_POD_UID").unwrap_or_else(|| format!("{:032x}", rand::random::<u128>())),
        ),
        ("telemetry.sdk.name".into(), "opentelemetry".into()),
        ("telemetry.sdk.language".into(), "rust".into()),
    ];
    if let Some(h) = hostname(&env) {
        out.push(("host.name".into(), h));
    }
    for (attr, vars) in K8S {
        if let Some(v) = vars.iter().find_map(|v| env(v)) {
            out.push(((*attr).into(), v));
        }
    }
    for (k, v) in &cfg.resource_attributes {
        // OTEL_SERVICE_NAME beats a service.name in OTEL_RESOURCE_ATTRIBUTES, per the spec.
        if k == "service.name" && env("OTEL_SERVICE_NAME").is_some() {
            continue;
        }
        match out.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

fn hostname(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| env("HOSTNAME"))
}

/// The same attributes as an SDK resource (for the span and log exporters).
pub fn sdk_resource(attrs: &[(String, String)]) -> Resource {
    Resource::builder_empty()
        .with_attributes(
            attrs
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::config::{resolve, FileOtlp};

    #[test]
    fn kubernetes_downward_api_and_user_attributes_land_on_the_resource() {
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4317".to_string()),
            "OTEL_RESOURCE_ATTRIBUTES" => Some("deployment.environment=prod,service.name=x".into()),
            "K8S_POD_NAME" => Some("app-7d9".into()),
            "POD_NAMESPACE" => Some("ml".into()),
            "NODE_NAME" => Some("node-3".into()),
            _ => None,
        };
        let cfg = resolve(&FileOtlp::default(), "f", &env, None)
            .unwrap()
            .unwrap();
        let a = attributes(&cfg, &env);
        let get = |k: &str| a.iter().find(|(ak, _)| ak == k).map(|(_, v)| v.as_str());
        assert_eq!(get("k8s.pod.name"), Some("app-7d9"));
        assert_eq!(get("k8s.namespace.name"), Some("ml"));
        assert_eq!(get("k8s.node.name"), Some("node-3"));
        assert_eq!(get("deployment.environment"), Some("prod"));
        assert_eq!(get("service.name"), Some("x"));
        assert_eq!(get("service.instance.id").map(str::len), Some(32));
    }
}

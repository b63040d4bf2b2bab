//! The otel/ deployment kit: every JSON and YAML file parses, the compose file, the Kubernetes
//! example and the collector config have what they must, the semtap configs in the kit are
//! valid, and every metric the Grafana dashboard queries is one a real semtap exports on
//! `/metrics` (fetched over a socket after OpenAI and Anthropic traffic, streamed and not,
//! error statuses, an unreachable upstream, a rejected request and an incident).
//!
//! docker and kubectl are not run here: the kit is checked for syntax and consistency only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use semtap::config::{Config, ListenerConfig, Overrides, Upstream};
use semtap::metrics::{prometheus_name, MetricKind, KNOWN};
use semtap::simulate::MockUpstream;
use yaml_rust2::{Yaml, YamlLoader};

fn kit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("otel")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn kit_files(exts: &[&str]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    walk(&kit(), &mut all);
    all.into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
        })
        .collect()
}

fn read(rel: &str) -> String {
    let p = kit().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("otel/{rel}: {e}"))
}

fn yaml_one(rel: &str) -> Yaml {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "otel/{rel}: one YAML document");
    docs.remove(0)
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("grafana/dashboards/semtap.json")).expect("dashboard JSON")
}

fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn keys(y: &Yaml) -> BTreeSet<String> {
    y.as_hash()
        .map(|h| {
            h.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What the kit's deployments set beside the config file: the admin token variable.
fn deployed() -> Overrides {
    Overrides {
        admin_token: Some(semtap::alert::Secret::new("kit-admin-token")),
        ..Overrides::default()
    }
}

#[test]
fn every_json_yaml_and_toml_file_in_the_kit_parses() {
    let json = kit_files(&["json"]);
    assert!(!json.is_empty(), "the dashboard JSON is there");
    for p in &json {
        let text = std::fs::read_to_string(p).expect("read");
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    let yaml = kit_files(&["yaml", "yml"]);
    assert!(
        yaml.len() >= 7,
        "compose, collector, k8s, prometheus x2, grafana x2: {yaml:?}"
    );
    for p in &yaml {
        let text = std::fs::read_to_string(p).expect("read");
        let docs =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!docs.is_empty(), "{}: no document", p.display());
        for d in &docs {
            assert!(
                d.as_hash().is_some(),
                "{}: a mapping at the top",
                p.display()
            );
        }
    }
    // semtap's own configs in the kit are valid semtap configs, with the admin token the
    // deployment passes in SEMTAP_ADMIN_TOKEN.
    let tomls = kit_files(&["toml"]);
    assert!(!tomls.is_empty());
    for p in &tomls {
        let text = std::fs::read_to_string(p).expect("read");
        Config::from_toml_with(&text, &p.display().to_string(), &deployed())
            .unwrap_or_else(|e| panic!("{}: {:?}", p.display(), e.issues));
    }
}

#[test]
fn compose_brings_up_semtap_collector_jaeger_prometheus_and_grafana() {
    let compose = yaml_one("docker-compose.yaml");
    let services = &compose["services"];
    let names = keys(services);
    for want in [
        "semtap",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(want), "compose service {want}: {names:?}");
    }
    for name in &names {
        let s = &services[name.as_str()];
        if let Some(image) = s["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{name}: pin a concrete tag ({image})"
            );
        } else {
            assert!(!s["build"].is_badvalue(), "{name}: an image or a build");
        }
        // Every file or folder bind-mounted from the kit exists.
        for v in strs(&s["volumes"]) {
            if let Some(rel) = v.strip_prefix("./") {
                let src = rel.split(':').next().unwrap_or("");
                assert!(kit().join(src).exists(), "{name}: mounts missing ./{src}");
            }
        }
    }
    let semtap = &services["semtap"];
    let dockerfile = semtap["build"]["dockerfile"]
        .as_str()
        .expect("semtap build");
    let context = semtap["build"]["context"].as_str().expect("build context");
    assert!(
        kit().join(context).join(dockerfile).is_file(),
        "{dockerfile}"
    );
    let endpoint = semtap["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        .as_str()
        .expect("semtap exports OTLP");
    assert!(endpoint.contains("otel-collector:4317"), "{endpoint}");
    assert!(read("semtap.toml").contains("0.0.0.0:9464"));
    // Off loopback the admin API needs a token; compose refuses to start without one.
    let admin_token = semtap["environment"]["SEMTAP_ADMIN_TOKEN"]
        .as_str()
        .expect("compose passes SEMTAP_ADMIN_TOKEN");
    assert!(admin_token.contains(":?"), "{admin_token}");

    // Prometheus scrapes the collector's prometheus exporter port.
    let collector = yaml_one("collector/otel-collector.yaml");
    let prom_port = collector["exporters"]["prometheus"]["endpoint"]
        .as_str()
        .and_then(|e| e.rsplit(':').next())
        .expect("prometheus exporter endpoint")
        .to_string();
    let prom = yaml_one("prometheus/prometheus.yml");
    let targets: Vec<String> = prom["scrape_configs"]
        .as_vec()
        .expect("scrape_configs")
        .iter()
        .flat_map(|j| {
            j["static_configs"]
                .as_vec()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .flat_map(|c| strs(&c["targets"]))
        })
        .collect();
    assert!(
        targets.contains(&format!("otel-collector:{prom_port}")),
        "{targets:?}"
    );
    // The scrape alternative reads semtap's admin port.
    let direct = read("prometheus/prometheus-scrape-semtap.yml");
    assert!(direct.contains("semtap:9464"));

    // Grafana: the provisioned dashboard folder is where compose mounts the dashboards, and
    // the data sources the dashboard and the kit name are provisioned.
    let provider = yaml_one("grafana/provisioning/dashboards/dashboards.yaml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let grafana_mounts = strs(&services["grafana"]["volumes"]);
    assert!(
        grafana_mounts
            .iter()
            .any(|m| m.starts_with("./grafana/dashboards:") && m.contains(path)),
        "{grafana_mounts:?} vs {path}"
    );
    let ds = yaml_one("grafana/provisioning/datasources/datasources.yaml");
    let types: BTreeSet<String> = ds["datasources"]
        .as_vec()
        .expect("datasources")
        .iter()
        .filter_map(|d| d["type"].as_str().map(str::to_string))
        .collect();
    for t in ["prometheus", "jaeger", "loki"] {
        assert!(types.contains(t), "data source {t}: {types:?}");
    }
}

#[test]
fn kubernetes_example_runs_semtap_as_a_sidecar_with_probes_limits_and_the_model_on_a_volume() {
    let docs = yaml_docs("k8s/semtap-sidecar.yaml");
    let deployment = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_vec().expect("containers");
    assert!(containers.len() >= 2, "semtap beside the app");
    let semtap = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("semtap"))
        .expect("a semtap container");

    let ports: BTreeMap<String, i64> = semtap["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["containerPort"].as_i64()?,
            ))
        })
        .collect();
    assert_eq!(ports.get("admin"), Some(&9464), "{ports:?}");
    assert!(ports.values().any(|p| *p == 8080), "{ports:?}");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &semtap[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        let port = &get["port"];
        let port = port
            .as_i64()
            .or_else(|| port.as_str().and_then(|n| ports.get(n).copied()));
        assert_eq!(port, Some(9464), "{probe} on the admin port");
    }
    for r in ["cpu", "memory"] {
        assert!(
            !semtap["resources"]["limits"][r].is_badvalue(),
            "limits.{r}"
        );
        assert!(
            !semtap["resources"]["requests"][r].is_badvalue(),
            "requests.{r}"
        );
    }
    let env: BTreeMap<String, &Yaml> = semtap["env"]
        .as_vec()
        .expect("env")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e)))
        .collect();
    for (var, field) in [
        ("K8S_POD_NAME", "metadata.name"),
        ("K8S_NAMESPACE_NAME", "metadata.namespace"),
        ("K8S_NODE_NAME", "spec.nodeName"),
    ] {
        let e = env.get(var).unwrap_or_else(|| panic!("env {var}"));
        assert_eq!(
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            Some(field),
            "{var}"
        );
    }
    assert!(env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"));
    assert!(!env["SEMTAP_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"].is_badvalue());
    let admin_token = &env["SEMTAP_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"];
    let secret_name = admin_token["name"]
        .as_str()
        .expect("admin token from a Secret");
    assert!(
        docs.iter().any(|d| d["kind"].as_str() == Some("Secret")
            && d["metadata"]["name"].as_str() == Some(secret_name)
            && !d["stringData"][admin_token["key"].as_str().unwrap_or("")].is_badvalue()),
        "the Secret {secret_name} holds the admin token"
    );

    // The model: a volume mounted read-only where the config's model_dir points.
    let volumes: BTreeSet<String> = pod["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    let mounts = semtap["volumeMounts"].as_vec().expect("volumeMounts");
    for m in mounts {
        let name = m["name"].as_str().expect("mount name");
        assert!(volumes.contains(name), "mount {name} has a volume");
    }
    let model_mount = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/models"))
        .expect("the model volume at /models");
    assert_eq!(model_mount["readOnly"].as_bool(), Some(true));

    // The ConfigMap's semtap.toml is a valid config whose model lives on that volume, and the
    // container reads it from the ConfigMap mount.
    let cm = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .expect("a ConfigMap");
    let toml_text = cm["data"]["semtap.toml"].as_str().expect("semtap.toml");
    let cfg = Config::from_toml_with(toml_text, "k8s ConfigMap semtap.toml", &deployed())
        .unwrap_or_else(|e| panic!("{:?}", e.issues));
    assert!(cfg
        .semantic
        .model_dir
        .as_deref()
        .is_some_and(|d| d.starts_with("/models")));
    assert!(
        cfg.admin_listen.ip().is_unspecified(),
        "probes reach the admin port"
    );
    let args = strs(&semtap["args"]);
    let config_path = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config FILE");
    assert!(mounts.iter().any(|m| m["mountPath"]
        .as_str()
        .is_some_and(|p| config_path.starts_with(p))));
}

#[test]
fn collector_receives_otlp_and_every_pipeline_component_is_defined() {
    let c = yaml_one("collector/otel-collector.yaml");
    let otlp = &c["receivers"]["otlp"]["protocols"];
    assert!(!otlp["grpc"].is_badvalue() && !otlp["http"].is_badvalue());
    assert!(
        !c["processors"]["deltatocumulative"].is_badvalue(),
        "deltatocumulative is there for delta sources"
    );
    let pipelines = &c["service"]["pipelines"];
    for signal in ["traces", "metrics", "logs"] {
        let p = &pipelines[signal];
        assert!(!p.is_badvalue(), "a {signal} pipeline");
        assert!(strs(&p["receivers"]).contains(&"otlp".to_string()));
        let exporters = strs(&p["exporters"]);
        assert!(!exporters.is_empty(), "{signal} exports somewhere");
        for (section, used) in [
            ("receivers", strs(&p["receivers"])),
            ("processors", strs(&p["processors"])),
            ("exporters", exporters),
        ] {
            let defined = keys(&c[section]);
            for u in used {
                assert!(
                    defined.contains(&u),
                    "{signal}: {section}.{u} is not defined"
                );
            }
        }
    }
    assert!(strs(&pipelines["metrics"]["exporters"]).contains(&"prometheus".to_string()));
    for e in strs(&c["service"]["extensions"]) {
        assert!(keys(&c["extensions"]).contains(&e), "extension {e}");
    }
}

// ---- the dashboard's PromQL against a real semtap ----

/// Removes quoted strings and `open..close` groups (not nested).
fn strip_groups(s: &str, open: char, close: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0;
    for c in s.chars() {
        if c == open {
            depth += 1;
        } else if c == close && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

fn idents(s: &str) -> Vec<(usize, String)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len()
                && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
            {
                i += 1;
            }
            let preceded = start > 0 && matches!(b[start - 1], b'$' | b'.' | b'0'..=b'9');
            if !preceded {
                out.push((i, s[start..i].to_string()));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Metric names and label names one PromQL expression (or a Grafana `label_values(..)` query)
/// refers to.
fn promql_refs(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    ];
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let expr = expr.trim();
    if let Some(args) = expr
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (metric, label) = args.rsplit_once(',').unwrap_or(("", args));
        let (m, l) = promql_refs(metric);
        metrics.extend(m);
        labels.extend(l);
        labels.insert(label.trim().to_string());
        return (metrics, labels);
    }
    // Label names in matchers: `{name op "value", ...}`.
    let no_strings: String = {
        let mut out = String::new();
        let mut in_str = false;
        let mut prev = ' ';
        for c in expr.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                out.push('"');
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out
    };
    let mut rest = no_strings.as_str();
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .unwrap_or(rest.len());
        for m in rest[open + 1..close].split(',') {
            let name = m.split(['=', '!', '~']).next().unwrap_or("").trim();
            if !name.is_empty() {
                labels.insert(name.to_string());
            }
        }
        rest = &rest[close.min(rest.len())..];
        if rest.is_empty() {
            break;
        }
        rest = &rest[1..];
    }
    let s = strip_groups(&no_strings, '{', '}');
    let s = strip_groups(&s, '[', ']');
    // Grouping clauses: `by (a, b)` and friends name labels, not metrics.
    let mut skip_until = 0;
    for (end, tok) in &idents(&s) {
        let start = end - tok.len();
        if start < skip_until {
            continue;
        }
        let after = s[*end..].trim_start();
        if KEYWORDS.contains(&tok.to_lowercase().as_str()) {
            if after.starts_with('(') {
                let open = s.len() - after.len();
                let close = s[open..]
                    .find(')')
                    .map(|c| open + c)
                    .expect("closing paren");
                for l in s[open + 1..close].split(',') {
                    let l = l.trim();
                    if !l.is_empty() {
                        labels.insert(l.to_string());
                    }
                }
                skip_until = close;
            }
            continue;
        }
        let grouped = ["by", "without"].iter().any(|k| {
            after
                .strip_prefix(k)
                .is_some_and(|r| r.trim_start().starts_with('('))
        });
        if after.starts_with('(') || grouped {
            continue; // a function, or an aggregation written `sum by (..) (..)`
        }
        metrics.insert(tok.clone());
    }
    labels.remove("le");
    labels.remove("__name__");
    (metrics, labels)
}

/// Every PromQL expression of the dashboard: panel targets (rows included) and the template
/// variables' queries.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    fn panels(v: &serde_json::Value, out: &mut Vec<String>) {
        for p in v.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_string());
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            out.push(q.expect("variable query").to_string());
        }
    }
    out
}

#[test]
fn promql_references_are_extracted_without_labels_functions_or_durations() {
    let (m, l) = promql_refs(
        r#"histogram_quantile(0.99, sum by (le, gen_ai_request_model) (rate(gen_ai_client_operation_duration_seconds_bucket{listener=~"$listener", gen_ai_provider_name!="a,b"}[$__rate_interval]))) / on() group_left sum(semtap_x_total) or vector(0)"#,
    );
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        [
            "gen_ai_client_operation_duration_seconds_bucket",
            "semtap_x_total"
        ]
    );
    assert_eq!(
        l.into_iter().collect::<Vec<_>>(),
        ["gen_ai_provider_name", "gen_ai_request_model", "listener"]
    );
    let (m, l) = promql_refs("label_values(semtap_requests_total, gen_ai_provider_name)");
    assert_eq!(m.into_iter().collect::<Vec<_>>(), ["semtap_requests_total"]);
    assert_eq!(l.into_iter().collect::<Vec<_>>(), ["gen_ai_provider_name"]);
}

#[test]
fn dashboard_has_the_panels_and_variables_the_kit_promises() {
    let d = dashboard();
    let vars: BTreeSet<String> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    for v in ["listener", "provider", "model"] {
        assert!(vars.contains(v), "${v}: {vars:?}");
    }
    let all = dashboard_exprs(&d).join("\n");
    for (what, metric) in [
        ("requests", "semtap_requests_total"),
        ("errors by status", "semtap_exchanges_total"),
        (
            "latency percentiles",
            "gen_ai_client_operation_duration_seconds_bucket",
        ),
        (
            "TTFC percentiles",
            "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        ),
        ("tokens/s", "gen_ai_client_token_usage_sum"),
        ("flags by kind", "semtap_flags_total"),
        ("drift score", "semtap_drift_score"),
        ("open incidents", "semtap_incidents_open"),
        ("drops", "semtap_records_dropped_total"),
    ] {
        assert!(all.contains(metric), "{what}: {metric}");
    }
    assert!(all.contains("status_class"), "errors split by status");
}

/// `/metrics` parsed: sample names → label names seen on them, plus family types.
struct Exposition {
    samples: BTreeMap<String, BTreeSet<String>>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let entry = samples.entry(name.to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let close = line.rfind('}').expect("closing brace");
            let mut in_str = false;
            let mut prev = ' ';
            let mut cur = String::new();
            for c in line[name_end + 1..close].chars() {
                if c == '"' && prev != '\\' {
                    in_str = !in_str;
                } else if !in_str && c == '=' {
                    entry.insert(cur.trim_matches([',', ' ']).to_string());
                    cur.clear();
                } else if !in_str && c != '"' {
                    cur.push(c);
                } else if !in_str {
                    cur.clear();
                }
                prev = c;
            }
        }
    }
    Exposition { samples }
}

/// Names semtap can export (Prometheus form, histogram series included), from the metric
/// descriptors. For series that only appear after rare events.
fn exportable_names() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in KNOWN {
        let n = prometheus_name(d.name, d.unit, d.kind);
        if d.kind == MetricKind::Histogram {
            for s in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{n}{s}"));
            }
        }
        out.insert(n);
    }
    out
}

/// Series that need an event a test cannot cause on demand: checked against the descriptors.
const EVENT_ONLY: &[&str] = &["semtap_records_dropped_total"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_on_a_real_semtaps_metrics_endpoint() {
    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for e in &exprs {
        let (m, _) = promql_refs(e);
        assert!(!m.is_empty(), "no metric in {e}");
        wanted.extend(m);
    }

    // semtap with the semantic engine on a tiny generated BERT, in front of the mock upstream,
    // plus a listener whose upstream refuses connections.
    let up = MockUpstream::start().await.expect("mock");
    let model = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    semtap::semantic::testing::write_tiny_bert(model.path(), 7).expect("tiny bert");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut cfg = config_for(&up.url(), None);
    cfg.listeners.push(ListenerConfig {
        name: "dead".into(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        upstream: Upstream::parse(&format!("http://{closed}")).expect("url"),
        provider: None,
    });
    cfg.semantic.enabled = true;
    cfg.semantic.model_dir = Some(model.path().to_path_buf());
    cfg.state_dir = Some(state.path().to_path_buf());
    cfg.limits.max_in_flight = 2;
    let t = tap_with(cfg).await;
    let admin = t.admin();
    let c = client();
    let base = t.base();
    let chat = format!("{base}/v1/chat/completions");
    let messages = format!("{base}/v1/messages");

    // OpenAI and Anthropic, streamed and not, and error statuses.
    for stream in [false, true] {
        for model in ["gpt-4o-mini", "gpt-4o"] {
            let (s, _, _) = send(
                &c,
                post_json(&chat, &chat_body(model, "Name a colour.", stream)),
            )
            .await;
            assert_eq!(s, 200);
        }
        let (s, _, _) = send(
            &c,
            post_json(
                &messages,
                &messages_body("claude-sonnet-4", "Name a colour.", stream),
            ),
        )
        .await;
        assert_eq!(s, 200);
    }
    let (s, _, _) = send(
        &c,
        with_header(
            post_json(&chat, &chat_body("gpt-4o", "x", false)),
            "x-mock-fault",
            "status=429",
        ),
    )
    .await;
    assert_eq!(s, 429);
    let (s, _, _) = send(
        &c,
        with_header(
            post_json(&messages, &messages_body("claude-sonnet-4", "x", true)),
            "x-mock-fault",
            "status=500",
        ),
    )
    .await;
    assert_eq!(s, 500);
    // Flags and an error_rate incident (as in tests/semantic_live.rs): blank answers, then a
    // run of 529s on one key.
    blank_then_overloaded(&c, &chat).await;
    // An unreachable upstream: 502 and an upstream error.
    let dead = t.running.listener_addrs()[1];
    let (s, _, _) = send(
        &c,
        post_json(
            &format!("http://{dead}/v1/chat/completions"),
            &chat_body("gpt-4o", "x", false),
        ),
    )
    .await;
    assert_eq!(s, 502);
    // Two streams held open by the upstream fill max_in_flight; a third is rejected.
    let mut held = Vec::new();
    for _ in 0..2 {
        let req = with_header(
            post_json(&chat, &chat_body("gpt-4o", "hold", true)),
            "x-mock-fault",
            "gate",
        );
        held.push(c.request(req).await.expect("headers while held"));
    }
    let (s, _, _) = send(&c, post_json(&chat, &chat_body("gpt-4o", "x", false))).await;
    assert_eq!(s, 503, "over max_in_flight");
    up.release_gate();
    for r in held {
        use http_body_util::BodyExt;
        r.into_body().collect().await.expect("released stream");
    }

    // Poll /metrics (over the admin socket) until every dashboard metric is there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (expo, missing) = loop {
        let (status, text) = get_text(&format!("{admin}/metrics")).await;
        assert_eq!(status, 200);
        let expo = parse_exposition(&text);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|m| !expo.samples.contains_key(*m))
            .cloned()
            .collect();
        if missing.iter().all(|m| EVENT_ONLY.contains(&m.as_str())) || Instant::now() > deadline {
            break (expo, missing);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let exportable = exportable_names();
    for m in &missing {
        assert!(
            EVENT_ONLY.contains(&m.as_str()),
            "dashboard metric {m} never appeared on /metrics; present: {:?}",
            expo.samples.keys().collect::<Vec<_>>()
        );
        assert!(
            exportable.contains(m),
            "{m} is not a metric semtap describes"
        );
    }

    // Label names the dashboard filters or groups by exist on the metrics it queries.
    for e in &exprs {
        let (metrics, labels) = promql_refs(e);
        if metrics.iter().all(|m| EVENT_ONLY.contains(&m.as_str())) {
            continue;
        }
        for l in &labels {
            assert!(
                metrics
                    .iter()
                    .any(|m| expo.samples.get(m).is_some_and(|ls| ls.contains(l))),
                "label {l} is on none of {metrics:?} (in {e})"
            );
        }
    }
    t.running.shutdown().await;
}

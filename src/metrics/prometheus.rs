//! Prometheus text exposition format 0.0.4, from a [`MetricFamilySnapshot`] list.
//!
//! Names are translated the way the OpenTelemetry Prometheus exporters do: invalid characters
//! (dots) become `_`, the unit becomes a suffix (`s` → `_seconds`, `By` → `_bytes`, `{token}`
//! → nothing, `x/s` → `_per_second`), and counters end in `_total`.

use std::fmt::Write;

use super::{MetricFamilySnapshot, MetricKind, SeriesValue};

/// The Prometheus name of an OTel metric: `gen_ai.client.operation.duration` with unit `s` →
/// `gen_ai_client_operation_duration_seconds`; counter `semtap.requests` → `semtap_requests_total`.
pub fn prometheus_name(name: &str, unit: &str, kind: MetricKind) -> String {
    let mut out = sanitize(name, true);
    let suffix = unit_suffix(unit);
    if !suffix.is_empty() && !out.ends_with(&format!("_{suffix}")) {
        out.push('_');
        out.push_str(&suffix);
    }
    if kind == MetricKind::Counter && !out.ends_with("_total") {
        out.push_str("_total");
    }
    out
}

/// Replaces characters Prometheus does not allow in names (labels: no `:`) with `_`.
fn sanitize(s: &str, metric: bool) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    for (i, c) in s.chars().enumerate() {
        let ok = c.is_ascii_alphabetic()
            || c == '_'
            || (metric && c == ':')
            || (i > 0 && c.is_ascii_digit());
        if ok {
            out.push(c);
        } else if i == 0 && c.is_ascii_digit() {
            out.push('_');
            out.push(c);
        } else {
            out.push('_');
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

fn unit_suffix(unit: &str) -> String {
    let (main, per) = match unit.split_once('/') {
        Some((m, p)) => (m, Some(p)),
        None => (unit, None),
    };
    let mut parts: Vec<String> = Vec::new();
    let main = unit_word(main, false);
    if !main.is_empty() {
        parts.push(main);
    }
    if let Some(per) = per.map(|p| unit_word(p, true)).filter(|p| !p.is_empty()) {
        parts.push(format!("per_{per}"));
    }
    parts.join("_")
}

fn unit_word(u: &str, per: bool) -> String {
    // `{token}`-style annotations carry no unit; neither does the dimensionless `1`.
    let u = u.trim();
    if u.is_empty() || u.starts_with('{') || u == "1" {
        return String::new();
    }
    let word = match (u, per) {
        ("s", false) => "seconds",
        ("s", true) => "second",
        ("ms", false) => "milliseconds",
        ("ms", true) => "millisecond",
        ("us", false) => "microseconds",
        ("ns", false) => "nanoseconds",
        ("min", false) => "minutes",
        ("min", true) | ("m", true) => "minute",
        ("h", false) => "hours",
        ("h", true) => "hour",
        ("d", false) => "days",
        ("d", true) => "day",
        ("By", _) => "bytes",
        ("KiBy", _) => "kibibytes",
        ("MiBy", _) => "mebibytes",
        ("%", _) => "percent",
        _ => return sanitize(u, false),
    };
    word.to_string()
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

fn write_labels(out: &mut String, labels: &[(String, String)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels {
        let k = sanitize(k, false);
        if le.is_some() && k == "le" {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    if let Some(le) = le {
        if !first {
            out.push(',');
        }
        let _ = write!(out, "le=\"{le}\"");
    }
    out.push('}');
}

/// Renders families sorted by Prometheus name; series keep the snapshot's (sorted) order.
pub(crate) fn render(families: &[MetricFamilySnapshot]) -> String {
    let mut fams: Vec<(String, &MetricFamilySnapshot)> = families
        .iter()
        .map(|f| (prometheus_name(&f.name, &f.unit, f.kind), f))
        .collect();
    fams.sort_by(|a, b| a.0.cmp(&b.0));

    let mut out = String::with_capacity(256 * fams.len());
    for (name, fam) in fams {
        let help = if fam.description.is_empty() {
            fam.name.as_str()
        } else {
            fam.description.as_str()
        };
        let kind = match fam.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in &fam.series {
            match &s.value {
                SeriesValue::Counter(v) => {
                    out.push_str(&name);
                    write_labels(&mut out, &s.labels, None);
                    let _ = writeln!(out, " {v}");
                }
                SeriesValue::Gauge(v) => {
                    out.push_str(&name);
                    write_labels(&mut out, &s.labels, None);
                    let _ = writeln!(out, " {}", fmt_f64(*v));
                }
                SeriesValue::Histogram(p) => {
                    for (b, c) in p.boundaries.iter().zip(&p.cumulative_counts) {
                        let _ = write!(out, "{name}_bucket");
                        write_labels(&mut out, &s.labels, Some(&fmt_f64(*b)));
                        let _ = writeln!(out, " {c}");
                    }
                    let _ = write!(out, "{name}_bucket");
                    write_labels(&mut out, &s.labels, Some("+Inf"));
                    let _ = writeln!(out, " {}", p.count);
                    let _ = write!(out, "{name}_sum");
                    write_labels(&mut out, &s.labels, None);
                    let _ = writeln!(out, " {}", fmt_f64(p.sum));
                    let _ = write!(out, "{name}_count");
                    write_labels(&mut out, &s.labels, None);
                    let _ = writeln!(out, " {}", p.count);
                }
            }
        }
    }
    out
}

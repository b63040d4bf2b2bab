//! OTLP metrics straight from the tap's merged hdrhistogram snapshots, read at collection time.
//! Nothing is recorded twice: the SDK's own instruments (one lock per series) never see the hot
//! path. Sums and histograms are cumulative by default, or delta against the previous
//! collection; histograms use the spec's explicit buckets or base-2 exponential buckets.

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric, number_data_point, AggregationTemporality,
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::config::{HistogramAggregation, Temporality};
use crate::metrics::{HistogramPoint, MetricFamilySnapshot, MetricKind, SeriesValue};

/// Most buckets an exponential histogram may use (the SDK default).
const MAX_EXP_BUCKETS: usize = 160;
const MAX_SCALE: i32 = 20;
const MIN_SCALE: i32 = -10;

type SeriesKey = (String, Vec<(String, String)>);

#[derive(Clone)]
enum Prev {
    Counter(u64),
    Explicit(HistogramPoint),
    Exponential(ExpState),
}

/// An exponential histogram's state at one scale.
#[derive(Clone, Debug, PartialEq)]
struct ExpState {
    scale: i32,
    zero: u64,
    counts: BTreeMap<i32, u64>,
    count: u64,
    sum: f64,
}

/// Turns metric snapshots into OTLP export requests, remembering what delta needs.
pub struct MetricsEncoder {
    temporality: Temporality,
    histograms: HistogramAggregation,
    start_ns: u64,
    last_ns: u64,
    prev: HashMap<SeriesKey, Prev>,
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

/// The resource as OTLP protobuf.
pub fn proto_resource(attrs: &[(String, String)]) -> Resource {
    Resource {
        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

impl MetricsEncoder {
    /// `start_ns`: process start, the start time of cumulative series.
    pub fn new(temporality: Temporality, histograms: HistogramAggregation, start_ns: u64) -> Self {
        MetricsEncoder {
            temporality,
            histograms,
            start_ns,
            last_ns: start_ns,
            prev: HashMap::new(),
        }
    }

    /// Whether the snapshot must carry full-resolution histogram values.
    pub fn wants_values(&self) -> bool {
        self.histograms == HistogramAggregation::Exponential
    }

    /// One export request for `families` collected at `now_ns`.
    pub fn encode(
        &mut self,
        families: &[MetricFamilySnapshot],
        resource: &Resource,
        scope: &InstrumentationScope,
        now_ns: u64,
    ) -> ExportMetricsServiceRequest {
        let delta = self.temporality == Temporality::Delta;
        let start = if delta { self.last_ns } else { self.start_ns };
        let temporality = if delta {
            AggregationTemporality::Delta
        } else {
            AggregationTemporality::Cumulative
        } as i32;
        let mut metrics = Vec::with_capacity(families.len());
        for fam in families {
            let data = match fam.kind {
                MetricKind::Counter => {
                    let mut points = Vec::new();
                    for s in &fam.series {
                        let SeriesValue::Counter(total) = s.value else {
                            continue;
                        };
                        let key = (fam.name.clone(), s.labels.clone());
                        let value = if delta {
                            let before = match self.prev.insert(key, Prev::Counter(total)) {
                                Some(Prev::Counter(p)) => p,
                                _ => 0,
                            };
                            total.saturating_sub(before)
                        } else {
                            total
                        };
                        points.push(NumberDataPoint {
                            attributes: attrs(&s.labels),
                            start_time_unix_nano: start,
                            time_unix_nano: now_ns,
                            value: Some(number_data_point::Value::AsInt(
                                i64::try_from(value).unwrap_or(i64::MAX),
                            )),
                            ..Default::default()
                        });
                    }
                    metric::Data::Sum(Sum {
                        data_points: points,
                        aggregation_temporality: temporality,
                        is_monotonic: true,
                    })
                }
                MetricKind::Gauge => metric::Data::Gauge(Gauge {
                    data_points: fam
                        .series
                        .iter()
                        .filter_map(|s| match s.value {
                            SeriesValue::Gauge(v) => Some(NumberDataPoint {
                                attributes: attrs(&s.labels),
                                time_unix_nano: now_ns,
                                value: Some(number_data_point::Value::AsDouble(v)),
                                ..Default::default()
                            }),
                            _ => None,
                        })
                        .collect(),
                }),
                MetricKind::Histogram => match self.histograms {
                    HistogramAggregation::Explicit => {
                        let mut points = Vec::new();
                        for s in &fam.series {
                            let SeriesValue::Histogram(p) = &s.value else {
                                continue;
                            };
                            let key = (fam.name.clone(), s.labels.clone());
                            let point = if delta {
                                let before = self.prev.insert(key, Prev::Explicit(p.clone()));
                                match before {
                                    Some(Prev::Explicit(b)) => explicit_delta(p, &b),
                                    _ => explicit_point(p, true),
                                }
                            } else {
                                explicit_point(p, true)
                            };
                            points.push(HistogramDataPoint {
                                attributes: attrs(&s.labels),
                                start_time_unix_nano: start,
                                time_unix_nano: now_ns,
                                ..point
                            });
                        }
                        metric::Data::Histogram(Histogram {
                            data_points: points,
                            aggregation_temporality: temporality,
                        })
                    }
                    HistogramAggregation::Exponential => {
                        let mut points = Vec::new();
                        for s in &fam.series {
                            let SeriesValue::Histogram(p) = &s.value else {
                                continue;
                            };
                            let now = exp_state(&p.values, p.sum);
                            let key = (fam.name.clone(), s.labels.clone());
                            let (shown, minmax) = if delta {
                                let before = self.prev.insert(key, Prev::Exponential(now.clone()));
                                match before {
                                    Some(Prev::Exponential(b)) => (exp_delta(&now, &b), false),
                                    _ => (now, true),
                                }
                            } else {
                                (now, true)
                            };
                            points.push(exp_point(&shown, p, minmax, &s.labels, start, now_ns));
                        }
                        metric::Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: points,
                            aggregation_temporality: temporality,
                        })
                    }
                },
            };
            metrics.push(Metric {
                name: fam.name.clone(),
                description: fam.description.clone(),
                unit: fam.unit.clone(),
                data: Some(data),
                ..Default::default()
            });
        }
        self.last_ns = now_ns;
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

fn attrs(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| kv(k, v)).collect()
}

fn explicit_point(p: &HistogramPoint, minmax: bool) -> HistogramDataPoint {
    HistogramDataPoint {
        count: p.count,
        sum: Some(p.sum),
        bucket_counts: p.bucket_counts(),
        explicit_bounds: p.boundaries.clone(),
        min: minmax.then_some(p.min),
        max: minmax.then_some(p.max),
        ..Default::default()
    }
}

/// `now - before` per bucket; min and max cannot be subtracted, so they are left out.
fn explicit_delta(now: &HistogramPoint, before: &HistogramPoint) -> HistogramDataPoint {
    let mut p = explicit_point(now, false);
    if before.boundaries == now.boundaries {
        for (c, b) in p.bucket_counts.iter_mut().zip(before.bucket_counts()) {
            *c = c.saturating_sub(b);
        }
        p.count = now.count.saturating_sub(before.count);
        p.sum = Some(now.sum - before.sum);
    }
    p
}

/// Bucket index of `v > 0` at `scale`: bucket i holds (base^i, base^(i+1)], base = 2^(2^-scale).
fn exp_index(v: f64, scale: i32) -> i32 {
    let factor = (2f64).powi(scale);
    let i = (v.log2() * factor).ceil() as i64 - 1;
    i.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// The finest scale at which all of `values` fit in [`MAX_EXP_BUCKETS`].
fn exp_state(values: &[(f64, u64)], sum: f64) -> ExpState {
    let positive: Vec<(f64, u64)> = values.iter().copied().filter(|(v, _)| *v > 0.0).collect();
    let zero: u64 = values
        .iter()
        .filter(|(v, _)| *v <= 0.0)
        .map(|(_, c)| c)
        .sum();
    let count = values.iter().map(|(_, c)| c).sum();
    let mut scale = MAX_SCALE;
    if let (Some(lo), Some(hi)) = (positive.first(), positive.last()) {
        while scale > MIN_SCALE
            && (exp_index(hi.0, scale) as i64 - exp_index(lo.0, scale) as i64)
                >= MAX_EXP_BUCKETS as i64
        {
            scale -= 1;
        }
    }
    let mut counts = BTreeMap::new();
    for (v, c) in positive {
        *counts.entry(exp_index(v, scale)).or_insert(0) += c;
    }
    ExpState {
        scale,
        zero,
        counts,
        count,
        sum,
    }
}

/// `state` at a coarser `scale` (each step down merges pairs of buckets).
fn downscale(state: &ExpState, scale: i32) -> ExpState {
    let shift = (state.scale - scale).max(0) as u32;
    let mut counts = BTreeMap::new();
    for (&i, &c) in &state.counts {
        *counts.entry(i >> shift).or_insert(0) += c;
    }
    ExpState {
        scale: state.scale.min(scale),
        counts,
        ..state.clone()
    }
}

fn exp_delta(now: &ExpState, before: &ExpState) -> ExpState {
    let scale = now.scale.min(before.scale);
    let now = downscale(now, scale);
    let before = downscale(before, scale);
    let mut counts = now.counts.clone();
    for (i, c) in &before.counts {
        if let Some(slot) = counts.get_mut(i) {
            *slot = slot.saturating_sub(*c);
        }
    }
    counts.retain(|_, c| *c > 0);
    ExpState {
        scale,
        zero: now.zero.saturating_sub(before.zero),
        counts,
        count: now.count.saturating_sub(before.count),
        sum: now.sum - before.sum,
    }
}

fn exp_point(
    s: &ExpState,
    p: &HistogramPoint,
    minmax: bool,
    labels: &[(String, String)],
    start: u64,
    now: u64,
) -> ExponentialHistogramDataPoint {
    let positive = match (s.counts.keys().next(), s.counts.keys().last()) {
        (Some(&lo), Some(&hi)) => {
            let mut bucket_counts = vec![0u64; (hi - lo) as usize + 1];
            for (&i, &c) in &s.counts {
                bucket_counts[(i - lo) as usize] = c;
            }
            Some(Buckets {
                offset: lo,
                bucket_counts,
            })
        }
        _ => None,
    };
    ExponentialHistogramDataPoint {
        attributes: attrs(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: s.count,
        sum: Some(s.sum),
        scale: s.scale,
        zero_count: s.zero,
        positive,
        min: minmax.then_some(p.min),
        max: minmax.then_some(p.max),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::SeriesSnapshot;

    fn family(kind: MetricKind, value: SeriesValue) -> MetricFamilySnapshot {
        MetricFamilySnapshot {
            name: "m".into(),
            unit: "s".into(),
            description: "d".into(),
            kind,
            series: vec![SeriesSnapshot {
                labels: vec![("k".into(), "v".into())],
                value,
            }],
        }
    }

    fn point(counts: Vec<u64>, count: u64, sum: f64) -> HistogramPoint {
        HistogramPoint {
            count,
            sum,
            min: 0.1,
            max: 3.0,
            boundaries: vec![1.0, 2.0],
            cumulative_counts: counts,
            values: vec![(0.5, 1), (1.5, 1), (3.0, count.saturating_sub(2))],
        }
    }

    fn data(req: &ExportMetricsServiceRequest) -> &metric::Data {
        req.resource_metrics[0].scope_metrics[0].metrics[0]
            .data
            .as_ref()
            .unwrap()
    }

    #[test]
    fn delta_counters_subtract_the_previous_collection() {
        let mut e = MetricsEncoder::new(Temporality::Delta, HistogramAggregation::Explicit, 1);
        let r = Resource::default();
        let s = InstrumentationScope::default();
        e.encode(
            &[family(MetricKind::Counter, SeriesValue::Counter(5))],
            &r,
            &s,
            10,
        );
        let req = e.encode(
            &[family(MetricKind::Counter, SeriesValue::Counter(8))],
            &r,
            &s,
            20,
        );
        let metric::Data::Sum(sum) = data(&req) else {
            panic!("not a sum")
        };
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(3))
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 10);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Delta as i32
        );
    }

    #[test]
    fn cumulative_histograms_carry_per_bucket_counts() {
        let mut e = MetricsEncoder::new(Temporality::Cumulative, HistogramAggregation::Explicit, 1);
        let f = family(
            MetricKind::Histogram,
            SeriesValue::Histogram(point(vec![1, 2], 4, 6.0)),
        );
        let req = e.encode(
            &[f],
            &Resource::default(),
            &InstrumentationScope::default(),
            9,
        );
        let metric::Data::Histogram(h) = data(&req) else {
            panic!("not a histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(p.bucket_counts, vec![1, 1, 2]);
        assert_eq!(p.explicit_bounds, vec![1.0, 2.0]);
        assert_eq!((p.count, p.start_time_unix_nano), (4, 1));
    }

    #[test]
    fn exponential_buckets_hold_every_value_within_the_bucket_limit() {
        let values: Vec<(f64, u64)> = (0..2000).map(|i| (1e-4 * 1.01f64.powi(i), 1)).collect();
        let s = exp_state(&values, 0.0);
        assert!(s.counts.len() <= MAX_EXP_BUCKETS, "{}", s.counts.len());
        assert_eq!(s.counts.values().sum::<u64>(), 2000);
        for &(v, _) in values.iter().step_by(97) {
            let i = exp_index(v, s.scale);
            let base = 2f64.powf(2f64.powi(-s.scale));
            assert!(base.powi(i) < v * (1.0 + 1e-9) && v <= base.powi(i + 1) * (1.0 + 1e-9));
        }
    }

    #[test]
    fn exponential_delta_downscales_to_the_coarser_scale() {
        let before = exp_state(&[(1.0, 1), (1.1, 1)], 2.1);
        let now = exp_state(&[(1.0, 1), (1.1, 1), (1000.0, 3)], 3002.1);
        let d = exp_delta(&now, &before);
        assert_eq!(d.count, 3);
        assert_eq!(d.counts.values().sum::<u64>(), 3);
        assert!(d.scale <= before.scale);
    }
}

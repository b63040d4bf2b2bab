//! A key's reference set: what its normal answers look like, learned during warm-up, and the
//! calibrated scores new answers get against it (outlier, length, relevance).
//!
//! Scores are nonconformity values turned into conformal p-values against the reference's own
//! leave-one-out values, so "p ≤ 0.005" means the same thing on every key.

use serde::{Deserialize, Serialize};

use super::conformal::p_value;
use super::lexical;

/// Nearest neighbours in the kNN outlier score.
pub const K: usize = 10;

/// Weight of the length term next to the kNN term in the outlier nonconformity.
const LENGTH_WEIGHT: f64 = 0.5;
/// Weight of the lexical profile's robust z-score (`lexical.rs`) in the outlier
/// nonconformity, added to the embedding and length terms. Added, not the larger of the two
/// (as until commit 15ba364): a broken answer usually moves both a little — a loop sits near
/// its own answer in embedding space but is longer and repeats its word pairs, a shuffled
/// answer keeps its vector and its rates but not its sentence starts — and the sum lets that
/// evidence add up where the maximum kept only one part. With the same weights, the static
/// outlier AUROC on docs/EVALUATION.md's text kinds went from 0.94 to 0.96.
const LEXICAL_WEIGHT: f64 = 0.5;

/// One reference answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefPoint {
    /// Static-tier vector of the answer (unit length); empty when no model was loaded.
    #[serde(default)]
    pub vector: Vec<f32>,
    /// ln(1 + output tokens).
    pub log_len: f64,
    /// cos(prompt, answer), when both were embedded.
    #[serde(default)]
    pub relevance: Option<f64>,
    /// The answer's lexical profile ([`lexical::profile`]); empty in state files written
    /// before it existed (the outlier score then leaves it out for that key), 10 rates in
    /// those written before the word-order rates (the score then uses those 10).
    #[serde(default)]
    pub lexical: Vec<f32>,
}

/// The reference set and the sorted statistics derived from it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reference {
    pub points: Vec<RefPoint>,
    /// Target size; the reference is ready when `points.len() == size`.
    pub size: usize,
    /// Pinned references are never replaced automatically.
    #[serde(default)]
    pub pinned: bool,
    #[serde(default)]
    pub created_ms: u64,
    /// Scores of answers seen after warm-up, which join the calibration sets (online
    /// conformal: this keeps later p-values exactly uniform rather than only on average).
    #[serde(default)]
    absorbed: Absorbed,
    #[serde(skip)]
    stats: Option<Stats>,
}

/// Scores absorbed after warm-up. Two calibrations, because they answer different questions:
/// the flags ask "is this answer unusual next to the key's normal answers", so only answers
/// with no independent sign of trouble join theirs (no cheap flag, not cut by max tokens:
/// otherwise a burst of anomalies calibrates itself away — docs/EVALUATION.md); the drift
/// martingale needs p-values that are exactly uniform while nothing changes, so every scored
/// answer joins its own set. Neither excludes answers by their own p-value: that feeds back
/// (a thinner tail flags more, which thins it further) and was measured at 2–3× the designed
/// false-flag rate and 60 false drift incidents per 100k.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Absorbed {
    outlier: Vec<f64>,
    length: Vec<f64>,
    relevance: Vec<f64>,
    /// Every scored answer's outlier (or, without vectors, length) nonconformity: the drift
    /// calibration.
    #[serde(default)]
    drift: Vec<f64>,
}

/// Most scores in each calibration set; beyond it new scores are no longer added.
pub const CALIBRATION_CAP: usize = 5000;

#[derive(Debug, Clone, Default)]
struct Stats {
    knn_median: f64,
    knn_mad: f64,
    len_median: f64,
    len_mad: f64,
    /// Per-feature medians and floored MADs of the lexical profiles; empty when the points
    /// carry none.
    lex_median: Vec<f64>,
    lex_spread: Vec<f64>,
    /// Median and MAD of the reference answers' own lexical distances.
    lexd_median: f64,
    lexd_mad: f64,
    outlier_sorted: Vec<f64>,
    len_sorted: Vec<f64>,
    relevance_sorted: Vec<f64>,
    /// The drift calibration: the reference's own values plus every absorbed answer's.
    drift_sorted: Vec<f64>,
}

/// Scores of one answer against a ready reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefScores {
    /// Conformal p-value of the combined outlier nonconformity (small = unusual).
    pub outlier_p: Option<f64>,
    /// Two-sided conformal p-value of the answer length.
    pub length_p: f64,
    /// Lower-tail conformal p-value of prompt–answer relevance (small = off topic).
    pub relevance_p: Option<f64>,
    /// Mean cosine distance to the k nearest reference answers.
    pub knn_distance: Option<f64>,
    /// The p-value the drift martingale takes: the outlier (or, without vectors, the length)
    /// nonconformity against the calibration of every answer seen (see `Absorbed`).
    pub drift_p: f64,
    outlier_nc: Option<f64>,
    length_nc: f64,
    relevance_nc: Option<f64>,
}

impl Reference {
    /// An empty reference that becomes ready after `size` clean answers.
    pub fn new(size: usize, now_ms: u64) -> Self {
        Reference {
            size: size.max(K + 2),
            created_ms: now_ms,
            ..Default::default()
        }
    }

    /// True once warm-up is complete.
    pub fn is_ready(&self) -> bool {
        self.points.len() >= self.size
    }

    /// Adds a warm-up answer; computes the statistics when the set is complete.
    pub fn learn(&mut self, p: RefPoint) {
        if self.is_ready() {
            return;
        }
        self.points.push(p);
        if self.is_ready() {
            self.finalize();
        }
    }

    /// Recomputes derived statistics (after loading from disk).
    pub fn finalize(&mut self) {
        let n = self.points.len();
        let has_vectors = n > K && self.points.iter().all(|p| !p.vector.is_empty());
        let knn: Vec<f64> = if has_vectors {
            (0..n)
                .map(|i| {
                    knn_distance(
                        &self.points[i].vector,
                        self.points
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .map(|(_, p)| p.vector.as_slice()),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let lens: Vec<f64> = self.points.iter().map(|p| p.log_len).collect();
        let (knn_median, knn_mad) = median_mad(&knn);
        let (len_median, len_mad) = median_mad(&lens);
        // The rates every point has: all of them, or the first ten for points a version
        // before the word-order rates learned (new rates are only ever appended).
        let lex_len = self
            .points
            .iter()
            .map(|p| p.lexical.len())
            .min()
            .unwrap_or(0)
            .min(lexical::FEATURES);
        let (lex_median, lex_spread) = if lex_len > 0 {
            (0..lex_len)
                .map(|f| {
                    let col: Vec<f64> = self
                        .points
                        .iter()
                        .map(|p| f64::from(p.lexical[f]))
                        .collect();
                    let (m, mad) = median_mad(&col);
                    (m, mad.max(lexical::FLOORS[f]))
                })
                .unzip()
        } else {
            (Vec::new(), Vec::new())
        };
        let lex_d: Vec<f64> = if lex_median.is_empty() {
            Vec::new()
        } else {
            self.points
                .iter()
                .map(|p| lexical::distance(&p.lexical, &lex_median, &lex_spread))
                .collect()
        };
        let (lexd_median, lexd_mad) = median_mad(&lex_d);
        let mut stats = Stats {
            knn_median,
            knn_mad,
            len_median,
            len_mad,
            lex_median,
            lex_spread,
            lexd_median,
            lexd_mad,
            ..Default::default()
        };
        let mut outlier: Vec<f64> = if has_vectors {
            knn.iter()
                .zip(&self.points)
                .map(|(&d, p)| outlier_nonconformity(d, p.log_len, &p.lexical, &stats))
                .collect()
        } else {
            Vec::new()
        };
        outlier.sort_by(f64::total_cmp);
        let mut len_sorted: Vec<f64> = lens
            .iter()
            .map(|&l| (l - len_median).abs() / len_mad)
            .collect();
        len_sorted.sort_by(f64::total_cmp);
        // The drift statistic: outlier where there are vectors, length otherwise.
        let mut drift = if outlier.is_empty() {
            len_sorted.clone()
        } else {
            outlier.clone()
        };
        drift.extend_from_slice(&self.absorbed.drift);
        drift.sort_by(f64::total_cmp);
        let mut rel: Vec<f64> = self
            .points
            .iter()
            .filter_map(|p| p.relevance)
            .map(|r| -r)
            .collect();
        rel.sort_by(f64::total_cmp);
        for x in &self.absorbed.outlier {
            if !outlier.is_empty() {
                outlier.push(*x);
            }
        }
        len_sorted.extend_from_slice(&self.absorbed.length);
        rel.extend_from_slice(&self.absorbed.relevance);
        outlier.sort_by(f64::total_cmp);
        len_sorted.sort_by(f64::total_cmp);
        rel.sort_by(f64::total_cmp);
        stats.outlier_sorted = outlier;
        stats.len_sorted = len_sorted;
        stats.relevance_sorted = rel;
        stats.drift_sorted = drift;
        self.stats = Some(stats);
    }

    /// Adds a scored answer's values to the calibration sets (call after [`Reference::score`]
    /// for every scored answer while no drift is suspected). `clean`: no independent sign of
    /// trouble (no cheap flag, not cut); only clean answers calibrate the flags, every answer
    /// calibrates drift.
    pub fn absorb(&mut self, s: &RefScores, clean: bool) {
        let Some(st) = self.stats.as_mut() else {
            return;
        };
        let drift_nc = if st.outlier_sorted.is_empty() {
            Some(s.length_nc)
        } else {
            s.outlier_nc
        };
        if let Some(x) = drift_nc {
            if st.drift_sorted.len() < CALIBRATION_CAP {
                super::conformal::insert_sorted(&mut st.drift_sorted, x);
                self.absorbed.drift.push(x);
            }
        }
        if !clean {
            return;
        }
        if st.len_sorted.len() < CALIBRATION_CAP {
            super::conformal::insert_sorted(&mut st.len_sorted, s.length_nc);
            self.absorbed.length.push(s.length_nc);
        }
        if let Some(x) = s.outlier_nc {
            if !st.outlier_sorted.is_empty() && st.outlier_sorted.len() < CALIBRATION_CAP {
                super::conformal::insert_sorted(&mut st.outlier_sorted, x);
                self.absorbed.outlier.push(x);
            }
        }
        if let Some(x) = s.relevance_nc {
            if st.relevance_sorted.len() < CALIBRATION_CAP {
                super::conformal::insert_sorted(&mut st.relevance_sorted, x);
                self.absorbed.relevance.push(x);
            }
        }
    }

    /// Drops the absorbed outlier and drift calibration scores (a state file whose outlier
    /// score was computed another way); the reference answers themselves stay.
    pub fn forget_outlier_calibration(&mut self) {
        self.absorbed.outlier.clear();
        self.absorbed.drift.clear();
    }

    /// Scores an answer. `None` until the reference is ready.
    /// `lexical` is the answer's [`lexical::profile`].
    pub fn score(
        &self,
        vector: Option<&[f32]>,
        log_len: f64,
        lexical: &[f32],
        relevance: Option<f64>,
        u: f64,
    ) -> Option<RefScores> {
        let s = self.stats.as_ref()?;
        let len_nc = (log_len - s.len_median).abs() / s.len_mad;
        let length_p = p_value(&s.len_sorted, len_nc, u);
        let (outlier_p, knn, outlier_nc) = match vector {
            Some(v) if !v.is_empty() && !s.outlier_sorted.is_empty() => {
                let d = knn_distance(v, self.points.iter().map(|p| p.vector.as_slice()));
                let nc = outlier_nonconformity(d, log_len, lexical, s);
                (Some(p_value(&s.outlier_sorted, nc, u)), Some(d), Some(nc))
            }
            _ => (None, None, None),
        };
        let drift_p = match outlier_nc {
            Some(nc) => p_value(&s.drift_sorted, nc, u),
            None if s.outlier_sorted.is_empty() => p_value(&s.drift_sorted, len_nc, u),
            // Vectors in the reference but none for this answer: no drift evidence either way.
            None => u,
        };
        let (relevance_p, relevance_nc) = match relevance {
            Some(r) if s.relevance_sorted.len() >= K => {
                (Some(p_value(&s.relevance_sorted, -r, u)), Some(-r))
            }
            _ => (None, None),
        };
        Some(RefScores {
            outlier_p,
            length_p,
            relevance_p,
            knn_distance: knn,
            drift_p,
            outlier_nc,
            length_nc: len_nc,
            relevance_nc,
        })
    }
}

/// kNN distance, length and the lexical profile's distance, summed; each in units of the
/// reference's own spread.
fn outlier_nonconformity(knn: f64, log_len: f64, lex: &[f32], s: &Stats) -> f64 {
    let zk = (knn - s.knn_median) / s.knn_mad;
    let zl = (log_len - s.len_median).abs() / s.len_mad;
    let base = zk + LENGTH_WEIGHT * zl;
    if s.lex_median.is_empty() || lex.len() < s.lex_median.len() {
        return base;
    }
    // A reference learned with fewer rates compares those (the profile's first ones).
    let d = lexical::distance(&lex[..s.lex_median.len()], &s.lex_median, &s.lex_spread);
    let zx = (d - s.lexd_median) / s.lexd_mad;
    base + LEXICAL_WEIGHT * zx
}

/// Median and (scaled, floored) median absolute deviation.
fn median_mad(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 1.0);
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let med = v[v.len() / 2];
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    dev.sort_by(f64::total_cmp);
    let mad = dev[dev.len() / 2] * 1.4826;
    (med, mad.max(1e-3))
}

/// Mean cosine distance from `v` to its `K` nearest vectors (all unit length).
pub fn knn_distance<'a>(v: &[f32], others: impl Iterator<Item = &'a [f32]>) -> f64 {
    let mut best = [f32::NEG_INFINITY; K];
    for o in others {
        let c = dot(v, o);
        if c > best[K - 1] {
            let mut i = K - 1;
            while i > 0 && best[i - 1] < c {
                best[i] = best[i - 1];
                i -= 1;
            }
            best[i] = c;
        }
    }
    let found: Vec<f32> = best.iter().copied().filter(|c| c.is_finite()).collect();
    if found.is_empty() {
        return 1.0;
    }
    found.iter().map(|&c| 1.0 - f64::from(c)).sum::<f64>() / found.len() as f64
}

/// Dot product (cosine for unit vectors). The kNN score takes one per reference answer, so
/// this is the static tier's hottest loop: AVX2 where the CPU has it (the default x86-64
/// target only has SSE2), chosen at run time.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// [`dot`] with AVX2/FMA intrinsics: four 8-wide accumulators (auto-vectorisation of the
/// portable loop shuffled more than it multiplied).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): i + 32 <= n, resp. i + 8 <= n, and both slices hold n values.
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * j));
            let y = _mm256_loadu_ps(pb.add(i + 8 * j));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        let x = _mm256_loadu_ps(pa.add(i));
        let y = _mm256_loadu_ps(pb.add(i));
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
    let mut s: f32 = lanes.iter().sum();
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// 32 independent lanes (four 8-wide registers), so the compiler vectorises the reduction
/// and the adds do not wait on each other.
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = tail;
    for part in acc.chunks_exact(8) {
        s += part.iter().sum::<f32>();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_sum_at_every_length() {
        let mut u = Uniforms::new(3);
        for n in (0..70).chain([383, 384, 385]) {
            let a: Vec<f32> = (0..n).map(|_| u.next_f64() as f32 - 0.5).collect();
            let b: Vec<f32> = (0..n).map(|_| u.next_f64() as f32 - 0.5).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-4, "n = {n}");
            assert!(
                (f64::from(dot_portable(&a, &b)) - plain).abs() < 1e-4,
                "n = {n}"
            );
        }
        // Unequal lengths: the common prefix.
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]), 3.0);
    }
    use crate::semantic::conformal::Uniforms;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.into_iter().map(|x| x / n).collect()
    }

    fn around(center: &[f32], u: &mut Uniforms, noise: f32) -> Vec<f32> {
        unit(
            center
                .iter()
                .map(|c| c + noise * (u.next_f64() as f32 - 0.5))
                .collect(),
        )
    }

    /// A reference whose points carry the first 10 rates only (a version-1 state file) still
    /// scores answers by those rates.
    #[test]
    fn a_reference_of_ten_rate_profiles_keeps_its_lexical_term() {
        let mut u = Uniforms::new(9);
        let center: Vec<f32> = (0..16).map(|i| (i as f32).cos()).collect();
        let prose = "The parser reads the whole file. It returns a list of the records it found.";
        let normal = lexical::profile(prose);
        let mut r = Reference::new(200, 0);
        for _ in 0..200 {
            let mut lex = normal.to_vec();
            for x in &mut lex {
                *x += 0.01 * (u.next_f64() as f32 - 0.5);
            }
            lex.truncate(10);
            r.learn(RefPoint {
                vector: around(&center, &mut u, 0.2),
                log_len: 3.0,
                relevance: None,
                lexical: lex,
            });
        }
        let v = around(&center, &mut u, 0.2);
        let looped = lexical::profile(&"the answer is yes ".repeat(20));
        let p = |lex: &[f32]| {
            r.score(Some(&v), 3.0, lex, None, 0.5)
                .and_then(|s| s.outlier_p)
                .expect("scored")
        };
        assert!(p(&looped) < p(&normal), "{} vs {}", p(&looped), p(&normal));
        assert!(p(&looped) <= 0.01);
    }

    #[test]
    fn normal_answers_score_uniform_and_strangers_score_tiny() {
        let mut u = Uniforms::new(5);
        let center: Vec<f32> = (0..16).map(|i| (i as f32).sin()).collect();
        let mut r = Reference::new(200, 0);
        for _ in 0..200 {
            r.learn(RefPoint {
                vector: around(&center, &mut u, 0.8),
                log_len: 5.0 + u.next_f64(),
                relevance: Some(0.5),
                lexical: Vec::new(),
            });
        }
        assert!(r.is_ready());
        let mut small = 0;
        for _ in 0..1000 {
            let v = around(&center, &mut u, 0.8);
            let s = r
                .score(Some(&v), 5.0 + u.next_f64(), &[], Some(0.5), u.next_f64())
                .map(|s| s.outlier_p.unwrap_or(1.0))
                .unwrap_or(1.0);
            if s <= 0.01 {
                small += 1;
            }
        }
        assert!(
            small < 30,
            "about 1% of normal answers at p ≤ 0.01: {small}"
        );
        let far: Vec<f32> = unit((0..16).map(|i| (i as f32 * 2.3).cos()).collect());
        let s = r
            .score(Some(&far), 5.5, &[], Some(0.5), 0.5)
            .and_then(|s| s.outlier_p);
        assert!(s.is_some_and(|p| p <= 0.01), "{s:?}");
        let s = r.score(
            Some(&around(&center, &mut u, 0.8)),
            1.0,
            &[],
            Some(-0.9),
            0.5,
        );
        assert!(s.is_some_and(|s| s.length_p <= 0.01 && s.relevance_p.is_some_and(|p| p <= 0.01)));
    }

    /// An answer whose embedding and length are ordinary but whose text is not (a traceback,
    /// a cut sentence) is an outlier by its lexical profile.
    #[test]
    fn lexical_profile_makes_ordinary_looking_vectors_with_odd_text_outliers() {
        let mut u = Uniforms::new(9);
        let center: Vec<f32> = (0..16).map(|i| (i as f32).cos()).collect();
        let prose = [
            "The json module encodes Python objects as JSON text and decodes them again.",
            "Use dumps() for a string and dump() for a file; both take indent and sort_keys.",
            "A decoder turns JSON text back into dictionaries, lists, strings and numbers.",
            "The shutil module copies, moves and removes whole trees of files and folders.",
        ];
        let mut r = Reference::new(200, 0);
        for i in 0..200 {
            r.learn(RefPoint {
                vector: around(&center, &mut u, 0.8),
                log_len: 3.0,
                relevance: None,
                lexical: crate::semantic::lexical::profile(prose[i % prose.len()]).to_vec(),
            });
        }
        let p_of = |text: &str, u: &mut Uniforms| {
            let lex = crate::semantic::lexical::profile(text);
            r.score(Some(&around(&center, u, 0.8)), 3.0, &lex, None, 0.5)
                .and_then(|s| s.outlier_p)
                .unwrap_or(1.0)
        };
        assert!(p_of(prose[1], &mut u) > 0.05);
        let trace = "Traceback (most recent call last):\n  File \"x.py\", line 3, in <module>\n\
                     KeyError: 'name'";
        assert!(p_of(trace, &mut u) <= 0.01, "{}", p_of(trace, &mut u));
        assert!(p_of("Use dumps() for a string and dump() for a fi", &mut u) <= 0.01);
    }

    /// Absorbing every clean answer, whatever its own p-value, keeps the flags at their
    /// designed rate and the drift p-values uniform on stationary data (excluding answers by
    /// their own p-value thinned the tail and fed back: 2-3x the rate, EVALUATION.md).
    #[test]
    fn absorbing_stationary_answers_keeps_flag_rate_and_drift_p_values_calibrated() {
        let mut u = Uniforms::new(21);
        let center: Vec<f32> = (0..16).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut r = Reference::new(200, 0);
        for _ in 0..200 {
            r.learn(RefPoint {
                vector: around(&center, &mut u, 0.8),
                log_len: 5.0 + u.next_f64(),
                relevance: None,
                lexical: Vec::new(),
            });
        }
        let n = 4000;
        let (mut flagged, mut drift_small) = (0, 0);
        for _ in 0..n {
            let v = around(&center, &mut u, 0.8);
            let s = r
                .score(Some(&v), 5.0 + u.next_f64(), &[], None, u.next_f64())
                .expect("ready");
            if s.outlier_p.is_some_and(|p| p <= 0.005) {
                flagged += 1;
            }
            if s.drift_p <= 0.05 {
                drift_small += 1;
            }
            r.absorb(&s, true);
        }
        // Expected 20 flags (0.5%) and 200 drift p-values ≤ 0.05; bounds are ~3 sigma.
        assert!(
            flagged <= 36,
            "outlier flags on stationary answers: {flagged} of {n}"
        );
        assert!(
            (160..=245).contains(&drift_small),
            "drift p ≤ 0.05: {drift_small} of {n}"
        );
    }

    #[test]
    fn knn_picks_the_nearest() {
        let a = unit(vec![1.0, 0.0]);
        let others = [unit(vec![1.0, 0.0]), unit(vec![0.0, 1.0])];
        let d = knn_distance(&a, others.iter().map(|v| v.as_slice()));
        assert!((d - 0.5).abs() < 1e-6);
    }
}

//! Topic drift by maximum mean discrepancy: is a window of recent answers drawn from the same
//! distribution as the key's reference? The per-answer outlier martingale misses shifts that
//! keep every single answer plausible (same length, same style, another topic); a test on the
//! window as a whole sees them. Used on transformer vectors (replay, and the live transformer
//! tier's uniform sample), where topic is what the embedding encodes best.
//!
//! The kernel is linear on unit vectors, so the statistic is the squared distance between the
//! window's mean embedding and the reference's. Its null distribution is not assumed: each test
//! is calibrated by permuting the pooled reference and window, giving an exact permutation
//! p-value. An alarm needs [`CONFIRM`] consecutive disjoint windows at the smallest p-value the
//! permutations can give, which bounds the false-alarm rate by design (see [`designed_false_alarms_per_100k`]).

use serde::{Deserialize, Serialize};

use super::conformal::Uniforms;

/// Answers per test window.
pub const WINDOW: usize = 32;
/// Permutations per test; the smallest attainable p-value is 1 / (PERMUTATIONS + 1).
pub const PERMUTATIONS: usize = 499;
/// Consecutive windows at the smallest p-value that raise an alarm.
pub const CONFIRM: u32 = 2;
/// Once p exceeds this in a test, the permutation loop stops early (the answer is "no drift").
const EARLY_STOP_P: f64 = 0.1;
/// Consecutive windows with p above this that clear an alarm.
const CLEAR_P: f64 = 0.05;

/// The false alarms per 100k answers the design allows under no drift: windows per 100k times
/// the chance of `CONFIRM` consecutive windows at the minimum p-value.
pub fn designed_false_alarms_per_100k() -> f64 {
    let p_min = 1.0 / (PERMUTATIONS as f64 + 1.0);
    (100_000.0 / WINDOW as f64) * p_min.powi(CONFIRM as i32)
}

/// One window's test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MmdTest {
    /// Squared distance between the window's and the reference's mean embeddings.
    pub statistic: f64,
    /// Permutation p-value (an estimate above [`EARLY_STOP_P`], where the loop stopped early).
    pub p: f64,
    /// Consecutive windows at the minimum p-value, this one included.
    pub streak: u32,
    /// The monitor went into alarm with this window.
    pub alarm: bool,
    /// The monitor left alarm with this window.
    pub clear: bool,
    /// Windows this monitor has tested, this one included.
    pub number: u64,
}

/// A key's MMD drift monitor: fills a window, tests it against the reference, starts over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MmdMonitor {
    /// The window being filled; not saved (a restart starts a fresh window).
    #[serde(skip)]
    window: Vec<Vec<f32>>,
    streak: u32,
    calm: u32,
    /// In alarm: drift found and not yet cleared.
    pub open: bool,
    /// Windows tested so far.
    pub tests: u64,
}

impl MmdMonitor {
    /// Adds one answer's vector; when the window is full, tests it against `reference` (the
    /// key's warm-up vectors) and returns the outcome. `seed` makes the permutations
    /// reproducible (replay gives the same answers every run).
    pub fn push<'a>(
        &mut self,
        vector: &[f32],
        reference: impl Iterator<Item = &'a [f32]>,
        seed: u64,
    ) -> Option<MmdTest> {
        if vector.is_empty() {
            return None;
        }
        self.window.push(vector.to_vec());
        if self.window.len() < WINDOW {
            return None;
        }
        let reference: Vec<&[f32]> = reference.filter(|r| r.len() == vector.len()).collect();
        let window = std::mem::take(&mut self.window);
        if reference.len() < WINDOW {
            return None;
        }
        let (statistic, p) = permutation_test(&reference, &window, seed);
        self.tests += 1;
        let p_min = 1.0 / (PERMUTATIONS as f64 + 1.0);
        if p <= p_min {
            self.streak += 1;
            self.calm = 0;
        } else {
            self.streak = 0;
            if p > CLEAR_P {
                self.calm += 1;
            } else {
                self.calm = 0;
            }
        }
        let alarm = !self.open && self.streak >= CONFIRM;
        let clear = self.open && self.calm >= CONFIRM;
        if alarm {
            self.open = true;
            self.calm = 0;
        }
        if clear {
            self.open = false;
            self.streak = 0;
        }
        Some(MmdTest {
            statistic,
            p,
            streak: self.streak,
            alarm,
            clear,
            number: self.tests,
        })
    }

    /// Starts over (the key's reference was reset).
    pub fn reset(&mut self) {
        *self = MmdMonitor::default();
    }
}

/// The linear-kernel MMD² of `window` against `reference` and its permutation p-value.
pub fn permutation_test(reference: &[&[f32]], window: &[Vec<f32>], seed: u64) -> (f64, f64) {
    let dim = window.first().map(Vec::len).unwrap_or(0);
    let pooled: Vec<&[f32]> = reference
        .iter()
        .copied()
        .chain(window.iter().map(Vec::as_slice))
        .collect();
    let n = pooled.len();
    let w = window.len();
    if w == 0 || n <= w || dim == 0 {
        return (0.0, 1.0);
    }
    let mut total = vec![0f64; dim];
    for v in &pooled {
        for (t, x) in total.iter_mut().zip(v.iter()) {
            *t += f64::from(*x);
        }
    }
    let stat_of = |members: &mut dyn Iterator<Item = usize>, scratch: &mut Vec<f64>| -> f64 {
        scratch.iter_mut().for_each(|s| *s = 0.0);
        for i in members {
            for (s, x) in scratch.iter_mut().zip(pooled[i].iter()) {
                *s += f64::from(*x);
            }
        }
        let (wn, rn) = (w as f64, (n - w) as f64);
        scratch
            .iter()
            .zip(total.iter())
            .map(|(sw, t)| {
                let d = sw / wn - (t - sw) / rn;
                d * d
            })
            .sum()
    };
    let mut scratch = vec![0f64; dim];
    let observed = stat_of(&mut (n - w..n), &mut scratch);
    let mut u = Uniforms::new(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    let mut at_least = 0usize;
    let mut done = 0usize;
    for _ in 0..PERMUTATIONS {
        // Partial Fisher–Yates: the first w slots become a uniform random subset.
        for i in 0..w {
            let j = i + ((u.next_f64() * (n - i) as f64) as usize).min(n - i - 1);
            idx.swap(i, j);
        }
        let s = stat_of(&mut idx[..w].iter().copied(), &mut scratch);
        done += 1;
        if s >= observed {
            at_least += 1;
        }
        if (at_least + 1) as f64 / (PERMUTATIONS as f64 + 1.0) > EARLY_STOP_P {
            break;
        }
    }
    let p = if done == PERMUTATIONS {
        (at_least + 1) as f64 / (PERMUTATIONS as f64 + 1.0)
    } else {
        (at_least + 1) as f64 / (done as f64 + 1.0)
    };
    (observed, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vectors around `centre` with noise; deterministic.
    fn cloud(centre: &[f32], n: usize, noise: f32, seed: u64) -> Vec<Vec<f32>> {
        let mut u = Uniforms::new(seed);
        (0..n)
            .map(|_| {
                let mut v: Vec<f32> = centre
                    .iter()
                    .map(|c| c + noise * (u.next_f64() as f32 - 0.5))
                    .collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect()
    }

    fn centre(dim: usize, hot: usize) -> Vec<f32> {
        (0..dim).map(|i| if i == hot { 1.0 } else { 0.1 }).collect()
    }

    #[test]
    fn same_distribution_never_alarms_over_many_windows() {
        let c = centre(16, 0);
        let reference = cloud(&c, 200, 1.5, 1);
        let refs: Vec<&[f32]> = reference.iter().map(Vec::as_slice).collect();
        let mut m = MmdMonitor::default();
        let stream = cloud(&c, WINDOW * 100, 1.5, 2);
        let mut alarms = 0;
        for (i, v) in stream.iter().enumerate() {
            if let Some(t) = m.push(v, refs.iter().copied(), i as u64) {
                alarms += u32::from(t.alarm);
            }
        }
        assert_eq!(m.tests, 100);
        assert_eq!(alarms, 0);
    }

    #[test]
    fn a_topic_shift_alarms_within_two_windows_and_clears_after_it_ends() {
        let reference = cloud(&centre(16, 0), 200, 1.5, 1);
        let refs: Vec<&[f32]> = reference.iter().map(Vec::as_slice).collect();
        let mut m = MmdMonitor::default();
        let shifted = cloud(&centre(16, 5), WINDOW * CONFIRM as usize, 1.5, 3);
        let mut alarm_at = None;
        for (i, v) in shifted.iter().enumerate() {
            if let Some(t) = m.push(v, refs.iter().copied(), i as u64) {
                if t.alarm {
                    alarm_at = Some(i + 1);
                }
            }
        }
        assert_eq!(alarm_at, Some(WINDOW * CONFIRM as usize));
        assert!(m.open);
        let back = cloud(&centre(16, 0), WINDOW * 4, 1.5, 4);
        let mut cleared = false;
        for (i, v) in back.iter().enumerate() {
            if let Some(t) = m.push(v, refs.iter().copied(), 1000 + i as u64) {
                cleared |= t.clear;
            }
        }
        assert!(cleared);
        assert!(!m.open);
    }

    #[test]
    fn permutation_p_value_is_minimal_for_a_clear_shift_and_large_for_none() {
        let reference = cloud(&centre(8, 0), 100, 1.0, 5);
        let refs: Vec<&[f32]> = reference.iter().map(Vec::as_slice).collect();
        let far = cloud(&centre(8, 3), WINDOW, 1.0, 6);
        let (s_far, p_far) = permutation_test(&refs, &far, 7);
        let near = cloud(&centre(8, 0), WINDOW, 1.0, 8);
        let (s_near, p_near) = permutation_test(&refs, &near, 9);
        assert!(s_far > s_near);
        assert!(p_far <= 1.0 / (PERMUTATIONS as f64 + 1.0));
        assert!(p_near > 0.01, "p {p_near}");
    }

    #[test]
    fn designed_rate_is_below_one_per_100k() {
        assert!(designed_false_alarms_per_100k() < 1.0);
    }

    #[test]
    fn empty_or_mismatched_vectors_are_ignored() {
        let mut m = MmdMonitor::default();
        let reference = [vec![1.0f32, 0.0]];
        for i in 0..WINDOW * 2 {
            assert!(m
                .push(&[], reference.iter().map(Vec::as_slice), i as u64)
                .is_none());
        }
        // A reference smaller than a window cannot calibrate a test.
        for i in 0..WINDOW {
            assert!(m
                .push(&[0.0, 1.0], reference.iter().map(Vec::as_slice), i as u64)
                .is_none());
        }
    }
}

//! Calibrated statistics: conformal p-values against a reference set, and a
//! Shiryaev–Roberts change detector driven by them.
//!
//! Why this shape: a fixed threshold on a raw score ("cosine distance > 0.4") has an unknown
//! false-alarm rate that differs per key, per model and per tier. A conformal p-value turns any
//! score into a uniform number under "nothing changed", so one threshold means the same thing
//! everywhere; the change detector then bounds false alarms by its average run length.

/// Smoothed conformal p-value of `score` among `reference` scores (higher = stranger):
/// `(#{r > s} + u·(#{r == s} + 1)) / (n + 1)`, with `u` in [0, 1) supplied by the caller so
/// replays are deterministic. Uniform on (0, 1] when `score` is exchangeable with `reference`.
pub fn p_value(reference_sorted: &[f64], score: f64, u: f64) -> f64 {
    let n = reference_sorted.len();
    // reference_sorted ascending: count of r > score and r == score via two binary searches.
    let lo = reference_sorted.partition_point(|&r| r < score);
    let hi = reference_sorted.partition_point(|&r| r <= score);
    let greater = n - hi;
    let equal = hi - lo;
    (greater as f64 + u.clamp(0.0, 1.0) * (equal as f64 + 1.0)) / (n as f64 + 1.0)
}

/// Inserts `x` into an ascending vector.
pub fn insert_sorted(v: &mut Vec<f64>, x: f64) {
    let i = v.partition_point(|&r| r < x);
    v.insert(i, x);
}

/// The mixture power betting function `∫₀¹ ε p^(ε−1) dε`: large for small p, below 1 for
/// p near 1, and its mean under a uniform p is exactly 1 (which keeps the detector honest);
/// p is clamped at 1e-12, which lowers the mean to about 0.964 (conservative).
pub fn mixture_bet(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0);
    if (1.0 - p).abs() < 1e-9 {
        return 0.5;
    }
    let lp = p.ln();
    (p * lp - p + 1.0) / (p * lp * lp)
}

/// Shiryaev–Roberts statistic `R_n = (1 + R_{n−1})·bet(p_n)`. Under no change its expectation
/// grows by exactly 1 per observation, so alarming at `R ≥ A` gives an average run length to
/// a false alarm of at least `A` observations: `A = 100_000` means at most about one false
/// alarm per 100k responses by design, whatever the data look like.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ShiryaevRoberts {
    r: f64,
}

impl ShiryaevRoberts {
    /// Feeds one p-value; returns the new statistic.
    pub fn update(&mut self, p: f64) -> f64 {
        self.r = ((1.0 + self.r) * mixture_bet(p)).min(1e300);
        self.r
    }

    /// The current statistic.
    pub fn value(&self) -> f64 {
        self.r
    }

    /// Starts over (after an alarm is raised or the reference changes).
    pub fn reset(&mut self) {
        self.r = 0.0;
    }
}

/// One-sided binomial tail `P(X ≥ k)` for `X ~ Bin(n, p)`, for rate monitors ("is this many
/// blanks in the window surprising given the key's normal blank rate?").
pub fn binomial_sf(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    // The first term from a table of ln(n!), the rest by the pmf's ratio recurrence: one exp
    // and no log per term (the engine evaluates this per monitor per answer).
    let ln_p = p.ln();
    let ln_q = (1.0 - p).ln();
    let ratio = p / (1.0 - p);
    let mut ln_pmf = ln_choose(n, k) + k as f64 * ln_p + (n - k) as f64 * ln_q;
    let mut total = 0.0f64;
    for i in k..=n {
        let pmf = ln_pmf.exp();
        total += pmf;
        // Past the mode the terms only shrink: stop once they no longer count.
        if pmf < total * 1e-17 && i as f64 >= n as f64 * p {
            break;
        }
        if i < n {
            ln_pmf += ((n - i) as f64 / (i + 1) as f64 * ratio).ln();
        }
    }
    total.min(1.0)
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// Entries in the ln(n!) table; windows are far smaller, larger n use Stirling's series.
const LN_FACTORIALS: usize = 4096;

fn ln_factorial(n: u64) -> f64 {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut acc = 0.0f64;
        let mut t = Vec::with_capacity(LN_FACTORIALS);
        t.push(0.0);
        for i in 1..LN_FACTORIALS {
            acc += (i as f64).ln();
            t.push(acc);
        }
        t
    });
    match table.get(n as usize) {
        Some(v) => *v,
        None => {
            // Stirling's series; error below 1e-12 for n ≥ 4096.
            let x = n as f64;
            x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
                - 1.0 / (360.0 * x * x * x)
        }
    }
}

/// A deterministic stream of uniforms in [0, 1) from a seed (splitmix64), for smoothed
/// p-values that replay identically.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Uniforms(u64);

impl Uniforms {
    /// A stream seeded from `seed`.
    pub fn new(seed: u64) -> Self {
        Uniforms(seed)
    }

    /// The next uniform.
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_p_values_are_uniform_under_exchangeability() {
        // Each score joins the calibration set after its p-value is computed (online
        // conformal): the p-values are then i.i.d. uniform, not only on average over
        // calibration sets.
        let mut u = Uniforms::new(1);
        let mut reference: Vec<f64> = (0..200).map(|_| u.next_f64()).collect();
        reference.sort_by(f64::total_cmp);
        let n = 20_000;
        let mut below = [0usize; 10];
        for _ in 0..n {
            let s = u.next_f64();
            let p = p_value(&reference, s, u.next_f64());
            insert_sorted(&mut reference, s);
            below[((p * 10.0) as usize).min(9)] += 1;
        }
        for b in below {
            let frac = b as f64 / n as f64;
            assert!((frac - 0.1).abs() < 0.02, "{below:?}");
        }
    }

    #[test]
    fn extreme_scores_get_small_p_values() {
        let reference: Vec<f64> = (0..99).map(|i| i as f64).collect();
        assert!(p_value(&reference, 1e9, 0.5) <= 0.01);
        assert!(p_value(&reference, -1.0, 0.5) > 0.99);
    }

    #[test]
    fn mixture_bet_has_mean_one_under_uniform_p() {
        // ∫₀¹ b(p) dp with p = e^(−t): ∫₀^∞ b(e^(−t)) e^(−t) dt, on a log grid up to t = 1e7
        // (the tail beyond T contributes about 1/T).
        let mut total = 0.0;
        let steps = 200_000;
        let (lo, hi) = (1e-9f64.ln(), 1e7f64.ln());
        for i in 0..steps {
            let a = (lo + (hi - lo) * i as f64 / steps as f64).exp();
            let b = (lo + (hi - lo) * (i + 1) as f64 / steps as f64).exp();
            let t = 0.5 * (a + b);
            total += mixture_bet((-t).exp()) * (-t).exp() * (b - a);
        }
        // Exactly 1 without the clamp at p = 1e-12; the clamp removes ∫_{27.6}^∞ dt/t² ≈ 0.036,
        // which only makes the detector more conservative (a supermartingale).
        assert!(total <= 1.0 && total > 0.95, "{total}");
    }

    #[test]
    fn shiryaev_roberts_stays_low_without_change_and_alarms_on_change() {
        let mut u = Uniforms::new(9);
        let mut sr = ShiryaevRoberts::default();
        let mut max_null = 0.0f64;
        for _ in 0..20_000 {
            max_null = max_null.max(sr.update(u.next_f64()));
        }
        assert!(
            max_null < 1e5,
            "no false alarm at A=1e5 in 20k null steps: {max_null}"
        );
        sr.reset();
        let mut steps = 0;
        while sr.update(0.004) < 1e5 {
            steps += 1;
        }
        assert!(
            steps < 15,
            "a clear change is found within a few responses: {steps}"
        );
    }

    #[test]
    fn binomial_tail_matches_known_values() {
        assert!((binomial_sf(1, 10, 0.1) - (1.0 - 0.9f64.powi(10))).abs() < 1e-9);
        assert!(binomial_sf(10, 10, 0.5) - 0.5f64.powi(10) < 1e-12);
        assert_eq!(binomial_sf(0, 5, 0.3), 1.0);
        // Against the direct sum in log space, inside and past the ln(n!) table.
        let direct = |k: u64, n: u64, p: f64| -> f64 {
            let lf = |m: u64| (1..=m).map(|i| (i as f64).ln()).sum::<f64>();
            (k..=n)
                .map(|i| {
                    (lf(n) - lf(i) - lf(n - i)
                        + i as f64 * p.ln()
                        + (n - i) as f64 * (1.0 - p).ln())
                    .exp()
                })
                .sum::<f64>()
                .min(1.0)
        };
        for (k, n, p) in [
            (3, 50, 0.01),
            (12, 50, 0.2),
            (1, 200, 0.3),
            (40, 5000, 0.005),
            (2600, 5000, 0.5),
        ] {
            let (got, want) = (binomial_sf(k, n, p), direct(k, n, p));
            assert!(
                (got - want).abs() <= 1e-9 * want.max(1e-300) + 1e-15,
                "{k} {n} {p}: {got} vs {want}"
            );
        }
    }
}

//! A function's demand as one gateway sees it: its arrivals counted in short windows, and
//! where their rate is heading. Pure, with the time passed in.
//!
//! Pre-warming on load alone reacts late: by the time the warm nodes are half busy, a
//! steep ramp fills them before a new node is ready. So the gateway projects the arrival
//! rate one warm-up ahead ([`PREWARM_LEAD_MS`]) by a least-squares line through the last
//! complete windows, and scales the warm nodes' load by the projected growth
//! ([`Demand::growth`]) before comparing it with the pre-warm threshold
//! ([`crate::routing::prewarm_target`]). A rising rate warms the next node early; a
//! falling one holds back a warm-up the load alone would have asked for.

/// Length of one counting window, in milliseconds.
pub const WINDOW_MS: u64 = 250;
/// Windows kept: the current one (still counting) and seven complete ones, 1.75 s.
pub const WINDOWS: usize = 8;
/// How far ahead the rate is projected, in milliseconds: about what a warm-up takes at
/// worst (a 1 MiB module compiles in about a second; an artifact from a peer loads in a
/// few milliseconds).
pub const PREWARM_LEAD_MS: u64 = 1_000;
/// Bounds of the growth factor: a projection is a guess, and a few windows of noise
/// must not make it an extreme one.
const GROWTH: (f64, f64) = (0.25, 4.0);
/// Below this fitted rate (requests a second) there is too little to project from.
const MIN_RATE: f64 = 4.0;

/// Arrivals of one function in the last [`WINDOWS`] windows.
#[derive(Debug, Clone, Default)]
pub struct Demand {
    /// The index (time / window) of the newest window.
    newest: u64,
    /// Arrivals per window, oldest first; the last is the current one.
    counts: [u32; WINDOWS],
}

impl Demand {
    /// Counts one arrival at `now_ms`.
    pub fn record(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.counts[WINDOWS - 1] = self.counts[WINDOWS - 1].saturating_add(1);
    }

    /// The arrival rate projected [`PREWARM_LEAD_MS`] ahead of `now_ms`, over the rate
    /// now (both from the line through the complete windows), within [0.25, 4]; 1 when
    /// there is too little traffic to tell.
    pub fn growth(&mut self, now_ms: u64) -> f64 {
        self.advance(now_ms);
        let complete = &self.counts[..WINDOWS - 1];
        let n = complete.len() as f64;
        let window_s = WINDOW_MS as f64 / 1e3;
        // x: the middle of each window in seconds, y: its rate.
        let points = complete
            .iter()
            .enumerate()
            .map(|(i, &c)| ((i as f64 + 0.5) * window_s, f64::from(c) / window_s));
        let (sx, sy, sxx, sxy) = points.fold((0.0, 0.0, 0.0, 0.0), |(sx, sy, sxx, sxy), (x, y)| {
            (sx + x, sy + y, sxx + x * x, sxy + x * y)
        });
        let slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
        let intercept = (sy - slope * sx) / n;
        let end = n * window_s;
        let now = intercept + slope * end;
        if now < MIN_RATE {
            return 1.0;
        }
        let ahead = now + slope * (PREWARM_LEAD_MS as f64 / 1e3);
        (ahead / now).clamp(GROWTH.0, GROWTH.1)
    }

    /// Moves the windows on to the one holding `now_ms`.
    fn advance(&mut self, now_ms: u64) {
        let window = now_ms / WINDOW_MS;
        let passed = window.saturating_sub(self.newest);
        if passed == 0 {
            return;
        }
        let shift = usize::try_from(passed).unwrap_or(WINDOWS).min(WINDOWS);
        self.counts.rotate_left(shift);
        for c in &mut self.counts[WINDOWS - shift..] {
            *c = 0;
        }
        self.newest = window;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rate(t)` requests a second (t in seconds) for `seconds`, in 10 ms steps,
    /// from `start_ms`; the time it ended.
    fn feed(d: &mut Demand, start_ms: u64, seconds: f64, rate: impl Fn(f64) -> f64) -> u64 {
        let mut owed = 0.0;
        let steps = (seconds * 100.0) as u64;
        for step in 0..steps {
            let t = step as f64 / 100.0;
            owed += rate(t) / 100.0;
            while owed >= 1.0 {
                d.record(start_ms + step * 10);
                owed -= 1.0;
            }
        }
        start_ms + steps * 10
    }

    #[test]
    fn a_steady_rate_projects_no_growth() {
        let mut d = Demand::default();
        let now = feed(&mut d, 100_000, 3.0, |_| 200.0);
        let g = d.growth(now);
        assert!((0.9..1.1).contains(&g), "{g}");
    }

    #[test]
    fn a_ramp_projects_growth_and_a_decline_projects_less() {
        // From 0 to 400 requests a second over 2 s: 200 more a second every second.
        let mut up = Demand::default();
        let now = feed(&mut up, 100_000, 2.0, |t| 200.0 * t);
        let g = up.growth(now);
        // At about 380/s now, about 580/s a second ahead.
        assert!((1.35..1.7).contains(&g), "{g}");
        let mut down = Demand::default();
        let now = feed(&mut down, 100_000, 2.0, |t| 400.0 - 150.0 * t);
        let g = down.growth(now);
        assert!((0.25..0.8).contains(&g), "{g}");
        // A collapse is bounded below; a burst from nothing is bounded above.
        let mut burst = Demand::default();
        let now = feed(&mut burst, 100_000, 1.75, |t| {
            if t < 1.5 { 5.0 } else { 4000.0 }
        });
        assert!(burst.growth(now) <= 4.0);
    }

    #[test]
    fn too_little_traffic_or_a_long_silence_projects_nothing() {
        let mut d = Demand::default();
        assert_eq!(d.growth(5_000), 1.0);
        let now = feed(&mut d, 100_000, 2.0, |_| 2.0);
        assert_eq!(d.growth(now), 1.0);
        let now = feed(&mut d, now, 2.0, |t| 100.0 * t);
        assert!(d.growth(now) > 1.2);
        // Two seconds of silence: every window has passed.
        assert_eq!(d.growth(now + 2_000), 1.0);
        assert_eq!(d.counts, [0; WINDOWS]);
    }

    #[test]
    fn one_noisy_window_moves_the_projection_little() {
        let mut d = Demand::default();
        let now = feed(&mut d, 100_000, 0.75, |_| 200.0);
        let now = feed(&mut d, now, 0.25, |_| 600.0);
        let now = feed(&mut d, now, 0.75, |_| 200.0);
        let g = d.growth(now);
        assert!((0.8..1.2).contains(&g), "{g}");
    }
}

//! The walk of a stepped run: which rate to measure next, and when to stop.
//!
//! On a shared machine one window can spike (another process takes the core for a moment) while
//! the rate is well within what the server sustains, and a walk that stops at the first failed
//! window then reports a ceiling below the real one. So a step that fails its thresholds, when
//! that failure would stop the walk, is measured once more: if the second window passes, the walk
//! goes on (the first is kept in the summary, marked as retried); if it fails too, the walk stops
//! there. A walk that does not stop on failure (`stop_on_failure = false`) measures every rate
//! once and retries nothing: no single window decides anything in it.
//!
//! Owns only the decision; the measuring is `run.rs`'s. Never touches the network or the clock.

use serde::{Deserialize, Serialize};

/// A step that failed and was measured once more, and what the second window said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRetry {
    /// The offered rate of the step.
    pub rate: f64,
    /// Whether the second window met the thresholds (then the walk went on).
    pub sustained_on_retry: bool,
}

/// Where a walk is.
#[derive(Debug)]
pub struct StepSearch {
    rates: Vec<f64>,
    /// Index of the rate measured next.
    at: usize,
    /// The rate at `at` failed once and is being measured again.
    retrying: bool,
    stop_on_failure: bool,
    stopped: bool,
    retries: Vec<StepRetry>,
}

/// What [`StepSearch::record`] decided about the window just measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// It met the thresholds.
    Sustained,
    /// It did not, for the first time, and stopping on failure: the same rate is measured again.
    Retry,
    /// It did not; the walk stops (the retry failed too).
    Stop,
    /// It did not, and the walk goes on without retrying (`stop_on_failure = false`).
    NotSustained,
}

impl StepSearch {
    /// A walk over `rates`, in order.
    pub fn new(rates: Vec<f64>, stop_on_failure: bool) -> Self {
        Self {
            rates,
            at: 0,
            retrying: false,
            stop_on_failure,
            stopped: false,
            retries: Vec::new(),
        }
    }

    /// The rate to measure next and which attempt at it this is (1, or 2 for a retry); `None`
    /// once the walk is over.
    pub fn next(&self) -> Option<(f64, u32)> {
        if self.stopped {
            return None;
        }
        let rate = *self.rates.get(self.at)?;
        Some((rate, if self.retrying { 2 } else { 1 }))
    }

    /// Takes the outcome of the window measured at [`next`](Self::next)'s rate.
    pub fn record(&mut self, sustainable: bool) -> Verdict {
        let rate = self.rates[self.at];
        let was_retry = std::mem::take(&mut self.retrying);
        if was_retry {
            self.retries.push(StepRetry {
                rate,
                sustained_on_retry: sustainable,
            });
        }
        if sustainable {
            self.at += 1;
            return Verdict::Sustained;
        }
        if !self.stop_on_failure {
            self.at += 1;
            return Verdict::NotSustained;
        }
        if !was_retry {
            self.retrying = true;
            return Verdict::Retry;
        }
        self.stopped = true;
        Verdict::Stop
    }

    /// The steps that were measured twice, in order.
    pub fn retries(&self) -> &[StepRetry] {
        &self.retries
    }

    /// One line for the printed report: what was retried and how it ended.
    pub fn describe_retries(&self) -> String {
        if self.retries.is_empty() {
            return "no step was retried".into();
        }
        let each: Vec<String> = self
            .retries
            .iter()
            .map(|r| {
                format!(
                    "{}/s ({})",
                    r.rate,
                    if r.sustained_on_retry {
                        "sustained on retry"
                    } else {
                        "failed twice"
                    }
                )
            })
            .collect();
        format!("retried once after a failed window: {}", each.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks `rates` with the given window outcomes; returns the (rate, attempt) measured and the
    /// verdicts.
    fn walk(
        rates: &[f64],
        stop_on_failure: bool,
        outcomes: &[bool],
    ) -> (Vec<(f64, u32)>, Vec<Verdict>, StepSearch) {
        let mut s = StepSearch::new(rates.to_vec(), stop_on_failure);
        let mut outcomes = outcomes.iter();
        let (mut measured, mut verdicts) = (Vec::new(), Vec::new());
        while let Some(step) = s.next() {
            measured.push(step);
            let ok = *outcomes
                .next()
                .expect("the walk asked for more windows than given");
            verdicts.push(s.record(ok));
        }
        assert!(outcomes.next().is_none(), "the walk ended early");
        (measured, verdicts, s)
    }

    #[test]
    fn every_step_passing_measures_each_rate_once() {
        let (m, v, s) = walk(&[1.0, 2.0, 4.0], true, &[true, true, true]);
        assert_eq!(m, vec![(1.0, 1), (2.0, 1), (4.0, 1)]);
        assert_eq!(v, vec![Verdict::Sustained; 3]);
        assert!(s.retries().is_empty());
        assert_eq!(s.describe_retries(), "no step was retried");
    }

    #[test]
    fn a_single_spike_is_retried_and_the_walk_goes_on() {
        let (m, v, s) = walk(&[1.0, 2.0, 4.0], true, &[true, false, true, true]);
        assert_eq!(m, vec![(1.0, 1), (2.0, 1), (2.0, 2), (4.0, 1)]);
        assert_eq!(
            v,
            vec![
                Verdict::Sustained,
                Verdict::Retry,
                Verdict::Sustained,
                Verdict::Sustained
            ]
        );
        assert_eq!(
            s.retries(),
            &[StepRetry {
                rate: 2.0,
                sustained_on_retry: true
            }]
        );
        assert_eq!(
            s.describe_retries(),
            "retried once after a failed window: 2/s (sustained on retry)"
        );
    }

    #[test]
    fn two_failures_in_a_row_stop_the_walk() {
        let (m, v, s) = walk(&[1.0, 2.0, 4.0], true, &[true, false, false]);
        assert_eq!(m, vec![(1.0, 1), (2.0, 1), (2.0, 2)]);
        assert_eq!(v.last(), Some(&Verdict::Stop));
        assert_eq!(
            s.retries(),
            &[StepRetry {
                rate: 2.0,
                sustained_on_retry: false
            }]
        );
    }

    #[test]
    fn each_step_gets_its_own_retry() {
        // Passing on retry does not use up the retry of the next step.
        let (m, _, s) = walk(
            &[1.0, 2.0, 4.0],
            true,
            &[false, true, false, true, false, false],
        );
        assert_eq!(
            m,
            vec![(1.0, 1), (1.0, 2), (2.0, 1), (2.0, 2), (4.0, 1), (4.0, 2)]
        );
        let outcomes: Vec<bool> = s.retries().iter().map(|r| r.sustained_on_retry).collect();
        assert_eq!(outcomes, vec![true, true, false]);
        assert_eq!(
            s.describe_retries(),
            "retried once after a failed window: 1/s (sustained on retry), 2/s (sustained on \
             retry), 4/s (failed twice)"
        );
    }

    #[test]
    fn a_walk_that_does_not_stop_on_failure_retries_nothing() {
        let (m, v, s) = walk(&[1.0, 2.0], false, &[false, false]);
        assert_eq!(m, vec![(1.0, 1), (2.0, 1)]);
        assert_eq!(v, vec![Verdict::NotSustained; 2]);
        assert!(s.retries().is_empty());
    }

    #[test]
    fn the_last_rate_failing_is_still_retried() {
        let (m, v, _) = walk(&[1.0], true, &[false, true]);
        assert_eq!(m, vec![(1.0, 1), (1.0, 2)]);
        assert_eq!(v, vec![Verdict::Retry, Verdict::Sustained]);
    }
}

//! Messages per second per topic, for the admin channel's `stats` (`topic_rates`): every
//! stats interval each shard takes the counts its topic table kept while fanning out
//! ([`super::topic_table::TopicTable::take_delivered`]) and leaves its busiest topics' rates
//! where the stats ticker reads them ([`super::context::Shared::topic_rates`]).
//!
//! A message reaches every shard that has a subscriber of its topic, so a topic's rate is the
//! largest of its shards' rates, not their sum ([`busiest`] merges them that way).
//!
//! What it must never do: count on the fan-out path beyond one add, or hold the shared lock
//! for more than a swap.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::context::ShardContext;

/// Topics a shard (and a process's `stats`) reports at most: the busiest ones.
pub const MAX_REPORTED: usize = 500;

/// Takes this shard's per-topic counts every `period`, as rates, for the stats ticker.
pub(super) async fn sampler(ctx: Rc<ShardContext>, period: Duration) {
    let mut since = Instant::now();
    loop {
        glommio::timer::sleep(period).await;
        let now = Instant::now();
        let seconds = now.duration_since(since).as_secs_f64().max(f64::EPSILON);
        since = now;
        let counts = ctx.topics.borrow().take_delivered();
        let rates = busiest(
            counts
                .into_iter()
                .map(|(topic, n)| (topic, n as f64 / seconds)),
        );
        let mut shared = ctx.shared.topic_rates[ctx.id]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *shared = rates;
    }
}

/// The [`MAX_REPORTED`] highest rates, one per topic (the largest when a topic comes several
/// times), busiest first, rounded to a tenth.
pub fn busiest(rates: impl IntoIterator<Item = (String, f64)>) -> Vec<(String, f64)> {
    let mut by_topic = std::collections::HashMap::new();
    for (topic, rate) in rates {
        let best = by_topic.entry(topic).or_insert(0.0_f64);
        *best = best.max(rate);
    }
    let mut sorted: Vec<(String, f64)> = by_topic
        .into_iter()
        .map(|(topic, rate)| (topic, (rate * 10.0).round() / 10.0))
        .collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(MAX_REPORTED);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_on_several_shards_counts_once_at_its_highest_rate() {
        let rates = busiest([
            ("a".to_owned(), 10.0),
            ("b".to_owned(), 3.0),
            ("a".to_owned(), 9.96),
            ("c".to_owned(), 30.04),
        ]);
        assert_eq!(
            rates,
            vec![
                ("c".to_owned(), 30.0),
                ("a".to_owned(), 10.0),
                ("b".to_owned(), 3.0)
            ]
        );
    }

    #[test]
    fn only_the_busiest_are_kept() {
        let rates = busiest((0..MAX_REPORTED + 10).map(|i| (format!("t{i}"), i as f64)));
        assert_eq!(rates.len(), MAX_REPORTED);
        assert_eq!(rates[0].1, (MAX_REPORTED + 9) as f64);
    }
}

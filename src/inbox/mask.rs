//! Sets of shards as bit masks: which shards want a topic, which listen to `system`.

/// The most shards one process can address in a mask.
pub const MAX_SHARDS: usize = 64;

/// Iterates the shard indices set in `mask`.
pub fn shards_in(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let shard = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(shard)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_bit_is_listed_in_order() {
        assert_eq!(shards_in(0b1011).collect::<Vec<_>>(), vec![0, 1, 3]);
        assert_eq!(shards_in(0).count(), 0);
        assert_eq!(shards_in(1 << 63).collect::<Vec<_>>(), vec![63]);
    }
}

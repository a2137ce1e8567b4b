//! Sets of record numbers kept as ranges: a stream numbered 0, 1, 2, ...
//! with a few holes costs one entry per hole, not one per record, so
//! `gaps` holds a hundred million numbers in a few bytes when nothing is
//! missing. (The worst case, every other number missing, is one entry per
//! missing number: the report would list each of them anyway.)

use std::collections::BTreeMap;

/// Numbers as disjoint, non-adjacent inclusive ranges (start → end).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl RangeSet {
    /// Adds `n`; false when it was in the set already.
    pub(crate) fn insert(&mut self, n: u64) -> bool {
        let before = self.ranges.range(..=n).next_back().map(|(&s, &e)| (s, e));
        if let Some((_, end)) = before
            && n <= end
        {
            return false;
        }
        self.len += 1;
        // The range that starts right after `n`, if any, joins it.
        let after_end = n.checked_add(1).and_then(|m| self.ranges.remove(&m));
        let end = after_end.unwrap_or(n);
        match before {
            Some((start, e)) if e.checked_add(1) == Some(n) => {
                self.ranges.insert(start, end);
            }
            _ => {
                self.ranges.insert(n, end);
            }
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, n: u64) -> bool {
        self.ranges
            .range(..=n)
            .next_back()
            .is_some_and(|(_, &e)| n <= e)
    }

    /// How many numbers the set holds.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn max(&self) -> Option<u64> {
        self.ranges.last_key_value().map(|(_, &e)| e)
    }

    /// The ranges, ascending.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// The numbers of `from..=to` not in the set, as ranges, ascending.
    pub(crate) fn absent(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if from > to {
            return out;
        }
        // The first number of `from..=to` not accounted for yet (`None`: past u64::MAX).
        let mut next = Some(from);
        if let Some((_, &e)) = self.ranges.range(..=from).next_back()
            && e >= from
        {
            next = e.checked_add(1);
        }
        for (&s, &e) in self.ranges.range(from..=to) {
            let Some(n) = next else { break };
            if s > n {
                out.push((n, s - 1));
            }
            if e >= n {
                next = e.checked_add(1);
            }
        }
        if let Some(n) = next
            && n <= to
        {
            out.push((n, to));
        }
        out
    }
}

/// How many times each number was seen: layer `i` holds the numbers seen
/// more than `i` times (so each layer lies inside the one before). A replay
/// of a thousand records is one range in layer 1, not a thousand counters.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counted {
    layers: Vec<RangeSet>,
}

impl Counted {
    pub(crate) fn insert(&mut self, n: u64) {
        for layer in &mut self.layers {
            if layer.insert(n) {
                return;
            }
        }
        let mut layer = RangeSet::default();
        layer.insert(n);
        self.layers.push(layer);
    }

    /// The numbers seen at least once.
    pub(crate) fn seen(&self) -> Option<&RangeSet> {
        self.layers.first()
    }

    /// How many times numbers were seen again (the sum over each number of
    /// its count minus one).
    pub(crate) fn extra(&self) -> u64 {
        self.layers.iter().skip(1).map(RangeSet::len).sum()
    }

    /// The numbers seen more than once, as `(from, to, times)` with the same
    /// count over each range, ascending.
    pub(crate) fn duplicates(&self) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        let empty = RangeSet::default();
        for (i, layer) in self.layers.iter().enumerate().skip(1) {
            let above = self.layers.get(i + 1).unwrap_or(&empty);
            for (s, e) in layer.ranges() {
                let times = i as u64 + 1;
                out.extend(above.absent(s, e).into_iter().map(|(a, b)| (a, b, times)));
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(numbers: &[u64]) -> RangeSet {
        let mut s = RangeSet::default();
        for &n in numbers {
            s.insert(n);
        }
        s
    }

    #[test]
    fn numbers_in_any_order_merge_into_ranges() {
        let s = set(&[5, 3, 4, 0, 9, 1, 7, 8]);
        assert_eq!(s.ranges().collect::<Vec<_>>(), [(0, 1), (3, 5), (7, 9)]);
        assert_eq!(s.len(), 8);
        assert_eq!(s.max(), Some(9));
        // Filling the holes joins the neighbours on both sides.
        let mut s = s;
        assert!(s.insert(2));
        assert!(s.insert(6));
        assert_eq!(s.ranges().collect::<Vec<_>>(), [(0, 9)]);
        assert_eq!(s.len(), 10);
        assert!(!s.insert(4), "already there");
        assert_eq!(s.len(), 10);
        assert!(s.contains(0) && s.contains(9) && !s.contains(10));
    }

    #[test]
    fn the_largest_numbers_do_not_overflow() {
        let s = set(&[u64::MAX, u64::MAX - 1, 0]);
        assert_eq!(
            s.ranges().collect::<Vec<_>>(),
            [(0, 0), (u64::MAX - 1, u64::MAX)]
        );
        assert_eq!(s.absent(0, u64::MAX), [(1, u64::MAX - 2)]);
        assert_eq!(s.absent(u64::MAX - 1, u64::MAX), []);
        assert_eq!(set(&[]).absent(u64::MAX, u64::MAX), [(u64::MAX, u64::MAX)]);
    }

    #[test]
    fn absent_lists_the_holes_inside_a_span() {
        let s = set(&[0, 1, 2, 5, 6, 9]);
        assert_eq!(s.absent(0, 12), [(3, 4), (7, 8), (10, 12)]);
        assert_eq!(s.absent(1, 5), [(3, 4)]);
        assert_eq!(s.absent(4, 4), [(4, 4)]);
        assert_eq!(s.absent(5, 6), []);
        assert_eq!(s.absent(6, 2), []);
        assert_eq!(set(&[]).absent(0, 3), [(0, 3)]);
        assert_eq!(set(&[3]).absent(0, 3), [(0, 2)]);
    }

    #[test]
    fn numbers_in_order_stay_one_range() {
        let mut s = RangeSet::default();
        for n in 0..2_000_000u64 {
            s.insert(n);
        }
        assert_eq!(s.ranges.len(), 1);
        assert_eq!(s.len(), 2_000_000);
    }

    #[test]
    fn counts_group_into_ranges_of_equal_count() {
        let mut c = Counted::default();
        for n in (0..10).chain(3..6).chain(4..5).chain(8..10) {
            c.insert(n);
        }
        assert_eq!(c.seen().unwrap().ranges().collect::<Vec<_>>(), [(0, 9)]);
        assert_eq!(c.duplicates(), [(3, 3, 2), (4, 4, 3), (5, 5, 2), (8, 9, 2)]);
        assert_eq!(c.extra(), 6);
        assert_eq!(Counted::default().duplicates(), []);
        assert_eq!(Counted::default().extra(), 0);
    }
}

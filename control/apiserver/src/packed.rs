//! Compact forms of what the watch cache keeps per object. A cluster at Kubernetes' limits
//! holds hundreds of thousands of objects (150,000 pods and twice as many events): a
//! `BTreeMap` of two labels costs over 600 bytes and eleven field strings eleven
//! allocations, against one text and one offset table here.

use std::collections::BTreeMap;

use skiff_api::selector::LabelSet;

/// Strings stored back to back in one allocation, with their end offsets in another.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackedStrings {
    text: Box<str>,
    ends: Box<[u32]>,
}

impl PackedStrings {
    /// Packs `items`; None if they add up to 4 GiB or more.
    pub fn new<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut text = String::new();
        let mut ends = Vec::new();
        for item in items {
            text.push_str(item);
            ends.push(u32::try_from(text.len()).ok()?);
        }
        Some(PackedStrings {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..end)
    }
}

/// Labels as sorted key/value pairs packed together.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackedLabels(PackedStrings);

impl PackedLabels {
    pub fn new(labels: &BTreeMap<String, String>) -> Option<Self> {
        PackedStrings::new(labels.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]))
            .map(PackedLabels)
    }

    pub fn len(&self) -> usize {
        self.0.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn key(&self, i: usize) -> &str {
        self.0.get(2 * i).unwrap_or_default()
    }
}

impl LabelSet for PackedLabels {
    fn label(&self, key: &str) -> Option<&str> {
        // Keys are sorted (they came from a BTreeMap): binary search.
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.0.get(2 * mid + 1),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use skiff_api::selector::LabelSelector;

    proptest! {
        #[test]
        fn packed_strings_round_trip(items in proptest::collection::vec(".{0,12}", 0..12)) {
            let p = PackedStrings::new(items.iter().map(String::as_str)).expect("small");
            prop_assert_eq!(p.len(), items.len());
            for (i, s) in items.iter().enumerate() {
                prop_assert_eq!(p.get(i), Some(s.as_str()));
            }
            prop_assert_eq!(p.get(items.len()), None);
        }

        /// Every selector matches packed labels exactly as it matches the map.
        #[test]
        fn packed_labels_match_like_the_map(
            labels in proptest::collection::btree_map("[a-c]{1,2}", "[x-z0-9]{0,2}", 0..6),
            probe in "[a-c]{1,2}",
            value in "[x-z0-9]{0,2}",
        ) {
            let packed = PackedLabels::new(&labels).expect("small");
            prop_assert_eq!(packed.len(), labels.len());
            for (k, v) in &labels {
                prop_assert_eq!(packed.label(k), Some(v.as_str()));
            }
            prop_assert_eq!(packed.label(&probe), labels.get(&probe).map(String::as_str));
            for text in [
                format!("{probe}={value}"),
                format!("{probe}!={value}"),
                format!("{probe} in ({value},y)"),
                format!("{probe} notin ({value})"),
                probe.clone(),
                format!("!{probe}"),
                format!("{probe}>3"),
            ] {
                let sel = LabelSelector::parse(&text).expect("selector");
                prop_assert_eq!(sel.matches(&packed), sel.matches(&labels), "{}", text);
            }
        }
    }
}

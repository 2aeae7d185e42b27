//! "Did you mean" hints.

/// The candidate closest to `word`, if it is close enough to be a likely typo: at most one edit
/// (a transposition counts as one) per three letters, and at least one.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let allowed = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (strsim::osa_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn typos_find_their_option() {
        let options = ["ttl", "key", "backend", "cache_none", "version"];
        assert_eq!(closest("tll", options), Some("ttl"));
        assert_eq!(closest("backnd", options), Some("backend"));
        assert_eq!(closest("cachenone", options), Some("cache_none"));
        assert_eq!(closest("expiry", options), None);
    }
}

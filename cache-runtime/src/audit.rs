//! `audit()`: whether every invalidation in the program reaches a cache, and every cache is
//! reached by some mutation. Each `#[cached]`, `#[invalidates]` and `#[cache_put]` registers
//! what it names (key templates, tags) at link time, in [`REGISTRATIONS`] (a
//! `linkme` distributed slice: a static in the binary, no code before `main`, nothing to call).
//!
//! Templates are compared by their *family*: the literal text with every placeholder written
//! `<>`. A key renders each value between `<` and `>` and no literal holds either (see
//! `key/mod.rs`), so two templates can render the same key exactly when their families are equal:
//! `user:<id>` and `user:<user_id>` name one family, `user:<id>` and `user:v2:<id>` two.

use std::collections::BTreeSet;
use std::fmt;

/// What one annotated function registers. Built by the macros only.
#[doc(hidden)]
pub struct Registration {
    /// `module::function`.
    pub function: &'static str,
    /// What the attribute does.
    pub kind: Kind,
    /// Key templates: a cached or put site's one key, an invalidation's keys. A default key
    /// (`module::function(<>)`) is written as its family.
    pub keys: &'static [&'static str],
    /// Tag templates.
    pub tags: &'static [&'static str],
}

/// The attribute a [`Registration`] comes from.
#[doc(hidden)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// `#[cached]`.
    Cached,
    /// `#[invalidates]`.
    Invalidates,
    /// `#[cache_put]`.
    Put,
}

/// Every annotated function linked into the binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static REGISTRATIONS: [Registration] = [..];

/// One thing [`audit`] found.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Finding {
    /// An `#[invalidates]` key template that no `#[cached]` site's key can match: the
    /// invalidation removes nothing (a typo, or a cached key that changed).
    UnreachableInvalidation {
        /// The invalidating function.
        function: &'static str,
        /// Its template.
        template: &'static str,
    },
    /// A tag that an `#[invalidates]` names and no `#[cached]` site carries.
    UnreachableTag {
        /// The invalidating function.
        function: &'static str,
        /// The tag template.
        tag: &'static str,
    },
    /// A `#[cache_put]` key that no `#[cached]` site reads, or only sites with tags (whose
    /// entries carry generations, so a put value is a miss there): it is never served.
    UnreadPut {
        /// The putting function.
        function: &'static str,
        /// Its template.
        template: &'static str,
    },
    /// A `#[cached]` site that no invalidation, tag invalidation or put reaches: only its
    /// `ttl` ends its entries. Expected for data that is never mutated by this program (it
    /// may be, elsewhere); [`Audit::expect_ttl_only`] says so.
    Untouched {
        /// The cached function.
        function: &'static str,
        /// Its key template.
        template: &'static str,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::UnreachableInvalidation { function, template } => write!(
                f,
                "`{function}` invalidates `{template}`, which no #[cached] key matches"
            ),
            Finding::UnreachableTag { function, tag } => write!(
                f,
                "`{function}` invalidates tag `{tag}`, which no #[cached] site carries"
            ),
            Finding::UnreadPut { function, template } => write!(
                f,
                "`{function}` stores under `{template}`, which no #[cached] site reads"
            ),
            Finding::Untouched { function, template } => write!(
                f,
                "`{function}` caches `{template}`, which no #[invalidates], tag or #[cache_put] \
                 reaches: only its ttl ends an entry"
            ),
        }
    }
}

/// What [`audit`] found over every annotated function linked into the program.
#[derive(Clone, Debug)]
pub struct Audit {
    findings: Vec<Finding>,
    registrations: usize,
}

impl Audit {
    /// Everything found, invalidations first.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// How many annotated functions were examined.
    pub fn functions(&self) -> usize {
        self.registrations
    }

    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Drops the [`Finding::Untouched`] of `functions` (`module::function`, as
    /// `std::any::type_name` and the findings write them): sites that only their ttl is meant
    /// to end, or that something the audit cannot see invalidates (a call of
    /// [`invalidate`](crate::invalidate) or [`invalidate_tag`](crate::invalidate_tag) with a
    /// key built at run time).
    pub fn expect_ttl_only(mut self, functions: &[&str]) -> Self {
        self.findings.retain(|finding| {
            !matches!(finding, Finding::Untouched { function, .. } if functions.contains(function))
        });
        self
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(
                f,
                "cache audit: {} functions, all wired",
                self.registrations
            );
        }
        write!(
            f,
            "cache audit: {} functions, {} findings",
            self.registrations,
            self.findings.len()
        )?;
        for finding in &self.findings {
            write!(f, "\n- {finding}")?;
        }
        Ok(())
    }
}

/// Checks that the program's invalidations are wired: every `#[invalidates]` key and tag, and
/// every `#[cache_put]` key, reaches some `#[cached]` site; and every
/// `#[cached]` site is reached by some mutation. Reads what the attributes registered at link
/// time, so it can run first thing in a test:
///
/// ```
/// let audit = cache_runtime::audit();
/// assert!(audit.is_clean(), "{audit}");
/// ```
///
/// It sees the attributes, not run-time keys: [`invalidate`](crate::invalidate) and
/// [`invalidate_tag`](crate::invalidate_tag) calls are invisible to it (write the event
/// handler as an `#[invalidates(tags(...))]` function instead, or use
/// [`Audit::expect_ttl_only`]). A function in a library crate that the binary never calls may
/// be left out by the linker, with its registration.
pub fn audit() -> Audit {
    audit_of(&REGISTRATIONS)
}

pub(crate) fn audit_of(registrations: &[Registration]) -> Audit {
    let cached: Vec<&Registration> = registrations
        .iter()
        .filter(|registration| registration.kind == Kind::Cached)
        .collect();
    let cached_keys: BTreeSet<String> = cached
        .iter()
        .flat_map(|site| site.keys.iter().map(|key| family(key)))
        .collect();
    let cached_tags: BTreeSet<String> = cached
        .iter()
        .flat_map(|site| site.tags.iter().map(|tag| family(tag)))
        .collect();
    let mut touched_keys = BTreeSet::new();
    let mut touched_tags = BTreeSet::new();
    let mut findings = Vec::new();
    for registration in registrations {
        let function = registration.function;
        match registration.kind {
            Kind::Cached => {}
            Kind::Invalidates => {
                for &template in registration.keys {
                    let family = family(template);
                    if !cached_keys.contains(&family) {
                        findings.push(Finding::UnreachableInvalidation { function, template });
                    }
                    touched_keys.insert(family);
                }
                for &tag in registration.tags {
                    let family = family(tag);
                    if !cached_tags.contains(&family) {
                        findings.push(Finding::UnreachableTag { function, tag });
                    }
                    touched_tags.insert(family);
                }
            }
            Kind::Put => {
                for &template in registration.keys {
                    let family = family(template);
                    // A tagged site's entries carry its tags' generations, so a put value
                    // under its key is a miss there (the put only drops its entry).
                    let read = cached.iter().any(|site| {
                        site.tags.is_empty()
                            && site.keys.iter().any(|key| self::family(key) == family)
                    });
                    if !read {
                        findings.push(Finding::UnreadPut { function, template });
                    }
                    touched_keys.insert(family);
                }
            }
        }
    }
    for site in &cached {
        let touched = site
            .keys
            .iter()
            .any(|key| touched_keys.contains(&family(key)))
            || site
                .tags
                .iter()
                .any(|tag| touched_tags.contains(&family(tag)));
        if !touched {
            findings.push(Finding::Untouched {
                function: site.function,
                template: site.keys.first().copied().unwrap_or_default(),
            });
        }
    }
    Audit {
        findings,
        registrations: registrations.len(),
    }
}

/// The family of a template: its literal text, each placeholder (`<...>`) written `<>`, or
/// `<#>` if hashed (`<f:hash>`): a hash renders as `<#...>` and a plain value escapes `#`, so
/// the two never render the same key.
fn family(template: &str) -> String {
    let mut family = String::with_capacity(template.len());
    let mut placeholder: Option<String> = None;
    for c in template.chars() {
        match (c, placeholder.as_mut()) {
            ('<', None) => placeholder = Some(String::new()),
            ('>', Some(text)) => {
                family.push_str(if text.ends_with(":hash") { "<#>" } else { "<>" });
                placeholder = None;
            }
            (c, Some(text)) => text.push(c),
            (c, None) => family.push(c),
        }
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(function: &'static str, kind: Kind, keys: &'static [&'static str]) -> Registration {
        Registration {
            function,
            kind,
            keys,
            tags: &[],
        }
    }

    #[test]
    fn families_ignore_placeholder_names_only() {
        assert_eq!(family("user:<id>"), family("user:<user_id>"));
        assert_eq!(family("list:<page>:<f:hash>"), "list:<>:<#>");
        assert_ne!(family("search:<f>"), family("search:<f:hash>"));
        assert_ne!(family("user:<id>"), family("user:v2:<id>"));
        assert_ne!(family("user:<id>"), family("user:<a>:<b>"));
        assert_eq!(family("m::f(<>,<>)"), "m::f(<>,<>)");
    }

    #[test]
    fn an_invalidation_of_another_family_is_unreachable() {
        let registrations = [
            site("get_user", Kind::Cached, &["user:<id>"]),
            site("update_user", Kind::Invalidates, &["user:<user_id>"]),
            site("rename_user", Kind::Invalidates, &["users:<id>"]),
        ];
        let audit = audit_of(&registrations);
        assert_eq!(
            audit.findings(),
            [Finding::UnreachableInvalidation {
                function: "rename_user",
                template: "users:<id>"
            }]
        );
    }

    #[test]
    fn tags_reach_sites_and_sites_without_mutations_are_untouched() {
        let registrations = [
            Registration {
                tags: &["category:<c>"],
                ..site("list", Kind::Cached, &["list:<page>"])
            },
            site("detail", Kind::Cached, &["product:<id>"]),
            Registration {
                tags: &["category:<category>", "products"],
                ..site("update", Kind::Invalidates, &[])
            },
        ];
        let audit = audit_of(&registrations);
        assert_eq!(
            audit.findings(),
            [
                Finding::UnreachableTag {
                    function: "update",
                    tag: "products"
                },
                Finding::Untouched {
                    function: "detail",
                    template: "product:<id>"
                },
            ]
        );
        assert!(audit.expect_ttl_only(&["detail"]).findings().len() == 1);
    }

    #[test]
    fn a_put_only_a_tagged_site_reads_is_reported() {
        let registrations = [
            Registration {
                tags: &["pages"],
                ..site("page", Kind::Cached, &["page:<n>"])
            },
            site("put_page", Kind::Put, &["page:<n>"]),
        ];
        let audit = audit_of(&registrations);
        assert_eq!(
            audit.findings(),
            [Finding::UnreadPut {
                function: "put_page",
                template: "page:<n>"
            }],
            "reported, and the tagged site counts as touched"
        );
    }

    #[test]
    fn a_put_nobody_reads_is_reported() {
        let registrations = [
            site("read", Kind::Cached, &["settings:<id>"]),
            site("put", Kind::Put, &["settings:<user>"]),
            site("lost", Kind::Put, &["setting:<user>"]),
        ];
        let audit = audit_of(&registrations);
        assert_eq!(
            audit.findings(),
            [Finding::UnreadPut {
                function: "lost",
                template: "setting:<user>"
            }]
        );
    }
}

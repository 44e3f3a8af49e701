//! The conformance checklist (digest §6, C-001…C-234), embedded.
//!
//! Why embedded and not read from `../shared/spec/` at run time: the digest lives outside
//! this repository, and `chimney-harness coverage` must work from a fresh clone and from
//! an installed binary. `checklist.md` is §6 copied verbatim; the test
//! `embedded_checklist_matches_the_digest` compares it with the digest whenever the digest
//! is present, so a drift is caught.

use super::format::ItemId;

/// The embedded copy of digest §6.
pub const CHECKLIST_MD: &str = include_str!("checklist.md");

/// One checklist item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: ItemId,
    /// `6.3 Initiate offload`
    pub section: String,
    /// `OT`, `MP`, `H` or `IM`.
    pub role: String,
    /// The rule text (without the page references).
    pub text: String,
}

/// Parse every `- **C-NNN** [ROLE] text — pages` line under its `### 6.x` heading.
pub fn parse(markdown: &str) -> Vec<Item> {
    let mut section = String::new();
    let mut items = Vec::new();
    for line in markdown.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            section = h.trim().to_string();
            continue;
        }
        let Some(rest) = line.strip_prefix("- **") else {
            continue;
        };
        let Some((id, rest)) = rest.split_once("**") else {
            continue;
        };
        let Some(id) = ItemId::parse(id) else {
            continue;
        };
        let rest = rest.trim_start();
        let (role, text) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((role, text)) => (role.to_string(), text.trim()),
            None => (String::new(), rest),
        };
        let text = text.split(" — ").next().unwrap_or(text).trim().to_string();
        items.push(Item {
            id,
            section: section.clone(),
            role,
            text,
        });
    }
    items
}

/// The embedded checklist, parsed.
pub fn items() -> Vec<Item> {
    parse(CHECKLIST_MD)
}

/// The section number (`6.3`) of a section heading.
pub fn section_number(section: &str) -> &str {
    section.split_whitespace().next().unwrap_or(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_checklist_has_all_234_items_in_order() {
        let items = items();
        let ids: Vec<u16> = items.iter().map(|i| i.id.0).collect();
        let want: Vec<u16> = (1..=234).collect();
        assert_eq!(
            ids, want,
            "embedded checklist: expected C-001..C-234 in order"
        );
        assert_eq!(
            items[0].section,
            "6.1 Registration, capabilities, parameters"
        );
        assert_eq!(items[0].role, "MP");
        assert_eq!(
            items[233].section,
            "6.15 Intermediate drivers (only if an IM/filter is modelled)"
        );
    }

    #[test]
    fn embedded_checklist_matches_the_digest() {
        let digest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/spec/chimney-offload.md");
        match std::fs::read_to_string(&digest) {
            Ok(text) => assert_eq!(
                parse(&text),
                items(),
                "harness/src/scenario/checklist.md differs from {}: copy §6 again",
                digest.display()
            ),
            // A fresh clone has no ../shared: say so instead of passing quietly.
            Err(e) => eprintln!(
                "NOTE: digest {} not readable ({e}); compared nothing",
                digest.display()
            ),
        }
    }
}

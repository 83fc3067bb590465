//! Where each value of a map file stands, by path (`shards[1].url`), so that
//! validation problems can name a line and column and quote numbers as
//! written.

use std::collections::HashMap;

use super::yaml::{self, Location};

/// Locations and texts of every value of the first document, keyed by path.
#[derive(Debug, Default)]
pub(crate) struct Locator {
    nodes: HashMap<String, (Location, String, bool)>,
}

impl Locator {
    /// Indexes `text` (see [`yaml::nodes`]).
    pub(crate) fn new(text: &str) -> Self {
        let mut nodes = HashMap::new();
        for node in yaml::nodes(text).into_iter().filter(|n| !n.key) {
            nodes
                .entry(node.path)
                .or_insert((node.location, node.text, node.plain));
        }
        Locator { nodes }
    }

    /// The location of the node at `path`, or of its nearest located parent.
    pub(crate) fn find(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some((loc, ..)) = self.nodes.get(path) {
                return Some(*loc);
            }
            let cut = path.rfind(['.', '['])?;
            path = path.get(..cut)?;
        }
    }

    /// The scalar at `path` as written, when the map came from text.
    pub(crate) fn text(&self, path: &str) -> Option<&str> {
        self.nodes.get(path).map(|(_, text, _)| text.as_str())
    }

    /// The scalar at `path` and whether it is plain (unquoted, untagged),
    /// when it is written as an integer however large (`1_000`, `0x1F`,
    /// `-99999999999999999999`).
    pub(crate) fn integer_text(&self, path: &str) -> Option<(&str, bool)> {
        self.nodes
            .get(path)
            .filter(|(_, text, _)| yaml::looks_like_integer(text))
            .map(|(_, text, plain)| (text.as_str(), *plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_values_and_falls_back_to_parents() {
        let text = "version: 1\nshards:\n  - name: a\n    url: x\n  - { name: b, url: y }\n";
        let loc = Locator::new(text);
        assert_eq!(
            loc.find("version"),
            Some(Location {
                line: 1,
                column: 10
            })
        );
        assert_eq!(
            loc.find("shards[0].url"),
            Some(Location {
                line: 4,
                column: 10
            })
        );
        assert_eq!(
            loc.find("shards[1].url"),
            Some(Location {
                line: 5,
                column: 21
            })
        );
        assert_eq!(
            loc.find("shards[1].weight"),
            Some(Location { line: 5, column: 5 })
        );
        assert_eq!(loc.text("shards[1].url"), Some("y"));
        let loc = Locator::new("a: 1_000\nb: '12'\nc: -0x1F\nd: !!str 5\ne: 1.5\n");
        assert_eq!(loc.integer_text("a"), Some(("1_000", true)));
        assert_eq!(loc.integer_text("b"), Some(("12", false)));
        assert_eq!(loc.integer_text("c"), Some(("-0x1F", true)));
        assert_eq!(loc.integer_text("d"), Some(("5", false)));
        assert_eq!(loc.integer_text("e"), None);
    }

    #[test]
    fn a_bom_before_a_comment_and_tabs_keep_locations() {
        let text = "\u{feff}# map\r\nversion:\t1\r\nshards:\r\n  - { name: a,\turl: x }\r\n";
        let loc = Locator::new(text);
        assert_eq!(
            loc.find("version"),
            Some(Location {
                line: 2,
                column: 10
            })
        );
        assert_eq!(
            loc.find("shards[0].url"),
            Some(Location {
                line: 4,
                column: 21
            })
        );
    }
}

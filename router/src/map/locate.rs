//! Where each value of a YAML document stands, by path (`shards[1].url`), so
//! that validation problems can name a line and column.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the map file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// Locations of every node of the first document, keyed by path.
#[derive(Debug, Default)]
pub(crate) struct Locator {
    nodes: HashMap<String, Location>,
}

impl Locator {
    /// Indexes `text`; a document that does not parse gives an empty index
    /// (the YAML parser proper reports that error).
    pub(crate) fn new(text: &str) -> Self {
        let mut walk = Walk::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walk, false).is_err() {
            return Locator::default();
        }
        Locator { nodes: walk.nodes }
    }

    /// The location of the node at `path`, or of its nearest located parent.
    pub(crate) fn find(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(loc) = self.nodes.get(path) {
                return Some(*loc);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// A container being walked: a mapping (waiting for a key or a value) or a
/// sequence (counting items).
enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, next: usize },
}

#[derive(Default)]
struct Walk {
    stack: Vec<Frame>,
    nodes: HashMap<String, Location>,
}

impl Walk {
    /// The path of the node that starts now, or `None` when it is a mapping key.
    fn next_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Mapping { path, key }) => key.take().map(|k| {
                if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }
            }),
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        let loc = Location {
            line: mark.line(),
            column: mark.col() + 1,
        };
        self.nodes.entry(path.to_string()).or_insert(loc);
    }
}

impl MarkedEventReceiver for Walk {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => match self.next_path() {
                Some(path) => self.record(&path, mark),
                None => {
                    if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                        *key = Some(value);
                    }
                }
            },
            Event::Alias(_) => {
                if let Some(path) = self.next_path() {
                    self.record(&path, mark);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex mapping key gets no path; its contents are skipped.
                let path = self.next_path().unwrap_or_else(|| "?".to_string());
                self.record(&path, mark);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Mapping { path, key: None }
                } else {
                    Frame::Sequence { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
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
    }
}

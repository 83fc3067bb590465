//! Errors from reading and validating a shard map.

use std::fmt;
use std::path::PathBuf;

use super::yaml::Location;

/// One thing wrong with a map: where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// YAML path of the offending node, e.g. `shards[1].url` (empty for the document).
    pub path: String,
    /// Line and column in the source text, when the map came from text.
    pub location: Option<Location>,
    /// What is wrong, naming the offending value.
    pub message: String,
}

/// Why a shard map could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The file could not be read.
    #[error("cannot read shard map {}", path.display())]
    Read {
        /// The map file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The map is malformed; every problem found is listed.
    #[error("{}", ProblemList { origin, problems })]
    Invalid {
        /// The file path, or a label such as `<string>` for text from memory.
        origin: String,
        /// All problems, in document order.
        problems: Vec<Problem>,
    },
}

impl MapError {
    /// The validation problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            MapError::Read { .. } => &[],
            MapError::Invalid { problems, .. } => problems,
        }
    }
}

/// Formats problems one per line as `ORIGIN:LINE:COL: message`.
struct ProblemList<'a> {
    origin: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match p.location {
                Some(loc) => write!(f, "{}:{}:{}: ", self.origin, loc.line, loc.column)?,
                None => write!(f, "{}: ", self.origin)?,
            }
            if !p.path.is_empty() && !p.message.starts_with(&p.path) {
                write!(f, "{}: ", p.path)?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

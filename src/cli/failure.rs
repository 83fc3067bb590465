//! How a command fails: invalid input (exit 2) or a runtime failure (exit 1).

use std::fmt::Display;

use postshard_router::MapError;

/// A failed command, with the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: a malformed map, argument or input line. Exit code 2.
    Invalid(anyhow::Error),
    /// Something failed while running: I/O, a database. Exit code 1.
    Runtime(anyhow::Error),
    /// Stdout's reader went away (`| head`): the command stops quietly
    /// with exit code 0, as Unix tools do.
    ClosedStdout,
    /// Ctrl-C stopped the command at a point it can resume from. Exit code
    /// 130 (128 + SIGINT), as shells report an interrupted command.
    Interrupted(anyhow::Error),
}

impl Failure {
    /// Invalid input described by `msg`.
    pub fn invalid(msg: impl Display) -> Failure {
        Failure::Invalid(anyhow::anyhow!("{msg}"))
    }

    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Failure::Invalid(_) => 2,
            Failure::Runtime(_) => 1,
            Failure::ClosedStdout => 0,
            Failure::Interrupted(_) => 130,
        }
    }

    /// The message for stderr, with its causes; `None` for a closed stdout.
    pub fn message(&self) -> Option<String> {
        let (Failure::Invalid(e) | Failure::Runtime(e) | Failure::Interrupted(e)) = self else {
            return None;
        };
        Some(match e.downcast_ref::<MapError>() {
            // One `PATH:LINE:COL: message` line per problem, then a summary.
            Some(MapError::Invalid { origin, problems }) => format!(
                "{e}\nerror: {origin}: invalid shard map ({} problem{})",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
            _ => format!("error: {}", chain(e)),
        })
    }
}

/// An error and its causes, `: `-separated, leaving out a cause whose text
/// the message already holds (error types that quote their source in their
/// own message would otherwise print it twice).
fn chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

impl From<MapError> for Failure {
    /// Every map error, even an unreadable file, is invalid input.
    fn from(e: MapError) -> Failure {
        Failure::Invalid(e.into())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Runtime(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::chain;

    /// Quotes its source in its own message, as many error types do.
    #[derive(Debug)]
    struct Quoting {
        source: std::io::Error,
    }

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "control store: {}", self.source)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_the_message_already_quotes_is_printed_once() {
        let io = || std::io::Error::other("h:5432: connection refused");
        let quoting = anyhow::Error::new(Quoting { source: io() });
        assert_eq!(chain(&quoting), "control store: h:5432: connection refused");
        let plain = anyhow::Error::new(io()).context("reading the plan");
        assert_eq!(
            chain(&plain),
            "reading the plan: h:5432: connection refused"
        );
    }
}

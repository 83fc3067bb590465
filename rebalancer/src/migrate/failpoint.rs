//! Failpoints for fault tests: the process kills itself with SIGKILL at a
//! named journaled step, the way TiKV and sled inject crashes.
//!
//! `POSTSHARD_FAILPOINT=<phase>[@<move>][:after]` kills the process right
//! after the step `<phase>` (a journal phase name: `prepared`, `capturing`,
//! `fenced`, `copied`, `caught_up`, `verified`, `flipped`, `routers_acked`,
//! `cleaned`, `aborted`)
//! of move `<move>` (any move when omitted) was journaled and before it is
//! done, or, with `:after`, right after it was done and before the next
//! step is journaled. Unset (the normal case), a failpoint costs one
//! environment lookup per step.
//!
//! The kill is a real `SIGKILL` (`kill -KILL <own pid>`): no destructor,
//! no flush, no rollback message to the servers, exactly like an operator's
//! `kill -9` or the OOM killer.

use crate::control::Phase;

/// The environment variable naming the failpoint.
pub const ENV: &str = "POSTSHARD_FAILPOINT";

/// Where in a step a failpoint fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Journaled, not done.
    Before,
    /// Done, next step not journaled.
    After,
}

/// Whether `spec` names this step.
fn matches(spec: &str, phase: Phase, move_index: Option<u32>, when: When) -> bool {
    let (step, spec_when) = match spec.strip_suffix(":after") {
        Some(step) => (step, When::After),
        None => (spec, When::Before),
    };
    if spec_when != when {
        return false;
    }
    let (name, index) = match step.split_once('@') {
        Some((name, index)) => (name, Some(index)),
        None => (step, None),
    };
    name == phase.as_str()
        && index.is_none_or(|i| move_index.is_some() && i.parse::<u32>().ok() == move_index)
}

/// Kills the process with SIGKILL when [`ENV`] names this step.
pub fn hit(phase: Phase, move_index: Option<u32>, when: When) {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    if matches(spec.trim(), phase, move_index, when) {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
        // `kill` missing: die as abruptly as the standard library allows.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_phase_a_move_and_a_side_of_the_step() {
        let cases = [
            ("copied", Phase::Copied, Some(0), When::Before, true),
            ("copied", Phase::Copied, Some(3), When::Before, true),
            ("copied", Phase::Copied, Some(0), When::After, false),
            ("copied:after", Phase::Copied, Some(0), When::After, true),
            ("copied@1", Phase::Copied, Some(0), When::Before, false),
            ("copied@1", Phase::Copied, Some(1), When::Before, true),
            ("copied@x", Phase::Copied, Some(1), When::Before, false),
            ("flipped", Phase::Flipped, None, When::Before, true),
            ("flipped@0", Phase::Flipped, None, When::Before, false),
            ("fenced", Phase::Copied, Some(0), When::Before, false),
        ];
        for (spec, phase, index, when, want) in cases {
            assert_eq!(matches(spec, phase, index, when), want, "{spec}");
        }
    }
}

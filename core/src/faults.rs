//! Known bugs the simulator must catch, behind test-only switches.
//!
//! With the `sim-faults` feature (enabled only by fq-core's own tests), each
//! [`Bug`] can be switched on for the current thread; every switch is off
//! unless a test turns it on. Without the feature, [`on`] is a constant
//! `false` and the hooks compile away. See `core/tests/sim` for the tests
//! that switch each bug on and assert the simulator fails for the right
//! reason.

/// A bug that can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Bug {
    /// Report a batch applied (and so acknowledge it) without committing it.
    AckBeforeCommit = 1,
    /// Treat a change already held as new.
    SkipDuplicateCheck = 2,
    /// Drop changes whose dependencies are missing instead of keeping them.
    DropMissingDeps = 4,
    /// Accept and send changes regardless of scope.
    IgnoreScope = 8,
    /// Record no receive time for changes from elsewhere.
    NoReceiveTime = 16,
    /// `audit::verify` skips checking change signatures.
    VerifySkipsSignatures = 32,
    /// The compare answer leaves out the last case of every bucket it lists.
    CompareDropsCases = 64,
    /// Install a county policy older than the one in force.
    AcceptOlderPolicy = 128,
    /// Writing a sync file counts what it carries as acknowledged by its
    /// receiver, before any answer says so.
    AckOnWrite = 256,
    /// Another person's device acknowledging a change counts as the
    /// township's acknowledgement of it.
    PeerAckCountsUpstream = 512,
}

#[cfg(feature = "sim-faults")]
thread_local! {
    static ACTIVE: std::cell::Cell<u16> = const { std::cell::Cell::new(0) };
}

/// Switches `bugs` on for the current thread (and every other bug off).
#[cfg(feature = "sim-faults")]
pub fn set(bugs: &[Bug]) {
    ACTIVE.with(|a| a.set(bugs.iter().fold(0, |m, b| m | *b as u16)));
}

/// Whether `bug` is switched on for the current thread.
#[cfg(feature = "sim-faults")]
pub fn on(bug: Bug) -> bool {
    ACTIVE.with(|a| a.get() & bug as u16 != 0)
}

/// Whether `bug` is switched on: never, in a build without `sim-faults`.
#[cfg(not(feature = "sim-faults"))]
pub const fn on(_bug: Bug) -> bool {
    false
}

//! Timers the core asks the driver to fire. Values, not callbacks: the driver hands the same
//! value back in `Input::Timer`, so the simulator can order and replay them deterministically.

use beamclaw_crdt::SessionKey;

use super::api::ReqId;
use super::ids::Member;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Timer {
    /// foca's own protocol timers.
    Swim(foca::Timer<Member>),
    /// Announce to the seeds again while we know no live member.
    Reannounce,
    /// Send the next anti-entropy digest.
    AntiEntropy,
    /// A request we originated has waited too long for its owner's answer.
    RequestTimeout(ReqId),
    /// Refresh remote subscriptions and expire stale ones.
    Subscriptions,
    /// Look for owned sessions whose preferred owner is another live node, and for sessions
    /// whose owner is down.
    Placement,
    /// Drive the handoff of `session` (re-send sync, re-offer, give up).
    Handoff(SessionKey),
    /// Start turns for acknowledged user messages without a reply (after remote changes
    /// settled).
    Unanswered(SessionKey),
    /// Apply the pushes a replica stored without applying them.
    Settle(SessionKey),
    /// The drain deadline.
    DrainDeadline,
    /// Retry draining sessions that had no live successor.
    DrainRetry,
    /// A write quorum wait has lasted too long: answer the waiting requests with an error.
    Quorum(u64),
    /// After a restart and join: resume the turns of the sessions we still own.
    Resume,
}

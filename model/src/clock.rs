//! The hybrid logical clock of src/clock.rs over a tiny domain. A stamp is (wall, counter,
//! node); `tick` and `observe` follow the real `Clock` step for step, including what it does
//! at the end of the domain: the wall is clamped to `MAX_WALL` and an exhausted counter
//! borrows the next millisecond, clamped too — so a clock that reaches
//! (`MAX_WALL`, `MAX_COUNTER`) hands out a smaller stamp next. The `maxClockSkew` rule is
//! what keeps received stamps away from that end (DESIGN §5, "Clocks").

use crate::state::{Origin, Stamp};

/// The largest wall time a stamp can hold (the real domain ends in the year 2527).
pub const MAX_WALL: u8 = 7;
/// The largest counter within one millisecond (2^20 − 1 in the real clock).
pub const MAX_COUNTER: u8 = 1;
/// Every replica's wall clock, until it jumps.
pub const NOW: u8 = 1;
/// `maxClockSkew`: how far ahead of the receiver's wall clock a received stamp may be.
/// Large enough that the counter borrowing of a few writes at `NOW` is never refused.
pub const MAX_SKEW: u8 = 4;

/// The newest (wall, counter) a replica's clock handed out or observed.
pub type Last = (u8, u8);

/// `Clock::tick`: a stamp for a local write at wall time `now`.
pub fn tick(last: Last, now: u8, node: Origin) -> Stamp {
    let now = now.min(MAX_WALL);
    let (wall, counter) = if now > last.0 {
        (now, 0)
    } else if last.1 >= MAX_COUNTER {
        ((last.0 + 1).min(MAX_WALL), 0)
    } else {
        (last.0, last.1 + 1)
    };
    Stamp { wall, counter, node }
}

/// `Clock::observe`: later local stamps order after a received one.
pub fn observe(last: Last, remote: &Stamp) -> Last {
    last.max((remote.wall, remote.counter))
}

/// The `maxClockSkew` rule: whether a received stamp is too far ahead of `now`.
pub fn too_far_ahead(stamp: &Stamp, now: u8) -> bool {
    stamp.wall > now.saturating_add(MAX_SKEW)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: Origin = Origin { replica: 0, inc: 0 };

    #[test]
    fn ticks_increase_while_the_domain_lasts() {
        let a = tick((0, 0), NOW, N);
        let b = tick((a.wall, a.counter), NOW, N);
        let c = tick((b.wall, b.counter), NOW, N);
        assert!(a < b && b < c);
        assert_eq!((c.wall, c.counter), (NOW + 1, 0));
    }

    #[test]
    fn at_the_end_of_the_domain_the_real_clock_runs_backwards() {
        let s = tick((MAX_WALL, MAX_COUNTER), NOW, N);
        assert!((s.wall, s.counter) < (MAX_WALL, MAX_COUNTER));
    }

    #[test]
    fn skew_rule_refuses_only_far_stamps() {
        let far = Stamp { wall: MAX_WALL, counter: 0, node: N };
        let near = Stamp { wall: NOW + MAX_SKEW, counter: MAX_COUNTER, node: N };
        assert!(too_far_ahead(&far, NOW));
        assert!(!too_far_ahead(&near, NOW));
        assert!(!too_far_ahead(&far, MAX_WALL));
    }
}

//! Linearizability of a key-value history, judged key by key.
//!
//! Keys are independent registers, so a history is linearizable exactly
//! when each key's sub-history is (P-compositionality, Herlihy & Wing).
//! Each key's sub-history goes to `todc-utils`' `WGLChecker`: Wing & Gong's
//! search with Lowe's memoization on (linearized set, state), the algorithm
//! Knossos and Porcupine use. This module only translates: operations to
//! call and response actions, values to small integers, and an operation
//! whose outcome is unknown to a call whose response comes after everything
//! else (it may take effect at any moment from its call on, or never, which
//! is the same as taking effect after every other operation).
//!
//! The checker has no time limit of its own; the register specification
//! here gives it one: past the deadline every step is refused, the search
//! unwinds at once, and the verdict is `Inconclusive`, never a pass.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use todc_utils::linearizability::WGLChecker;
use todc_utils::linearizability::history::{Action, History};
use todc_utils::specifications::Specification;

/// What an operation did to its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A PUT of a value written by no other operation in the history.
    Write(String),
    /// A GET answered 200 with the value, or 404 (None).
    Read(Option<String>),
}

/// One operation as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub kind: Kind,
    /// When the request that decided the outcome was sent (time since the
    /// run began, from one monotonic clock shared by every client).
    pub invoked: Duration,
    /// When its answer arrived; None when the outcome is unknown (a write
    /// answered 503 `write outcome unknown`, timed out or cut off after it
    /// was sent): it may or may not have taken effect, at any time from
    /// `invoked` on.
    pub completed: Option<Duration>,
}

impl Op {
    fn is_write(&self) -> bool {
        matches!(self.kind, Kind::Write(_))
    }
}

/// What the checker concluded about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists.
    Violation,
    /// The search ran out of time.
    Inconclusive,
}

/// The register the checker runs against: the state is the id of the value
/// the key holds (0: the key is absent), as `Values` numbers them.
#[derive(Clone, Debug)]
enum RegisterOp {
    Write(u32),
    Read(u32),
}

struct Register;

thread_local! {
    /// When the current search must give up.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether it did.
    static EXPIRED: Cell<bool> = const { Cell::new(false) };
}

impl Specification for Register {
    type State = u32;
    type Operation = RegisterOp;

    fn init() -> u32 {
        0
    }

    fn apply(op: &RegisterOp, state: &u32) -> (bool, u32) {
        if DEADLINE
            .get()
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            // Refusing every step makes the search unwind to "no".
            EXPIRED.set(true);
            return (false, *state);
        }
        match op {
            RegisterOp::Write(value) => (true, *value),
            RegisterOp::Read(value) => (value == state, *state),
        }
    }
}

/// Numbers each distinct value of one key: 0 is "absent", written values
/// get 1, 2, ..., and a value read but never written gets a number no
/// write has, so no linearization can explain that read.
#[derive(Default)]
struct Values(HashMap<String, u32>);

impl Values {
    fn id(&mut self, value: &Option<String>) -> u32 {
        match value {
            None => 0,
            Some(value) => {
                let next = self.0.len() as u32 + 1;
                *self.0.entry(value.clone()).or_insert(next)
            }
        }
    }
}

/// Drops the writes of unknown outcome whose value no read returned. Such
/// a write changes nothing that anyone saw: if the rest is linearizable,
/// so is the whole, with the write placed after everything (where an
/// unknown outcome may go); and if the whole is, so is the rest, because a
/// linearization that placed the write earlier had no read of its value
/// before the next write, so taking it out breaks no read. This is what
/// keeps a history with many timed-out writes cheap to check.
pub fn without_unseen_unknown_writes(ops: &[Op]) -> Vec<Op> {
    let read: HashSet<(&str, &str)> = ops
        .iter()
        .filter_map(|op| match &op.kind {
            Kind::Read(Some(value)) => Some((op.key.as_str(), value.as_str())),
            _ => None,
        })
        .collect();
    ops.iter()
        .filter(|op| match &op.kind {
            Kind::Write(value) if op.completed.is_none() => {
                read.contains(&(op.key.as_str(), value.as_str()))
            }
            _ => true,
        })
        .cloned()
        .collect()
}

/// Whether `ops` (all of one key) is linearizable, searching for at most
/// `budget`.
pub fn check_key(ops: &[Op], budget: Duration) -> Verdict {
    let ops = without_unseen_unknown_writes(ops);
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    // Every write's value first, so a read of a value that no write has
    // gets a number of its own.
    let mut values = Values::default();
    for op in &ops {
        if let Kind::Write(value) = &op.kind {
            values.id(&Some(value.clone()));
        }
    }
    // (time, response?, operation): a call sorts before a response at the
    // same instant, which makes the two operations concurrent (the
    // cautious reading of a tie). Unknown outcomes respond after all.
    let mut events: Vec<(Duration, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, false, i));
        events.push((op.completed.unwrap_or(Duration::MAX), true, i));
    }
    events.sort();
    let actions: Vec<(usize, Action<RegisterOp>)> = events
        .into_iter()
        .map(|(_, response, i)| {
            let op = match &ops[i].kind {
                Kind::Write(value) => RegisterOp::Write(values.id(&Some(value.clone()))),
                Kind::Read(value) => RegisterOp::Read(values.id(value)),
            };
            // A process per operation: an operation of unknown outcome
            // never blocks its client's next one.
            let action = if response {
                Action::Response(op)
            } else {
                Action::Call(op)
            };
            (i, action)
        })
        .collect();
    let history = History::from_actions(actions);
    DEADLINE.set(Some(Instant::now() + budget));
    EXPIRED.set(false);
    let linearizable = WGLChecker::<Register>::is_linearizable(history);
    DEADLINE.set(None);
    if linearizable {
        Verdict::Linearizable
    } else if EXPIRED.get() {
        Verdict::Inconclusive
    } else {
        Verdict::Violation
    }
}

/// Every key's operations, in the order they were invoked.
pub fn by_key(ops: &[Op]) -> BTreeMap<String, Vec<Op>> {
    let mut keys: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for op in ops {
        keys.entry(op.key.clone()).or_default().push(op.clone());
    }
    for ops in keys.values_mut() {
        ops.sort_by_key(|op| (op.invoked, op.completed));
    }
    keys
}

/// A smaller sub-history of `ops` (one key, not linearizable) that is
/// still not linearizable, found within about `budget`. It removes a read
/// alone, or a write with every read that returned its value, so that what
/// remains never fails only because a read lost its write; chunks of
/// operations first (halves, quarters, ...), then one at a time, until
/// nothing more can go or the time is up.
pub fn shrink(ops: &[Op], budget: Duration) -> Vec<Op> {
    let started = Instant::now();
    let per_check = Duration::from_secs(2);
    let mut current = without_unseen_unknown_writes(ops);
    let mut chunk = current.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < current.len() {
            if started.elapsed() > budget {
                return current;
            }
            let end = (start + chunk).min(current.len());
            let candidate = remove_with_dependents(&current, start..end);
            if !candidate.is_empty()
                && candidate.len() < current.len()
                && check_key(&candidate, per_check) == Verdict::Violation
            {
                current = candidate;
            } else {
                start = end;
            }
        }
        if chunk == 1 {
            return current;
        }
        chunk = chunk.div_ceil(2);
    }
}

/// `ops` without those in `range`, and without the reads of any value a
/// removed write wrote.
fn remove_with_dependents(ops: &[Op], range: std::ops::Range<usize>) -> Vec<Op> {
    let removed_values: HashSet<&str> = ops[range.clone()]
        .iter()
        .filter_map(|op| match &op.kind {
            Kind::Write(value) => Some(value.as_str()),
            _ => None,
        })
        .collect();
    ops.iter()
        .enumerate()
        .filter(|(i, op)| {
            !range.contains(i)
                && match &op.kind {
                    Kind::Read(Some(value)) => !removed_values.contains(value.as_str()),
                    _ => true,
                }
        })
        .map(|(_, op)| op.clone())
        .collect()
}

/// One line per operation, in invocation order, times in ms since the run
/// began: `  1234.5 ..  1240.1  c3  PUT  c3-17  ok`.
pub fn render(ops: &[Op]) -> String {
    let mut sorted: Vec<&Op> = ops.iter().collect();
    sorted.sort_by_key(|op| (op.invoked, op.completed));
    let mut out = String::new();
    for op in sorted {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let end = match op.completed {
            Some(done) => format!("{:9.1}", ms(done)),
            None => "        ?".to_owned(),
        };
        let who = if op.client == usize::MAX {
            "final".to_owned()
        } else {
            format!("c{}", op.client)
        };
        let what = match (&op.kind, op.completed) {
            (Kind::Write(v), Some(_)) => format!("PUT {v:?} -> ok"),
            (Kind::Write(v), None) => format!("PUT {v:?} -> outcome unknown"),
            (Kind::Read(Some(v)), _) => format!("GET -> {v:?}"),
            (Kind::Read(None), _) => "GET -> 404".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {:9.1} .. {end}  {who:>5}  {}  {what}",
            ms(op.invoked),
            op.key
        );
    }
    out
}

/// Counts for the summary line: (acknowledged writes, writes of unknown
/// outcome, reads).
pub fn counts(ops: &[Op]) -> (usize, usize, usize) {
    let acked = ops
        .iter()
        .filter(|op| op.is_write() && op.completed.is_some())
        .count();
    let unknown = ops
        .iter()
        .filter(|op| op.is_write() && op.completed.is_none())
        .count();
    (acked, unknown, ops.len() - acked - unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(10);

    /// An operation on key "k" from `from` to `to` ms (None: unknown).
    fn op(client: usize, kind: Kind, from: u64, to: Option<u64>) -> Op {
        Op {
            client,
            key: "k".to_owned(),
            kind,
            invoked: Duration::from_millis(from),
            completed: to.map(Duration::from_millis),
        }
    }

    fn w(client: usize, value: &str, from: u64, to: u64) -> Op {
        op(client, Kind::Write(value.to_owned()), from, Some(to))
    }

    fn w_unknown(client: usize, value: &str, from: u64) -> Op {
        op(client, Kind::Write(value.to_owned()), from, None)
    }

    fn r(client: usize, value: Option<&str>, from: u64, to: u64) -> Op {
        op(client, Kind::Read(value.map(str::to_owned)), from, Some(to))
    }

    #[test]
    fn sequential_writes_and_reads_are_linearizable() {
        let ops = [
            r(0, None, 0, 1),
            w(0, "a", 2, 3),
            r(1, Some("a"), 4, 5),
            w(1, "b", 6, 7),
            r(0, Some("b"), 8, 9),
        ];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_a_violation() {
        let ops = [w(0, "a", 0, 1), w(0, "b", 2, 3), r(1, Some("a"), 4, 5)];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Violation);
    }

    #[test]
    fn a_404_after_an_acknowledged_write_is_a_violation() {
        let ops = [w(0, "a", 0, 1), r(1, None, 2, 3)];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Violation);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_a_violation() {
        let ops = [w(0, "a", 0, 1), r(1, Some("ghost"), 2, 3)];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Violation);
    }

    #[test]
    fn concurrent_writes_may_take_effect_in_any_order() {
        // Three writes overlap three reads that see them newest first.
        let ops = [
            w(0, "1", 0, 100),
            w(1, "2", 0, 100),
            w(2, "3", 0, 100),
            r(3, Some("3"), 10, 20),
            r(3, Some("2"), 30, 40),
            r(3, Some("1"), 50, 60),
        ];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn reads_that_disagree_in_real_time_order_are_a_violation() {
        // Sequentially consistent but not linearizable: once a read has
        // returned the new value, a later read may not return the old.
        let ops = [
            w(0, "1", 0, 100),
            r(1, Some("1"), 10, 20),
            r(2, None, 30, 40),
        ];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Violation);
    }

    #[test]
    fn a_write_of_unknown_outcome_may_take_effect_late() {
        // Answered "outcome unknown", yet it landed after a later write.
        let ops = [
            w_unknown(0, "a", 0),
            w(1, "b", 10, 20),
            r(2, Some("b"), 30, 40),
            r(2, Some("a"), 50, 60),
        ];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_write_of_unknown_outcome_may_never_take_effect() {
        let ops = [
            w(0, "a", 0, 10),
            w_unknown(1, "b", 20),
            r(2, Some("a"), 30, 40),
            r(2, Some("a"), 500, 510),
        ];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Linearizable);
        assert_eq!(without_unseen_unknown_writes(&ops).len(), 3);
    }

    #[test]
    fn a_write_of_unknown_outcome_cannot_take_effect_before_it_was_sent() {
        let ops = [r(0, Some("a"), 0, 10), w_unknown(1, "a", 20)];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Violation);
    }

    #[test]
    fn a_value_seen_and_then_lost_is_a_violation_even_when_unknown() {
        // An unknown write that was read must have taken effect; reading
        // the older value after that is a lost update.
        let ops = [
            w(0, "a", 0, 10),
            w_unknown(1, "b", 20),
            r(2, Some("b"), 30, 40),
            r(2, Some("a"), 50, 60),
        ];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Violation);
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        let ops = [
            w(0, "a", 0, 10),
            w(1, "b", 20, 60),
            r(2, Some("a"), 30, 40),
            r(3, Some("b"), 35, 45),
            r(2, Some("b"), 70, 80),
        ];
        assert_eq!(check_key(&ops, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn the_search_gives_up_at_its_deadline() {
        let ops = [w(0, "a", 0, 1), r(1, Some("a"), 2, 3)];
        assert_eq!(check_key(&ops, Duration::ZERO), Verdict::Inconclusive);
        // And the next search is not affected.
        assert_eq!(check_key(&ops, BUDGET), Verdict::Linearizable);
    }

    /// A long linearizable history from 4 clients with overlapping
    /// operations, each write followed by reads of it.
    fn long_history(rounds: u64) -> Vec<Op> {
        let mut ops = Vec::new();
        for round in 0..rounds {
            let t = round * 100;
            let value = format!("v{round}");
            ops.push(w((round % 4) as usize, &value, t, t + 30));
            ops.push(r(4, Some(&value), t + 40, t + 50));
            ops.push(r(5, Some(&value), t + 45, t + 95));
            if round % 7 == 0 {
                ops.push(w_unknown(6, &format!("lost{round}"), t + 60));
            }
        }
        ops
    }

    #[test]
    fn a_long_linearizable_history_checks_quickly() {
        let ops = long_history(1500);
        let started = Instant::now();
        assert_eq!(check_key(&ops, BUDGET), Verdict::Linearizable);
        assert!(started.elapsed() < BUDGET);
    }

    #[test]
    fn shrinking_finds_the_stale_read_in_a_long_history() {
        let mut ops = long_history(200);
        // Round 150's second reader sees round 120's value: stale.
        ops.push(r(7, Some("v120"), 15_060, 15_070));
        assert_eq!(check_key(&ops, BUDGET), Verdict::Violation);
        let small = shrink(&ops, Duration::from_secs(20));
        assert_eq!(check_key(&small, BUDGET), Verdict::Violation);
        // The stale read, the write it saw, and a later acknowledged
        // write that came before it in real time.
        assert!(small.len() <= 4, "{}", render(&small));
        assert!(small.iter().any(|op| op.client == 7), "{}", render(&small));
    }
}

//! Scripted faults: what goes wrong, in which phase, how many times.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use runner_core::{ErrorKind, Phase, PhaseMarker, RunContext, RunnerError};
use serde::{Deserialize, Serialize};

/// One injected misbehaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Fault {
    /// Return a transient error.
    Transient,
    /// Return a permanent error.
    Permanent,
    /// Return a capacity error.
    Capacity,
    /// Return a timeout error (as a backend that timed out waiting would).
    Timeout,
    /// Never return until the context is cancelled (or the caller gives up).
    Hang,
    /// Wait this long, then behave normally.
    Delay {
        /// The delay in milliseconds.
        ms: u64,
    },
    /// Panic inside the phase.
    Panic,
}

/// A fault on one phase, for every call or the first `times` calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// The phase it hits.
    pub phase: Phase,
    /// What happens.
    pub fault: Fault,
    /// How many calls it hits; every call when absent.
    #[serde(default)]
    pub times: Option<u32>,
    /// Hit only every N-th call of the phase (10 → 10 % of calls); all when absent.
    #[serde(default)]
    pub every: Option<u32>,
}

/// The faults a mock runner injects, consumed as calls arrive.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Vec<FaultRule>,
    fired: Mutex<HashMap<usize, u32>>,
    seen: Mutex<HashMap<Phase, u64>>,
}

impl Clone for FaultPlan {
    fn clone(&self) -> Self {
        Self::new(self.rules.clone())
    }
}

impl FaultPlan {
    /// A plan from rules; earlier rules win when several match a call.
    pub fn new(rules: Vec<FaultRule>) -> Self {
        Self {
            rules,
            fired: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Add a fault on every call of `phase`.
    pub fn always(mut self, phase: Phase, fault: Fault) -> Self {
        self.rules.push(FaultRule {
            phase,
            fault,
            times: None,
            every: None,
        });
        self
    }

    /// Add a fault on every `n`-th call of `phase`.
    pub fn every(mut self, phase: Phase, fault: Fault, n: u32) -> Self {
        self.rules.push(FaultRule {
            phase,
            fault,
            times: None,
            every: Some(n.max(1)),
        });
        self
    }

    /// Add a fault on the first `times` calls of `phase`.
    pub fn times(mut self, phase: Phase, fault: Fault, times: u32) -> Self {
        self.rules.push(FaultRule {
            phase,
            fault,
            times: Some(times),
            every: None,
        });
        self
    }

    /// The rules.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// The fault for this call of `phase`, if any; counts it as fired.
    pub fn next(&self, phase: Phase) -> Option<Fault> {
        let call = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let n = seen.entry(phase).or_insert(0);
            *n += 1;
            *n
        };
        let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.phase != phase {
                continue;
            }
            if let Some(every) = rule.every
                && call % u64::from(every.max(1)) != 0
            {
                continue;
            }
            let count = fired.entry(i).or_insert(0);
            match rule.times {
                Some(limit) if *count >= limit => continue,
                _ => {
                    *count += 1;
                    return Some(rule.fault.clone());
                }
            }
        }
        None
    }
}

/// Apply `fault` in phase `P`: return the error it stands for, wait, or panic.
pub(crate) async fn inject<P: PhaseMarker>(
    fault: Option<Fault>,
    ctx: &RunContext,
) -> Result<(), RunnerError<P>> {
    let Some(fault) = fault else {
        return Ok(());
    };
    let phase = P::PHASE;
    let injected = |kind| {
        Err(RunnerError::new(
            kind,
            ctx,
            format!("injected {kind} fault in {phase}"),
        ))
    };
    match fault {
        Fault::Transient => injected(ErrorKind::Transient),
        Fault::Permanent => injected(ErrorKind::Permanent),
        Fault::Capacity => injected(ErrorKind::Capacity),
        Fault::Timeout => injected(ErrorKind::Timeout),
        Fault::Hang => {
            ctx.cancel_token().cancelled().await;
            Err(RunnerError::cancelled(
                ctx,
                format!("hung {phase} was cancelled"),
            ))
        }
        Fault::Delay { ms } => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
                _ = ctx.cancel_token().cancelled() => {
                    Err(RunnerError::cancelled(ctx, format!("delayed {phase} was cancelled")))
                }
            }
        }
        Fault::Panic => panic!("injected panic in {phase}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_rules_run_out_and_later_rules_take_over() {
        let plan = FaultPlan::none()
            .times(Phase::Provision, Fault::Transient, 2)
            .always(Phase::Provision, Fault::Delay { ms: 1 });
        assert_eq!(plan.next(Phase::Provision), Some(Fault::Transient));
        assert_eq!(plan.next(Phase::Provision), Some(Fault::Transient));
        assert_eq!(plan.next(Phase::Provision), Some(Fault::Delay { ms: 1 }));
        assert_eq!(plan.next(Phase::Teardown), None);
    }

    #[test]
    fn every_nth_call_is_hit() {
        let plan = FaultPlan::none().every(Phase::RunTest, Fault::Transient, 10);
        let hits = (0..100)
            .filter(|_| plan.next(Phase::RunTest).is_some())
            .count();
        assert_eq!(hits, 10);
    }

    #[test]
    fn rules_parse_from_yaml_like_json() {
        let rule: FaultRule = serde_json::from_value(serde_json::json!({
            "phase": "run_test", "fault": {"kind": "delay", "ms": 5}, "times": 1
        }))
        .unwrap();
        assert_eq!(rule.fault, Fault::Delay { ms: 5 });
    }
}

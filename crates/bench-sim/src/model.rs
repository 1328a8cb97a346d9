//! The simulated world: benches, reservations, runs, and how time moves
//! them on ([`World::settle`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Bench health, as the API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Free.
    #[default]
    Idle,
    /// Held by a reservation, no run.
    Reserved,
    /// Running a test.
    Running,
    /// Taken out by an operator.
    Maintenance,
    /// Failed a health check; never allocated.
    Bad,
    /// Unreachable.
    Offline,
}

/// One bench in the YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// Its id.
    pub id: String,
    /// Its type (what reservations ask for).
    #[serde(rename = "type")]
    pub bench_type: String,
    /// Labels a reservation may require.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Starting health.
    #[serde(default)]
    pub health: Health,
    /// The health check run at allocation fails: the bench turns `bad`
    /// and the allocation moves on to another bench.
    #[serde(default)]
    pub health_check_fails: bool,
}

/// The simulator's YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Accepted bearer tokens; empty means no auth.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Lease length when a reservation does not ask for one.
    #[serde(default = "default_lease")]
    pub default_lease_seconds: u64,
    /// A reservation becomes allocatable only this long after it is made.
    #[serde(default)]
    pub allocation_delay_ms: u64,
    /// The benches.
    pub benches: Vec<BenchConfig>,
}

fn default_lease() -> u64 {
    30
}

impl SimConfig {
    /// Parse YAML; the error names the field.
    pub fn from_yaml(text: &str) -> Result<SimConfig, String> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: SimConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("bench-sim config `{path}`: {}", e.into_inner())
        })?;
        let mut ids = std::collections::BTreeSet::new();
        for bench in &config.benches {
            if !ids.insert(bench.id.as_str()) {
                return Err(format!(
                    "bench-sim config `benches`: id {:?} appears twice",
                    bench.id
                ));
            }
        }
        Ok(config)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ResState {
    Queued,
    Allocated,
    Released,
    Expired,
    Lost,
}

impl ResState {
    pub(crate) fn is_live(self) -> bool {
        matches!(self, ResState::Queued | ResState::Allocated)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunState {
    Running,
    Passed,
    Failed,
    Error,
    TimedOut,
    Cancelled,
    Lost,
}

#[derive(Debug, Clone)]
pub(crate) struct Bench {
    pub(crate) config: BenchConfig,
    pub(crate) health: Health,
}

#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    pub(crate) id: String,
    pub(crate) bench_type: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) idempotency_key: String,
    pub(crate) owner: String,
    pub(crate) state: ResState,
    pub(crate) bench_id: Option<String>,
    pub(crate) lease_seconds: u64,
    pub(crate) lease_expires_ms: u64,
    pub(crate) created_ms: u64,
    pub(crate) ended_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) id: String,
    pub(crate) reservation_id: String,
    pub(crate) bench_id: String,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) state: RunState,
    pub(crate) exit_code: Option<i32>,
    pub(crate) started_ms: u64,
    pub(crate) ended_ms: Option<u64>,
    pub(crate) duration_ms: u64,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) planned_exit: i32,
    pub(crate) planned_error: Option<String>,
    pub(crate) log: Vec<String>,
    pub(crate) artifacts: Vec<(String, Vec<u8>)>,
    pub(crate) error: Option<String>,
}

/// Malformed answers the server can be told to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Malformed {
    /// A body cut off mid-JSON.
    BadJson,
    /// A JSON object without its `state` and `id`.
    MissingFields,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Faults {
    #[serde(default)]
    pub(crate) fail_next: u32,
    #[serde(default)]
    pub(crate) rate_limit_next: u32,
    #[serde(default)]
    pub(crate) retry_after_seconds: u64,
    #[serde(default)]
    pub(crate) malformed_next: u32,
    #[serde(default)]
    pub(crate) malformed: Option<Malformed>,
}

/// All state.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) config: SimConfig,
    pub(crate) benches: Vec<Bench>,
    pub(crate) reservations: Vec<Reservation>,
    pub(crate) runs: Vec<Run>,
    pub(crate) faults: Faults,
    pub(crate) requests: BTreeMap<String, u64>,
    next_id: u64,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn env_number(env: &BTreeMap<String, String>, key: &str, default: u64) -> Result<u64, String> {
    match env.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("env.{key}: {v:?} is not a number")),
    }
}

impl World {
    pub(crate) fn new(config: SimConfig) -> World {
        let benches = config
            .benches
            .iter()
            .map(|b| Bench {
                config: b.clone(),
                health: b.health,
            })
            .collect();
        World {
            config,
            benches,
            reservations: Vec::new(),
            runs: Vec::new(),
            faults: Faults::default(),
            requests: BTreeMap::new(),
            next_id: 0,
        }
    }

    pub(crate) fn next_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:06}", self.next_id)
    }

    fn bench_mut(&mut self, id: &str) -> Option<&mut Bench> {
        self.benches.iter_mut().find(|b| b.config.id == id)
    }

    pub(crate) fn set_health(&mut self, id: &str, health: Health) -> bool {
        match self.bench_mut(id) {
            Some(b) => {
                b.health = health;
                true
            }
            None => false,
        }
    }

    /// Free a bench unless an operator state (bad, offline, maintenance) holds it.
    fn free_bench(&mut self, id: &str) {
        if let Some(b) = self.bench_mut(id)
            && matches!(b.health, Health::Reserved | Health::Running)
        {
            b.health = Health::Idle;
        }
    }

    /// End a reservation: the bench is freed and its running run ends.
    pub(crate) fn end_reservation(
        &mut self,
        index: usize,
        state: ResState,
        reason: &str,
        now: u64,
    ) {
        let reservation = &mut self.reservations[index];
        if !reservation.state.is_live() {
            return;
        }
        reservation.state = state;
        reservation.ended_reason = Some(reason.to_string());
        let id = reservation.id.clone();
        let bench = reservation.bench_id.clone();
        for run in self
            .runs
            .iter_mut()
            .filter(|r| r.reservation_id == id && r.state == RunState::Running)
        {
            run.state = if state == ResState::Lost {
                RunState::Lost
            } else {
                RunState::Cancelled
            };
            run.ended_ms = Some(now);
            run.error = Some(reason.to_string());
        }
        if let Some(bench) = bench
            && state != ResState::Lost
        {
            self.free_bench(&bench);
        }
    }

    /// Move time on: expire leases, end runs, lose runs on offline
    /// benches, allocate queued reservations.
    pub(crate) fn settle(&mut self, now: u64) {
        for i in 0..self.reservations.len() {
            let r = &self.reservations[i];
            if r.state.is_live() && now > r.lease_expires_ms {
                self.end_reservation(i, ResState::Expired, "lease_expired", now);
            }
        }
        let offline: Vec<String> = self
            .benches
            .iter()
            .filter(|b| b.health == Health::Offline)
            .map(|b| b.config.id.clone())
            .collect();
        for i in 0..self.reservations.len() {
            let r = &self.reservations[i];
            if r.state == ResState::Allocated
                && r.bench_id.as_ref().is_some_and(|b| offline.contains(b))
            {
                self.end_reservation(i, ResState::Lost, "bench_offline", now);
            }
        }
        let mut finished_benches = Vec::new();
        for run in self
            .runs
            .iter_mut()
            .filter(|r| r.state == RunState::Running)
        {
            let limit = run
                .timeout_ms
                .map_or(run.duration_ms, |t| t.min(run.duration_ms));
            if now >= run.started_ms + limit {
                run.ended_ms = Some(run.started_ms + limit);
                if run.timeout_ms.is_some_and(|t| t < run.duration_ms) {
                    run.state = RunState::TimedOut;
                } else if let Some(message) = &run.planned_error {
                    run.state = RunState::Error;
                    run.error = Some(message.clone());
                } else {
                    run.exit_code = Some(run.planned_exit);
                    run.state = if run.planned_exit == 0 {
                        RunState::Passed
                    } else {
                        RunState::Failed
                    };
                }
                finished_benches.push(run.bench_id.clone());
            }
        }
        for bench in finished_benches {
            if let Some(b) = self.bench_mut(&bench)
                && b.health == Health::Running
            {
                b.health = Health::Reserved;
            }
        }
        let delay = self.config.allocation_delay_ms;
        for i in 0..self.reservations.len() {
            let r = &self.reservations[i];
            if r.state != ResState::Queued || now < r.created_ms + delay {
                continue;
            }
            let (bench_type, labels) = (r.bench_type.clone(), r.labels.clone());
            loop {
                let candidate = self.benches.iter().position(|b| {
                    b.health == Health::Idle
                        && b.config.bench_type == bench_type
                        && labels
                            .iter()
                            .all(|(k, v)| b.config.labels.get(k) == Some(v))
                });
                let Some(b) = candidate else { break };
                if self.benches[b].config.health_check_fails {
                    // The health check at allocation fails: never again.
                    self.benches[b].health = Health::Bad;
                    continue;
                }
                self.benches[b].health = Health::Reserved;
                let bench_id = self.benches[b].config.id.clone();
                let r = &mut self.reservations[i];
                r.state = ResState::Allocated;
                r.bench_id = Some(bench_id);
                break;
            }
        }
    }

    pub(crate) fn position(&self, r: &Reservation) -> Option<usize> {
        if r.state != ResState::Queued {
            return None;
        }
        Some(
            self.reservations
                .iter()
                .filter(|o| o.state == ResState::Queued && o.bench_type == r.bench_type)
                .take_while(|o| o.id != r.id)
                .count()
                + 1,
        )
    }

    pub(crate) fn reservation_json(&self, r: &Reservation) -> Value {
        let runs: Vec<&str> = self
            .runs
            .iter()
            .filter(|x| x.reservation_id == r.id)
            .map(|x| x.id.as_str())
            .collect();
        json!({
            "id": r.id,
            "state": r.state,
            "bench_type": r.bench_type,
            "labels": r.labels,
            "idempotency_key": r.idempotency_key,
            "owner": r.owner,
            "position": self.position(r),
            "bench_id": r.bench_id,
            "lease_seconds": r.lease_seconds,
            "lease_expires_at": r.lease_expires_ms / 1000,
            "created_at": r.created_ms / 1000,
            "ended_reason": r.ended_reason,
            "runs": runs,
        })
    }

    /// Build a run from its request, deterministically.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn plan_run(
        &mut self,
        reservation: &Reservation,
        command: &[String],
        env: &BTreeMap<String, String>,
        package_uri: Option<&str>,
        timeout_seconds: Option<u64>,
        idempotency_key: Option<String>,
        now: u64,
    ) -> Result<Run, String> {
        let exit = env_number(env, "SIM_EXIT", 0)?;
        let lines = env_number(env, "SIM_LINES", 3)?;
        let duration = env_number(env, "SIM_DURATION_MS", 200)?;
        if lines > 1_000_000 {
            return Err("env.SIM_LINES: at most 1000000".into());
        }
        let artifacts: Vec<String> = env
            .get("SIM_ARTIFACTS")
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_else(|| vec!["report.xml".to_string()]);
        let mut hasher = Sha256::new();
        hasher.update(
            serde_json::to_vec(&json!({"command": command, "env": env, "package": package_uri}))
                .unwrap_or_default(),
        );
        let digest = hex::encode(hasher.finalize());
        let bench_id = reservation.bench_id.clone().unwrap_or_default();
        let mut log = vec![format!("$ {}", command.join(" "))];
        log.push(format!(
            "bench {bench_id}, package {}",
            package_uri.unwrap_or("none")
        ));
        for (k, v) in env.iter().filter(|(k, _)| !k.starts_with("SIM_")) {
            log.push(format!("env {k}={v}"));
        }
        for i in 1..=lines {
            log.push(format!("line {i} of {lines} [{}]", &digest[..12]));
        }
        log.push(format!("exit {exit}"));
        let artifacts = artifacts
            .into_iter()
            .map(|name| {
                let body = format!("{name}: run of {} [{digest}]\n", command.join(" "));
                (name, body.into_bytes())
            })
            .collect();
        Ok(Run {
            id: self.next_id("run"),
            reservation_id: reservation.id.clone(),
            bench_id,
            idempotency_key,
            state: RunState::Running,
            exit_code: None,
            started_ms: now,
            ended_ms: None,
            duration_ms: duration,
            timeout_ms: timeout_seconds.map(|s| s * 1000),
            planned_exit: i32::try_from(exit)
                .map_err(|_| "env.SIM_EXIT: out of range".to_string())?,
            planned_error: env.get("SIM_ERROR").cloned(),
            log,
            artifacts,
            error: None,
        })
    }
}

impl Run {
    /// The log text visible at `now`: lines appear evenly over the run.
    pub(crate) fn visible_log(&self, now: u64) -> String {
        let total = self.log.len();
        let complete = matches!(
            self.state,
            RunState::Passed | RunState::Failed | RunState::Error
        );
        let at = if self.state == RunState::Running {
            now
        } else {
            self.ended_ms.unwrap_or(now)
        };
        let shown = if complete || self.duration_ms == 0 {
            total
        } else {
            // The first line at once, the rest spread over the duration; a
            // run cut short (cancelled, lost, timed out) stops where it was.
            let elapsed = at.saturating_sub(self.started_ms);
            (1 + ((total as u64 - 1) * elapsed / self.duration_ms) as usize).min(total)
        };
        let mut text = String::new();
        for line in &self.log[..shown.min(total)] {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "reservation_id": self.reservation_id,
            "bench_id": self.bench_id,
            "idempotency_key": self.idempotency_key,
            "state": self.state,
            "exit_code": self.exit_code,
            "started_at": self.started_ms / 1000,
            "ended_at": self.ended_ms.map(|m| m / 1000),
            "error": self.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let err =
            SimConfig::from_yaml("benches:\n  - {id: a, type: rig, helth: idle}\n").unwrap_err();
        assert!(err.contains("benches[0]") && err.contains("helth"), "{err}");
        let err =
            SimConfig::from_yaml("benches:\n  - {id: a, type: rig, health: broken}\n").unwrap_err();
        assert!(err.contains("benches[0].health"), "{err}");
        let err = SimConfig::from_yaml("benches:\n  - {id: a, type: r}\n  - {id: a, type: r}\n")
            .unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn runs_follow_from_their_request() {
        let mut world = World::new(SimConfig::from_yaml("benches: [{id: a, type: r}]").unwrap());
        let r = Reservation {
            id: "res-1".into(),
            bench_type: "r".into(),
            labels: BTreeMap::new(),
            idempotency_key: "k".into(),
            owner: String::new(),
            state: ResState::Allocated,
            bench_id: Some("a".into()),
            lease_seconds: 30,
            lease_expires_ms: u64::MAX,
            created_ms: 0,
            ended_reason: None,
        };
        let env = BTreeMap::from([("SIM_LINES".to_string(), "4".to_string())]);
        let one = world
            .plan_run(&r, &["t".into()], &env, None, None, None, 0)
            .unwrap();
        let two = world
            .plan_run(&r, &["t".into()], &env, None, None, None, 0)
            .unwrap();
        assert_eq!(one.log, two.log);
        assert_eq!(one.artifacts, two.artifacts);
        assert_eq!(one.log.iter().filter(|l| l.starts_with("line ")).count(), 4);
        let bad = BTreeMap::from([("SIM_EXIT".to_string(), "x".to_string())]);
        assert!(
            world
                .plan_run(&r, &["t".into()], &bad, None, None, None, 0)
                .unwrap_err()
                .contains("SIM_EXIT")
        );
    }
}

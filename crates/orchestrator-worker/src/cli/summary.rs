//! The summary of settled executions that `submit --wait`, `results` and
//! the remote client print (its own module: each of them uses it).

use std::collections::BTreeMap;

use crate::store::{ExecState, ExecutionRecord};

/// The summary of settled executions, as `run` prints one.
pub(crate) fn summary(records: &[ExecutionRecord]) {
    println!("──────── summary ────────");
    for r in records {
        let outcome = match &r.result {
            Some(res) => format!(
                "{} (exit code {}) in {:.2}s",
                r.state,
                res.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                res.duration_ms as f64 / 1000.0
            ),
            None => r.state.to_string(),
        };
        if records.len() == 1 {
            println!("result     {outcome}");
        } else {
            println!("{:<40} {outcome}", r.new.key);
        }
        if let Some(d) = r.result.as_ref().and_then(|res| res.diagnosis.as_ref()) {
            println!("diagnosis  {d}");
        }
        if let Some(e) = &r.error {
            println!("error      {e}");
        }
        if let Some(counts) = r.result.as_ref().and_then(|res| res.counts) {
            println!(
                "tests      {} passed, {} failed, {} skipped",
                counts.passed, counts.failed, counts.skipped
            );
        }
        if records.len() == 1 {
            for a in &r.artifacts {
                println!("  {:<28} {:>10} B  {}", a.name, a.size, a.uri);
            }
        }
    }
    if records.len() > 1 {
        let mut counts: BTreeMap<ExecState, usize> = BTreeMap::new();
        for r in records {
            *counts.entry(r.state).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        println!("total      {}: {}", records.len(), parts.join(", "));
    }
}

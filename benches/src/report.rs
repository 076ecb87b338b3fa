//! The final report: throughput and latency percentiles per operation type, as text or JSON.

use hdrhistogram::Histogram;
use serde_json::json;

use crate::load::LoadResult;
use crate::workload::{Op, default_distribution};
use crate::{Args, Workload, seconds};

fn workload_name(args: &Args) -> String {
    use clap::ValueEnum;
    args.workload
        .to_possible_value()
        .expect("no workload is skipped")
        .get_name()
        .to_string()
}

fn distribution_name(args: &Args) -> String {
    use clap::ValueEnum;
    let distribution = args
        .distribution
        .unwrap_or_else(|| default_distribution(args.workload));
    distribution
        .to_possible_value()
        .expect("no distribution is skipped")
        .get_name()
        .to_string()
}

fn describe(args: &Args) -> String {
    let mut workload = workload_name(args);
    if args.workload == Workload::Mixed {
        workload = format!("mixed ({:.0}% reads)", args.read_ratio * 100.0);
    }
    let pace = match args.rate {
        Some(rate) => format!(
            "open loop at {rate} ops/s, at most {} in flight",
            args.concurrency
        ),
        None => format!("closed loop, concurrency {}", args.concurrency),
    };
    format!(
        "workload {workload}, {} keys ({}), {}-byte values, {pace}, {} s, reads {} ({})",
        args.keys,
        distribution_name(args),
        args.value_size,
        args.duration,
        args.consistency,
        args.replica
    )
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

pub fn text(args: &Args, result: &LoadResult) -> String {
    let elapsed = seconds(result.elapsed);
    let all = result.all();
    let mut out = format!("{}\n", describe(args));
    out.push_str(&format!(
        "ops: {} in {:.1} s = {:.0} ops/s; errors: {}\n",
        all.len(),
        elapsed,
        all.len() as f64 / elapsed,
        result.errors
    ));
    out.push_str(&format!(
        "{:<6} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}   (latency in ms)\n",
        "op", "count", "ops/s", "p50", "p90", "p99", "p99.9", "max"
    ));
    let per_op = Op::ALL
        .iter()
        .map(|op| (op.name(), &result.latencies[op.index()]));
    for (name, histogram) in per_op.chain([("all", &all)]) {
        if histogram.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "{:<6} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
            name,
            histogram.len(),
            histogram.len() as f64 / elapsed,
            millis(histogram.value_at_quantile(0.50)),
            millis(histogram.value_at_quantile(0.90)),
            millis(histogram.value_at_quantile(0.99)),
            millis(histogram.value_at_quantile(0.999)),
            millis(histogram.max()),
        ));
    }
    if let Some(rate) = args.rate {
        out.push_str(&format!(
            "open loop: {} of the {rate} ops/s scheduled started more than 1 ms late (all workers busy); \
             their latency counts from the intended start\n",
            result.late_starts
        ));
    }
    if result.phases.len() > 1 {
        out.push_str(&format!(
            "{:<6} {:>15} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}   (phases marked by SIGUSR1; latency in ms)\n",
            "phase", "seconds", "count", "ops/s", "p50", "p99", "p99.9", "max", "errors"
        ));
        for (n, phase) in result.phases.iter().enumerate() {
            let histogram = &phase.latencies;
            out.push_str(&format!(
                "{:<6} {:>15} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7}\n",
                n + 1,
                format!("{:.1}-{:.1}", seconds(phase.from), seconds(phase.to)),
                histogram.len(),
                histogram.len() as f64 / seconds(phase.to - phase.from).max(0.001),
                millis(histogram.value_at_quantile(0.50)),
                millis(histogram.value_at_quantile(0.99)),
                millis(histogram.value_at_quantile(0.999)),
                millis(histogram.max()),
                phase.errors,
            ));
        }
    }
    for sample in &result.error_samples {
        out.push_str(&format!("error: {sample}\n"));
    }
    out
}

fn latency(histogram: &Histogram<u64>, elapsed: f64) -> serde_json::Value {
    json!({
        "count": histogram.len(),
        "ops_per_sec": histogram.len() as f64 / elapsed,
        "p50_us": histogram.value_at_quantile(0.50),
        "p90_us": histogram.value_at_quantile(0.90),
        "p99_us": histogram.value_at_quantile(0.99),
        "p999_us": histogram.value_at_quantile(0.999),
        "max_us": histogram.max(),
    })
}

pub fn json(args: &Args, result: &LoadResult) -> String {
    let elapsed = seconds(result.elapsed);
    let all = result.all();
    let mut per_op = serde_json::Map::new();
    per_op.insert("all".to_string(), latency(&all, elapsed));
    for op in Op::ALL {
        per_op.insert(
            op.name().to_string(),
            latency(&result.latencies[op.index()], elapsed),
        );
    }
    json!({
        "workload": workload_name(args),
        "read_ratio": args.read_ratio,
        "distribution": distribution_name(args),
        "rate": args.rate,
        "late_starts": result.late_starts,
        "keys": args.keys,
        "value_size": args.value_size,
        "concurrency": args.concurrency,
        "consistency": args.consistency,
        "replica": args.replica,
        "duration_s": elapsed,
        "preloaded_keys": result.preloaded,
        "ops": all.len(),
        "ops_per_sec": all.len() as f64 / elapsed,
        "errors": result.errors,
        "error_samples": result.error_samples,
        "latency": per_op,
        "phases": result.phases.iter().map(|phase| {
            let mut entry = latency(&phase.latencies, seconds(phase.to - phase.from).max(0.001));
            entry["from_s"] = json!(seconds(phase.from));
            entry["to_s"] = json!(seconds(phase.to));
            entry["errors"] = json!(phase.errors);
            entry
        }).collect::<Vec<_>>(),
    })
    .to_string()
}

//! The final report: throughput and latency percentiles per operation type, as text or JSON.

use hdrhistogram::Histogram;
use serde_json::json;

use crate::load::LoadResult;
use crate::{Args, Workload, seconds};

fn describe(args: &Args) -> String {
    let workload = match args.workload {
        Workload::Write => "write".to_string(),
        Workload::Read => "read".to_string(),
        Workload::Mixed => format!("mixed ({:.0}% reads)", args.read_ratio * 100.0),
    };
    format!(
        "workload {workload}, {} keys, {}-byte values, concurrency {}, {} s",
        args.keys, args.value_size, args.concurrency, args.duration
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
    for (name, histogram) in [("read", &result.reads), ("write", &result.writes), ("all", &all)] {
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
    json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "read_ratio": args.read_ratio,
        "keys": args.keys,
        "value_size": args.value_size,
        "concurrency": args.concurrency,
        "duration_s": elapsed,
        "preloaded_keys": result.preloaded,
        "ops": all.len(),
        "ops_per_sec": all.len() as f64 / elapsed,
        "errors": result.errors,
        "error_samples": result.error_samples,
        "latency": {
            "all": latency(&all, elapsed),
            "read": latency(&result.reads, elapsed),
            "write": latency(&result.writes, elapsed),
        },
    })
    .to_string()
}

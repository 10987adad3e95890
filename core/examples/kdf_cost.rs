//! What one passphrase guess costs on this machine: the Argon2id derivation that unwraps a
//! ledger's key (ADR 10), for the default costs and a few others, median of several runs.
//!
//! Run with `cargo run --release -p fq-core --example kdf_cost`. It prints milliseconds per
//! derivation and what that means for an attacker who copied the files: guesses per second
//! on all cores of this machine, and the days needed to try every 6-digit PIN.

use std::time::Duration;

use fq_core::vault::{KdfParams, derivation_cost};

const RUNS: usize = 7;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("cores: {cores}");
    println!(
        "{:>10} {:>6} {:>6} {:>10} {:>12} {:>14}",
        "memory", "passes", "lanes", "ms/guess", "guesses/s", "6-digit PINs"
    );
    let candidates = [
        KdfParams { memory_kib: 19 * 1024, iterations: 2, lanes: 1 },
        KdfParams { memory_kib: 32 * 1024, iterations: 3, lanes: 1 },
        KdfParams::DEFAULT,
        KdfParams { memory_kib: 128 * 1024, iterations: 3, lanes: 1 },
        KdfParams { memory_kib: 256 * 1024, iterations: 4, lanes: 1 },
    ];
    for params in candidates {
        let mut times: Vec<Duration> = (0..RUNS).map(|_| derivation_cost(params)).collect::<Result<_, _>>()?;
        times.sort();
        let median = times[RUNS / 2].as_secs_f64();
        // An attacker runs one derivation per core at once (memory allows it here).
        let rate = cores as f64 / median;
        let all_pins = 1e6 / rate;
        println!(
            "{:>7}MiB {:>6} {:>6} {:>10.1} {:>12.1} {:>11.1} h{}",
            params.memory_kib / 1024,
            params.iterations,
            params.lanes,
            median * 1e3,
            rate,
            all_pins / 3600.0,
            if params == KdfParams::DEFAULT { "  <- default" } else { "" }
        );
    }
    Ok(())
}

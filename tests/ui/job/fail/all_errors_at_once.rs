// Every mistake is reported in one pass, each at its own token.
use job_core::prelude::*;

#[job(queue = "", max_attempts = -1, backoff(initial = "2x", jitter = "high"), retries = 3)]
fn send_email<T>(&self, (a, b): (T, T), to: &str) {}

fn main() {}

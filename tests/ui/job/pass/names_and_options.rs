// `name` overrides the wire name; options left out keep job_core's defaults; a partial
// `backoff(..)` keeps the defaults of the parts it does not set.
use std::time::Duration;

use job_core::prelude::*;

#[job(name = "billing.charge-v2")]
async fn charge(customer: u64) -> Result<(), std::io::Error> {
    let _ = customer;
    Ok(())
}

#[job(backoff(jitter = 0), max_attempts = 1)]
async fn once(n: u8) -> Result<(), std::io::Error> {
    let _ = n;
    Ok(())
}

#[job(timeout = "1_500ms", backoff(max = "1h"))]
async fn slow(n: u8) -> Result<(), std::io::Error> {
    let _ = n;
    Ok(())
}

// A raw identifier: the struct is `Type`, the job and field names have no `r#`.
#[job]
async fn r#type(r#match: String) -> Result<(), std::io::Error> {
    let _ = r#match;
    Ok(())
}

// A `#[cfg]` on the fn applies to everything generated: nothing here clashes with the
// hand-written `NeverBuilt` below.
#[job]
#[cfg(any())]
async fn never_built(n: u8) -> Result<(), std::io::Error> {
    let _ = n;
    Ok(())
}

#[allow(dead_code)]
struct NeverBuilt;

#[job]
async fn defaults(n: u8) -> Result<(), std::io::Error> {
    let _ = n;
    Ok(())
}

fn main() {
    assert_eq!(<Charge as Job>::NAME, "billing.charge-v2");
    assert_eq!(<Type as Job>::NAME, "type");
    let json = serde_json::to_value(Type {
        r#match: "x".into(),
    })
    .unwrap();
    assert_eq!(json, serde_json::json!({ "match": "x" }));

    assert_eq!(Defaults::options(), JobOptions::default());

    let once = Once::options();
    assert_eq!(once.max_attempts, 1);
    assert_eq!(once.backoff.jitter, 0.0);
    assert_eq!(once.backoff.initial, Backoff::DEFAULT.initial);
    assert_eq!(once.backoff.max, Backoff::DEFAULT.max);
    assert_eq!(once.queue, JobOptions::default().queue);

    let slow = Slow::options();
    assert_eq!(slow.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(slow.backoff.max, Duration::from_secs(3600));
    assert_eq!(slow.backoff.initial, Backoff::DEFAULT.initial);
}

// `unique(by = [..], for = "..", until = "..")` in every form, beside the other keys and
// injected parameters; `Job::unique` is what was written.
use std::time::Duration;

use job_core::prelude::*;
use job_core::unique::UniqueUntil;

pub trait Mailer: Send + Sync {}

#[job(queue = "email", unique(by = [to, subject], for = "10m"), max_attempts = 5)]
async fn send_email(
    to: String,
    subject: String,
    body: String,
    cx: &JobContext,
    mailer: &dyn Mailer,
) -> Result<(), std::io::Error> {
    let _ = (to, subject, body, cx, mailer);
    Ok(())
}

#[job(unique(for = "24h", until = "finished"))]
async fn sync_account(account: u64, full: bool) -> Result<(), std::io::Error> {
    let _ = (account, full);
    Ok(())
}

// One field: a 1-tuple; keys in any order; `until = "window"` is the default spelled out.
#[job(unique(until = "window", for = "1500ms", by = [account]))]
async fn refresh(account: u64, reason: String) -> Result<(), std::io::Error> {
    let _ = (account, reason);
    Ok(())
}

// No payload: one key for the job.
#[job(unique(for = "1h"), cron = "0 * * * *")]
async fn hourly() -> Result<(), std::io::Error> {
    Ok(())
}

// A raw identifier, written either way.
#[job(unique(by = [r#match, r#type], for = "1m"))]
async fn raw(r#match: String, r#type: u8) -> Result<(), std::io::Error> {
    let _ = (r#match, r#type);
    Ok(())
}

mod renamed {
    pub use job_core::*;
}

#[job_core::job(crate = crate::renamed, unique(for = "5s"))]
async fn through_path(n: u8) -> Result<(), std::io::Error> {
    let _ = n;
    Ok(())
}

fn main() {
    let email = SendEmail {
        to: "ada@example.com".into(),
        subject: "hi".into(),
        body: "one".into(),
    }
    .unique()
    .unwrap();
    assert_eq!(email.window(), Duration::from_secs(600));
    assert_eq!(email.until(), UniqueUntil::Window);

    let sync = SyncAccount {
        account: 7,
        full: false,
    }
    .unique()
    .unwrap();
    assert_eq!(sync.window(), Duration::from_secs(24 * 3600));
    assert_eq!(sync.until(), UniqueUntil::Finished);

    let refresh = Refresh {
        account: 7,
        reason: "login".into(),
    };
    assert_eq!(refresh.unique().unwrap().window(), Duration::from_millis(1500));
    assert_eq!(Hourly.unique(), Hourly.unique());
    assert!(
        Raw {
            r#match: "x".into(),
            r#type: 1
        }
        .unique()
        .is_some()
    );
    assert!(ThroughPath { n: 1 }.unique().is_some());
}

// Every enqueue form of DESIGN.md works on the generated type; the inherent methods need
// no `use job_core::Job`.
use std::time::{Duration, SystemTime};

mod jobs {
    use job_core::{JobContext, job};

    #[job]
    pub async fn send_email(to: String, cx: &JobContext) -> Result<(), std::io::Error> {
        let _ = (to, cx);
        Ok(())
    }
}

use jobs::SendEmail;

fn email() -> SendEmail {
    SendEmail {
        to: "a@example.com".into(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // No runtime yet: every form gives the job back.
    let err = email().try_enqueue().unwrap_err();
    assert_eq!(err.into_inner().to, "a@example.com");

    let runtime = job_core::JobRuntime::builder().start().unwrap();
    let ids = [
        email().enqueue().await.unwrap(),
        job_core::Job::enqueue(email()).await.unwrap(),
        runtime.client().enqueue(email()).await.unwrap(),
        email().try_enqueue().unwrap(),
        email().enqueue_in(Duration::from_millis(1)).await.unwrap(),
        email().enqueue_at(SystemTime::now()).await.unwrap(),
    ];
    for id in ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = runtime.status(id).await.unwrap().map(|s| s.state);
            if state == Some(job_core::JobState::Succeeded) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} is {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    runtime.shutdown().await;
}

// Any `Result<_, E>` with `E: Classify` works, whatever it is called: std's, an alias, the
// catch-all error types with their documented default class. `Ok` values are discarded.
use job_core::prelude::*;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type JobResult<T = ()> = Result<T, std::io::Error>;

#[job]
async fn with_anyhow(fail: bool) -> anyhow::Result<()> {
    if fail {
        anyhow::bail!("flaky upstream");
    }
    Ok(())
}

#[job]
async fn with_io(path: String) -> std::io::Result<u64> {
    Err(std::io::Error::new(std::io::ErrorKind::NotFound, path))
}

#[job]
async fn with_boxed(n: u32) -> Result<u32, BoxError> {
    Ok(n)
}

#[job]
async fn with_alias(n: u32) -> JobResult {
    let _ = n;
    Ok(())
}

#[job]
async fn never_fails(n: u32) -> Result<(), std::convert::Infallible> {
    let _ = n;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cx = JobContext::detached("t");
    let err = WithAnyhow { fail: true }.run(&cx).await.unwrap_err();
    assert_eq!(
        err.classify(),
        ErrorClass::Transient,
        "anyhow errors are transient by default"
    );
    WithAnyhow { fail: false }.run(&cx).await.unwrap();

    let err = WithIo {
        path: "/nope".into(),
    }
    .run(&cx)
    .await
    .unwrap_err();
    assert_eq!(
        err.classify(),
        ErrorClass::Permanent,
        "io NotFound is permanent"
    );

    WithBoxed { n: 3 }.run(&cx).await.unwrap();
    WithAlias { n: 3 }.run(&cx).await.unwrap();
    NeverFails { n: 3 }.run(&cx).await.unwrap();

    let _: fn(&<WithBoxed as Job>::Error) = |e| drop(e.classify());
}

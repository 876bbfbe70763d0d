//! Every line logged inside a job carries its id, name, queue and attempt.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use job_core::prelude::*;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Loud;

impl Job for Loud {
    const NAME: &'static str = "loud";
    type Error = std::io::Error;
    type Output = ();
    fn options() -> JobOptions {
        JobOptions::new().queue("noisy").backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(1),
            0.0,
        ))
    }
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        tracing::info!("working hard");
        if cx.attempt() == 1 {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        Ok(())
    }
}

#[tokio::test]
async fn log_lines_inside_a_job_carry_its_span() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let rt = JobRuntime::builder().register::<Loud>().start().unwrap();
    let id = rt.client().enqueue(Loud).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rt.status(id).await.unwrap().unwrap().state != JobState::Succeeded {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rt.shutdown().await;

    let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<_> = out.lines().filter(|l| l.contains("working hard")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (n, line) in lines.iter().enumerate() {
        let attempt = n + 1;
        assert!(
            line.contains(&format!(
                "job{{job_id={id} job=\"loud\" queue=\"noisy\" attempt={attempt}}}"
            )),
            "{line}"
        );
    }
    let retry_line = out
        .lines()
        .find(|l| l.contains("will retry"))
        .expect("retry logged");
    assert!(retry_line.contains(&format!("job_id={id}")), "{retry_line}");
}

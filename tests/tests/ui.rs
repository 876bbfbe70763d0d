//! Compile-time behaviour of `#[job]` and `#[derive(JobError)]`: what compiles, and the
//! exact errors for what does not. Error text varies between compiler releases, so the
//! snapshots are checked on stable only. Refresh them with `TRYBUILD=overwrite` and review
//! every changed `.stderr`.

#[rustversion::stable]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/job/pass/*.rs");
    t.compile_fail("ui/job/fail/*.rs");
    t.pass("ui/job_error/pass/*.rs");
    t.compile_fail("ui/job_error/fail/*.rs");
}

// The derive's helper attribute and the attribute macro share the name `job`; with both
// imported by name, `#[job(..)]` inside the derived enum is still the helper.
use job_core::{Classify, ErrorClass, JobError, job};

#[derive(Debug, thiserror::Error, JobError)]
#[job(default = permanent)]
pub enum ReportError {
    #[error("database busy")]
    #[job(transient)]
    Busy,
    #[error("no such report")]
    Missing,
}

#[job]
async fn build_report(id: u64) -> Result<(), ReportError> {
    if id == 0 {
        Err(ReportError::Missing)
    } else {
        Err(ReportError::Busy)
    }
}

fn main() {
    assert_eq!(ReportError::Busy.classify(), ErrorClass::Transient);
    assert_eq!(ReportError::Missing.classify(), ErrorClass::Permanent);
    let _ = BuildReport { id: 1 };
}

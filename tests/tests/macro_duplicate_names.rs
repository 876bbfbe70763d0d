//! Two `#[job]` types with one wire name: the runtime refuses to start and names both
//! types. A binary of its own, because `inventory` registers every job of the binary with
//! every runtime it starts.

mod billing {
    use job_core::prelude::*;

    #[job(name = "charge")]
    pub(crate) async fn charge_card(cents: u64) -> Result<(), std::io::Error> {
        let _ = cents;
        Ok(())
    }
}

mod legacy {
    use job_core::prelude::*;

    // The fn name is the default wire name: it collides with `billing`'s explicit one.
    #[job]
    pub(crate) async fn charge(cents: u64) -> Result<(), std::io::Error> {
        let _ = cents;
        Ok(())
    }
}

#[tokio::test]
async fn two_jobs_with_one_name_make_start_fail_naming_both() {
    let Err(err) = job_core::JobRuntime::builder().start() else {
        panic!("start() must refuse two job types named `charge`");
    };
    let message = err.to_string();
    assert!(
        message.contains("two job types are named `charge`"),
        "{message}"
    );
    assert!(
        message.contains("macro_duplicate_names::billing::ChargeCard"),
        "{message}"
    );
    assert!(
        message.contains("macro_duplicate_names::legacy::Charge"),
        "{message}"
    );
    assert!(message.contains("#[job(name = \"...\")]"), "{message}");
}

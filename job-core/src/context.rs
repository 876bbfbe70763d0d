//! [`JobContext`]: what an attempt knows about itself, and the values injected into it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::error::BoxError;
use crate::job::JobId;

/// The context of one attempt: the job's id, the attempt number, a cancellation token that
/// fires when shutdown's drain window runs out, and the values registered on the builder.
///
/// A `#[job]` function receives it by declaring a `&JobContext` parameter.
///
/// # Examples
/// ```
/// use job_core::JobContext;
///
/// async fn careful_work(cx: &JobContext) -> usize {
///     tracing::info!(job_id = %cx.id(), attempt = cx.attempt(), "starting");
///     let mut done = 0;
///     for _chunk in 0..10 {
///         if cx.is_cancelled() {
///             break; // shutting down: stop at a safe point
///         }
///         done += 1;
///     }
///     done
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cx = JobContext::detached("careful_work");
/// assert_eq!(careful_work(&cx).await, 10);
/// cx.cancellation_token().cancel();
/// assert_eq!(careful_work(&cx).await, 0);
/// # }
/// ```
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) job: &'static str,
    pub(crate) queue: &'static str,
    pub(crate) cancel: CancellationToken,
    pub(crate) data: Arc<DataMap>,
    pub(crate) scoped: Mutex<Vec<(TypeId, Box<dyn Any + Send>)>>,
    /// Where [`progress`](Self::progress) goes: the worker's cell (none when detached).
    pub(crate) progress: Option<Arc<ProgressCell>>,
}

/// The most bytes of JSON one [`JobContext::progress`] report may take.
pub const PROGRESS_LIMIT: usize = 1024;

/// The progress a worker's current attempt reported last, read by status queries and (on a
/// durable store) written to the store at most every 100 ms by one writer.
#[derive(Debug, Default)]
pub(crate) struct ProgressCell {
    value: Mutex<Option<(JobId, crate::backend::Payload)>>,
    /// Set by a report, cleared by the writer that takes it.
    dirty: std::sync::atomic::AtomicBool,
    /// Set by a report, cleared by `clear`: an attempt that reports nothing costs no lock.
    used: std::sync::atomic::AtomicBool,
}

impl ProgressCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(JobId, crate::backend::Payload)>> {
        self.value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, id: JobId, value: crate::backend::Payload) {
        *self.lock() = Some((id, value));
        self.used.store(true, std::sync::atomic::Ordering::Release);
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The latest report, if one came since the last call (for the writer).
    pub(crate) fn take_dirty(&self) -> Option<(JobId, crate::backend::Payload)> {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return None;
        }
        self.lock().clone()
    }

    /// The latest report of job `id`, if this cell holds one.
    pub(crate) fn of(&self, id: JobId) -> Option<crate::backend::Payload> {
        self.lock()
            .as_ref()
            .filter(|(job, _)| *job == id)
            .map(|(_, p)| p.clone())
    }

    /// Empties the cell (a new attempt starts); gives what it held.
    pub(crate) fn clear(&self) -> Option<(JobId, crate::backend::Payload)> {
        if !self.used.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return None;
        }
        self.dirty
            .store(false, std::sync::atomic::Ordering::Release);
        self.lock().take()
    }
}

impl JobContext {
    /// A context for running a job by hand, outside a runtime (tests): attempt 1 of 1, a
    /// fresh id, no registered values, a token that never fires unless you cancel it.
    pub fn detached(job: &'static str) -> Self {
        Self {
            id: JobId::new(),
            attempt: 1,
            max_attempts: 1,
            job,
            queue: "default",
            cancel: CancellationToken::new(),
            data: Arc::new(DataMap::default()),
            scoped: Mutex::new(Vec::new()),
            progress: None,
        }
    }

    /// The context a worker reuses for every attempt it runs (fields set per attempt).
    pub(crate) fn for_worker(
        cancel: CancellationToken,
        data: Arc<DataMap>,
        progress: Arc<ProgressCell>,
    ) -> Self {
        Self {
            id: JobId::from(uuid::Uuid::nil()),
            attempt: 0,
            max_attempts: 0,
            job: "",
            queue: "",
            cancel,
            data,
            scoped: Mutex::new(Vec::new()),
            progress: Some(progress),
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// This attempt's number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The job's attempt budget.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// True on the job's last attempt.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The job's name.
    pub fn job_name(&self) -> &'static str {
        self.job
    }

    /// The job's queue.
    pub fn queue(&self) -> &'static str {
        self.queue
    }

    /// The token that fires when the attempt is asked to stop: shutdown's drain window has
    /// run out, the job was cancelled by id ([`Client::cancel`](crate::Client::cancel)), or
    /// its `timeout` has passed. Long jobs should check it at safe points (or `select!` on
    /// [`cancelled`](Self::cancelled)) and return; an attempt still running the
    /// [`cancel_grace`](crate::JobRuntimeBuilder::cancel_grace) after its token fired is
    /// dropped. What it returns after a cancel by id or a timeout does not change the
    /// outcome (cancelled; timed out, and retried if attempts remain).
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// True once the attempt has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the attempt is asked to stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Reports how far the attempt has got: a percentage (`cx.progress(&40)`) or any small
    /// serializable value (`cx.progress(&json!({"rows": 1200, "of": 5000}))`), at most
    /// [`PROGRESS_LIMIT`] bytes of JSON. It shows in the job's status
    /// ([`JobStatus::progress`](crate::JobStatus::progress)) at once in memory; on a
    /// durable store the latest report is written at most every 100 ms (and once more when
    /// the attempt ends), so calling it in a tight loop costs a lock and an encode, never a
    /// round trip per call. The last report is kept after the job finishes.
    ///
    /// ```
    /// use job_core::JobContext;
    ///
    /// let cx = JobContext::detached("export");
    /// cx.progress(&40).unwrap();
    /// assert!(cx.progress(&"x".repeat(2_000)).unwrap_err().to_string().contains("1024"));
    /// ```
    ///
    /// # Errors
    /// [`ProgressError::TooLarge`](crate::ProgressError::TooLarge) over the limit,
    /// [`ProgressError::Serialize`](crate::ProgressError::Serialize) when the value does
    /// not serialize; nothing is recorded then.
    pub fn progress<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<(), crate::error::ProgressError> {
        let payload = crate::backend::Payload::encode(value)
            .map_err(|e| crate::error::ProgressError::Serialize(e.to_string()))?;
        if payload.len() > PROGRESS_LIMIT {
            return Err(crate::error::ProgressError::TooLarge {
                size: payload.len(),
                limit: PROGRESS_LIMIT,
            });
        }
        if let Some(cell) = &self.progress {
            cell.set(self.id, payload);
        }
        Ok(())
    }

    /// A value registered with [`JobRuntimeBuilder::data`](crate::JobRuntimeBuilder::data).
    pub fn data<T: ?Sized + Send + Sync + 'static>(&self) -> Option<&T> {
        self.data.get::<T>()
    }

    /// Takes the scoped dependency of type `T` built for this attempt. `None` when none was
    /// built (the job did not declare it) or it was already taken.
    pub fn take_scoped<T: Send + 'static>(&self) -> Option<Box<T>> {
        let mut slots = self
            .scoped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pos = slots.iter().position(|(t, _)| *t == TypeId::of::<T>())?;
        let (_, value) = slots.swap_remove(pos);
        value.downcast::<T>().ok()
    }

    /// Registers a scoped value for this context (used by [`detached`](Self::detached)
    /// contexts in tests).
    pub fn with_scoped<T: Send + 'static>(self, value: T) -> Self {
        self.scoped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((TypeId::of::<T>(), Box::new(value)));
        self
    }

    /// Adds a shared value to a [`detached`](Self::detached) context (tests).
    pub fn with_data<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        let mut map = (*self.data).clone();
        map.insert(value);
        self.data = Arc::new(map);
        self
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("job", &self.job)
            .field("queue", &self.queue)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Shared values by type. Each value is stored as an `Arc<T>` inside a `Box<dyn Any>`, so
/// unsized types (`dyn Mailer`) work.
#[derive(Default, Clone)]
pub(crate) struct DataMap {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    names: HashMap<TypeId, &'static str>,
}

impl DataMap {
    pub(crate) fn insert<T: ?Sized + Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
        self.names
            .insert(TypeId::of::<T>(), std::any::type_name::<T>());
    }

    pub(crate) fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<Arc<T>>())
            .map(|arc| &**arc)
    }

    pub(crate) fn contains(&self, id: TypeId) -> bool {
        self.values.contains_key(&id)
    }
}

impl fmt::Debug for DataMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names.values()).finish()
    }
}

type ScopedFuture = Pin<Box<dyn Future<Output = Result<Box<dyn Any + Send>, BoxError>> + Send>>;

/// A factory for a per-attempt scoped dependency.
#[derive(Clone)]
pub(crate) struct ScopedFactory {
    pub(crate) type_name: &'static str,
    pub(crate) make: Arc<dyn Fn() -> ScopedFuture + Send + Sync>,
}

impl ScopedFactory {
    pub(crate) fn new<T, F, Fut>(make: F) -> Self
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
    {
        Self {
            type_name: std::any::type_name::<T>(),
            make: Arc::new(move || {
                let fut = make();
                Box::pin(async move { fut.await.map(|v| Box::new(v) as Box<dyn Any + Send>) })
            }),
        }
    }
}

impl fmt::Debug for ScopedFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedFactory")
            .field("type", &self.type_name)
            .finish_non_exhaustive()
    }
}

/// What a job needs injected, declared by [`Job::dependencies`](crate::Job::dependencies)
/// and checked by [`JobRuntimeBuilder::start`](crate::JobRuntimeBuilder::start).
#[derive(Debug, Default, Clone)]
pub struct Dependencies {
    pub(crate) items: Vec<Dependency>,
}

#[derive(Debug, Clone)]
pub(crate) struct Dependency {
    pub(crate) kind: DependencyKind,
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DependencyKind {
    Data,
    Scoped,
}

impl Dependencies {
    /// The job borrows a shared `&T` registered with
    /// [`JobRuntimeBuilder::data`](crate::JobRuntimeBuilder::data). `JobContext` itself is
    /// always available and is ignored here.
    pub fn data<T: ?Sized + 'static>(&mut self) -> &mut Self {
        if TypeId::of::<T>() != TypeId::of::<JobContext>() {
            self.items.push(Dependency {
                kind: DependencyKind::Data,
                type_id: TypeId::of::<T>(),
                type_name: std::any::type_name::<T>(),
            });
        }
        self
    }

    /// The job borrows a `&mut T` built for each attempt by the factory registered with
    /// [`JobRuntimeBuilder::scoped`](crate::JobRuntimeBuilder::scoped).
    pub fn scoped<T: 'static>(&mut self) -> &mut Self {
        self.items.push(Dependency {
            kind: DependencyKind::Scoped,
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        });
        self
    }
}

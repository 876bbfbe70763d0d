//! Enqueue, reserve and the fenced write-backs (ack, retry, dead-letter, release, extend),
//! and the reaper's lease check.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::time::Instant;

use super::AmqpBackend;
use super::conn::{Link, lock};
use super::decode::{self, Meta, StoredDead};
use super::held::{self, Held, Outcome};
use super::topology::{self, BUCKET_HEADER};
use crate::backend::{
    BackendError, Envelope, Extended, LeaseToken, Reservation, Retry, from_unix_ms, unix_ms,
};
use crate::dead_letter::DeadLetter;
use crate::job::{JobId, is_valid_name};

/// A job is handed out only once its start time has come (never early): a job due in less
/// than the shortest bucket waits in that bucket.
const DUE_SLACK: Duration = Duration::ZERO;
/// How long a short reservation waits for deliveries the broker says are on their way.
const DELIVERY_WAIT: Duration = Duration::from_secs(2);
/// A held delivery is given back once its lease went unrenewed for this many lease lengths.
/// The connection is what fences it (a dead holder's deliveries come back from the broker);
/// this process's own expiry is for a stalled worker, and a heartbeat late on a loaded
/// machine must not make a running job run twice.
const LEASE_SLACK: u32 = 2;

pub(super) fn check_name(what: &str, name: &str) -> Result<(), BackendError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(BackendError::InvalidName(format!(
            "invalid {what} name {name:?}: names must match [A-Za-z0-9_.-]{{1,64}} to become RabbitMQ queue names"
        )))
    }
}

impl AmqpBackend {
    /// Publishes a job for `meta`: to its work queue when due, else to the wait bucket for
    /// the time left. Returns once the broker confirmed it.
    pub(super) async fn send(
        &self,
        link: &Link,
        meta: &Meta,
        body: &[u8],
    ) -> Result<(), BackendError> {
        let start = self.start_send(link, meta, body).await?;
        self.confirmed(link, start).await
    }

    async fn start_send(
        &self,
        link: &Link,
        meta: &Meta,
        body: &[u8],
    ) -> Result<lapin::PublisherConfirm, BackendError> {
        self.work_queue(link, &meta.queue).await?;
        let now = SystemTime::now();
        let wait = meta
            .not_before
            .map(from_unix_ms)
            .and_then(|at| at.duration_since(now).ok())
            .filter(|left| *left > DUE_SLACK);
        match wait {
            None => {
                self.start_publish(
                    link,
                    &self.names.work_exchange(),
                    &meta.queue,
                    body,
                    meta.properties(&[]),
                )
                .await
            }
            Some(left) => {
                let bucket = topology::bucket_for(left);
                self.wait_queue(link, bucket).await?;
                let props = meta.properties(&[(BUCKET_HEADER, bucket.to_string())]);
                self.start_publish(link, &self.names.wait_exchange(), &meta.queue, body, props)
                    .await
            }
        }
    }

    fn check_capacity(&self, capacity: u64, adding: u64) -> Result<(), BackendError> {
        // The depth the last stats call counted (approximate: see the module docs).
        let depth = self.depth.load(std::sync::atomic::Ordering::Relaxed);
        if depth.saturating_add(adding) > capacity {
            Err(BackendError::Full)
        } else {
            Ok(())
        }
    }

    pub(super) async fn do_enqueue(
        &self,
        envelope: Envelope,
        capacity: u64,
    ) -> Result<(), BackendError> {
        check_name("queue", &envelope.queue)?;
        check_name("job", &envelope.job)?;
        self.check_capacity(capacity, 1)?;
        let link = self.link().await?;
        self.send(
            &link,
            &Meta::of(&envelope),
            envelope.payload.as_str().as_bytes(),
        )
        .await?;
        self.bump_depth(1);
        Ok(())
    }

    /// Publishes the whole batch before waiting for any confirm (the broker confirms them
    /// in a stream); returns how many of the first are confirmed.
    pub(super) async fn do_enqueue_batch(
        &self,
        envelopes: &[Envelope],
        capacity: u64,
    ) -> Result<usize, BackendError> {
        for e in envelopes {
            check_name("queue", &e.queue)?;
            check_name("job", &e.job)?;
        }
        let depth = self.depth.load(std::sync::atomic::Ordering::Relaxed);
        let room = usize::try_from(capacity.saturating_sub(depth)).unwrap_or(usize::MAX);
        let take = envelopes.len().min(room);
        if take == 0 && !envelopes.is_empty() {
            return Err(BackendError::Full);
        }
        let link = self.link().await?;
        let mut pending = Vec::with_capacity(take);
        let mut first_error = None;
        for e in &envelopes[..take] {
            match self
                .start_send(&link, &Meta::of(e), e.payload.as_str().as_bytes())
                .await
            {
                Ok(c) => pending.push(c),
                Err(err) => {
                    first_error = Some(err);
                    break;
                }
            }
        }
        let mut stored = 0;
        for c in pending {
            match self.confirmed(&link, c).await {
                Ok(()) if first_error.is_none() => stored += 1,
                Ok(()) => {}
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        self.bump_depth(stored as u64);
        match first_error {
            Some(err) if stored == 0 => Err(err),
            _ => Ok(stored),
        }
    }

    fn bump_depth(&self, n: u64) {
        self.depth
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Moves what the consumers of `queues` have received into the local buffers, without
    /// waiting. A consumer whose stream ended (its channel closed, or the broker cancelled
    /// it) is forgotten, so the next call starts it again.
    pub(super) fn drain_consumers(&self, link: &Link, queues: &[String]) {
        let mut consumers = lock(&link.consumers);
        let mut buffers = lock(&self.buffered);
        for q in queues {
            let Some(consumer) = consumers.get(q) else {
                continue;
            };
            let mut stream = consumer.clone();
            let mut ended = false;
            while let Some(next) = stream.next().now_or_never() {
                match next {
                    Some(Ok(d)) => buffers
                        .entry(q.clone())
                        .or_default()
                        .push_back((link.generation, d)),
                    Some(Err(e)) => {
                        tracing::warn!(queue = %q, error = %e, "a RabbitMQ consumer failed; starting it again");
                        ended = true;
                        break;
                    }
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                consumers.remove(q);
            }
        }
    }

    fn pop_buffered(&self, queue: &str) -> Option<(u64, Delivery)> {
        lock(&self.buffered).get_mut(queue)?.pop_front()
    }

    fn push_front(&self, queue: &str, generation: u64, d: Delivery) {
        lock(&self.buffered)
            .entry(queue.to_owned())
            .or_default()
            .push_front((generation, d));
    }

    pub(super) async fn do_reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Reservation>, BackendError> {
        let queues: Vec<String> = queues
            .iter()
            .filter(|q| is_valid_name(q))
            .cloned()
            .collect();
        let mut out = Vec::new();
        if max == 0 || queues.is_empty() {
            return Ok(out);
        }
        let link = self.link().await?;
        for q in &queues {
            self.consumer(&link, q).await?;
        }
        let deadline = Instant::now() + DELIVERY_WAIT;
        'reserve: loop {
            self.drain_consumers(&link, &queues);
            self.take(&link, &queues, max, lease, &mut out).await?;
            if out.len() >= max || Instant::now() >= deadline {
                break;
            }
            // Short: are more ready on the broker? Those on their way to a consumer with
            // room are waited for (the declare-ok comes after the deliveries the queue sent
            // before it); beyond the consumer's prefetch they are fetched one by one.
            let mut coming = false;
            for q in &queues {
                let ready = self.ready_count(&link, q).await?;
                if ready == 0 {
                    continue;
                }
                if self.room(q) {
                    coming = true;
                    continue;
                }
                for _ in 0..ready {
                    if out.len() >= max {
                        break;
                    }
                    let got = link
                        .consume
                        .basic_get(
                            self.names.work_queue(q).as_str().into(),
                            lapin::options::BasicGetOptions { no_ack: false },
                        )
                        .await
                        .map_err(|e| self.failed(&link, e))?;
                    let Some(got) = got else { break };
                    if let Err(e) = self
                        .hand_out(&link, q, link.generation, got.delivery, lease, &mut out)
                        .await
                    {
                        if out.is_empty() {
                            return Err(e);
                        }
                        break 'reserve;
                    }
                }
            }
            if out.len() >= max {
                break;
            }
            if !coming {
                self.drain_consumers(&link, &queues);
                self.take(&link, &queues, max, lease, &mut out).await?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The leases start when the caller gets them: a long reservation (many `basic.get`s
        // on a loaded machine) must not let the first ones expire before the caller holds
        // them and its heartbeat can renew them.
        let until = Instant::now() + lease * LEASE_SLACK;
        let mut held = lock(&self.held);
        for r in &out {
            if let Some(h) = r.token().as_u128().and_then(|t| held.get_mut(&t)) {
                h.expires = until;
            }
        }
        Ok(out)
    }

    /// Whether the consumer of `queue` has room for more deliveries under its prefetch.
    fn room(&self, queue: &str) -> bool {
        let held = lock(&self.held)
            .values()
            .filter(|h| h.queue == queue)
            .count();
        let buffered = lock(&self.buffered).get(queue).map_or(0, VecDeque::len);
        held + buffered < usize::from(self.settings.prefetch)
    }

    /// Ready messages in the work queue of `queue`, as the broker counts them.
    async fn ready_count(&self, link: &Link, queue: &str) -> Result<u32, BackendError> {
        let declared = link
            .consume
            .queue_declare(
                self.names.work_queue(queue).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.failed(link, e))?;
        Ok(declared.message_count())
    }

    /// Hands out buffered deliveries of `queues`, round robin, until `out` has `max`.
    async fn take(
        &self,
        link: &Link,
        queues: &[String],
        max: usize,
        lease: Duration,
        out: &mut Vec<Reservation>,
    ) -> Result<(), BackendError> {
        let mut empty: HashSet<&str> = HashSet::new();
        while out.len() < max && empty.len() < queues.len() {
            for q in queues {
                if out.len() >= max {
                    break;
                }
                if empty.contains(q.as_str()) {
                    continue;
                }
                let Some((generation, d)) = self.pop_buffered(q) else {
                    empty.insert(q);
                    continue;
                };
                if !d.acker.usable() {
                    // Its channel closed: the broker has it back.
                    continue;
                }
                if let Err(e) = self.hand_out(link, q, generation, d, lease, out).await {
                    return if out.is_empty() { Err(e) } else { Ok(()) };
                }
            }
        }
        Ok(())
    }

    /// One delivery: a job handed out under a lease, a job sent on to wait for its start
    /// time, a poison pill parked, or a malformed message handed out as such.
    async fn hand_out(
        &self,
        link: &Link,
        queue: &str,
        generation: u64,
        d: Delivery,
        lease: Duration,
        out: &mut Vec<Reservation>,
    ) -> Result<(), BackendError> {
        let token = held::token(generation, d.delivery_tag);
        let earlier = decode::earlier_deliveries(&d.properties, d.redelivered);
        let meta = decode::meta(&d.properties, queue);
        let envelope = meta
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|m| decode::envelope(m, &d.data, earlier));
        if let Ok(m) = &meta {
            let left = m
                .not_before
                .map(from_unix_ms)
                .and_then(|at| at.duration_since(SystemTime::now()).ok());
            if left.is_some_and(|l| l > DUE_SLACK) {
                // Out of a wait bucket shorter than its delay: on to the next one.
                let mut next = m.clone();
                next.attempt = m.attempt.saturating_add(earlier);
                next.recoveries = m.recoveries.saturating_add(earlier);
                match self.send(link, &next, &d.data).await {
                    Ok(()) => {
                        let _ = d.acker.ack(BasicAckOptions::default()).await;
                        return Ok(());
                    }
                    Err(e) => {
                        self.push_front(queue, generation, d);
                        return Err(e);
                    }
                }
            }
            let recoveries = m.recoveries.saturating_add(earlier);
            if earlier > 0 {
                self.note_recovered(m.id);
            }
            if recoveries >= self.settings.max_recoveries && self.settings.max_recoveries > 0 {
                // The broker's delivery limit counts this message's deliveries only; the
                // recoveries of the job's earlier messages (before a retry) count too.
                let held = Held {
                    id: m.id,
                    acker: d.acker.clone(),
                    meta: Some(m.clone()),
                    earlier,
                    body: d.data.clone(),
                    queue: queue.to_owned(),
                    expires: Instant::now(),
                };
                match self.bury_poison(link, &held).await {
                    Ok(dead) => {
                        lock(&self.pending_dead).push(dead);
                        return Ok(());
                    }
                    Err(e) => {
                        self.push_front(queue, generation, d);
                        return Err(e);
                    }
                }
            }
        }
        let id = meta
            .as_ref()
            .map(|m| m.id)
            .ok()
            .or_else(|| decode::message_id(&d.properties))
            .unwrap_or_else(held::stand_in_id);
        let reservation = match envelope {
            Ok(mut envelope) => {
                envelope.lease = Some(LeaseToken::from_u128(token));
                Reservation::Job {
                    envelope,
                    token: LeaseToken::from_u128(token),
                }
            }
            Err(reason) => Reservation::Malformed {
                id,
                token: LeaseToken::from_u128(token),
                queue: queue.to_owned(),
                raw: String::from_utf8_lossy(&d.data).into_owned(),
                reason: format!("stored message is not a job envelope: {reason}"),
            },
        };
        lock(&self.held).insert(
            token,
            Held {
                id,
                acker: d.acker,
                meta: meta.ok(),
                earlier,
                body: d.data,
                queue: queue.to_owned(),
                expires: Instant::now() + lease * LEASE_SLACK,
            },
        );
        out.push(reservation);
        Ok(())
    }

    fn note_recovered(&self, id: JobId) {
        let mut ours = lock(&self.self_recovered);
        if !ours.remove(&id) {
            let mut recovered = lock(&self.pending_recovered);
            if recovered.len() < 10_000 {
                recovered.push(id);
            }
        }
    }

    /// Takes the held delivery of `(id, token)` for a write-back of `outcome`: `Ok(None)`
    /// when that outcome was written with this token already (a repeat: succeed, change
    /// nothing), `LeaseLost` when the token holds nothing (any more).
    fn take_held(
        &self,
        id: JobId,
        token: &LeaseToken,
        outcome: Outcome,
    ) -> Result<Option<Held>, BackendError> {
        let Some(n) = held::number(token) else {
            return Err(BackendError::LeaseLost(id));
        };
        {
            let mut held = lock(&self.held);
            if held.get(&n).is_some_and(|h| h.id == id) {
                return Ok(held.remove(&n));
            }
        }
        match lock(&self.settled).get(n) {
            Some((who, done)) if who == id && done == outcome => Ok(None),
            _ => Err(BackendError::LeaseLost(id)),
        }
    }

    fn settle(&self, token: &LeaseToken, id: JobId, outcome: Outcome) {
        if let Some(n) = held::number(token) {
            lock(&self.settled).record(n, id, outcome);
        }
    }

    /// Acks a held delivery: `LeaseLost` when its channel died (the broker has it back).
    async fn ack_held(&self, id: JobId, h: &Held) -> Result<(), BackendError> {
        match h.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(BackendError::LeaseLost(id)),
        }
    }

    pub(super) async fn do_ack(&self, id: JobId, token: LeaseToken) -> Result<(), BackendError> {
        let Some(h) = self.take_held(id, &token, Outcome::Ack)? else {
            return Ok(());
        };
        self.ack_held(id, &h).await?;
        self.settle(&token, id, Outcome::Ack);
        self.lower_depth(1);
        Ok(())
    }

    fn lower_depth(&self, n: u64) {
        let _ = self.depth.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |d| Some(d.saturating_sub(n)),
        );
    }

    /// Publishes the job again (the next message of it), then acks the delivery. Between the
    /// two a crash leaves both: the job runs twice (at least once, never lost).
    async fn replace(
        &self,
        id: JobId,
        token: &LeaseToken,
        outcome: Outcome,
        next: impl FnOnce(&Held) -> Option<Meta>,
    ) -> Result<(), BackendError> {
        let Some(h) = self.take_held(id, token, outcome)? else {
            return Ok(());
        };
        if !h.acker.usable() {
            return Err(BackendError::LeaseLost(id));
        }
        let link = match self.link().await {
            Ok(l) => l,
            Err(e) => {
                self.put_back(id, token, h);
                return Err(e);
            }
        };
        match next(&h) {
            Some(meta) => {
                if let Err(e) = self.send(&link, &meta, &h.body).await {
                    self.put_back(id, token, h);
                    return Err(e);
                }
            }
            None => return Err(BackendError::LeaseLost(id)),
        }
        self.ack_held(id, &h).await?;
        self.settle(token, id, outcome);
        Ok(())
    }

    fn put_back(&self, id: JobId, token: &LeaseToken, h: Held) {
        if let Some(n) = held::number(token) {
            debug_assert_eq!(h.id, id);
            lock(&self.held).insert(n, h);
        }
    }

    pub(super) async fn do_retry(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> Result<(), BackendError> {
        self.replace(id, &token, Outcome::Retry, |h| {
            let mut meta = h.meta.clone()?;
            meta.attempt = h.attempt();
            meta.recoveries = h.recoveries();
            meta.not_before = Some(unix_ms(retry.at));
            meta.error = Some(retry.error.clone());
            Some(meta)
        })
        .await
    }

    pub(super) async fn do_release(
        &self,
        id: JobId,
        token: LeaseToken,
    ) -> Result<(), BackendError> {
        self.replace(id, &token, Outcome::Release, |h| {
            let mut meta = h.meta.clone()?;
            // This delivery's attempt did not count.
            meta.attempt = h.attempt().saturating_sub(1);
            meta.recoveries = h.recoveries();
            meta.not_before = None;
            Some(meta)
        })
        .await
    }

    pub(super) async fn do_dead_letter(
        &self,
        id: JobId,
        token: LeaseToken,
        record: DeadLetter,
    ) -> Result<(), BackendError> {
        let Some(h) = self.take_held(id, &token, Outcome::Dead)? else {
            return Ok(());
        };
        if !h.acker.usable() {
            return Err(BackendError::LeaseLost(id));
        }
        let max_attempts = h.meta.as_ref().map_or(1, |m| m.max_attempts);
        let body = StoredDead::of(&record, max_attempts).encode()?;
        let sent = async {
            let link = self.link().await?;
            self.publish(
                &link,
                "",
                &self.names.dead_queue(),
                &body,
                StoredDead::properties(id),
            )
            .await
        };
        if let Err(e) = sent.await {
            self.put_back(id, &token, h);
            return Err(e);
        }
        self.ack_held(id, &h).await?;
        self.settle(&token, id, Outcome::Dead);
        self.lower_depth(1);
        Ok(())
    }

    /// Publishes the dead-letter record of a poison pill held as `h` and acks it.
    pub(super) async fn bury_poison(
        &self,
        link: &Link,
        h: &Held,
    ) -> Result<DeadLetter, BackendError> {
        let dead = self.poison_record(h);
        let max_attempts = h.meta.as_ref().map_or(1, |m| m.max_attempts);
        let body = StoredDead::of(&dead, max_attempts).encode()?;
        self.publish(
            link,
            "",
            &self.names.dead_queue(),
            &body,
            StoredDead::properties(dead.job_id),
        )
        .await?;
        let _ = h.acker.ack(BasicAckOptions::default()).await;
        Ok(dead)
    }

    fn poison_record(&self, h: &Held) -> DeadLetter {
        let now = SystemTime::now();
        let recoveries = h.recoveries();
        let (id, job, queue, enqueued) = match &h.meta {
            Some(m) => (
                m.id,
                m.job.clone(),
                m.queue.clone(),
                from_unix_ms(m.enqueued_at),
            ),
            None => (held::stand_in_id(), String::new(), h.queue.clone(), now),
        };
        let payload = serde_json::from_slice(&h.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&h.body).into_owned())
        });
        DeadLetter {
            job_id: id,
            job,
            queue,
            payload,
            attempts: h.attempt().saturating_sub(1),
            error: vec![format!(
                "worker lost {recoveries} times while running this job (crash-recovered); dead-lettered as a poison pill"
            )],
            enqueued_at: enqueued,
            died_at: now,
        }
    }

    pub(super) fn do_extend(&self, leases: &[(JobId, LeaseToken)], lease: Duration) -> Extended {
        let mut lost = Vec::new();
        let mut held = lock(&self.held);
        let settled = lock(&self.settled);
        let until = Instant::now() + lease * LEASE_SLACK;
        for (id, token) in leases {
            let Some(n) = held::number(token) else {
                lost.push(*id);
                continue;
            };
            match held.get_mut(&n) {
                Some(h) if h.id == *id && h.acker.usable() => h.expires = until,
                // Its own write-back won the race: nothing is lost.
                _ if settled.get(n).is_some_and(|(who, _)| who == *id) => {}
                _ => lost.push(*id),
            }
        }
        Extended {
            lost,
            renewed: Vec::new(),
            cancelled: Vec::new(),
        }
    }

    /// Gives back to the broker every held delivery whose lease ran out (its holder stopped
    /// renewing it), or dead-letters it when this expiry makes `max_recoveries` recoveries.
    pub(super) async fn expire_leases(&self) -> (Vec<JobId>, Vec<DeadLetter>) {
        let now = Instant::now();
        let expired: Vec<Held> = {
            let mut held = lock(&self.held);
            let due: Vec<u128> = held
                .iter()
                .filter(|(_, h)| h.expires <= now)
                .map(|(t, _)| *t)
                .collect();
            due.into_iter().filter_map(|t| held.remove(&t)).collect()
        };
        let mut recovered = Vec::new();
        let mut dead = Vec::new();
        let nack = lapin::options::BasicNackOptions {
            requeue: true,
            ..lapin::options::BasicNackOptions::default()
        };
        for mut h in expired {
            if !h.acker.usable() {
                continue;
            }
            let id = h.id;
            let poison = h.recoveries().saturating_add(1) >= self.settings.max_recoveries;
            if poison && h.meta.is_some() {
                // This expiry is a recovery too.
                h.earlier = h.earlier.saturating_add(1);
                let buried = match self.link().await {
                    Ok(link) => self.bury_poison(&link, &h).await,
                    Err(e) => Err(e),
                };
                match buried {
                    Ok(record) => {
                        dead.push(record);
                        self.lower_depth(1);
                        continue;
                    }
                    Err(e) => {
                        // Given back instead: the next delivery counts it and parks it.
                        tracing::warn!(job_id = %id, error = %e, "dead-lettering a poison pill failed; giving it back to the broker");
                    }
                }
            }
            if matches!(h.acker.nack(nack).await, Ok(true)) {
                lock(&self.self_recovered).insert(id);
                recovered.push(id);
            }
        }
        (recovered, dead)
    }
}

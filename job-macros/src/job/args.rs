//! `#[job(name = "..", queue = "..", max_attempts = N, backoff(..), timeout = "..",
//! cron = "..", timezone = "..", misfire = "..", unique(..), crate = path)]`.
//!
//! Every key is read into a set-once [`Attr`]; a bad or repeated key is recorded in the
//! [`Ctxt`] and parsing goes on, so all mistakes are reported together. What was valid is
//! kept, so the job still expands (with defaults for the bad keys) and the user sees no
//! secondary errors.

use proc_macro2::TokenStream;
use syn::spanned::Spanned;
use syn::{Expr, Lit, LitStr, Meta, MetaList, Path};

use super::schedule::{self, ScheduleArgs};
use super::unique::{self, UniqueArgs};
use crate::attr::{
    self, Attr, BACKOFF, CRATE, CRON, INITIAL, JITTER, MAX, MAX_ATTEMPTS, MISFIRE, NAME, QUEUE,
    Symbol, TIMEOUT, TIMEZONE, UNIQUE,
};
use crate::ctxt::Ctxt;
use crate::duration;

const KEYS: &[Symbol] = &[
    NAME,
    QUEUE,
    MAX_ATTEMPTS,
    BACKOFF,
    TIMEOUT,
    CRON,
    TIMEZONE,
    MISFIRE,
    UNIQUE,
    CRATE,
];
const BACKOFF_KEYS: &[Symbol] = &[INITIAL, MAX, JITTER];
const WHAT: &str = "`#[job]` argument";
const WHAT_BACKOFF: &str = "`backoff` argument";

/// The arguments of one `#[job(...)]`, as far as they were valid.
#[derive(Default)]
pub(crate) struct JobArgs {
    /// The wire name, validated.
    pub(crate) name: Option<LitStr>,
    /// The queue name, validated.
    pub(crate) queue: Option<LitStr>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) backoff: Option<BackoffArgs>,
    /// Milliseconds, at least 1.
    pub(crate) timeout: Option<u64>,
    /// `cron = "..", timezone = "..", misfire = ".."`.
    pub(crate) schedule: Option<ScheduleArgs>,
    /// `unique(by = [..], for = "..", until = "..")`, its `by` not yet checked against the
    /// fn's parameters.
    pub(crate) unique: Option<UniqueArgs>,
    /// `crate = path`.
    pub(crate) krate: Option<Path>,
}

/// `backoff(initial = "..", max = "..", jitter = F)`; unset parts keep job_core's defaults.
#[derive(Default)]
pub(crate) struct BackoffArgs {
    /// Milliseconds.
    pub(crate) initial: Option<u64>,
    /// Milliseconds.
    pub(crate) max: Option<u64>,
    /// In `0.0..=1.0`.
    pub(crate) jitter: Option<f64>,
}

impl JobArgs {
    /// Parses the attribute's arguments, recording every problem in `cx`.
    pub(crate) fn parse(cx: &Ctxt, args: TokenStream) -> Self {
        let metas = match attr::parse_metas(args) {
            Ok(metas) => metas,
            Err(e) => {
                cx.syn_error(e);
                return Self::default();
            }
        };

        let mut name = Attr::none(WHAT, NAME);
        let mut queue = Attr::none(WHAT, QUEUE);
        let mut max_attempts = Attr::none(WHAT, MAX_ATTEMPTS);
        let mut backoff = Attr::none(WHAT, BACKOFF);
        let mut timeout = Attr::none(WHAT, TIMEOUT);
        let mut krate = Attr::none(WHAT, CRATE);
        let mut cron = Attr::none(WHAT, CRON);
        let mut timezone = Attr::none(WHAT, TIMEZONE);
        let mut misfire = Attr::none(WHAT, MISFIRE);
        let mut unique = Attr::none(WHAT, UNIQUE);
        // Where `timezone` and `misfire` were written, for the error when `cron` is not.
        let mut schedule_keys: Vec<&Path> = Vec::new();

        for meta in &metas {
            let key = meta.path();
            if *key == NAME {
                if let Some(v) = name_value(cx, meta, "name = \"send_email\"") {
                    name.set(cx, key, checked_name(cx, v, "job name"));
                }
            } else if *key == QUEUE {
                if let Some(v) = name_value(cx, meta, "queue = \"email\"") {
                    queue.set(cx, key, checked_name(cx, v, "queue name"));
                }
            } else if *key == MAX_ATTEMPTS {
                if let Some(v) = name_value(cx, meta, "max_attempts = 5") {
                    max_attempts.set(cx, key, parse_max_attempts(cx, v));
                }
            } else if *key == TIMEOUT {
                if let Some(v) = name_value(cx, meta, "timeout = \"30s\"") {
                    timeout.set(cx, key, positive_duration(cx, v, TIMEOUT));
                }
            } else if *key == CRON {
                if let Some(v) = name_value(cx, meta, "cron = \"0 * * * *\"") {
                    cron.set(cx, key, schedule::cron_expression(cx, v));
                }
            } else if *key == TIMEZONE {
                schedule_keys.push(key);
                if let Some(v) = name_value(cx, meta, "timezone = \"Europe/Paris\"") {
                    timezone.set(cx, key, schedule::timezone(cx, v));
                }
            } else if *key == MISFIRE {
                schedule_keys.push(key);
                if let Some(v) = name_value(cx, meta, "misfire = \"run_once\"") {
                    misfire.set(cx, key, schedule::misfire(cx, v));
                }
            } else if *key == UNIQUE {
                unique.set(cx, key, unique::parse(cx, meta));
            } else if *key == CRATE {
                if let Some(v) = name_value(cx, meta, "crate = ::my_app::jobs") {
                    krate.set(cx, key, attr::crate_path(cx, v));
                }
            } else if *key == BACKOFF {
                match meta {
                    Meta::List(list) => backoff.set(cx, key, parse_backoff(cx, list)),
                    _ => cx.error_spanned_by(
                        meta,
                        "`backoff` takes a list: `backoff(initial = \"2s\", max = \"60s\", jitter = 0.2)`",
                    ),
                }
            } else {
                cx.error_spanned_by(key, unknown_key(key));
            }
        }

        let cron_set = cron.is_set();
        if !cron_set {
            for key in schedule_keys {
                cx.error_spanned_by(
                    key,
                    format!(
                        "`{}` applies to a cron schedule: add `cron = \"0 * * * *\"` (the times to run at), or remove it",
                        attr::path_to_string(key)
                    ),
                );
            }
        }
        let schedule = cron.get().flatten().map(|cron| ScheduleArgs {
            cron,
            timezone: timezone.get().flatten(),
            run_once: misfire.get().flatten().unwrap_or(false),
        });
        Self {
            schedule,
            unique: unique.get().flatten(),
            name: name.get().flatten(),
            queue: queue.get().flatten(),
            max_attempts: max_attempts.get().flatten(),
            backoff: backoff.get().flatten(),
            timeout: timeout.get().flatten(),
            krate: krate.get().flatten(),
        }
    }

    /// True when any option other than `name` and `crate` was given.
    pub(crate) fn has_options(&self) -> bool {
        self.queue.is_some()
            || self.max_attempts.is_some()
            || self.backoff.is_some()
            || self.timeout.is_some()
    }
}

/// The value of `key = value`, or an error saying how to write it.
pub(crate) fn name_value<'a>(cx: &Ctxt, meta: &'a Meta, example: &str) -> Option<&'a Expr> {
    match meta {
        Meta::NameValue(nv) => Some(&nv.value),
        Meta::Path(path) => {
            cx.error_spanned_by(
                path,
                format!(
                    "`{}` takes a value: write `{example}`",
                    attr::path_to_string(path)
                ),
            );
            None
        }
        Meta::List(list) => {
            cx.error_spanned_by(
                list,
                format!(
                    "`{}` takes a value after `=`, not a list: write `{example}`",
                    attr::path_to_string(&list.path)
                ),
            );
            None
        }
    }
}

fn unknown_key(key: &Path) -> String {
    let written = attr::path_to_string(key);
    let hint = match written.as_str() {
        "retries" | "max_retries" | "attempts" | "retry" | "max_attempt" => {
            " (`max_attempts` counts every attempt, the first included: `max_retries = 4` is `max_attempts = 5`)"
        }
        "every" | "schedule" | "interval" | "period" => {
            " (a job declares a cron schedule, `cron = \"0 * * * *\"`; periodic schedules go on the runtime builder: `.every(period, || MyJob { .. })`)"
        }
        "tz" | "time_zone" | "zone" => " (did you mean `timezone = \"Europe/Paris\"`?)",
        "job_name" | "rename" => " (did you mean `name`?)",
        "queue_name" => " (did you mean `queue`?)",
        "timeout_secs" | "deadline" => " (did you mean `timeout = \"30s\"`?)",
        "initial" | "max" | "jitter" | "initial_delay" | "max_delay" | "delay" => {
            " (backoff settings go inside `backoff(..)`: `backoff(initial = \"2s\", max = \"60s\", jitter = 0.2)`)"
        }
        "dedup" | "dedupe" | "deduplicate" | "idempotency_key" | "idempotent" | "singleton"
        | "uniq" | "unique_by" | "unique_for" | "unique_key" => {
            " (did you mean `unique(by = [..], for = \"10m\")`?)"
        }
        "by" | "for" | "until" => {
            " (uniqueness settings go inside `unique(..)`: `unique(by = [..], for = \"10m\")`)"
        }
        _ => "",
    };
    let hint = match attr::closest(&written, KEYS.iter().map(|s| s.0)) {
        Some(close) if hint.is_empty() => format!(" (did you mean `{close}`?)"),
        _ => hint.to_owned(),
    };
    format!(
        "unknown {WHAT} `{written}`; expected one of {}{hint}",
        attr::one_of(KEYS)
    )
}

/// A job or queue name: `[A-Za-z0-9_.-]{1,64}`, the rule the runtime enforces at start.
fn checked_name<'a>(cx: &Ctxt, value: &'a Expr, what: &str) -> Option<LitStr> {
    let lit: &'a LitStr = attr::lit_str(
        cx,
        value,
        &format!("the {what} must be a string literal, such as \"send_email\""),
    )?;
    let text = lit.value();
    if is_valid_name(&text) {
        Some(lit.clone())
    } else {
        cx.error_spanned_by(
            lit,
            format!(
                "{what} {text:?} is not valid: use 1 to 64 of the characters `A-Z a-z 0-9 _ . -` (names become storage keys)"
            ),
        );
        None
    }
}

/// The rule of `job_core::is_valid_name`, checked here at compile time.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn parse_max_attempts(cx: &Ctxt, value: &Expr) -> Option<u32> {
    let usage = "`max_attempts` must be a whole number of at least 1, such as `max_attempts = 5`";
    let Some((negative, lit)) = attr::number(value) else {
        cx.error_spanned_by(value, usage);
        return None;
    };
    let Lit::Int(int) = lit else {
        cx.error_spanned_by(value, usage);
        return None;
    };
    if negative {
        cx.error_spanned_by(value, usage);
        return None;
    }
    match int.base10_parse::<u32>() {
        Ok(0) => {
            cx.error_spanned_by(
                value,
                "`max_attempts` must be at least 1: it counts every attempt, the first included; write `max_attempts = 1` for a job that is never retried",
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            cx.error_spanned_by(
                value,
                format!("`max_attempts` must be at most {}", u32::MAX),
            );
            None
        }
    }
}

/// A duration literal of at least 1 ms.
fn positive_duration(cx: &Ctxt, value: &Expr, key: Symbol) -> Option<u64> {
    let lit = attr::lit_str(
        cx,
        value,
        &format!(
            "`{key}` must be a duration string, such as `{key} = \"30s\"` (units `ms`, `s`, `m`, `h`)"
        ),
    )?;
    positive_millis(
        cx,
        lit,
        &format!("`{key}` must be longer than zero, such as \"500ms\" or \"30s\""),
    )
}

/// The milliseconds a duration literal gives, at least 1; `zero` is the error for a zero
/// duration.
pub(crate) fn positive_millis(cx: &Ctxt, lit: &LitStr, zero: &str) -> Option<u64> {
    match duration::parse_millis(&lit.value()) {
        Ok(0) => {
            cx.error_spanned_by(lit, zero);
            None
        }
        Ok(ms) => Some(ms),
        Err(message) => {
            cx.error_spanned_by(lit, message);
            None
        }
    }
}

fn parse_backoff(cx: &Ctxt, list: &MetaList) -> Option<BackoffArgs> {
    let metas = match attr::parse_list(list) {
        Ok(metas) => metas,
        Err(e) => {
            cx.syn_error(e);
            return None;
        }
    };
    if metas.is_empty() {
        cx.error_spanned_by(
            list,
            "`backoff()` sets nothing: write `backoff(initial = \"2s\", max = \"60s\", jitter = 0.2)` (any of the three), or remove it",
        );
        return None;
    }
    let mut initial = Attr::none(WHAT_BACKOFF, INITIAL);
    let mut max = Attr::none(WHAT_BACKOFF, MAX);
    let mut jitter = Attr::none(WHAT_BACKOFF, JITTER);
    let mut max_lit = None;
    for meta in &metas {
        let key = meta.path();
        if *key == INITIAL {
            if let Some(v) = name_value(cx, meta, "initial = \"2s\"") {
                initial.set(cx, key, positive_duration(cx, v, INITIAL));
            }
        } else if *key == MAX {
            if let Some(v) = name_value(cx, meta, "max = \"60s\"") {
                if !max.is_set() {
                    max_lit = Some(v);
                }
                max.set(cx, key, positive_duration(cx, v, MAX));
            }
        } else if *key == JITTER {
            if let Some(v) = name_value(cx, meta, "jitter = 0.2") {
                jitter.set(cx, key, parse_jitter(cx, v));
            }
        } else {
            cx.error_spanned_by(
                key,
                format!(
                    "unknown {WHAT_BACKOFF} `{}`; expected one of {}",
                    attr::path_to_string(key),
                    attr::one_of(BACKOFF_KEYS)
                ),
            );
        }
    }
    let args = BackoffArgs {
        initial: initial.get().flatten(),
        max: max.get().flatten(),
        jitter: jitter.get().flatten(),
    };
    if let (Some(initial), Some(max), Some(lit)) = (args.initial, args.max, max_lit)
        && max < initial
    {
        cx.error_spanned_by(
            lit,
            "backoff `max` is shorter than `initial`: `max` caps every delay, so it must be at least `initial`",
        );
    }
    Some(args)
}

fn parse_jitter(cx: &Ctxt, value: &Expr) -> Option<f64> {
    let usage = "`jitter` must be a number from 0.0 to 1.0 (the fraction by which a delay may be shortened at random), such as `jitter = 0.2`";
    let Some((negative, lit)) = attr::number(value) else {
        cx.error_spanned_by(value, usage);
        return None;
    };
    let parsed = match lit {
        Lit::Float(f) => f.base10_parse::<f64>().ok(),
        Lit::Int(i) => i.base10_parse::<f64>().ok(),
        _ => None,
    };
    let Some(magnitude) = parsed else {
        cx.error_spanned_by(value, usage);
        return None;
    };
    let jitter = if negative { -magnitude } else { magnitude };
    if (0.0..=1.0).contains(&jitter) {
        Some(jitter)
    } else {
        cx.error_at(
            value.span(),
            format!(
                "`jitter` must be between 0.0 and 1.0, not {jitter}: it is the fraction by which a delay may be shortened at random (0.2 = up to 20%)"
            ),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: TokenStream) -> (JobArgs, Vec<String>) {
        let cx = Ctxt::new();
        let args = JobArgs::parse(&cx, tokens);
        let errors = match cx.check() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        };
        (args, errors)
    }

    #[test]
    fn reads_every_key() {
        let (args, errors) = parse(quote!(
            name = "mail.v2",
            queue = "email",
            max_attempts = 5,
            backoff(initial = "2s", max = "1m", jitter = 0.25),
            timeout = "30s",
            crate = ::x::y
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(args.name.unwrap().value(), "mail.v2");
        assert_eq!(args.queue.unwrap().value(), "email");
        assert_eq!(args.max_attempts, Some(5));
        let backoff = args.backoff.unwrap();
        assert_eq!(
            (backoff.initial, backoff.max, backoff.jitter),
            (Some(2_000), Some(60_000), Some(0.25))
        );
        assert_eq!(args.timeout, Some(30_000));
        assert!(args.krate.is_some());
    }

    #[test]
    fn reports_all_errors_in_one_pass() {
        let (args, errors) = parse(quote!(
            retries = 3,
            queue = "a b",
            max_attempts = 0,
            timeout = "3 sec",
            backoff(jitter = 1.5, initial = "10s", max = "1s"),
            queue = "x"
        ));
        assert_eq!(errors.len(), 7, "{errors:#?}");
        assert!(errors[0].contains("unknown `#[job]` argument `retries`"));
        assert!(
            errors[0].contains(
                "`name`, `queue`, `max_attempts`, `backoff`, `timeout`, `cron`, `timezone`, `misfire`, `unique` or `crate`"
            )
        );
        assert!(errors[1].contains("queue name \"a b\" is not valid"));
        assert!(errors[2].contains("at least 1"));
        assert!(errors[3].contains("write \"3s\""));
        assert!(errors[4].contains("between 0.0 and 1.0, not 1.5"));
        assert!(errors[5].contains("shorter than `initial`"));
        assert!(errors[6].contains("duplicate `#[job]` argument `queue`"));
        assert!(args.queue.is_none() && args.max_attempts.is_none());
    }

    #[test]
    fn jitter_accepts_integers_and_rejects_negatives() {
        let (args, errors) = parse(quote!(backoff(jitter = 1)));
        assert!(errors.is_empty());
        assert_eq!(args.backoff.unwrap().jitter, Some(1.0));
        let (_, errors) = parse(quote!(backoff(jitter = -0.1)));
        assert!(errors[0].contains("not -0.1"), "{errors:?}");
    }

    #[test]
    fn keys_need_their_form() {
        let (_, errors) = parse(quote!(queue, backoff = "2s", timeout("1s")));
        assert_eq!(errors.len(), 3);
        assert!(errors[0].contains("`queue` takes a value"));
        assert!(errors[1].contains("`backoff` takes a list"));
        assert!(errors[2].contains("not a list"));
    }
}

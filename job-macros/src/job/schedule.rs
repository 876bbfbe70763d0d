//! `cron = "..", timezone = "..", misfire = ".."` of `#[job]`: the job's own recurring
//! schedule, checked here at compile time with the parsers job-core uses at run time (the
//! `cron` crate, `chrono-tz`'s copy of the IANA zone database).

use std::str::FromStr;

use syn::{Expr, LitStr};

use crate::attr;
use crate::ctxt::Ctxt;

/// A declared schedule, as far as it was valid.
pub(crate) struct ScheduleArgs {
    /// The expression, as written (five or six fields).
    pub(crate) cron: LitStr,
    /// The IANA zone; UTC when `None`.
    pub(crate) timezone: Option<LitStr>,
    /// `misfire = "run_once"`.
    pub(crate) run_once: bool,
}

/// A cron expression job-core's `CronSchedule::parse` accepts.
pub(crate) fn cron_expression(cx: &Ctxt, value: &Expr) -> Option<LitStr> {
    let lit = attr::lit_str(
        cx,
        value,
        "`cron` must be a string literal, such as `cron = \"0 * * * *\"` (minute hour day month weekday)",
    )?;
    let expression = lit.value();
    let full = match expression.split_whitespace().count() {
        5 => format!("0 {expression}"),
        6 => expression.clone(),
        n => {
            cx.error_spanned_by(
                lit,
                format!(
                    "invalid cron expression {expression:?}: expected 5 fields (minute hour day month weekday), or 6 with seconds first, found {n}; such as `cron = \"0 * * * *\"` (every hour)"
                ),
            );
            return None;
        }
    };
    match cron::Schedule::from_str(&full) {
        Ok(_) => Some(lit.clone()),
        Err(e) => {
            // The parser's message shows the expression with a caret under the fault, then
            // says what is wrong on its last line; the span already shows where.
            let text = e.to_string();
            let reason = text
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or("");
            cx.error_spanned_by(
                lit,
                format!(
                    "invalid cron expression {expression:?}: {reason}; the fields are minute (0-59), hour (0-23), day of month (1-31), month (1-12 or Jan-Dec), day of week (0-6 or Sun-Sat)"
                ),
            );
            None
        }
    }
}

/// A zone of the IANA database.
pub(crate) fn timezone(cx: &Ctxt, value: &Expr) -> Option<LitStr> {
    let lit = attr::lit_str(
        cx,
        value,
        "`timezone` must be a string literal, such as `timezone = \"Europe/Paris\"`",
    )?;
    let name = lit.value();
    if chrono_tz::Tz::from_str(&name).is_ok() {
        return Some(lit.clone());
    }
    let close = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| tz.name())
        .find(|known| known.eq_ignore_ascii_case(&name));
    let hint = match close {
        Some(known) => format!(" (did you mean \"{known}\"?)"),
        None => String::new(),
    };
    cx.error_spanned_by(
        lit,
        format!(
            "unknown time zone {name:?}{hint}: use a name of the IANA time zone database, such as \"Europe/Paris\", \"America/New_York\" or \"UTC\""
        ),
    );
    None
}

/// `"skip"` (false) or `"run_once"` (true).
pub(crate) fn misfire(cx: &Ctxt, value: &Expr) -> Option<bool> {
    let usage = "`misfire` is \"skip\" (missed ticks are dropped, the default) or \"run_once\" (missed ticks are caught up with one run)";
    let lit = attr::lit_str(cx, value, usage)?;
    match lit.value().as_str() {
        "skip" => Some(false),
        "run_once" => Some(true),
        _ => {
            cx.error_spanned_by(lit, usage);
            None
        }
    }
}

//! Duration literals of `#[job]`: a whole number and a unit, `"500ms"`, `"30s"`, `"5m"`,
//! `"1h"`, checked when the macro expands and turned into milliseconds.

const EXAMPLES: &str = "for example \"500ms\", \"30s\", \"5m\" or \"1h\"";

/// Milliseconds of a duration literal, or a message saying what to write instead.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number = number.replace('_', "");
    if number.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: write a whole number followed by a unit `ms`, `s`, `m` or `h`, {EXAMPLES}"
        ));
    }
    if unit.starts_with('.') {
        return Err(format!(
            "invalid duration {text:?}: use a whole number of a smaller unit, such as \"1500ms\" for 1.5 seconds or \"90s\" for 1.5 minutes"
        ));
    }
    let per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "duration {text:?} has no unit: write `{number}ms`, `{number}s`, `{number}m` or `{number}h`"
            ));
        }
        other => return Err(unknown_unit(text, &number, other.trim_start())),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} is too large"))?;
    value
        .checked_mul(per_unit)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

fn unknown_unit(text: &str, number: &str, unit: &str) -> String {
    let suggestion = match unit.to_ascii_lowercase().as_str() {
        "msec" | "msecs" | "millis" | "millisecond" | "milliseconds" => Some("ms"),
        "sec" | "secs" | "second" | "seconds" => Some("s"),
        "min" | "mins" | "minute" | "minutes" => Some("m"),
        "hr" | "hrs" | "hour" | "hours" => Some("h"),
        _ => None,
    };
    if let Some(unit) = suggestion {
        return format!("invalid duration {text:?}: write \"{number}{unit}\"");
    }
    match unit {
        "d" | "day" | "days" => format!(
            "invalid duration {text:?}: days are not a unit here; write hours, such as \"24h\""
        ),
        "us" | "µs" | "ns" => format!(
            "invalid duration {text:?}: the smallest unit is `ms`; job durations are at least a millisecond"
        ),
        _ => format!(
            "invalid duration {text:?}: the unit must be `ms`, `s`, `m` or `h` right after the number, {EXAMPLES}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn units() {
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("2s"), Ok(2_000));
        assert_eq!(parse_millis("5m"), Ok(300_000));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
        assert_eq!(parse_millis("1_500ms"), Ok(1_500));
        assert_eq!(parse_millis("0s"), Ok(0));
    }

    #[test]
    fn rejects_with_a_fix() {
        let err = |s| parse_millis(s).unwrap_err();
        assert!(err("2").contains("no unit"), "{}", err("2"));
        assert!(err("2 sec").contains("write \"2s\""), "{}", err("2 sec"));
        assert!(err("10mins").contains("write \"10m\""));
        assert!(err("1.5s").contains("1500ms"));
        assert!(err("s").contains("whole number"));
        assert!(err("").contains("whole number"));
        assert!(err("2d").contains("24h"));
        assert!(err("5us").contains("smallest unit"));
        assert!(err("3x").contains("`ms`, `s`, `m` or `h`"));
        assert!(err("99999999999999999999h").contains("too large"));
        assert!(err("9999999999999999h").contains("too large"));
        assert!(err("-2s").contains("whole number"));
    }
}

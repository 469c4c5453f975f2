//! A group's `outlier`, `retry` and `limits` tables, validated. A named group's left-out
//! `outlier` and `retry` keys are `[upstream]`'s, as its timeouts are; `limits.max_requests` is
//! not inherited: it is a capacity of that group's own backends.

use std::time::Duration;

use super::file::{FileGroupLimits, FileOutlier, FileRetry};
use super::runtime::{OutlierSettings, RetryOn, RetrySettings, MAX_EJECTION};
use super::validate::{invalid, Invalid};

/// `GROUP.outlier` over `defaults`.
pub fn validate_outlier(
    group_key: &str,
    o: &FileOutlier,
    defaults: &OutlierSettings,
) -> Result<OutlierSettings, Invalid> {
    let key = |field: &str| format!("{group_key}.outlier.{field}");
    let consecutive_failures = o
        .consecutive_failures
        .unwrap_or(defaults.consecutive_failures);
    if consecutive_failures > 1000 {
        return Err(invalid(
            &key("consecutive_failures"),
            "must be between 0 (no ejection) and 1000",
        ));
    }
    let base_ejection = match o.base_ejection_seconds {
        None => defaults.base_ejection,
        Some(s) if s == 0 || s > MAX_EJECTION.as_secs() => {
            return Err(invalid(
                &key("base_ejection_seconds"),
                format!("must be between 1 and {}", MAX_EJECTION.as_secs()),
            ))
        }
        Some(s) => Duration::from_secs(s),
    };
    let max_ejected_percent = o
        .max_ejected_percent
        .unwrap_or(defaults.max_ejected_percent);
    if max_ejected_percent > 100 {
        return Err(invalid(
            &key("max_ejected_percent"),
            "must be between 0 and 100",
        ));
    }
    Ok(OutlierSettings {
        consecutive_failures,
        base_ejection,
        max_ejected_percent,
    })
}

/// `GROUP.retry` over `defaults`.
pub fn validate_retry(
    group_key: &str,
    r: &FileRetry,
    defaults: &RetrySettings,
) -> Result<RetrySettings, Invalid> {
    let key = |field: &str| format!("{group_key}.retry.{field}");
    let budget_percent = r.budget_percent.unwrap_or(defaults.budget_percent);
    if budget_percent > 100 {
        return Err(invalid(&key("budget_percent"), "must be between 0 and 100"));
    }
    let on = match &r.on {
        None => defaults.on,
        Some(names) => retry_on(&key("on"), names)?,
    };
    let backoff = match r.backoff_ms {
        None => defaults.backoff,
        Some(ms) if ms > 10_000 => {
            return Err(invalid(
                &key("backoff_ms"),
                "must be between 0 (no backoff) and 10000",
            ))
        }
        Some(ms) => Duration::from_millis(ms),
    };
    Ok(RetrySettings {
        budget_percent,
        on,
        backoff,
    })
}

fn retry_on(key: &str, names: &[String]) -> Result<RetryOn, Invalid> {
    let mut on = RetryOn {
        connect_failure: false,
        reset: false,
        gateway_error: false,
    };
    for name in names {
        let flag = match name.as_str() {
            "connect-failure" => &mut on.connect_failure,
            "reset" => &mut on.reset,
            "gateway-error" => &mut on.gateway_error,
            other => {
                return Err(invalid(
                    key,
                    format!(
                        "unknown condition \"{other}\" (expected \"connect-failure\", \"reset\" or \"gateway-error\")"
                    ),
                ))
            }
        };
        *flag = true;
    }
    Ok(on)
}

/// `GROUP.limits.max_requests` over `default` (0: no cap).
pub fn validate_max_requests(
    l: &FileGroupLimits,
    default: Option<usize>,
) -> Result<Option<usize>, Invalid> {
    Ok(match l.max_requests {
        None => default,
        Some(0) => None,
        Some(n) => Some(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlier_keys_left_out_are_the_defaults_and_bad_values_name_the_key() {
        let d = OutlierSettings::default();
        assert_eq!(
            validate_outlier("upstream", &FileOutlier::default(), &d),
            Ok(d.clone())
        );
        let o = FileOutlier {
            consecutive_failures: Some(3),
            ..Default::default()
        };
        let got = validate_outlier("upstreams.api", &o, &d).unwrap();
        assert_eq!(got.consecutive_failures, 3);
        assert_eq!(got.base_ejection, d.base_ejection);
        let bad = FileOutlier {
            base_ejection_seconds: Some(0),
            ..Default::default()
        };
        let err = validate_outlier("upstreams.api", &bad, &d).unwrap_err();
        assert_eq!(err.0, "upstreams.api.outlier.base_ejection_seconds");
        let bad = FileOutlier {
            max_ejected_percent: Some(101),
            ..Default::default()
        };
        let err = validate_outlier("upstream", &bad, &d).unwrap_err();
        assert_eq!(err.0, "upstream.outlier.max_ejected_percent");
    }

    #[test]
    fn retry_on_takes_the_three_conditions_and_refuses_others() {
        let d = RetrySettings::default();
        let r = FileRetry {
            on: Some(vec!["gateway-error".into()]),
            ..Default::default()
        };
        let got = validate_retry("upstream", &r, &d).unwrap();
        assert_eq!(
            got.on,
            RetryOn {
                connect_failure: false,
                reset: false,
                gateway_error: true
            }
        );
        assert_eq!(got.budget_percent, 20);
        let r = FileRetry {
            on: Some(vec!["reset".into(), "5xx".into()]),
            ..Default::default()
        };
        let err = validate_retry("upstreams.api", &r, &d).unwrap_err();
        assert_eq!(err.0, "upstreams.api.retry.on");
        assert!(err.1.contains("\"5xx\""), "{}", err.1);
    }

    #[test]
    fn max_requests_zero_means_no_cap() {
        let l = FileGroupLimits {
            max_requests: Some(0),
        };
        assert_eq!(validate_max_requests(&l, Some(4)), Ok(None));
        assert_eq!(
            validate_max_requests(&FileGroupLimits::default(), Some(4)),
            Ok(Some(4))
        );
    }
}

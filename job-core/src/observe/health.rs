//! Health from queue depth against capacity.

/// The runtime's health: `Healthy` below the degraded threshold (75% of capacity by
/// default), `Degraded` from it, `Unhealthy` from the unhealthy threshold (95%) and while
/// shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Room to spare.
    Healthy,
    /// Filling up: alert, but keep routing traffic.
    Degraded,
    /// Full, nearly full, or shutting down: stop routing traffic here.
    Unhealthy,
}

/// A health reading.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Health {
    /// The verdict.
    pub status: HealthStatus,
    /// Jobs admitted and not finished.
    pub depth: usize,
    /// The runtime's capacity.
    pub capacity: usize,
    /// `depth / capacity`.
    pub load: f64,
    /// True once shutdown has begun.
    pub stopping: bool,
}

/// Where health turns `Degraded` and `Unhealthy`, as fractions of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthThresholds {
    /// From this load on, `Degraded` (default 0.75).
    pub degraded: f64,
    /// From this load on, `Unhealthy` (default 0.95).
    pub unhealthy: f64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            degraded: 0.75,
            unhealthy: 0.95,
        }
    }
}

impl HealthThresholds {
    pub(crate) fn judge(&self, depth: usize, capacity: usize, stopping: bool) -> Health {
        let load = if capacity == 0 {
            1.0
        } else {
            depth as f64 / capacity as f64
        };
        let status = if stopping || load >= self.unhealthy {
            HealthStatus::Unhealthy
        } else if load >= self.degraded {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        };
        Health {
            status,
            depth,
            capacity,
            load,
            stopping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let t = HealthThresholds::default();
        assert_eq!(t.judge(0, 100, false).status, HealthStatus::Healthy);
        assert_eq!(t.judge(74, 100, false).status, HealthStatus::Healthy);
        assert_eq!(t.judge(75, 100, false).status, HealthStatus::Degraded);
        assert_eq!(t.judge(94, 100, false).status, HealthStatus::Degraded);
        assert_eq!(t.judge(95, 100, false).status, HealthStatus::Unhealthy);
        assert_eq!(t.judge(0, 100, true).status, HealthStatus::Unhealthy);
    }
}

//! `spec.eventTime`: the watermark strategy, out-of-orderness, lateness and idleness settings.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use taxi_core::config::{EngineConfig, WatermarkStrategy};
use taxi_core::duration;

use super::{DURATION_PATTERN, NON_NEGATIVE_DURATION, POSITIVE_DURATION};

/// Event-time settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventTimeSpec {
    /// Watermark strategy: `bounded` (default), `punctuated` or `arrival`.
    #[serde(default)]
    pub watermark: WatermarkStrategy,
    /// Bound on how far out of order trips arrive, as a Go duration, for the `bounded` and
    /// `arrival` strategies. Default `1m`.
    #[serde(default = "default_max_out_of_orderness")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("eventTime.maxOutOfOrderness must be a duration of 0s or more"))]
    pub max_out_of_orderness: String,
    /// How long after its end a window still accepts trips, as a Go duration. Default `0s`. Trips
    /// arriving later are counted as late and not aggregated.
    #[serde(default = "default_allowed_lateness")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("eventTime.allowedLateness must be a duration of 0s or more"))]
    pub allowed_lateness: String,
    /// A shard without records for this long stops holding merged windows open, as a Go duration.
    /// Default `1m`.
    #[serde(default = "default_idle_timeout")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("eventTime.idleTimeout must be a positive duration"))]
    pub idle_timeout: String,
    /// A record dated more than this past its shard's latest event time is counted invalid as
    /// `implausible_time` and never moves the watermark, as a Go duration; `0s` turns the check
    /// off. Default `24h`. Raise it for data with longer gaps.
    #[serde(default = "default_max_time_jump")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("eventTime.maxTimeJump must be a duration of 0s or more"))]
    pub max_time_jump: String,
}

impl Default for EventTimeSpec {
    fn default() -> Self {
        EventTimeSpec {
            watermark: WatermarkStrategy::default(),
            max_out_of_orderness: default_max_out_of_orderness(),
            allowed_lateness: default_allowed_lateness(),
            idle_timeout: default_idle_timeout(),
            max_time_jump: default_max_time_jump(),
        }
    }
}

fn default_max_out_of_orderness() -> String {
    duration::format_millis(EngineConfig::default().event_time.max_out_of_orderness_ms)
}
fn default_allowed_lateness() -> String {
    duration::format_millis(EngineConfig::default().event_time.allowed_lateness_ms)
}
fn default_idle_timeout() -> String {
    duration::format_millis(EngineConfig::default().event_time.idle_timeout_ms)
}
fn default_max_time_jump() -> String {
    duration::format_millis(EngineConfig::default().event_time.max_time_jump_ms)
}

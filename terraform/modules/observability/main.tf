# What operators watch: a Cloud Monitoring dashboard over Talon's OpenTelemetry metrics
# (exported by each function with Google's exporter, as workload.googleapis.com/<name>) and
# alert policies on the three signals that mean users are waiting: turns failing, the outbox
# backing up (turns not dispatched), schedules firing late.

variable "project" { type = string }
variable "prefix" { type = string }
variable "notification_channels" {
  description = "Monitoring notification channel ids the alerts notify."
  type        = list(string)
}
variable "turn_failure_ratio" { type = number }
variable "outbox_age_seconds" { type = number }
variable "schedule_lateness_seconds" { type = number }

locals {
  metric = "workload.googleapis.com"
  # Dashboard tiles: title -> (metric, aligner, reducer, group by).
  tiles = [
    ["Turns ended by outcome (per second)", "talon.turns.ended", "ALIGN_RATE", "REDUCE_SUM", ["metric.label.outcome"]],
    ["Turns started (per second)", "talon.turns.started", "ALIGN_RATE", "REDUCE_SUM", ["metric.label.namespace"]],
    ["Queue wait p99 (s)", "talon.turn.queue_wait", "ALIGN_DELTA", "REDUCE_PERCENTILE_99", []],
    ["Turn run time p99 (s)", "talon.turn.run_time", "ALIGN_DELTA", "REDUCE_PERCENTILE_99", ["metric.label.outcome"]],
    ["Step latency p99 by kind (s)", "talon.step.duration", "ALIGN_DELTA", "REDUCE_PERCENTILE_99", ["metric.label.kind"]],
    ["Model tokens by provider (per second)", "talon.model.tokens", "ALIGN_RATE", "REDUCE_SUM", ["metric.label.provider", "metric.label.type"]],
    ["Failed model attempts (per second)", "talon.model.attempt_failures", "ALIGN_RATE", "REDUCE_SUM", ["metric.label.profile"]],
    ["Tool calls by outcome (per second)", "talon.tool.calls", "ALIGN_RATE", "REDUCE_SUM", ["metric.label.source", "metric.label.outcome"]],
    ["Outbox depth", "talon.outbox.depth", "ALIGN_MAX", "REDUCE_MAX", ["metric.label.topic"]],
    ["Oldest undelivered outbox row (s)", "talon.outbox.oldest_age", "ALIGN_MAX", "REDUCE_MAX", ["metric.label.topic"]],
    ["Schedule lateness p99 (s)", "talon.schedule.lateness", "ALIGN_DELTA", "REDUCE_PERCENTILE_99", []],
    ["Open streams", "talon.streams.open", "ALIGN_MEAN", "REDUCE_SUM", []],
    ["Database connections in use", "talon.db.pool.in_use", "ALIGN_MAX", "REDUCE_SUM", []],
  ]
}

resource "google_monitoring_dashboard" "talon" {
  project = var.project
  dashboard_json = jsonencode({
    displayName = "Talon (${var.prefix})"
    mosaicLayout = {
      columns = 12
      tiles = [for i, tile in local.tiles : {
        xPos   = (i % 2) * 6
        yPos   = floor(i / 2) * 4
        width  = 6
        height = 4
        widget = {
          title = tile[0]
          xyChart = {
            dataSets = [{
              plotType = "LINE"
              timeSeriesQuery = {
                timeSeriesFilter = {
                  filter = "metric.type=\"${local.metric}/${tile[1]}\""
                  aggregation = {
                    alignmentPeriod    = "60s"
                    perSeriesAligner   = tile[2]
                    crossSeriesReducer = tile[3]
                    groupByFields      = tile[4]
                  }
                }
              }
            }]
          }
        }
      }]
    }
  })
}

resource "google_monitoring_alert_policy" "turn_failures" {
  project               = var.project
  display_name          = "Talon (${var.prefix}): turns failing"
  combiner              = "OR"
  notification_channels = var.notification_channels
  documentation {
    content = "More than ${var.turn_failure_ratio * 100}% of Talon's turns failed over 10 minutes. The failed turns' streams and `GET .../turns/{id}` say why (model_unavailable, deadline_exceeded, dead_lettered, ...)."
  }
  conditions {
    display_name = "failed / ended > ${var.turn_failure_ratio}"
    condition_threshold {
      filter             = "metric.type=\"${local.metric}/talon.turns.ended\" AND metric.label.outcome=\"failed\""
      denominator_filter = "metric.type=\"${local.metric}/talon.turns.ended\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.turn_failure_ratio
      duration           = "600s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
      }
      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "outbox_age" {
  project               = var.project
  display_name          = "Talon (${var.prefix}): outbox backing up"
  combiner              = "OR"
  notification_channels = var.notification_channels
  documentation {
    content = "An outbox row has waited more than ${var.outbox_age_seconds} s to be delivered: turns are queued but not dispatched. Check the broker (Pub/Sub push to dispatch, or the pull workers) and the sweep job."
  }
  conditions {
    display_name = "oldest undelivered row > ${var.outbox_age_seconds} s"
    condition_threshold {
      filter          = "metric.type=\"${local.metric}/talon.outbox.oldest_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.outbox_age_seconds
      duration        = "300s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MAX"
        cross_series_reducer = "REDUCE_MAX"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "schedule_lateness" {
  project               = var.project
  display_name          = "Talon (${var.prefix}): schedules firing late"
  combiner              = "OR"
  notification_channels = var.notification_channels
  documentation {
    content = "Schedule fires queue their turns more than ${var.schedule_lateness_seconds} s after their fire time (p99 over 10 minutes). Check the Cloud Tasks queue and the scheduler function."
  }
  conditions {
    display_name = "schedule lateness p99 > ${var.schedule_lateness_seconds} s"
    condition_threshold {
      filter          = "metric.type=\"${local.metric}/talon.schedule.lateness\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.schedule_lateness_seconds
      duration        = "600s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_PERCENTILE_99"
      }
    }
  }
}

//! The status document as Prometheus metrics: a collector of constant
//! metrics over a [`Status`] (`status.rs`), every family with every label
//! value it can have from the start.

use super::*;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Unit;

/// Counts by reason: every reason of `known` (0 when absent from `got`),
/// then whatever else `got` holds.
fn by_reason(known: &[&str], got: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = known
        .iter()
        .map(|r| {
            let n = got.iter().find(|(g, _)| g == r).map_or(0, |(_, n)| *n);
            (r.to_string(), n)
        })
        .collect();
    v.extend(
        got.iter()
            .filter(|(g, _)| !known.contains(&g.as_str()))
            .cloned(),
    );
    v
}

/// A status document as a collector of constant metrics.
#[derive(Debug)]
pub(super) struct Metrics(pub(super) Status);

type Labels = Vec<(&'static str, String)>;

impl Metrics {
    fn group(&self) -> Labels {
        vec![("group", self.0.group.clone())]
    }

    fn with(&self, key: &'static str, value: impl ToString) -> Labels {
        let mut l = self.group();
        l.push((key, value.to_string()));
        l
    }

    fn per_device<N>(&self, f: impl Fn(&Stream) -> N) -> Vec<(Labels, N)> {
        self.0
            .streams
            .iter()
            .map(|s| (self.with("device", s.device), f(s)))
            .collect()
    }
}

/// One family: its name (without the unit and `_total`), help, unit and
/// samples.
fn family<M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: Vec<(Labels, M)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit.as_ref(), M::TYPE)?;
    for (labels, v) in &samples {
        v.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge<N: EncodeGaugeValue>(v: N) -> ConstGauge<N> {
    ConstGauge::new(v)
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let st = &self.0;
        let e = &mut enc;
        family(
            e,
            "build_info",
            "The version of ferryd",
            None,
            vec![(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                gauge(1i64),
            )],
        )?;
        family(
            e,
            "state",
            "The state of the site (1: the current one): a primary's is replicating, connecting, ahead (the kernel tracks writes in its bitmap) or resyncing (the dirty chunks are being copied); a secondary's is idle, applying or released",
            None,
            st.states()
                .iter()
                .map(|s| (self.with("state", s), gauge(i64::from(*s == st.state))))
                .collect(),
        )?;
        family(
            e,
            "connected",
            "The stream's link connection is up",
            None,
            self.per_device(|s| gauge(i64::from(s.connected))),
        )?;
        family(
            e,
            "lag_records",
            "Records not yet acknowledged (primary) or applied (secondary)",
            None,
            self.per_device(|s| gauge(s.lag_records)),
        )?;
        family(
            e,
            "lag",
            "Bytes of those records",
            Some(Unit::Bytes),
            self.per_device(|s| gauge(s.lag_bytes)),
        )?;
        family(
            e,
            "lag",
            "Primary: age of the oldest record not acknowledged, from the kernel's timestamp of its write; secondary: primary time between the last record applied and the newest held",
            Some(Unit::Seconds),
            self.per_device(|s| gauge(s.lag_seconds)),
        )?;
        family(
            e,
            "record",
            "Record bytes (before compression) shipped or received",
            Some(Unit::Bytes),
            self.per_device(|s| counter(s.record_bytes)),
        )?;
        family(
            e,
            "wire",
            "Frame bytes on the link",
            Some(Unit::Bytes),
            self.per_device(|s| counter(s.wire_bytes)),
        )?;
        family(
            e,
            "applied_writes",
            "Secondary: write records of the stream this process applied",
            None,
            self.per_device(|s| counter(s.applied_writes)),
        )?;
        family(
            e,
            "remote_log_stopped",
            "Secondary: the stream's remote log takes no more records (see the log and the status)",
            None,
            self.per_device(|s| gauge(i64::from(s.log_stopped.is_some()))),
        )?;
        family(
            e,
            "remote_log_full",
            "Secondary: the remote log's directory is full: replication waits for room",
            None,
            vec![(self.group(), gauge(i64::from(st.log_full.is_some())))],
        )?;
        family(
            e,
            "applied_epoch",
            "Last checkpoint interval applied",
            None,
            vec![(self.group(), gauge(st.applied_epoch))],
        )?;
        family(
            e,
            "applying_epoch",
            "Secondary: checkpoint interval being applied (0: none)",
            None,
            vec![(self.group(), gauge(st.applying_epoch))],
        )?;
        family(
            e,
            "intervals_applied",
            "Secondary: checkpoint intervals this process applied",
            None,
            vec![(self.group(), counter(st.intervals_applied))],
        )?;
        family(
            e,
            "consistency_point_id",
            "Last consistency point held at the secondary (0: none)",
            None,
            vec![(
                self.group(),
                gauge(st.consistency_point.as_ref().map_or(0, |p| p.cp_id)),
            )],
        )?;
        family(
            e,
            "spool_records",
            "Primary: records read from the kernel and not acknowledged",
            None,
            vec![(self.group(), gauge(st.spool_records))],
        )?;
        family(
            e,
            "disk_spool_records",
            "Primary: of those, the records in the disk spool",
            None,
            vec![(self.group(), gauge(st.disk_spool_records))],
        )?;
        family(
            e,
            "disk_spool",
            "Primary: bytes of the disk spool's segments",
            Some(Unit::Bytes),
            vec![(self.group(), gauge(st.disk_spool_bytes))],
        )?;
        family(
            e,
            "disk_spool_full",
            "Primary: the disk spool's directory is full: records stay in the kernel's spool",
            None,
            vec![(self.group(), gauge(i64::from(st.spool_full.is_some())))],
        )?;
        family(
            e,
            "auth_refused",
            "Secondary: peers refused, by reason",
            None,
            by_reason(&AUTH_REFUSAL_REASONS, &st.auth_refused_by)
                .into_iter()
                .map(|(r, n)| (self.with("reason", r), counter(n)))
                .collect(),
        )?;
        family(
            e,
            "accept_errors",
            "Secondary: errors accepting a connection",
            None,
            vec![(self.group(), counter(st.accept_errors))],
        )?;
        family(
            e,
            "records_rejected",
            "Secondary: records rejected, by reason",
            None,
            by_reason(&REJECT_REASONS, &st.rejected)
                .into_iter()
                .map(|(r, n)| (self.with("reason", r), counter(n)))
                .collect(),
        )?;
        family(
            e,
            "g2_violations",
            "Secondary: log records durable after a data record of a later group order",
            None,
            vec![(self.group(), counter(st.g2_violations))],
        )?;
        family(
            e,
            "resync_span_open",
            "Secondary: a resync span is open: its intervals are staged, to be applied as one once its end arrives",
            None,
            vec![(self.group(), gauge(i64::from(st.resync_span_open)))],
        )?;
        family(
            e,
            "resync_span_intervals",
            "Secondary: whole intervals of the open resync span staged, not applied",
            None,
            vec![(self.group(), gauge(st.resync_span_intervals))],
        )?;
        family(
            e,
            "resync_span_records",
            "Secondary: records of those intervals",
            None,
            vec![(self.group(), gauge(st.resync_span_records))],
        )?;
        family(
            e,
            "resync_span",
            "Secondary: bytes of those records",
            Some(Unit::Bytes),
            vec![(self.group(), gauge(st.resync_span_bytes))],
        )?;
        family(
            e,
            "resync_spans_applied",
            "Secondary: resync spans this process applied whole",
            None,
            vec![(self.group(), counter(st.resync_spans_applied))],
        )?;
        family(
            e,
            "inconsistent",
            "Secondary: no consistent point, the initial full copy's span is not applied whole (promote refused without --force)",
            None,
            vec![(self.group(), gauge(i64::from(st.inconsistent)))],
        )?;
        family(
            e,
            "resync_chunks_left",
            "Primary: chunks the running resync has left to copy (0: none runs)",
            None,
            vec![(self.group(), gauge(st.resync_chunks_left))],
        )?;
        family(
            e,
            "resync_chunks",
            "Primary: chunks in the running resync (0: none runs)",
            None,
            vec![(self.group(), gauge(st.resync_chunks_total))],
        )?;
        family(
            e,
            "resync_full",
            "Primary: a full copy (START with FULL_RESYNC) this process started is not done",
            None,
            vec![(self.group(), gauge(i64::from(st.resync_full)))],
        )?;
        family(
            e,
            "resync_room_refusals",
            "Resyncs refused before they began for lack of room in the secondary's log_dir (secondary: refused here; primary: refused by the secondary)",
            None,
            vec![(self.group(), counter(st.resync_room_refusals))],
        )?;
        family(
            e,
            "apply_stopped",
            "Secondary: applying stopped on an error (see the log and the status)",
            None,
            vec![(self.group(), gauge(i64::from(st.apply_error.is_some())))],
        )?;
        Ok(())
    }
}

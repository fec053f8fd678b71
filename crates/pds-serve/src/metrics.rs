//! Prometheus metrics. Counts and durations only: no statement text, no
//! account or project names, no data values.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    statements: Family<Labels, Counter>,
    failed: Family<Labels, Counter>,
    rows: Family<Labels, Counter>,
    logins_failed: Family<Labels, Counter>,
    connections: Family<Labels, Gauge>,
    refused: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn channel(c: &str) -> Labels {
    vec![("channel".to_string(), c.to_string())]
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pds");
        let statements = Family::<Labels, Counter>::default();
        let failed = Family::<Labels, Counter>::default();
        let rows = Family::<Labels, Counter>::default();
        let logins_failed = Family::<Labels, Counter>::default();
        let connections = Family::<Labels, Gauge>::default();
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "statements",
            "Statements received, per front-end",
            statements.clone(),
        );
        registry.register(
            "statements_failed",
            "Statements refused or failed, per front-end",
            failed.clone(),
        );
        registry.register("rows_sent", "Result rows sent, per front-end", rows.clone());
        registry.register(
            "logins_failed",
            "Failed sign-ins, per front-end",
            logins_failed.clone(),
        );
        registry.register(
            "connections_open",
            "Open connections, per front-end",
            connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at the connection limit",
            refused.clone(),
        );
        Metrics {
            registry,
            statements,
            failed,
            rows,
            logins_failed,
            connections,
            refused,
        }
    }

    pub(crate) fn statement(&self, c: &str) {
        self.statements.get_or_create(&channel(c)).inc();
    }
    pub(crate) fn statement_failed(&self, c: &str) {
        self.failed.get_or_create(&channel(c)).inc();
    }
    pub(crate) fn rows_sent(&self, c: &str, n: u64) {
        self.rows.get_or_create(&channel(c)).inc_by(n);
    }
    pub(crate) fn login_failed(&self, c: &str) {
        self.logins_failed.get_or_create(&channel(c)).inc();
    }
    pub(crate) fn connection_opened(&self, c: &str) {
        self.connections.get_or_create(&channel(c)).inc();
    }
    pub(crate) fn connection_closed(&self, c: &str) {
        self.connections.get_or_create(&channel(c)).dec();
    }
    pub(crate) fn connection_refused(&self, c: &str) {
        self.refused.get_or_create(&channel(c)).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

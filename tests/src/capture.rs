//! A tracing subscriber that records the events of the worker and the backends with the
//! time they happened, so that tests can measure when a fault was detected and check what
//! was logged (and how often).

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};

use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// One recorded event.
#[derive(Clone, Debug)]
pub struct Captured {
    /// When it was emitted.
    pub at: Instant,
    /// Its level.
    pub level: Level,
    /// Its target (module path).
    pub target: String,
    /// The `instance_id` of the enclosing `worker` span, if any.
    pub instance_id: Option<String>,
    /// The message followed by the other fields as `name=value`.
    pub text: String,
}

impl Captured {
    /// WARN or ERROR.
    pub fn is_warn(&self) -> bool {
        self.level <= Level::WARN
    }
}

fn log() -> &'static Mutex<Vec<Captured>> {
    static LOG: OnceLock<Mutex<Vec<Captured>>> = OnceLock::new();
    LOG.get_or_init(|| Mutex::new(Vec::new()))
}

/// Installs the capturing subscriber once per process (idempotent). Events of the
/// coordinator crates at DEBUG and above are recorded; with `RUST_LOG` set, events are also
/// printed to the test output.
pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let targets = Targets::new()
            .with_target("worker_core", Level::DEBUG)
            .with_target("backend_consul", Level::DEBUG)
            .with_target("backend_etcd", Level::DEBUG)
            .with_target("coordinator", Level::DEBUG);
        let fmt = std::env::var_os("RUST_LOG").map(|_| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(EnvFilter::from_default_env())
        });
        let _ = tracing_subscriber::registry()
            .with(CaptureLayer.with_filter(targets))
            .with(fmt)
            .try_init();
    });
}

/// Every event recorded at or after `since`.
pub fn since(since: Instant) -> Vec<Captured> {
    log()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|c| c.at >= since)
        .cloned()
        .collect()
}

/// Events recorded at or after `since` inside the worker span of `instance_id`.
pub fn of_worker(instance_id: &str, since_: Instant) -> Vec<Captured> {
    since(since_)
        .into_iter()
        .filter(|c| c.instance_id.as_deref() == Some(instance_id))
        .collect()
}

struct CaptureLayer;

/// The `instance_id` recorded on a `worker` span.
struct InstanceId(String);

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
    instance_id: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "instance_id" => self.instance_id = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "instance_id" => self.instance_id = Some(value.to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }
}

impl<S> Layer<S> for CaptureLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().name() != "worker" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(span), Some(instance)) = (ctx.span(id), fields.instance_id) {
            span.extensions_mut().insert(InstanceId(instance));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let instance_id = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<InstanceId>().map(|i| i.0.clone()))
        });
        let captured = Captured {
            at: Instant::now(),
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            instance_id,
            text: format!("{}{}", fields.message, fields.rest),
        };
        log()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(captured);
    }
}

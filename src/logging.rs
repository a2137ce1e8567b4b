//! The nozzle's own log lines: JSON objects (one per line) or text, the
//! level from `RUST_LOG` (default `info`), and warnings and errors limited
//! per call site so a failure repeating thousands of times a second cannot
//! flood `cf logs` and, through it, the firehose the nozzle reads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tracing::callsite::Identifier;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Format of the nozzle's own log lines, which go to stdout (to stderr
    /// when --sink has stdout, which is the records'); the level comes from
    /// RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Warnings and errors of one call site allowed per [`WINDOW`].
pub(crate) const BURST: u32 = 5;
/// The rate limit's window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Installs the global subscriber: `format` to stdout or stderr.
pub fn init(format: LogFormat, to_stdout: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let writer = move || -> Box<dyn std::io::Write> {
        if to_stdout {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::io::stderr())
        }
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(RateLimited::new(fmt, BURST, WINDOW))
        .init();
}

/// One call site's window: when it opened, events let through, events held back.
#[derive(Debug)]
struct Window {
    start: tokio::time::Instant,
    passed: u32,
    suppressed: u64,
}

/// What the limiter decided for an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write it; `suppressed` events of this call site were held back before it.
    Yes {
        suppressed: u64,
    },
    No,
}

/// Per-call-site counting of warnings and errors (tokio's clock, so tests
/// can pause it).
#[derive(Debug)]
pub(crate) struct Limiter {
    burst: u32,
    window: Duration,
    /// Keyed by the address of the site's static (see [`site_address`]) and
    /// the event's [`KEY_FIELDS`] values.
    sites: Mutex<HashMap<(usize, String), Window>>,
}

/// A call site's key: the address of its static. `Identifier`'s own `Hash`
/// also hashes the vtable pointer, and a build may have several vtables for
/// one type (one per codegen unit), so two equal identifiers could hash
/// apart and one site get two allowances (seen in release builds).
fn site_address(site: &Identifier) -> usize {
    std::ptr::from_ref(site.0).cast::<()>().addr()
}

impl Limiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event of `site` with `key` (its [`KEY_FIELDS`] values) now.
    pub(crate) fn admit(&self, site: Identifier, key: String) -> Admit {
        let now = tokio::time::Instant::now();
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let w = sites.entry((site_address(&site), key)).or_insert(Window {
            start: now,
            passed: 0,
            suppressed: 0,
        });
        let mut held = 0;
        if now.duration_since(w.start) >= self.window {
            held = std::mem::take(&mut w.suppressed);
            w.start = now;
            w.passed = 0;
        }
        if w.passed < self.burst {
            w.passed += 1;
            Admit::Yes { suppressed: held }
        } else {
            w.suppressed += 1;
            Admit::No
        }
    }
}

/// Fields whose values give an event an allowance of its own within its call
/// site: each alert reason and each sink is limited on its own, so five
/// `sink_dropped` lines cannot hide a `sink_stalled` one, nor one sink's
/// retries another's. Their values are few (reasons and configured sinks).
pub(crate) const KEY_FIELDS: [&str; 2] = ["alert", "sink"];

/// Collects the [`KEY_FIELDS`] values of an event.
#[derive(Default)]
struct KeyVisitor(String);

impl tracing::field::Visit for KeyVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if KEY_FIELDS.contains(&field.name()) {
            self.0.push_str(field.name());
            self.0.push('=');
            self.0.push_str(value);
            self.0.push('\0');
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if KEY_FIELDS.contains(&field.name()) {
            use std::fmt::Write;
            let _ = write!(self.0, "{}={value:?}\0", field.name());
        }
    }
}

/// A layer that lets warnings and errors through [`Limiter`] and everything
/// else straight to `inner`.
pub(crate) struct RateLimited<L> {
    inner: L,
    limiter: Limiter,
}

impl<L> RateLimited<L> {
    pub fn new(inner: L, burst: u32, window: Duration) -> Self {
        Self {
            inner,
            limiter: Limiter::new(burst, window),
        }
    }
}

impl<S, L> Layer<S> for RateLimited<L>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }
    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }
    fn enabled(&self, metadata: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        self.inner.on_new_span(attrs, id, ctx);
    }
    fn on_record(
        &self,
        span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        self.inner.on_record(span, values, ctx);
    }
    fn on_follows_from(
        &self,
        span: &tracing::span::Id,
        follows: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        self.inner.on_follows_from(span, follows, ctx);
    }
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() <= tracing::Level::WARN {
            let mut key = KeyVisitor::default();
            event.record(&mut key);
            match self.limiter.admit(meta.callsite(), key.0) {
                Admit::No => return,
                Admit::Yes { suppressed: 0 } => {}
                Admit::Yes { suppressed } => tracing::warn!(
                    suppressed,
                    site = %format!("{}:{}", meta.file().unwrap_or("?"), meta.line().unwrap_or(0)),
                    "{suppressed} more like the next line were not logged (at most {BURST} a minute per place, alert reason and sink)"
                ),
            }
        }
        self.inner.on_event(event, ctx);
    }
    fn on_enter(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }
    fn on_exit(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }
    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }
    fn on_id_change(&self, old: &tracing::span::Id, new: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Site(#[allow(dead_code)] u8);
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unimplemented!("not needed for identity")
        }
    }
    static A: Site = Site(1);
    static B: Site = Site(2);

    #[tokio::test(start_paused = true)]
    async fn five_a_minute_per_site_then_the_count_of_those_held_back() {
        let l = Limiter::new(5, Duration::from_secs(60));
        let a = || Identifier(&A);
        let b = || Identifier(&B);
        let first: Vec<Admit> = (0..8).map(|_| l.admit(a(), String::new())).collect();
        assert_eq!(first[..5], [(); 5].map(|_| Admit::Yes { suppressed: 0 }));
        assert_eq!(first[5..], [Admit::No, Admit::No, Admit::No]);
        // Another site has its own allowance.
        assert_eq!(l.admit(b(), String::new()), Admit::Yes { suppressed: 0 });
        // So has another key (alert reason, sink) at the same site.
        assert_eq!(
            l.admit(a(), "alert=sink_stalled\0".into()),
            Admit::Yes { suppressed: 0 }
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(l.admit(a(), String::new()), Admit::No);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.admit(a(), String::new()), Admit::Yes { suppressed: 4 });
        assert_eq!(l.admit(a(), String::new()), Admit::Yes { suppressed: 0 });
    }
}

//! The emulator's traffic: a deterministic (per seed) mix of what a Cloud
//! Foundry foundation puts on the firehose, with the tags its components set
//! (reference §3): app output, router access lines, staging, cell lifecycle,
//! Cloud Controller API lines, container metrics, component counters and
//! gauges, gorouter timers, and Traffic Controller events.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::proto::{Counter, Envelope, Event, Gauge, GaugeValue, Log, Timer, envelope, log};

/// A deterministic generator of realistic Cloud Foundry traffic.
pub struct Traffic {
    rng: StdRng,
    apps: Vec<App>,
    seq: u64,
    /// Where the component logs of the API actions go, when asked for.
    security: Option<super::security::SecurityLog>,
}

struct App {
    guid: String,
    name: String,
    process_guid: String,
    space_guid: String,
    space: String,
    org_guid: String,
    org: String,
}

impl App {
    /// The app, space and org tags Cloud Controller sets on an app's envelopes.
    fn identity_tags(&self) -> [(&'static str, String); 6] {
        [
            ("app_id", self.guid.clone()),
            ("app_name", self.name.clone()),
            ("space_id", self.space_guid.clone()),
            ("space_name", self.space.clone()),
            ("organization_id", self.org_guid.clone()),
            ("organization_name", self.org.clone()),
        ]
    }
}

type Tags = std::collections::BTreeMap<String, String>;

fn new_envelope(
    timestamp: i64,
    source_id: impl Into<String>,
    instance_id: impl Into<String>,
    tags: Tags,
    message: Option<envelope::Message>,
) -> Envelope {
    Envelope {
        timestamp,
        source_id: source_id.into(),
        instance_id: instance_id.into(),
        deprecated_tags: Default::default(),
        tags,
        message,
    }
}

fn tag_map(pairs: impl IntoIterator<Item = (&'static str, String)>) -> Tags {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

const ORGS: [&str; 3] = ["payments", "platform", "retail"];
const SPACES: [&str; 3] = ["prod", "staging", "dev"];
const APP_NAMES: [&str; 8] = [
    "checkout", "ledger", "catalog", "search", "notifier", "gateway", "billing", "reports",
];
const COMPONENTS: [(&str, &str, &str); 5] = [
    ("doppler", "loggregator.doppler", "doppler"),
    ("reverse_log_proxy", "loggregator.rlp", "log-api"),
    ("gorouter", "gorouter", "router"),
    ("cloud_controller", "cloud_controller", "api"),
    ("rep", "rep", "diego-cell"),
];

impl Traffic {
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let guid = |rng: &mut StdRng| crate::record::guid(rng.random());
        let orgs: Vec<(String, &str)> = ORGS.iter().map(|o| (guid(&mut rng), *o)).collect();
        let mut apps = Vec::new();
        for (i, name) in APP_NAMES.iter().enumerate() {
            let (org_guid, org) = &orgs[i % orgs.len()];
            apps.push(App {
                guid: guid(&mut rng),
                name: name.to_string(),
                process_guid: guid(&mut rng),
                space_guid: guid(&mut rng),
                space: SPACES[i % SPACES.len()].to_string(),
                org_guid: org_guid.clone(),
                org: org.to_string(),
            });
        }
        Self {
            rng,
            apps,
            seq: 0,
            security: None,
        }
    }

    /// The traffic also writing, for each Cloud Controller action it puts
    /// on the firehose, the CC security event and UAA audit lines of that
    /// action into `log` (the firehose mix is unchanged).
    pub fn with_security_log(mut self, log: Option<super::security::SecurityLog>) -> Self {
        self.security = log;
        self
    }

    /// `n` envelopes of the mix, timestamped now.
    pub fn batch(&mut self, n: usize) -> Vec<Envelope> {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        (0..n).map(|i| self.envelope(now + i as i64)).collect()
    }

    /// One envelope; the mix per 100: 40 app output, 18 router, 2 staging,
    /// 3 cell, 5 API, 12 container metrics, 8 counters, 5 component gauges,
    /// 5 timers, 2 events.
    pub fn envelope(&mut self, timestamp: i64) -> Envelope {
        self.seq += 1;
        let app_index = self.rng.random_range(0..self.apps.len());
        let roll = self.rng.random_range(0..100u32);
        let instance = self.rng.random_range(0..3u32);
        match roll {
            0..40 => self.app_output(app_index, instance, timestamp),
            40..58 => self.router_access(app_index, instance, timestamp),
            58..60 => self.staging(app_index, timestamp),
            60..63 => self.cell(app_index, instance, timestamp),
            63..68 => self.api_log(app_index, timestamp),
            68..80 => self.container_metrics(app_index, instance, timestamp),
            80..88 => self.component_counter(timestamp),
            88..93 => self.component_gauge(timestamp),
            93..98 => self.router_timer(app_index, instance, timestamp),
            _ => self.slow_consumer_event(timestamp),
        }
    }

    /// An app instance's own output: a JSON line, or (one in five) an
    /// error line of type `ERR`.
    fn app_output(&mut self, app_index: usize, instance: u32, timestamp: i64) -> Envelope {
        let err = self.rng.random_bool(0.2);
        let line = if err {
            format!(
                "ERROR [{}] request failed: upstream timeout after 30s seq={}",
                self.apps[app_index].name, self.seq
            )
        } else {
            format!(
                r#"{{"level":"info","msg":"handled request","path":"/api/v1/items/{}","status":200,"duration_ms":{},"seq":{}}}"#,
                self.rng.random_range(1..10_000u32),
                self.rng.random_range(1..500u32),
                self.seq
            )
        };
        self.app_log(
            app_index,
            instance,
            "APP/PROC/WEB",
            "rep",
            line,
            err,
            timestamp,
        )
    }

    /// A gorouter access log line for an app (`RTR`).
    fn router_access(&mut self, app_index: usize, instance: u32, timestamp: i64) -> Envelope {
        let app = &self.apps[app_index];
        let line = format!(
            r#"{name}.apps.example.com - [{t}] "GET /api/v1/items HTTP/1.1" 200 0 {bytes} "-" "curl/8.4.0" "10.0.1.12:51234" "10.0.16.{ip}:61012" x_forwarded_for:"203.0.113.7" x_forwarded_proto:"https" vcap_request_id:"{req}" response_time:0.{rt:03} gorouter_time:0.000211 app_id:"{guid}" app_index:"{instance}" instance_id:"{iid}" x_b3_traceid:"{trace:016x}" x_b3_spanid:"{span:016x}" x_b3_parentspanid:"-" b3:"{trace:016x}-{span:016x}""#,
            name = app.name,
            t = crate::record::rfc3339_nanos(timestamp),
            bytes = self.rng.random_range(100..20_000u32),
            ip = self.rng.random_range(2..250u32),
            req = self.seq,
            rt = self.rng.random_range(1..999u32),
            guid = app.guid,
            iid = app.process_guid,
            trace = self.rng.random::<u64>(),
            span = self.rng.random::<u64>(),
        );
        let mut env = self.app_log(
            app_index, instance, "RTR", "gorouter", line, false, timestamp,
        );
        env.tags.insert("__v1_type".into(), "LogMessage".into());
        env
    }

    /// A staging line (`STG`).
    fn staging(&mut self, app_index: usize, timestamp: i64) -> Envelope {
        let line = format!("Downloaded buildpack artifacts (seq {})", self.seq);
        self.app_log(app_index, 0, "STG", "rep", line, false, timestamp)
    }

    /// A Diego cell lifecycle line (`CELL`).
    fn cell(&mut self, app_index: usize, instance: u32, timestamp: i64) -> Envelope {
        let line = [
            "Creating container for app instance",
            "Successfully created container for instance",
            "Exit status 0",
        ][self.rng.random_range(0..3)]
        .to_string();
        self.app_log(app_index, instance, "CELL", "rep", line, false, timestamp)
    }

    /// A platform component's counter.
    fn component_counter(&mut self, timestamp: i64) -> Envelope {
        let (src, origin, job) = COMPONENTS[self.rng.random_range(0..COMPONENTS.len())];
        let name =
            ["ingress", "egress", "dropped", "sinks.errors.dropped"][self.rng.random_range(0..4)];
        let delta = self.rng.random_range(0..5000u64);
        let mut env = self.component(src, origin, job, timestamp);
        if name == "dropped" {
            // Buffer overwrites on the way in; egress drops (a slow
            // consumer) would be an alert, not normal traffic.
            env.tags.insert("direction".into(), "ingress".into());
        }
        env.message = Some(envelope::Message::Counter(Counter {
            name: name.into(),
            delta,
            total: self.seq * 1000 + delta,
        }));
        env
    }

    /// A platform component's gauge.
    fn component_gauge(&mut self, timestamp: i64) -> Envelope {
        let (src, origin, job) = COMPONENTS[self.rng.random_range(0..COMPONENTS.len())];
        let mut env = self.component(src, origin, job, timestamp);
        let mut metrics = std::collections::BTreeMap::new();
        metrics.insert(
            "subscriptions".into(),
            GaugeValue {
                unit: "total".into(),
                value: self.rng.random_range(1..900u32) as f64,
            },
        );
        env.message = Some(envelope::Message::Gauge(Gauge { metrics }));
        env
    }

    /// A gorouter HTTP timer for a request to an app.
    fn router_timer(&mut self, app_index: usize, instance: u32, timestamp: i64) -> Envelope {
        let (guid, name) = (
            self.apps[app_index].guid.clone(),
            self.apps[app_index].name.clone(),
        );
        let start = timestamp - self.rng.random_range(1_000_000..900_000_000i64);
        let mut env = self.component("gorouter", "gorouter", "router", timestamp);
        env.source_id = guid.clone();
        env.instance_id = instance.to_string();
        for (k, v) in [
            ("peer_type", "Client".to_string()),
            ("method", "GET".to_string()),
            (
                "uri",
                format!("https://{name}.apps.example.com/api/v1/items"),
            ),
            ("remote_address", "203.0.113.7:53312".to_string()),
            ("user_agent", "curl/8.4.0".to_string()),
            ("status_code", "200".to_string()),
            (
                "content_length",
                self.rng.random_range(100..20_000u32).to_string(),
            ),
            ("request_id", format!("0000{:028x}", self.seq)),
            ("app_id", guid),
        ] {
            env.tags.insert(k.into(), v);
        }
        env.message = Some(envelope::Message::Timer(Timer {
            name: "http".into(),
            start,
            stop: timestamp,
        }));
        env
    }

    /// Traffic Controller's slow-consumer event.
    fn slow_consumer_event(&mut self, timestamp: i64) -> Envelope {
        let mut env = self.component(
            "trafficcontroller",
            "loggregator.trafficcontroller",
            "log-api",
            timestamp,
        );
        env.message = Some(envelope::Message::Event(Event {
            title: "Traffic Controller has disconnected slow consumer".into(),
            body: format!(
                "Remote Address: 10.0.4.{}:44412, X-Forwarded-For: -, Path: /firehose/audit-nozzle",
                self.rng.random_range(2..250u32)
            ),
        }));
        env
    }

    /// The tags Diego puts on an app instance's envelopes (reference §3.2).
    fn app_tags(&self, app_index: usize, instance: u32) -> Tags {
        let app = &self.apps[app_index];
        tag_map(app.identity_tags().into_iter().chain([
            ("source_id", app.guid.clone()),
            ("process_id", app.process_guid.clone()),
            ("process_type", "web".to_string()),
            (
                "process_instance_id",
                format!("{:08x}-7c5e-4a41-6c2b-{:012x}", instance + 1, app_index),
            ),
            ("instance_id", instance.to_string()),
            ("deployment", "cf".to_string()),
            ("job", "diego-cell".to_string()),
            ("index", "8e5f2c4e-4b5d-4a1a-9f3b-0d0c1e2f3a4b".to_string()),
            ("ip", format!("10.0.16.{}", 10 + app_index)),
        ]))
    }

    #[allow(clippy::too_many_arguments)]
    fn app_log(
        &self,
        app_index: usize,
        instance: u32,
        source_type: &str,
        origin: &str,
        line: String,
        err: bool,
        timestamp: i64,
    ) -> Envelope {
        let mut tags = self.app_tags(app_index, instance);
        tags.insert("source_type".into(), source_type.into());
        tags.insert("origin".into(), origin.into());
        let ty = if err { log::Type::Err } else { log::Type::Out };
        let message = envelope::Message::Log(Log {
            payload: Bytes::from(line),
            r#type: ty as i32,
        });
        new_envelope(
            timestamp,
            self.apps[app_index].guid.clone(),
            instance.to_string(),
            tags,
            Some(message),
        )
    }

    fn api_log(&mut self, app_index: usize, timestamp: i64) -> Envelope {
        let app = &self.apps[app_index];
        let g = &app.guid;
        let variant = self.rng.random_range(0..6);
        if let Some(log) = &self.security {
            super::security::write_action(log, variant, g, self.seq, timestamp);
        }
        let line = match variant {
            0 => format!(
                r#"Updated app with guid {g} ({{"name"=>"{}", "instances"=>{}, "memory"=>1024, "environment_json"=>"PRIVATE DATA HIDDEN"}})"#,
                app.name,
                self.rng.random_range(1..6)
            ),
            1 => format!("Starting app with guid {g}"),
            2 => format!("Stopping app with guid {g}"),
            3 => format!("Creating build for app with guid {g}"),
            4 => format!("Uploading bits for app with guid {g}"),
            _ => format!("Created app with guid {g}"),
        };
        // Cloud Controller's tags on its API lines (reference §3.4).
        let tags = tag_map(app.identity_tags().into_iter().chain([
            ("deployment", "cf".to_string()),
            ("job", "api".to_string()),
            ("index", "1c7a2d7e-3f7e-4c8a-9f1e-5b6a7c8d9e0f".to_string()),
            ("ip", "10.0.1.20".to_string()),
            ("source_type", "API".to_string()),
            ("origin", "cloud_controller".to_string()),
        ]));
        let message = envelope::Message::Log(Log {
            payload: Bytes::from(line),
            r#type: log::Type::Out as i32,
        });
        new_envelope(timestamp, g.clone(), "0", tags, Some(message))
    }

    fn container_metrics(&mut self, app_index: usize, instance: u32, timestamp: i64) -> Envelope {
        let mut tags = self.app_tags(app_index, instance);
        tags.insert("origin".into(), "rep".into());
        let mut metrics = std::collections::BTreeMap::new();
        let mut put = |k: &str, unit: &str, v: f64| {
            metrics.insert(
                k.to_string(),
                GaugeValue {
                    unit: unit.into(),
                    value: v,
                },
            );
        };
        put("cpu", "percentage", self.rng.random_range(0.0..100.0));
        put(
            "memory",
            "bytes",
            self.rng.random_range(50_000_000..900_000_000u64) as f64,
        );
        put(
            "disk",
            "bytes",
            self.rng.random_range(50_000_000..500_000_000u64) as f64,
        );
        put("memory_quota", "bytes", 1_073_741_824.0);
        put("disk_quota", "bytes", 1_073_741_824.0);
        new_envelope(
            timestamp,
            self.apps[app_index].guid.clone(),
            instance.to_string(),
            tags,
            Some(envelope::Message::Gauge(Gauge { metrics })),
        )
    }

    fn component(&mut self, source_id: &str, origin: &str, job: &str, timestamp: i64) -> Envelope {
        let index = self.rng.random_range(0..4u32);
        let tags = tag_map([
            ("deployment", "cf".to_string()),
            ("job", job.to_string()),
            ("index", format!("{index:08x}-5a3e-4c2b-8d1f-0e9a8b7c6d5e")),
            ("ip", format!("10.0.2.{}", 10 + index)),
            ("origin", origin.to_string()),
            ("metric_version", "2.0".to_string()),
        ]);
        new_envelope(
            timestamp,
            source_id.to_string(),
            format!("{index:08x}-5a3e-4c2b-8d1f-0e9a8b7c6d5e"),
            tags,
            None,
        )
    }
}

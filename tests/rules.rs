//! Include/exclude rules, own-app and opt-out exclusion, and per-kind
//! routing, through the real router and the command line's validation.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::classify::rules::{Filters, Rule, own_app_guid};
use cf_audit_nozzle::config::{Cli, Command, apply_routes};
use cf_audit_nozzle::config::{PipelineConfig, SinkConfig};
use cf_audit_nozzle::proto::{Counter, Envelope, Gauge, GaugeValue, envelope};
use cf_audit_nozzle::record::{Kind, Record, audit_event_record};
use cf_audit_nozzle::route::Router;
use cf_audit_nozzle::sink::SinkQueue;
use clap::Parser;
use common::*;
use serde_json::json;

const APP: &str = "cdabc600-0b73-48e1-b7d2-26af2c63f933";
const NOZZLE: &str = "99999999-0b73-48e1-b7d2-26af2c63f933";

fn app_log(source_id: &str, tags: &[(&str, &str)]) -> Record {
    classify(log_envelope(1, source_id, "hello", tags))
}

fn metric(source_id: &str, message: envelope::Message, tags: &[(&str, &str)]) -> Record {
    classify(Envelope {
        timestamp: 1,
        source_id: source_id.into(),
        instance_id: "0".into(),
        deprecated_tags: Default::default(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        message: Some(message),
    })
}

fn gauge(names: &[&str]) -> envelope::Message {
    envelope::Message::Gauge(Gauge {
        metrics: names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    GaugeValue {
                        unit: "bytes".into(),
                        value: 1.0,
                    },
                )
            })
            .collect(),
    })
}

fn counter(name: &str) -> envelope::Message {
    envelope::Message::Counter(Counter {
        name: name.into(),
        delta: 1,
        total: 1,
    })
}

fn audit(space: &str) -> Record {
    audit_event_record(
        json!({"guid": "44444444-5555-4666-8777-888888888888", "type": "audit.app.start",
        "created_at": "2020-01-01T00:00:00Z", "actor": {"type": "user", "guid": "u", "name": "a@b"},
        "target": {"type": "app", "guid": APP, "name": "spring-music"}, "data": {},
        "space": {"guid": space}, "organization": {"guid": "org-1"}}),
    )
    .unwrap()
}

fn rule(text: &str) -> Rule {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn each_field_matches_what_it_names() {
    let web = app_log(
        APP,
        &[
            ("source_type", "APP/PROC/WEB"),
            ("app_name", "spring-music"),
            ("space_name", "dev"),
            ("organization_id", "org-1"),
            ("origin", "rep"),
            ("deployment", "cf"),
            ("job", "diego-cell"),
            ("team", "blue"),
        ],
    );
    let rtr = app_log(APP, &[("source_type", "RTR"), ("origin", "gorouter")]);
    let mem = metric(APP, gauge(&["memory", "cpu"]), &[("origin", "rep")]);
    let ingress = metric(
        "doppler",
        counter("ingress"),
        &[("origin", "loggregator.doppler"), ("job", "doppler")],
    );
    let cases: &[(&str, &[bool; 5])] = &[
        // rule                           web    rtr    mem    ingress audit
        ("kind=app_log", &[true, true, false, false, false]),
        ("kind=metric|api", &[false, false, true, true, true]),
        ("source_type=APP/*", &[true, false, false, false, false]),
        ("source_type=RTR", &[false, true, false, false, false]),
        ("origin=rep", &[true, false, true, false, false]),
        ("source_id=doppler", &[false, false, false, true, false]),
        (
            "source_id=cloud_controller",
            &[false, false, false, false, true],
        ),
        (&*format!("app={APP}"), &[true, true, true, false, true]),
        ("app=spring-music", &[true, false, false, false, true]),
        ("space=dev", &[true, false, false, false, false]),
        ("space=space-1", &[false, false, false, false, true]),
        ("org=org-1", &[true, false, false, false, true]),
        ("deployment=cf", &[true, false, false, false, false]),
        ("job=diego-*", &[true, false, false, false, false]),
        ("metric=cpu", &[false, false, true, false, false]),
        ("metric=ingress", &[false, false, false, true, false]),
        ("tag.team=blue", &[true, false, false, false, false]),
        (
            "source_event=audit_events",
            &[false, false, false, false, true],
        ),
        (
            "source_event=firehose",
            &[false, false, false, false, false],
        ),
        (
            "kind=app_log,source_type=RTR",
            &[false, true, false, false, false],
        ),
        (
            "kind=metric,origin=rep|gorouter",
            &[false, false, true, false, false],
        ),
    ];
    let records = [web, rtr, mem, ingress, audit("space-1")];
    let cc_line = app_log(APP, &[("source_type", "API")]);
    assert!(rule("source_event=firehose").matches(&cc_line));
    assert!(!rule("source_event=audit_events").matches(&cc_line));
    for (text, expected) in cases {
        let r = rule(text);
        let got: Vec<bool> = records.iter().map(|rec| r.matches(rec)).collect();
        assert_eq!(&got[..], &expected[..], "{text}");
    }
}

#[test]
fn rules_that_cannot_be_read_say_why() {
    let err = |t: &str| t.parse::<Rule>().unwrap_err();
    assert_eq!(err("kind"), r#""kind" is not FIELD=VALUE"#);
    assert_eq!(
        err("kind=logs"),
        r#"unknown record kind "logs" (expected api, app_log, metric or event)"#
    );
    assert_eq!(
        err("colour=red"),
        r#"unknown field "colour" (expected kind, source_type, origin, source_id, app, space, org, deployment, job, metric, source_event, eventName, readOnly, eventSource, outcome or tag.NAME)"#
    );
    assert_eq!(err("origin=rep|"), r#""origin=rep|" has an empty value"#);
    assert_eq!(
        err("tag.=x"),
        r#"unknown field "tag." (expected kind, source_type, origin, source_id, app, space, org, deployment, job, metric, source_event, eventName, readOnly, eventSource, outcome or tag.NAME)"#
    );
}

#[test]
fn include_exclude_own_app_and_opt_out() {
    let filters = Filters {
        include: vec![rule("kind=api|app_log"), rule("metric=cpu")],
        exclude: vec![rule("source_type=RTR")],
        own_app: own_app_guid(Some(&format!(
            r#"{{"application_id":"{NOZZLE}","application_name":"cf-audit-nozzle"}}"#
        ))),
    };
    assert_eq!(filters.own_app.as_deref(), Some(NOZZLE));
    let keeps = |r: &Record| filters.keeps(r);
    assert!(keeps(&app_log(APP, &[("source_type", "APP/PROC/WEB")])));
    assert!(!keeps(&app_log(APP, &[("source_type", "RTR")])), "excluded");
    assert!(
        keeps(&metric(APP, gauge(&["cpu"]), &[])),
        "second include rule"
    );
    assert!(
        !keeps(&metric(APP, gauge(&["memory"]), &[])),
        "no include rule matches"
    );
    // The nozzle's own logs never go out (no loop), by app_id tag or source id...
    assert!(!keeps(&app_log(NOZZLE, &[("source_type", "APP/PROC/WEB")])));
    assert!(!keeps(&app_log("x", &[("app_id", NOZZLE)])));
    // ...but API invocations on it do: they are the audit trail.
    assert!(keeps(&app_log(NOZZLE, &[("source_type", "API")])));
    // An app that opted out by label.
    assert!(!keeps(&app_log(
        APP,
        &[("cf-audit-nozzle/opt-out", "true")]
    )));
    assert!(keeps(&app_log(
        APP,
        &[("cf-audit-nozzle/opt-out", "false")]
    )));
    assert!(keeps(&app_log(
        APP,
        &[("source_type", "API"), ("cf-audit-nozzle/opt-out", "true")]
    )));
    // Outside CF, or unreadable: no own app.
    assert_eq!(own_app_guid(None), None);
    assert_eq!(own_app_guid(Some("not json")), None);
}

#[test]
fn the_router_counts_what_rules_leave_out_and_routes_the_rest() {
    let (api_q, mut api_rx) = SinkQueue::new("syslog", 100);
    let (all_q, mut all_rx) = SinkQueue::new("file", 100);
    let router = Router::new(
        vec![(api_q, vec![Kind::Api]), (all_q, Kind::ALL.to_vec())],
        Filters {
            exclude: vec![rule("source_type=RTR")],
            ..Filters::default()
        },
        None,
        false,
    );
    router.dispatch(vec![
        log_envelope(1, APP, "Created app with guid x", &[("source_type", "API")]),
        log_envelope(2, APP, "GET /", &[("source_type", "RTR")]),
        log_envelope(3, APP, "hello", &[("source_type", "APP/PROC/WEB")]),
    ]);
    assert!(router.dispatch_records(vec![audit("s")]));
    let s = router.stats().snapshot();
    assert_eq!((s.envelopes, s.api, s.app_log, s.filtered), (3, 2, 2, 1));
    let kinds = |rx: &mut cf_audit_nozzle::sink::Intake| {
        let mut out = Vec::new();
        while let Some(chunk) = rx.try_recv() {
            out.extend(chunk.iter().map(|r| (r.kind, r.envelope.timestamp())));
        }
        out
    };
    assert_eq!(
        kinds(&mut api_rx),
        vec![(Kind::Api, 1), (Kind::Api, 1_577_836_800_000_000_000)]
    );
    assert_eq!(
        kinds(&mut all_rx),
        vec![
            (Kind::Api, 1),
            (Kind::AppLog, 3),
            (Kind::Api, 1_577_836_800_000_000_000)
        ]
    );
    assert_eq!(router.sinks_of(Kind::Api).len(), 2);
    assert_eq!(
        router.sinks_of(Kind::AppLog)[0]
            .1
            .received
            .load(Ordering::SeqCst),
        3
    );
}

fn sinks(cfg: &PipelineConfig) -> BTreeMap<&'static str, Vec<Kind>> {
    cfg.sinks
        .iter()
        .map(|(s, k)| {
            let name = match s {
                SinkConfig::Stdout => "stdout",
                SinkConfig::File(_) => "file",
                SinkConfig::Syslog(_) => "syslog",
                SinkConfig::Http(_) => "http",
                #[allow(unreachable_patterns)]
                _ => "other",
            };
            (name, k.clone())
        })
        .collect()
}

fn run_args(args: &[&str]) -> Box<cf_audit_nozzle::config::RunArgs> {
    let mut argv = vec!["cf-audit-nozzle", "run"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Run(a) => a,
        _ => unreachable!(),
    }
}

#[test]
fn routes_send_each_kind_to_its_sinks() {
    let a = run_args(&[
        "--sink",
        "stdout,file",
        "--route",
        "api=stdout,file",
        "--route",
        "app_log=file",
        "--route",
        "event=none",
    ]);
    let mut errors = Vec::new();
    let mut cfg = a.output.pipeline(
        &mut errors,
        false,
        &cf_audit_nozzle::config::MapEnv::default(),
    );
    apply_routes(&a.audit.route, &mut cfg, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        sinks(&cfg),
        BTreeMap::from([
            ("stdout", vec![Kind::Api, Kind::Metric]),
            ("file", vec![Kind::Api, Kind::AppLog, Kind::Metric]),
        ])
    );
}

#[test]
fn every_audit_option_problem_is_reported_at_once() {
    let a = run_args(&[
        "--rlp-addr",
        "x:1",
        "--sink",
        "stdout",
        "--route",
        "api=syslog",
        "--route",
        "logs=stdout",
        "--route",
        "api=stdout",
        "--include",
        "colour=red",
        "--audit-events",
        "on",
        "--audit-lookback",
        "32d",
        "--audit-poll-interval",
        "0s",
        "--audit-per-page",
        "6000",
    ]);
    let errors = a.validate().unwrap_err().0;
    let ours: Vec<&String> = errors.iter().filter(|e| !e.starts_with("--rlp-")).collect();
    assert_eq!(
        ours,
        vec![
            r#"--include (INCLUDE) "colour=red": unknown field "colour" (expected kind, source_type, origin, source_id, app, space, org, deployment, job, metric, source_event, eventName, readOnly, eventSource, outcome or tag.NAME)"#,
            r#"--route (ROUTE) "api=syslog": sink "syslog" is not in --sink (SINK); add it there"#,
            r#"--route (ROUTE) "logs=stdout": unknown record kind "logs" (expected api, app_log, metric or event)"#,
            r#"--route (ROUTE) "api=stdout": api is routed twice"#,
            r#"--audit-lookback (AUDIT_LOOKBACK) must be at most 31d (Cloud Controller keeps audit events 31 days), not "32d""#,
            r#"--audit-poll-interval (AUDIT_POLL_INTERVAL) must be a duration of at least 1s, like 30s or 1m, not "0s""#,
            "--audit-per-page (AUDIT_PER_PAGE) must be 1 to 5000, not 6000",
            "--cf-api (CF_API) is required: the Cloud Foundry API URL, needed by --audit-events on and --enrich on",
            "--uaa-client-id (UAA_CLIENT_ID) is required: a UAA client with cloud_controller.admin_read_only or cloud_controller.global_auditor, needed by --audit-events on and --enrich on",
            "--uaa-client-secret (UAA_CLIENT_SECRET) is required: a UAA client with cloud_controller.admin_read_only or cloud_controller.global_auditor, needed by --audit-events on and --enrich on",
        ]
    );
}

/// CloudTrail's event selectors: `eventName` (by prefix), `readOnly`,
/// `eventSource` and `outcome`, read from api records of every source.
#[test]
fn api_selectors_keep_writes_and_failures_and_drop_read_noise() {
    use cf_audit_nozzle::record::security::{read_line, security_record};
    let cef = |method: &str, path: &str, status: u16| {
        security_record(
            read_line(
                &format!("CEF:0|cloud_foundry|cloud_controller_ng|3.180.0|{method} {path}|{method} {path}|0|rt=1700000000000 suser=u suid=u-1 request={path} requestMethod={method} cs4Label=httpStatusCode cs4={status}"),
                "api/0",
                None,
            )
            .unwrap()
            .unwrap(),
        )
    };
    let uaa = security_record(
        read_line(
            "Audit: UserAuthenticationFailure ('marissa'): principal=u-9, origin=[remoteAddress=203.0.113.9], identityZoneId=[uaa]",
            "uaa/0",
            Some(1),
        )
        .unwrap()
        .unwrap(),
    );
    let list = cef("GET", "/v3/apps", 200);
    let update = cef("PATCH", &format!("/v3/apps/{APP}"), 200);
    let denied = cef("DELETE", &format!("/v3/apps/{APP}"), 403);
    let failed = cef("POST", "/v3/apps", 500);
    let firehose = classify(Envelope {
        tags: [
            ("source_type".to_string(), "API".to_string()),
            ("app_id".to_string(), APP.to_string()),
        ]
        .into(),
        message: Some(envelope::Message::Log(cf_audit_nozzle::proto::Log {
            payload: format!("Updated app with guid {APP} ({{}})").into(),
            r#type: 0,
        })),
        ..Envelope::default()
    });
    let started = audit("s");
    let log = app_log(APP, &[("source_type", "APP/PROC/WEB")]);
    let all = [
        ("list", &list),
        ("update", &update),
        ("denied", &denied),
        ("failed", &failed),
        ("uaa", &uaa),
        ("firehose", &firehose),
        ("audit", &started),
        ("log", &log),
    ];
    let matching = |text: &str| -> Vec<&str> {
        let r = rule(text);
        all.iter()
            .filter(|(_, rec)| r.matches(rec))
            .map(|(n, _)| *n)
            .collect()
    };
    assert_eq!(
        matching("eventName=audit.app.*"),
        ["list", "update", "denied", "failed", "firehose", "audit"]
    );
    assert_eq!(
        matching("eventName=audit.app.update"),
        ["update", "firehose"]
    );
    assert_eq!(matching("eventName=uaa.*"), ["uaa"]);
    assert_eq!(matching("readOnly=true"), ["list"]);
    assert_eq!(
        matching("readOnly=false"),
        ["update", "denied", "failed", "firehose", "audit"]
    );
    assert_eq!(matching("eventSource=uaa"), ["uaa"]);
    assert_eq!(
        matching("eventSource=cloud_controller"),
        ["list", "update", "denied", "failed", "firehose", "audit"]
    );
    assert_eq!(matching("outcome=denied"), ["denied", "uaa"]);
    assert_eq!(matching("outcome=failure"), ["failed"]);
    assert_eq!(matching("outcome=success"), ["list", "update", "audit"]);
    assert_eq!(matching("outcome=unknown"), ["firehose"]);
    assert_eq!(
        matching("outcome=denied|failure,eventSource=cloud_controller"),
        ["denied", "failed"]
    );
    // The operator's selector: keep writes and failures, drop read-only successes.
    let filters = Filters {
        exclude: vec![rule("readOnly=true,outcome=success")],
        ..Filters::default()
    };
    let kept: Vec<&str> = all
        .iter()
        .filter(|(_, r)| filters.keeps(r))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        kept,
        [
            "update", "denied", "failed", "uaa", "firehose", "audit", "log"
        ]
    );
    let err = |t: &str| t.parse::<Rule>().unwrap_err();
    assert_eq!(
        err("readOnly=yes"),
        r#"readOnly="yes": expected true or false"#
    );
    assert_eq!(
        err("outcome=ok"),
        r#"outcome="ok": expected success or denied or failure or unknown"#
    );
}

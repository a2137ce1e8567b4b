//! `cf-audit-nozzle gaps` as an operator runs it: on a SIEM's JSON-lines
//! export (a file or standard input), a local archive folder and an S3
//! bucket, it names exactly the missing record numbers per boot and kind,
//! reports duplicates without failing, counts unnumbered records and
//! malformed input, and exits 0 (complete), 1 (missing) or 2 (error).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use bytes::Bytes;
use common::moto;

const BOOT: &str = "0-20261202T193322Z-9f3a2c1b";
const BOOT2: &str = "1-20261202T193325Z-00ff00aa";

/// A record as a sink writes it: the numbering, and other fields `gaps` must skip.
fn record(boot: &str, kind: &str, seq: u64) -> String {
    format!(
        r#"{{"kind":"{kind}","boot":"{boot}","seq":{seq},"time":"2026-12-02T19:33:22.5Z","foundation":"cf","source_id":"s","tags":{{"seq":"x"}},"message":"m {seq}"}}"#
    )
}

fn declaration(boot: &str, kind: &str, last_seq: u64) -> String {
    format!(
        r#"{{"kind":"{kind}","boot":"{boot}","last_seq":{last_seq},"time":"2026-12-02T19:34:22Z","foundation":"cf"}}"#
    )
}

fn records(boot: &str, kind: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<String> {
    seqs.into_iter().map(|n| record(boot, kind, n)).collect()
}

/// `gaps` with `args`, standard input from `stdin`.
fn gaps(args: &[&str], stdin: &str) -> Output {
    let mut child = common::nozzle()
        .arg("gaps")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `gaps --jsonl FILE` over `lines`: exit code and standard output.
fn gaps_lines(lines: &[String]) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("export.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = gaps(&["--jsonl", file.to_str().unwrap()], "");
    let stdout = String::from_utf8(out.stdout).unwrap();
    // The file's name, as the report shows it, is the same in every test.
    let stdout = stdout.replace(file.to_str().unwrap(), "export.jsonl");
    (out.status.code(), stdout)
}

#[test]
fn a_complete_stream_exits_0() {
    let mut lines = records(BOOT, "api", 0..5);
    lines.insert(3, declaration(BOOT, "api", 2));
    lines.push(declaration(BOOT, "api", 4));
    let (code, stdout) = gaps_lines(&lines);
    assert_eq!(
        stdout,
        format!(
            "boot {BOOT} kind api: 5 records, last_seq 4 declared (2 declarations)\n  complete: seq 0-4\n\
             Results: 1 group, 5 records (0 unnumbered), 0 missing in 0 groups, 0 duplicates, 0 malformed: complete\n"
        )
    );
    assert_eq!(code, Some(0));
}

#[test]
fn records_removed_from_the_middle_are_named_exactly() {
    let kept = (0..=20).filter(|n| ![5, 6, 7, 12].contains(n));
    let mut lines = records(BOOT, "app_log", kept);
    lines.push(declaration(BOOT, "app_log", 20));
    let (code, stdout) = gaps_lines(&lines);
    assert_eq!(
        stdout,
        format!(
            "boot {BOOT} kind app_log: 17 records, last_seq 20 declared (1 declaration)\n  missing 4 of seq 0-20: 5-7 (3), 12 (1)\n\
             Results: 1 group, 17 records (0 unnumbered), 4 missing in 1 group, 0 duplicates, 0 malformed: INCOMPLETE\n"
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn a_lost_tail_is_caught_by_the_declaration_alone() {
    let without = records(BOOT, "metric", 0..10);
    let (code, stdout) = gaps_lines(&without);
    assert_eq!(code, Some(0), "nothing says 10-12 were issued: {stdout}");
    let mut with = without.clone();
    with.insert(4, declaration(BOOT, "metric", 3));
    with.push(declaration(BOOT, "metric", 12));
    let (code, stdout) = gaps_lines(&with);
    assert_eq!(
        stdout,
        format!(
            "boot {BOOT} kind metric: 10 records, last_seq 12 declared (2 declarations)\n  missing 3 of seq 0-12: 10-12 (3)\n\
             Results: 1 group, 10 records (0 unnumbered), 3 missing in 1 group, 0 duplicates, 0 malformed: INCOMPLETE\n"
        )
    );
    assert_eq!(code, Some(1));
    // A declaration of a kind no record of which arrived: all of it is missing.
    let (code, stdout) = gaps_lines(&[declaration(BOOT, "event", 1)]);
    assert!(
        stdout.starts_with(&format!(
            "boot {BOOT} kind event: 0 records, last_seq 1 declared (1 declaration)\n  missing 2 of seq 0-1: 0-1 (2)\n"
        )),
        "{stdout}"
    );
    assert_eq!(code, Some(1));
}

#[test]
fn duplicates_are_reported_and_do_not_fail() {
    // A replay after a restart: 3-6 again, and 5 a third time.
    let lines = records(BOOT, "api", (0..8).chain(3..7).chain([5]));
    let (code, stdout) = gaps_lines(&lines);
    assert_eq!(
        stdout,
        format!(
            "boot {BOOT} kind api: 13 records, no declaration\n  complete: seq 0-7\n  duplicates 5: 3-4 ×2, 5 ×3, 6 ×2\n\
             Results: 1 group, 13 records (0 unnumbered), 0 missing in 0 groups, 5 duplicates, 0 malformed: complete\n"
        )
    );
    assert_eq!(code, Some(0));
}

#[test]
fn boots_and_kinds_are_kept_apart() {
    // Interleaved as a SIEM returns them; seq 1 of BOOT2's api and seq 1 of
    // BOOT's metric are missing, each only in its own group.
    let mut lines = Vec::new();
    for n in 0..3 {
        lines.push(record(BOOT2, "api", n * 2));
        lines.push(record(BOOT, "api", n));
        lines.push(record(BOOT, "metric", n * 2));
    }
    let (code, stdout) = gaps_lines(&lines);
    assert_eq!(
        stdout,
        format!(
            "boot {BOOT} kind api: 3 records, no declaration\n  complete: seq 0-2\n\
             boot {BOOT} kind metric: 3 records, no declaration\n  missing 2 of seq 0-4: 1 (1), 3 (1)\n\
             boot {BOOT2} kind api: 3 records, no declaration\n  missing 2 of seq 0-4: 1 (1), 3 (1)\n\
             Results: 3 groups, 9 records (0 unnumbered), 4 missing in 2 groups, 0 duplicates, 0 malformed: INCOMPLETE\n"
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn records_without_seq_are_counted_as_unnumbered() {
    let mut lines = records(BOOT, "app_log", 0..2);
    // The nozzle's own alert (boot, no seq), and records from before numbering.
    lines.push(format!(
        r#"{{"kind":"app_log","boot":"{BOOT}","time":"t","tags":{{"nozzle_alert":"sink_stalled"}}}}"#
    ));
    lines.push(r#"{"kind":"app_log","time":"t","envelope":{"tags":{}}}"#.into());
    lines.push(r#"{"kind":"api","boot":null,"seq":null}"#.into());
    let (code, stdout) = gaps_lines(&lines);
    assert_eq!(
        stdout,
        format!(
            "boot - kind api: 1 record, 1 unnumbered, no declaration\n\
             boot - kind app_log: 1 record, 1 unnumbered, no declaration\n\
             boot {BOOT} kind app_log: 3 records, 1 unnumbered, no declaration\n  complete: seq 0-1\n\
             Results: 3 groups, 5 records (3 unnumbered), 0 missing in 0 groups, 0 duplicates, 0 malformed: complete\n"
        )
    );
    assert_eq!(code, Some(0));
}

#[test]
fn malformed_lines_are_named_counted_and_skipped() {
    let mut lines = records(BOOT, "api", 0..3);
    lines.extend([
        "".into(),
        "   ".into(),
        r#"{"kind":"api","boot":"#.into(),
        r#"["kind","api"]"#.into(),
        format!(r#"{{"kind":"api","boot":"{BOOT}","seq":-1}}"#),
        format!(r#"{{"kind":"api","boot":"{BOOT}","seq":"4"}}"#),
        format!(r#"{{"kind":"api","boot":"{BOOT}","seq":1.5}}"#),
        format!(r#"{{"kind":"api","boot":"{BOOT}","last_seq":"x"}}"#),
        format!(r#"{{"kind":"api","boot":"{BOOT}","seq":3,"last_seq":3}}"#),
        r#"{"kind":"api","seq":3}"#.into(),
        r#"{"kind":"api","last_seq":3}"#.into(),
        format!(r#"{{"boot":"{BOOT}","seq":3}}"#),
        format!(r#"{{"kind":7,"boot":"{BOOT}","seq":3}}"#),
        r#"{"kind":"api","boot":12,"seq":3}"#.into(),
    ]);
    lines.extend(records(BOOT, "api", [3]));
    let (code, stdout) = gaps_lines(&lines);
    let expected = format!(
        "boot {BOOT} kind api: 4 records, no declaration\n  complete: seq 0-3\n\
         malformed 12:\n\
         \x20 export.jsonl line 6: not JSON (EOF while parsing a value at line 1 column 21)\n\
         \x20 export.jsonl line 7: an array, not a record (a JSON object)\n\
         \x20 export.jsonl line 8: \"seq\" is not a non-negative integer: -1\n\
         \x20 export.jsonl line 9: \"seq\" is not a non-negative integer: \"4\"\n\
         \x20 export.jsonl line 10: \"seq\" is not a non-negative integer: 1.5\n\
         \x20 export.jsonl line 11: \"last_seq\" is not a non-negative integer: \"x\"\n\
         \x20 export.jsonl line 12: has both \"seq\" and \"last_seq\"\n\
         \x20 export.jsonl line 13: has \"seq\" but no \"boot\"\n\
         \x20 export.jsonl line 14: has \"last_seq\" but no \"boot\"\n\
         \x20 export.jsonl line 15: no \"kind\"\n\
         \x20 ... and 2 more\n\
         Results: 1 group, 4 records (0 unnumbered), 0 missing in 0 groups, 0 duplicates, 12 malformed: complete\n"
    );
    assert_eq!(stdout, expected);
    assert_eq!(code, Some(0), "a malformed line alone is not a loss");

    // Nothing readable at all is an error, not an empty complete report.
    let out = gaps(&["--jsonl", "-"], "this is not\nan export\n");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "cf-audit-nozzle: no record could be read from standard input (2 malformed, e.g. stdin line 1: not JSON (expected ident at line 1 column 2))\n"
    );
}

#[test]
fn standard_input_and_the_json_report() {
    let mut lines = records(BOOT, "api", [0, 1, 1, 4]);
    lines.push(declaration(BOOT, "api", 5));
    let out = gaps(&["--jsonl", "-", "--json"], &lines.join("\n"));
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report,
        serde_json::json!({
            "complete": false,
            "source": "standard input",
            "groups": [{
                "boot": BOOT, "kind": "api",
                "records": 4, "unnumbered": 0, "declarations": 1,
                "last_seq": 5, "max_seq": 4,
                "expected": {"from": 0, "to": 5, "count": 6},
                "missing": [{"from": 2, "to": 3, "count": 2}, {"from": 5, "to": 5, "count": 1}],
                "missing_count": 3,
                "duplicates": [{"from": 1, "to": 1, "times": 2}],
                "duplicate_count": 1
            }],
            "malformed": 0,
            "malformed_named": []
        })
    );
}

#[test]
fn usage_and_read_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[],
            "cf-audit-nozzle: invalid configuration:\n  - gaps needs --jsonl, --dir or --s3-bucket\n",
        ),
        (
            &["--jsonl", "/nonexistent/export.jsonl"],
            "cf-audit-nozzle: cannot read /nonexistent/export.jsonl: No such file or directory (os error 2)\n",
        ),
        (
            &["--dir", "/nonexistent/archive"],
            "cf-audit-nozzle: --dir /nonexistent/archive: not a folder\n",
        ),
        (&["--dir", ".", "--jsonl", "x"], "cannot be used with"),
    ];
    for (args, expected) in cases {
        let out = gaps(args, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!tmp.path().join("nonexistent").exists());
}

/// `{"Records":[...]}` of `lines`, gzipped.
fn log_file(lines: &[String]) -> Vec<u8> {
    let json = format!(r#"{{"Records":[{}]}}"#, lines.join(","));
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    w.write_all(json.as_bytes()).unwrap();
    w.finish().unwrap()
}

/// The key of a log file in the CFLogs layout.
fn log_key(kind: &str, minute: &str, unique: &str) -> String {
    format!("CFLogs/cf/{kind}/2026/12/02/cf_{kind}_20261202T{minute}Z_0_{unique}.json.gz")
}

/// The archive both the folder and the bucket test read: a file lost
/// (api 4-6), a record removed from a file (metric 2), a replayed file, a
/// file that is not gzip, and objects that are not log files.
fn archive_files() -> Vec<(String, Vec<u8>)> {
    let mut api_last = records(BOOT, "api", 7..9);
    api_last.push(declaration(BOOT, "api", 9));
    let metric: Vec<String> = records(BOOT, "metric", [0, 1, 3]);
    vec![
        (
            log_key("api", "1933", "A"),
            log_file(&records(BOOT, "api", 0..4)),
        ),
        (log_key("api", "1934", "B"), log_file(&api_last)),
        (
            log_key("api", "1935", "C"),
            log_file(&records(BOOT, "api", [9])),
        ),
        (
            log_key("api", "1935", "D"),
            log_file(&records(BOOT, "api", 7..9)),
        ),
        (log_key("metric", "1933", "A"), log_file(&metric)),
        (
            log_key("metric", "1934", "B"),
            b"this is not a gzip file".to_vec(),
        ),
        ("CFLogs/cf/README.txt".into(), b"not a log file".to_vec()),
        (
            "CFLogs-Digest/cf/2026/12/02/cf_CFLogs-Digest_0_20261202T193500Z.json.gz".into(),
            log_file(&records(BOOT, "api", [4, 5, 6])),
        ),
    ]
}

/// The report on [`archive_files`] under `root` (`s3://bucket/prefix/` or the folder).
fn archive_report(root: &str) -> String {
    format!(
        "boot {BOOT} kind api: 9 records, last_seq 9 declared (1 declaration)\n  missing 3 of seq 0-9: 4-6 (3)\n  duplicates 2: 7-8 ×2\n\
         boot {BOOT} kind metric: 3 records, no declaration\n  missing 1 of seq 0-3: 2 (1)\n\
         malformed 1:\n  {root}{key}: not gzip (invalid gzip header)\n\
         Results: 2 groups, 12 records (0 unnumbered), 4 missing in 2 groups, 2 duplicates, 1 malformed: INCOMPLETE\n",
        key = log_key("metric", "1934", "B")
    )
}

#[test]
fn an_archive_folder_is_read_file_by_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    for (key, body) in archive_files() {
        let path = dir.join("audit").join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    let dir_arg = dir.to_str().unwrap();
    let out = gaps(&["--dir", dir_arg, "--s3-prefix", "audit"], "");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, archive_report(&format!("{}/audit/", dir.display())));
    assert_eq!(out.status.code(), Some(1));

    // Without the prefix, the folder has no CFLogs/: nothing to check.
    let out = gaps(&["--dir", dir_arg], "");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "Results: 0 groups, 0 records (0 unnumbered), 0 missing in 0 groups, 0 duplicates, 0 malformed: complete\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no records found"));
    assert_eq!(out.status.code(), Some(0));
    assert_dir_is_not_written(&dir);
}

fn assert_dir_is_not_written(dir: &Path) {
    assert!(!dir.join("CFLogs").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_bucket_is_read_with_the_options_validate_takes() {
    let m = moto::moto();
    let cfg = m.bucket("gaps");
    let client = cf_audit_nozzle::sink::archive::s3::http_client(None).unwrap();
    let archive = cf_audit_nozzle::sink::archive::s3::s3_archive(&cfg, &client).unwrap();
    for (key, body) in archive_files() {
        let key = format!("audit/{key}");
        archive
            .put_json_gz(&archive.logs, &key, Bytes::from(body), &[])
            .await
            .unwrap();
    }
    let endpoint = cfg.endpoint.clone().unwrap();
    let args = [
        "--s3-bucket",
        "gaps",
        "--s3-prefix",
        "audit",
        "--s3-endpoint",
        endpoint.as_str(),
        "--s3-path-style",
        "--s3-region",
        "us-east-1",
        "--s3-access-key-id",
        m.key.as_str(),
        "--s3-secret-access-key",
        m.secret.as_str(),
    ];
    let out = tokio::task::block_in_place(|| gaps(&args, ""));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        archive_report("s3://gaps/audit/"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1));

    // A wrong secret is a read error (exit 2), not an empty archive.
    let mut bad = args;
    bad[12] = "wrong";
    let out = tokio::task::block_in_place(|| gaps(&bad, ""));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

//! Writes the fuzz targets' seed corpora (`scripts/fuzz` runs it first):
//! envelope batches from the emulator's traffic mix, Cloud Controller
//! message texts, and command lines.
//!
//!   cargo run --example fuzz_seeds -- DIR

use cf_audit_nozzle::proto::EnvelopeBatch;
use cf_audit_nozzle::source::emulator::traffic::Traffic;
use prost::Message;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: fuzz_seeds DIR"));
    let write = |target: &str, name: String, bytes: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)
    };
    let mut traffic = Traffic::new(7);
    for (i, n) in [1, 2, 5, 20].into_iter().enumerate() {
        let batch = EnvelopeBatch {
            batch: traffic.batch(n),
        };
        write(
            "envelope_batch",
            format!("traffic-{i}"),
            &batch.encode_to_vec(),
        )?;
    }
    let guid = "cdabc600-0b73-48e1-b7d2-26af2c63f933";
    let texts = [
        format!("Created app with guid {guid}"),
        format!(
            "Updated app with guid {guid} ({{\"name\"=>\"spring-music\", \"instances\"=>1, \"environment_json\"=>\"PRIVATE DATA HIDDEN\"}})"
        ),
        format!("Deleted app with guid {guid}"),
        format!("Creating build for app with guid {guid}"),
        format!("Restarted app with guid {guid}"),
        "Started GET \"/v3/apps\" for user: admin".to_string(),
    ];
    for (i, t) in texts.iter().enumerate() {
        write("cc_message", format!("text-{i}"), t.as_bytes())?;
    }
    let lines = [
        "--rlp-addr\0rlp:8082\0--sink\0file,syslog\0--syslog-addr\0siem:6514",
        "--sink\0http\0--http-url\0https://splunk:8088\0--hec-token\0t",
        "--health-addr\0off\0--batch-max-bytes\x001024\0--gzip-level\x009",
    ];
    for (i, l) in lines.iter().enumerate() {
        write("config", format!("args-{i}"), l.as_bytes())?;
    }
    // Gateway frames: the emulator's batches as the gateway's JSON.
    let mut traffic = Traffic::new(11);
    for (i, n) in [1, 3].into_iter().enumerate() {
        let frame = cf_audit_nozzle::source::emulator::gateway::sse_batch_frame(&traffic.batch(n));
        // The frame's data, without `data: ` and the blank line.
        let data = &frame[6..frame.len() - 2];
        write("gateway_json", format!("frame-{i}"), data)?;
    }
    let events = [
        r#"{"guid":"a1b2","created_at":"2026-11-27T15:00:00Z","type":"audit.app.update","actor":{"guid":"u1","type":"user","name":"admin"},"target":{"guid":"app1","type":"app","name":"web"},"data":{"request":{"instances":2,"environment_json":"PRIVATE DATA HIDDEN"}},"space":{"guid":"s1","name":"dev"},"organization":{"guid":"o1","name":"org"}}"#,
        r#"{"guid":"c3","created_at":"2026-11-27T15:00:01Z","type":"app.crash","actor":{"guid":"app1","type":"process","name":"web"},"target":{"guid":"app1","type":"app","name":"web"},"data":{"exit_description":"oom"},"space":null,"organization":null}"#,
    ];
    for (i, e) in events.iter().enumerate() {
        write("audit_event", format!("event-{i}"), e.as_bytes())?;
    }
    // Disk-buffer segments: firehose records and an audit-events record,
    // whole and with a torn tail.
    let mut records: Vec<_> = Traffic::new(13)
        .batch(6)
        .into_iter()
        .map(cf_audit_nozzle::classify::classify)
        .collect();
    let event = serde_json::from_str(events[0]).expect("seed event is JSON");
    records.push(cf_audit_nozzle::record::audit_event_record(event).expect("seed event is valid"));
    let segment = cf_audit_nozzle::sink::buffer::segment_bytes(&records);
    write("buffer_replay", "segment".into(), &segment)?;
    write(
        "buffer_replay",
        "torn".into(),
        &segment[..segment.len() - 7],
    )?;
    Ok(())
}

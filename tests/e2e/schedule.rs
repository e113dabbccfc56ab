//! Scheduled enforcement: master.yaml's `schedule:` applies states the
//! beacons do not watch, on its own, and in test mode only when asked.

use halite_e2e::Fleet;
use halite_master::client::BusEvent;

const SCHEDULE: &str = "schedule:
  - name: enforce
    every: 1s
    target: web01
  - name: audit
    every: 1s
    states: [extra]
    target: db01
    test: true
";

/// A job's record, by its id.
fn job(fleet: &Fleet, jid: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str::<serde_json::Value>(&fleet.cli(&["jobs", jid, "--json"])?)?["job"].clone())
}

fn ret_of(agent: &'static str) -> impl Fn(&BusEvent) -> bool {
    move |e| e.tag.starts_with("halite/job/") && e.tag.ends_with(&format!("/ret/{agent}"))
}

/// A drift of a file no beacon watches is restored by the scheduled
/// highstate; the test-mode entry reports the same drift and leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_restores_unwatched_drift_and_test_mode_only_reports() {
    let extra = "unwatched:\n  file.managed:\n    path: /etc/unwatched\n    contents: \"good\\n\"\n";
    let files = [("extra.yaml", extra), ("top.yaml", "'*': [motd, extra]\n'web*': [nginx]\n")];
    let mut fleet = Fleet::start_custom_with_master_config(&["web01", "db01"], &files, SCHEDULE).await.unwrap();
    let result = async {
        let (web, db) = (fleet.agent("web01").path("/etc/unwatched"), fleet.agent("db01").path("/etc/unwatched"));
        std::fs::write(&web, "bad\n")?;
        std::fs::write(&db, "bad\n")?;
        // web01: scheduled runs return until one has put the file back.
        let restored = loop {
            let ret = fleet.wait_for("a scheduled run on web01", ret_of("web01")).await?;
            if std::fs::read_to_string(&web)? == "good\n" {
                break ret;
            }
        };
        let record = job(&fleet, restored.job().unwrap_or_default())?;
        assert_eq!(
            (record["cause"].clone(), record["test"].clone()),
            ("schedule:enforce".into(), false.into()),
            "{record}"
        );
        // db01: a test-mode run that would change the file.
        let audit = fleet
            .wait_for("a scheduled audit of db01", |e| {
                ret_of("db01")(e) && e.data()["results"][0]["outcome"] == "would change"
            })
            .await?;
        let record = job(&fleet, audit.job().unwrap_or_default())?;
        assert_eq!(
            (record["cause"].clone(), record["test"].clone()),
            ("schedule:audit".into(), true.into()),
            "{record}"
        );
        assert_eq!(record["states"], serde_json::json!(["unwatched"]), "{record}");
        assert_eq!(std::fs::read_to_string(&db)?, "bad\n", "test mode changes nothing");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

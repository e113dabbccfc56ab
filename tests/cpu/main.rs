//! The cpu beacon end to end, in a test binary of its own: cargo runs test
//! binaries one after another, so nothing else in the suite loads the CPU
//! while this test waits for it to fall below the beacon's `below` mark.

use halite_e2e::Fleet;

/// A cpu beacon fires `above` while the test burns both cores and `below`
/// once it stops. The thresholds leave a wide band (burning gives about
/// 100%; nothing else in the suite runs beside it) and `for`
/// ignores short spikes, so the test holds on a shared 2-core machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_beacon_fires_above_while_burning_and_below_after() {
    let beacons = "'*':\n  hot:\n    cpu:\n      above: 90\n      below: 60\n      for: 1s\n      interval: 200ms\n";
    let mut fleet = Fleet::start_custom(&["web01"], &["*"], &[("beacons.yaml", beacons)]).await.unwrap();
    let result = async {
        let burning = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let burners: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
            .map(|_| {
                let burning = burning.clone();
                std::thread::spawn(move || {
                    let mut x: u64 = 0;
                    while burning.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        let above = fleet.wait_for("cpu above", |e| e.tag == "halite/beacon/web01/hot").await;
        burning.store(false, std::sync::atomic::Ordering::Relaxed);
        for burner in burners {
            let _ = burner.join();
        }
        let above = above?;
        assert_eq!(above.data()["state"], "above", "{}", above.data());
        let below = fleet.wait_for("cpu below", |e| e.tag == "halite/beacon/web01/hot").await?;
        assert_eq!(below.data()["state"], "below", "{}", below.data());
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}

//! A filesystem the agent watches (listed in the node's
//! `capabilities.yaml`, given to the agent by the control plane) fills:
//! `disk_pressure high`, a guarded `disk_cleanup` proposed, approved, and
//! carried out through Docker's prune, its reclaimed bytes in the result;
//! the pressure ends (`low`); when it comes back and ends before anyone
//! approves, the new proposal is cancelled.
//!
//! Alone in its test binary: a cleanup acts on the whole engine (dangling
//! images; stopped containers older than the node's
//! `cleanup_older_than`, here the default day), and no other test's
//! containers should be around while it runs.

use std::time::Duration;

use homelab_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn pressure(system: &System, mount: &str) -> Vec<Value> {
    system
        .logged("dockhost")
        .into_iter()
        .filter(|e| e["type"] == "disk_pressure" && e["data"]["mount"] == mount)
        .collect()
}

/// Imports a small untagged (dangling) image; its id.
fn dangling_image() -> String {
    let dir = tempfile::tempdir().unwrap();
    let junk: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("junk"), junk).unwrap();
    let script = format!("tar -C {} -c junk | docker import -", dir.path().display());
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn dangling_images() -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["images", "-q", "--no-trunc", "-f", "dangling=true"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn image_exists(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", id])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pressure_is_cleaned_up_after_approval() {
    let Some(_docker) = docker().await else {
        return;
    };
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        return;
    };
    let mount = tmpfs.path().display().to_string();
    // Other dangling images on this engine are pruned too; only when ours
    // is the only one is the count exact.
    let others = dangling_images().len();
    let image = dangling_image();
    struct RemoveImage(String);
    impl Drop for RemoveImage {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", &self.0])
                .output();
        }
    }
    let _image = RemoveImage(image.clone());
    let repo = write_repo(&[
        (
            "inventory/topology.yaml",
            "nodes:\n  dockhost: {role: server}\n",
        ),
        ("hosts/dockhost/services.yaml", "services: {}\n"),
        (
            "hosts/dockhost/capabilities.yaml",
            &format!("disk: {{high: 90, low: 80, mounts: [{mount}]}}\n"),
        ),
    ]);
    let system = System::start(
        repo,
        Options {
            agent_node: Some("dockhost"),
            sync_interval: Duration::from_secs(2),
            check_interval: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    let ballast = tmpfs.path().join("ballast");
    let id = "disk-cleanup-dockhost";

    // Past 90 %: high, a guarded cleanup proposed.
    wait_for("the agent watches the repo's mount", T, || async {
        read_json(&system.root().join("state/agent/dockhost/config.json"))
            .is_ok_and(|c| c["disk"]["mounts"][0] == mount.as_str())
    })
    .await;
    // The node's vitals, retained with the agent's status: load, memory,
    // uptime, and the watched filesystems' use.
    let mut probe = Probe::connect(system.mqtt, &["homelab/nodes/dockhost/agent"]).await;
    let status = probe
        .expect("homelab/nodes/dockhost/agent", T, |p| {
            serde_json::from_slice::<Value>(p).is_ok_and(|s| {
                s["vitals"]["disks"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|d| d["mount"] == mount.as_str()))
            })
        })
        .await;
    let status: Value = serde_json::from_slice(&status).unwrap();
    let vitals = &status["vitals"];
    assert!(
        vitals["memory_total_bytes"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(vitals["uptime_secs"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(vitals["load"].as_array().unwrap().len(), 3, "{status}");
    std::fs::write(&ballast, vec![1u8; 3_900_000]).unwrap();
    wait_for("pending cleanup", T, || async {
        system.action_file("pending", id).exists()
    })
    .await;
    let high = pressure(&system, &mount);
    assert_eq!(high.len(), 1, "{high:?}");
    assert_eq!(high[0]["data"]["level"], "high");
    let pending = read_json(&system.action_file("pending", id)).unwrap();
    assert_eq!(pending["risk"], "guarded", "{pending}");

    // Approved: Docker's prune removes the dangling image and says how
    // much it freed.
    let done = approve(&system, id).await;
    let result = &done["result"];
    assert_eq!(result["ok"], true, "{done}");
    // Docker's answer lists the image and its layer as two `Deleted`
    // entries: one image.
    let deleted = result["data"]["images_deleted"].as_u64().unwrap();
    if others == 0 {
        assert_eq!(deleted, 1, "{done}");
    } else {
        eprintln!("{others} other dangling images on this engine: count not exact");
        assert!(deleted >= 1, "{done}");
    }
    assert!(
        result["data"]["bytes_reclaimed"].as_u64().unwrap() >= 400_000,
        "{done}"
    );
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .starts_with("reclaimed "),
        "{done}"
    );
    assert!(!image_exists(&image), "the dangling image is gone");

    // The pressure ends: low.
    std::fs::remove_file(&ballast).unwrap();
    wait_for("low", T, || async { pressure(&system, &mount).len() == 2 }).await;
    assert_eq!(pressure(&system, &mount)[1]["data"]["level"], "low");

    // It comes back: proposed again; it ends before anyone approves: the
    // proposal is cancelled.
    std::fs::write(&ballast, vec![1u8; 3_900_000]).unwrap();
    wait_for("pending cleanup again", T, || async {
        system.action_file("pending", id).exists()
    })
    .await;
    std::fs::remove_file(&ballast).unwrap();
    wait_for("cleanup cancelled", T, || async {
        system.action_file("cancelled", id).exists()
    })
    .await;
    let cancelled = read_json(&system.action_file("cancelled", id)).unwrap();
    let last = cancelled["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["why"], "drift_resolved_auto", "{cancelled}");
    system.stop().await.unwrap();
}

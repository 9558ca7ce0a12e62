//! `homelab actions list|show|approve|reject` against the whole system, over
//! its HTTP API, with the operator token as a user passes it.

use std::time::Duration;

use homelab::actions_cli::{run, ActionsCommand, Client};
use homelab_tests::*;

const T: Duration = Duration::from_secs(15);
const ID: &str = "container-restart-n1-app";

fn repo() -> tempfile::TempDir {
    write_repo(&[
        ("inventory/topology.yaml", "nodes:\n  n1: {role: server}\n"),
        (
            "hosts/n1/services.yaml",
            "services:\n  app: {grace_period: 0s}\n",
        ),
    ])
}

/// Runs one CLI command (it blocks, as in a shell).
async fn cli(client: Client, command: ActionsCommand) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || run(&client, command, chrono::Utc::now()))
        .await
        .unwrap()
}

fn client(system: &System, token: Option<&str>) -> Client {
    // An empty root: the token comes from the flag or nowhere.
    Client::new(
        &format!("http://{}", system.http),
        token.map(str::to_string),
        std::path::Path::new("/nonexistent"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_lists_shows_and_decides_from_a_shell() {
    let system = System::start(repo(), Options::default()).await;
    let probe = Probe::connect(system.mqtt, &[]).await;
    probe
        .publish_retained("homelab/nodes/n1/status", "online")
        .await;
    let snapshot = event(
        "n1",
        1,
        "node_snapshot",
        None,
        snapshot(&[("app", "exited")]),
    );
    probe
        .publish("homelab/events/n1", snapshot.to_string())
        .await;
    wait_for("pending", T, || async {
        system.action_file("pending", ID).exists()
    })
    .await;

    let list = cli(
        client(&system, None),
        ActionsCommand::List {
            state: "pending".into(),
            json: false,
        },
    )
    .await
    .unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("ID"), "{list}");
    assert!(
        lines[1].starts_with(ID)
            && lines[1].contains("pending")
            && lines[1].contains("container_restart"),
        "{list}"
    );
    let show = cli(
        client(&system, None),
        ActionsCommand::Show {
            id: ID.into(),
            json: false,
        },
    )
    .await
    .unwrap();
    assert!(show.contains("reason:   containers_not_running"), "{show}");
    assert!(show.contains("state:    pending"), "{show}");

    // Bad input and a missing or wrong token get clear answers, and change
    // nothing.
    let unknown = cli(
        client(&system, None),
        ActionsCommand::Show {
            id: "no-such-action".into(),
            json: false,
        },
    )
    .await
    .unwrap_err();
    assert!(
        format!("{unknown:#}").contains("no action no-such-action (HTTP 404)"),
        "{unknown:#}"
    );
    let bad_state = cli(
        client(&system, None),
        ActionsCommand::List {
            state: "done".into(),
            json: false,
        },
    )
    .await
    .unwrap_err();
    assert!(
        format!("{bad_state:#}").contains("unknown state \"done\""),
        "{bad_state:#}"
    );
    let approve = |token: Option<&str>| {
        cli(
            client(&system, token),
            ActionsCommand::Approve {
                id: ID.into(),
                note: Some("looks right".into()),
                by: Some("alice".into()),
            },
        )
    };
    let no_token = approve(None).await.unwrap_err();
    assert!(
        format!("{no_token:#}").contains("needs the operator token"),
        "{no_token:#}"
    );
    let wrong = approve(Some("guess")).await.unwrap_err();
    assert!(format!("{wrong:#}").contains("HTTP 401"), "{wrong:#}");
    assert!(system.action_file("pending", ID).exists());

    let approved = approve(Some(TOKEN)).await.unwrap();
    assert_eq!(approved, format!("{ID} is approved now\n"));
    assert!(!system.action_file("pending", ID).exists());
    // The executor takes it on from approved/; wherever it is now, the
    // operator's decision is in its history.
    let file = ["approved", "running", "completed", "failed"]
        .iter()
        .map(|state| system.action_file(state, ID))
        .find(|path| path.exists())
        .expect("the approved action's file");
    let action = read_json(&file).unwrap();
    let decision = action["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "approved")
        .unwrap()
        .clone();
    assert_eq!(
        (decision["by"].as_str(), decision["why"].as_str()),
        // The token's operator, not --by: admin, the operator token.
        (Some("admin"), Some("looks right"))
    );

    // Deciding again is a conflict, said as such.
    let again = cli(
        client(&system, Some(TOKEN)),
        ActionsCommand::Reject {
            id: ID.into(),
            note: None,
            by: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        format!("{again:#}").contains("not pending (HTTP 409)"),
        "{again:#}"
    );
    system.stop().await.unwrap();
}

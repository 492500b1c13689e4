//! The web dashboard in a real headless Chromium (Debian's chromium and
//! chromedriver, over WebDriver) against a real daemon whose VMs live in a
//! network namespace the test makes; the dashboard listens on the host's
//! loopback. Screenshots go to target/test-artifacts/. Needs root.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_api::{UiInfo, Vm, VmState};
use banger_tests::{free_port, poll, stderr, stdout, test_image, TestDaemon, TestNetns};
use fantoccini::{Client, ClientBuilder, Locator};

fn artifacts() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// `curl` a dashboard URL; returns (status, headers+body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "5"])
        .args(args)
        .output()
        .unwrap();
    let text = stdout(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Runs `banger ui --open` with an `xdg-open` that records what it was
/// given; checks the login code is not in its arguments and that the page
/// it names is yours alone and forwards to a login link; returns the page.
fn open_through_xdg_open(d: &TestDaemon) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let argv_file = dir.path().join("argv");
    let fake = bin.join("xdg-open");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n",
            argv_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = d
        .banger_cmd()
        .args(["ui", "--open"])
        .env("PATH", path)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let argv = std::fs::read_to_string(&argv_file).unwrap();
    assert!(
        !argv.contains("code"),
        "the link is on a command line: {argv}"
    );
    let page = PathBuf::from(argv.trim());
    assert_eq!(page, runtime.join("banger/dashboard.html"));
    let mode = std::fs::metadata(&page).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the page is private: {mode:o}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("/?code="), "{html}");
    // Kept out of the temporary directory, which goes now.
    let kept = artifacts().join("dashboard-login.html");
    std::fs::copy(&page, &kept).unwrap();
    kept
}

struct Driver(Child);
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Polls the page (bounded) until `css` has text satisfying `ok`.
async fn wait_text(
    c: &Client,
    css: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(t) = text_of(c, css).await {
            if ok(&t) {
                return t;
            }
        }
        if t0.elapsed() > timeout {
            let src = c.source().await.unwrap_or_default();
            panic!(
                "timed out after {timeout:?} waiting for {what} ({css}); page: {}",
                &src[..src.len().min(3000)]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Clicks the element `css` finds. The page re-renders its tables on live
/// updates, so the element found may be replaced before the click lands:
/// find it again (bounded: 30 s) when it went stale or is not there yet.
async fn click(c: &Client, css: &str) {
    let t0 = Instant::now();
    loop {
        let r = match c.find(Locator::Css(css)).await {
            Ok(e) => e.click().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => return,
            Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                eprintln!("clicking {css} again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot click {css}: {e}"),
        }
    }
}

/// Types `name` into the create form and submits it.
async fn submit_create(c: &Client, name: &str) {
    let input = c
        .find(Locator::Css("#create-form input[name=name]"))
        .await
        .unwrap();
    input.send_keys(name).await.unwrap();
    let submit = c
        .find(Locator::Css("#create-form button[type=submit]"))
        .await
        .unwrap();
    submit.click().await.unwrap();
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(artifacts().join(format!("dashboard-{name}.png")), png).unwrap();
}

#[test]
fn guest_dashboard_login_origin_create_stop_and_live_session_logs() {
    let img = test_image();
    let ns = TestNetns::new();
    let port = free_port();
    let d = TestDaemon::start_in_with(&ns, &format!("[ui]\nlisten = \"127.0.0.1:{port}\"\n"), &[]);
    d.import_test_image(&img, "default");
    let base = format!("http://127.0.0.1:{port}");
    let link = || {
        let info: UiInfo = d.banger_json(&["ui"]);
        assert_eq!(info.expires_in_secs, Some(60));
        let url = info.url.expect("a login link");
        assert!(url.starts_with(&format!("{base}/?code=")), "{url}");
        url
    };
    let url = link();
    let code = url.rsplit('=').next().unwrap().to_string();

    // Refused without a session, with a made-up code, with a foreign Host
    // (which does not use the code up).
    assert_eq!(curl(&[&format!("{base}/")]).0, 401);
    assert_eq!(curl(&[&format!("{base}/v1/vms")]).0, 401);
    assert_eq!(curl(&[&format!("{base}/?code=nope")]).0, 401);
    assert_eq!(
        curl(&["-H", &format!("Host: evil.example:{port}"), &url]).0,
        403
    );
    // The code buys a session cookie once; the cookie is not the code.
    let (status, head) = curl(&[&url]);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content=\"0; url=/\""),
        "moves on without the code: {head}"
    );
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: banger_ui="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string();
    assert!(head.contains("HttpOnly; SameSite=Strict"), "{head}");
    assert_ne!(session, code);
    assert_eq!(curl(&[&url]).0, 401, "a login code works once");
    assert_eq!(
        curl(&[
            "-b",
            &format!("banger_ui={code}"),
            &format!("{base}/v1/vms")
        ])
        .0,
        401,
        "the code is no session"
    );
    let cookie = format!("banger_ui={session}");
    assert_eq!(curl(&["-b", &cookie, &format!("{base}/v1/vms")]).0, 200);
    // The address alone says where, not how to get in.
    let info: UiInfo = banger_tests::block_on(d.client().ui()).unwrap();
    assert_eq!(info.url.as_deref(), Some(&*format!("{base}/")));
    assert_eq!(
        curl(&[
            "-H",
            "Host: evil.example",
            "-b",
            &cookie,
            &format!("{base}/v1/vms")
        ])
        .0,
        403
    );
    let create = r#"{"name":"sneaky"}"#;
    let (status, _) = curl(&[
        "-b",
        &cookie,
        "-H",
        "Origin: http://evil.example",
        "-H",
        "Content-Type: application/json",
        "-d",
        create,
        &format!("{base}/v1/vms"),
    ]);
    assert_eq!(status, 403);
    let (status, _) = curl(&[
        "-b",
        &cookie,
        "-H",
        "Content-Type: application/json",
        "-d",
        create,
        &format!("{base}/v1/vms"),
    ]);
    assert_eq!(status, 403, "a POST without Origin is refused");
    assert!(
        d.banger(&["vm", "show", "sneaky"]).status.code() == Some(1),
        "a refused request created a VM"
    );

    // A real browser.
    let wd_port = free_port();
    let _driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={wd_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver)"),
    );
    poll("chromedriver", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", wd_port)).ok()
    });
    banger_tests::block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{wd_port}"))
            .await
            .expect("a WebDriver session");

        // Not logged in: refused.
        c.goto(&format!("{base}/")).await.unwrap();
        let body = text_of(&c, "body").await.unwrap_or_default();
        assert!(body.contains("needs a login"), "{body}");

        // `banger ui --open` (xdg-open stood in for by the browser): the
        // page loads, and the code is neither on a command line nor left
        // in the address bar.
        let page = open_through_xdg_open(&d);
        c.goto(&format!("file://{}", page.display())).await.unwrap();
        wait_text(
            &c,
            "#vm-rows",
            "the VM list",
            Duration::from_secs(10),
            |t| t.contains("No VMs yet"),
        )
        .await;
        let at = c.current_url().await.unwrap().to_string();
        assert_eq!(at, format!("{base}/"), "the code left the address bar");
        shot(&c, "1-empty").await;

        // Create a VM through the form: it appears and reaches running
        // without a reload.
        submit_create(&c, "web1").await;
        wait_text(
            &c,
            "tr[data-vm=web1] td[data-state]",
            "web1 to be listed",
            Duration::from_secs(10),
            |_| true,
        )
        .await;
        wait_text(
            &c,
            "tr[data-vm=web1] td[data-state]",
            "web1 to run",
            Duration::from_secs(120),
            |t| t == "running",
        )
        .await;
        shot(&c, "2-running").await;
        let v: Vm = d.banger_json(&["vm", "show", "web1"]);
        assert_eq!(v.state, VmState::Running);

        // A bad name: the API's error is shown.
        submit_create(&c, "web1").await;
        wait_text(
            &c,
            "#errors",
            "the API's error",
            Duration::from_secs(10),
            |t| t.contains("already exists"),
        )
        .await;

        // Stop through the page: the store says stopped, the page follows.
        click(&c, "button[data-action=stop][data-vm=web1]").await;
        wait_text(
            &c,
            "tr[data-vm=web1] td[data-state]",
            "web1 to stop",
            Duration::from_secs(60),
            |t| t == "stopped",
        )
        .await;
        let v: Vm = d.banger_json(&["vm", "show", "web1"]);
        assert_eq!(v.state, VmState::Stopped);
        shot(&c, "3-stopped").await;

        // Snapshot through the page (a prompt for its name), then listed on
        // the snapshots page.
        click(&c, "button[data-action=snapshot][data-vm=web1]").await;
        c.send_alert_text("snap-ui").await.unwrap();
        c.accept_alert().await.unwrap();
        let mut listed = false;
        for _ in 0..100 {
            let l: banger_api::SnapshotList = d.banger_json(&["snapshot", "ls"]);
            if l.snapshots
                .iter()
                .any(|s| s.name == "snap-ui" && s.state == "ready")
            {
                listed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(listed, "the snapshot taken from the page");
        c.goto(&format!("{base}/#/snapshots")).await.unwrap();
        wait_text(
            &c,
            "tr[data-snapshot=snap-ui]",
            "the snapshot on its page",
            Duration::from_secs(10),
            |t| t.contains("web1") && t.contains("disks"),
        )
        .await;
        shot(&c, "3b-snapshots").await;

        // A session's output appears live on the VM's page.
        let out = d.banger(&["vm", "start", "web1"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = d.banger(&[
            "session",
            "start",
            "web1",
            "--name",
            "ticker",
            "--",
            "sh",
            "-c",
            "for i in $(seq 1 40); do echo tick$i; echo warn$i >&2; sleep 0.5; done",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        c.goto(&format!("{base}/#/vm/web1")).await.unwrap();
        wait_text(
            &c,
            "#vm-state",
            "the VM page",
            Duration::from_secs(10),
            |t| t.starts_with("running"),
        )
        .await;
        click(&c, "button[data-logs=ticker]").await;
        let first = wait_text(
            &c,
            "#session-log",
            "session output",
            Duration::from_secs(20),
            |t| t.contains("tick2"),
        )
        .await;
        // Stderr beside stdout, marked.
        wait_text(
            &c,
            "#session-log .stderr",
            "stderr in the session output",
            Duration::from_secs(20),
            |t| t.starts_with("warn"),
        )
        .await;
        let n = first.lines().count();
        wait_text(
            &c,
            "#session-log",
            "more output, live",
            Duration::from_secs(20),
            |t| t.lines().count() >= n + 3,
        )
        .await;
        wait_text(
            &c,
            "#ports",
            "the listening ports",
            Duration::from_secs(20),
            |t| t.contains("sshd"),
        )
        .await;
        shot(&c, "4-session").await;
        c.close().await.unwrap();
    });
}

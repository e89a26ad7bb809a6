//! The client layer's own behaviour, each test against a server of its own
//! (`.venv/bin/sessiond serve` on a free port and a fresh database, or
//! $SESSIOND): the API key on calls and watches, TLS against a given CA, an
//! append without ids that is not retried after a lost response, close, and
//! a watch that rides out a graceful restart. Without the executable those
//! tests pass as no-ops, like the scenario without SESSIOND_ADDRESS. The
//! retry rule and budget are counted on a listener that drops every
//! connection, so they need no server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use sessiond_client::v1::*;
use sessiond_client::{
    Certificate, Client, ClientTlsConfig, Code, Identity, Reason, RetryPolicy, WatchUpdate,
};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sessiond() -> Option<PathBuf> {
    let path = std::env::var_os("SESSIOND")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join(".venv/bin/sessiond"));
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "skipped: no sessiond executable at {} (make install)",
            path.display()
        );
        None
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TestServer is a `sessiond serve` of one test, stopped and removed on drop.
struct TestServer {
    executable: PathBuf,
    dir: PathBuf,
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl TestServer {
    async fn start(extra: &[&str]) -> Option<TestServer> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let executable = sessiond()?;
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sessiond-rust-layer-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = TestServer {
            executable,
            dir,
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn().await;
        Some(server)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// spawn starts the server and returns once its port accepts connections.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("server.log"))
            .unwrap();
        let child = Command::new(&self.executable)
            .arg("serve")
            .arg("--database")
            .arg(self.path("sessiond.db"))
            .arg("--address")
            .arg(self.address())
            .args(&self.extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sessiond serve");
        self.child = Some(child);
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(self.address()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the server never listened: {}",
            std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
        );
    }

    /// stop ends the server with `signal` (TERM: a graceful shutdown; KILL:
    /// a crash) and waits until it is gone.
    fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_session(id: &str) -> CreateSessionRequest {
    CreateSessionRequest {
        session: Some(Session {
            id: id.into(),
            kind: SessionKind::Interactive as i32,
            channel: "cli".into(),
            agent: "layer-test".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// ready waits until the server answers calls (a reachable port is not
/// yet a serving server).
async fn ready(client: &Client) {
    for _ in 0..600 {
        match client.list_sessions(ListSessionsRequest::default()).await {
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => return,
        }
    }
    panic!("the server never answered");
}

#[tokio::test]
async fn the_api_key_goes_with_every_call_and_the_watch() {
    let _serial = super::serial().await;
    let Some(executable) = sessiond() else { return };
    let minted = Command::new(&executable)
        .args(["keys", "mint", "--tenant", "t1", "--role", "admin"])
        .output()
        .expect("sessiond keys mint");
    let text = String::from_utf8(minted.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("# sk_"))
        .map(|k| format!("sk_{k}"))
        .expect("a key");
    let entry: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let keys = std::env::temp_dir().join(format!("sessiond-rust-keys-{}.toml", std::process::id()));
    std::fs::write(&keys, entry).unwrap();
    let Some(server) = TestServer::start(&["--api-keys-file", keys.to_str().unwrap()]).await else {
        return;
    };

    let keyed = Client::builder(server.address())
        .api_key(&key)
        .build()
        .unwrap();
    ready(&keyed).await;
    let mut watch = keyed.watch(WatchSessionsRequest::default());
    let created = watch
        .next()
        .await
        .expect("an update")
        .expect("the watch is admitted");
    assert!(
        matches!(created, WatchUpdate::Created { .. }),
        "{created:?}"
    );
    let made = keyed
        .create_session(new_session("keyed"))
        .await
        .expect("a keyed call is admitted");
    let Some(Ok(WatchUpdate::Events { events, .. })) = watch.next().await else {
        panic!("the keyed watch did not deliver the create");
    };
    assert_eq!(events[0].revision, made.revision);

    let anonymous = Client::new(server.address()).unwrap();
    let refused = anonymous
        .get_session(GetSessionRequest {
            session_id: "keyed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.reason()),
        (Code::Unauthenticated, Some(&Reason::Unauthenticated))
    );
    let mut anonymous_watch = anonymous.watch(WatchSessionsRequest::default());
    let refused = anonymous_watch
        .next()
        .await
        .expect("an update")
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::Unauthenticated,
        "a refused watch ends instead of reconnecting"
    );
    assert!(anonymous_watch.next().await.is_none());

    let wrong = Client::builder(server.address())
        .api_key("sk_sessiond_not-a-key")
        .build()
        .unwrap();
    let refused = wrong
        .get_session(GetSessionRequest {
            session_id: "keyed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), Some(&Reason::UnknownApiKey));
    let _ = std::fs::remove_file(keys);
}

/// make_pki writes, with the openssl command, a throwaway CA (ca.pem), a
/// server certificate for localhost (server.pem, server.key) and a client
/// certificate (client.pem, client.key) from that CA, into a fresh directory.
fn make_pki(test: &str) -> PathBuf {
    let pki = std::env::temp_dir().join(format!("sessiond-rust-pki-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&pki).unwrap();
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(&pki)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "openssl {args:?}");
    };
    openssl(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ca",
        "-keyout", "ca.key", "-out", "ca.pem",
    ]);
    for (name, extensions) in [
        (
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(pki.join(&ext), extensions).unwrap();
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ]);
    }
    pki
}

#[tokio::test]
async fn tls_verifies_the_server_against_the_given_ca() {
    let _serial = super::serial().await;
    if sessiond().is_none() {
        return;
    }
    let pki = make_pki("server");
    let cert = pki.join("server.pem");
    let key = pki.join("server.key");
    let Some(server) = TestServer::start(&[
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ])
    .await
    else {
        return;
    };
    let ca = Certificate::from_pem(std::fs::read(pki.join("ca.pem")).unwrap());
    let secure = Client::builder(server.address())
        .tls(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )
        .build()
        .unwrap();
    ready(&secure).await;
    let made = secure
        .create_session(new_session("over-tls"))
        .await
        .expect("a call over TLS");
    assert!(made.created);

    let plain = Client::builder(server.address())
        .retry(RetryPolicy {
            max_retries: 0,
            ..Default::default()
        })
        .build()
        .unwrap();
    let refused = plain
        .get_session(GetSessionRequest {
            session_id: "over-tls".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    // An https:// address alone verifies against the system's roots, which do
    // not hold this test's CA.
    let system_roots = Client::builder(format!("https://localhost:{}", server.port))
        .retry(RetryPolicy {
            max_retries: 0,
            ..Default::default()
        })
        .build()
        .unwrap();
    let refused = system_roots
        .get_session(GetSessionRequest {
            session_id: "over-tls".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(
        refused.message().contains("certificate"),
        "refused by verification: {refused}"
    );
    let _ = std::fs::remove_dir_all(pki);
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let _serial = super::serial().await;
    if sessiond().is_none() {
        return;
    }
    let pki = make_pki("mutual");
    let file = |name: &str| pki.join(name).to_str().unwrap().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let Some(server) = TestServer::start(&[
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-client-ca-file",
        &ca,
    ])
    .await
    else {
        return;
    };
    let read = |name: &str| std::fs::read(pki.join(name)).unwrap();
    let trusted = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .domain_name("localhost")
    };
    let with_identity = Client::builder(server.address())
        .tls(trusted().identity(Identity::from_pem(read("client.pem"), read("client.key"))))
        .build()
        .unwrap();
    ready(&with_identity).await;
    assert!(
        with_identity
            .create_session(new_session("mutual"))
            .await
            .expect("a call with a client certificate")
            .created
    );

    let without = Client::builder(server.address())
        .tls(trusted())
        .retry(RetryPolicy {
            max_retries: 0,
            ..Default::default()
        })
        .build()
        .unwrap();
    let refused = without
        .get_session(GetSessionRequest {
            session_id: "mutual".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    let _ = std::fs::remove_dir_all(pki);
}

#[tokio::test]
async fn an_append_without_ids_is_not_retried_after_a_lost_response() {
    let _serial = super::serial().await;
    let Some(server) = TestServer::start(&[]).await else {
        return;
    };
    let direct = Client::new(server.address()).unwrap();
    ready(&direct).await;
    direct.create_session(new_session("lossy")).await.unwrap();

    // tests/interop/proxy.py loses the first response of its first connection.
    let script = repository().join("tests/interop/proxy.py");
    if !script.exists() {
        eprintln!("skipped: no {}", script.display());
        return;
    }
    let python = std::env::var_os("PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join(".venv/bin/python"));
    let mut proxy = tokio::process::Command::new(python)
        .arg(script)
        .arg(server.address())
        .arg(server.path("cuts"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the proxy");
    let mut port = String::new();
    let stdout = proxy.stdout.take().unwrap();
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut port)
        .await
        .unwrap();

    let lossy = Client::new(format!("127.0.0.1:{}", port.trim())).unwrap();
    let append = AppendMessagesRequest {
        session_id: "lossy".into(),
        messages: vec![Message {
            role: Role::User as i32,
            content: "no id".into(),
            ..Default::default()
        }],
        expected_last_seq: None,
        ..Default::default()
    };
    let lost = lossy.append_messages(append).await.unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable, "{lost}");
    let stored = direct
        .list_messages(ListMessagesRequest {
            session_id: "lossy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .messages;
    assert_eq!(
        stored.len(),
        1,
        "the first attempt committed, and no retry appended it again"
    );
    proxy.kill().await.unwrap();
}

#[tokio::test]
async fn close_cancels_a_watch_in_flight_and_later_calls() {
    let _serial = super::serial().await;
    let Some(server) = TestServer::start(&[]).await else {
        return;
    };
    let client = Client::new(server.address()).unwrap();
    ready(&client).await;
    let mut watch = client.watch(WatchSessionsRequest::default());
    assert!(matches!(
        watch.next().await,
        Some(Ok(WatchUpdate::Created { .. }))
    ));
    client.close();
    let ended = watch.next().await.expect("an update").unwrap_err();
    assert_eq!(ended.code(), Code::Cancelled);
    assert!(watch.next().await.is_none());
    let later = client
        .get_session(GetSessionRequest {
            session_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(later.code(), Code::Cancelled);
}

#[tokio::test]
async fn a_watch_rides_out_a_graceful_restart_without_gap_or_repeat() {
    let _serial = super::serial().await;
    let Some(mut server) = TestServer::start(&[]).await else {
        return;
    };
    let client = Client::new(server.address()).unwrap();
    ready(&client).await;
    let before = client.create_session(new_session("before")).await.unwrap();
    let mut watch = client.watch(WatchSessionsRequest {
        start_revision: before.revision,
        ..Default::default()
    });
    assert!(matches!(
        watch.next().await,
        Some(Ok(WatchUpdate::Created { .. }))
    ));
    let Some(Ok(WatchUpdate::Events { revision, .. })) = watch.next().await else {
        panic!("no events")
    };
    assert_eq!(revision, before.revision);

    server.stop("TERM");
    server.spawn().await;
    let writer = Client::new(server.address()).unwrap();
    ready(&writer).await;
    let after = writer.create_session(new_session("after")).await.unwrap();

    let mut delivered = Vec::new();
    while delivered.last() != Some(&after.revision) {
        match watch
            .next()
            .await
            .expect("the watch goes on")
            .expect("no error across the restart")
        {
            WatchUpdate::Events { events, .. } => {
                delivered.extend(events.iter().map(|e| e.revision))
            }
            WatchUpdate::Progress { .. } => {}
            other => panic!("unexpected after the restart: {other:?}"),
        }
    }
    assert_eq!(
        delivered,
        [after.revision],
        "each revision once, nothing before it again"
    );
}

/// dropping_listener accepts connections and closes them at once, counting
/// them: every attempt of a call fails as a lost connection (UNAVAILABLE).
async fn dropping_listener() -> (String, std::sync::Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (address, accepted)
}

fn quick_retries(max_retries: u32) -> RetryPolicy {
    let step = Duration::from_millis(1);
    RetryPolicy {
        max_retries,
        backoff: sessiond_client::Backoff {
            initial: step,
            maximum: step,
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn a_retry_safe_call_is_sent_at_most_one_plus_max_retries_times() {
    let (address, accepted) = dropping_listener().await;
    let client = Client::builder(address)
        .retry(quick_retries(3))
        .build()
        .unwrap();
    let failed = client
        .get_session(GetSessionRequest {
            session_id: "s".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed}");
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_call_that_is_not_retry_safe_is_sent_once() {
    let (address, accepted) = dropping_listener().await;
    let client = Client::builder(address)
        .retry(quick_retries(3))
        .build()
        .unwrap();
    let failed = client
        .delete_session(DeleteSessionRequest {
            session_id: "s".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn no_retry_is_made_when_its_delay_would_pass_the_deadline() {
    let (address, accepted) = dropping_listener().await;
    let slow = RetryPolicy {
        max_retries: 3,
        backoff: sessiond_client::Backoff {
            initial: Duration::from_secs(60),
            maximum: Duration::from_secs(60),
            jitter: 0.0,
            ..Default::default()
        },
    };
    let client = Client::builder(address)
        .retry(slow)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let failed = client
        .get_session(GetSessionRequest {
            session_id: "s".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        failed.code(),
        Code::Unavailable,
        "the last error is returned, not DEADLINE_EXCEEDED: {failed}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_watch_delivers_every_revision_once_across_repeated_kills() {
    let _serial = super::serial().await;
    let Some(mut server) = TestServer::start(&[]).await else {
        return;
    };
    let client = Client::new(server.address()).unwrap();
    ready(&client).await;
    let mut watch = client.watch(WatchSessionsRequest::default());
    assert!(matches!(
        watch.next().await,
        Some(Ok(WatchUpdate::Created { .. }))
    ));
    let mut written = Vec::new();
    let mut delivered = Vec::new();
    for round in 0..3 {
        // A writer of its own per round: a runtime restarted with the server.
        let writer = Client::new(server.address()).unwrap();
        ready(&writer).await;
        for n in 0..2 {
            let made = writer
                .create_session(new_session(&format!("k{round}-{n}")))
                .await
                .unwrap();
            written.push(made.revision);
        }
        if round % 2 == 0 {
            // Read up to date before the kill on even rounds; on odd ones the
            // watch is behind when the server dies.
            while delivered.last() != written.last() {
                if let WatchUpdate::Events { events, .. } = watch.next().await.unwrap().unwrap() {
                    delivered.extend(events.iter().map(|e| e.revision));
                }
            }
        }
        server.stop("KILL");
        server.spawn().await;
    }
    let writer = Client::new(server.address()).unwrap();
    ready(&writer).await;
    written.push(
        writer
            .create_session(new_session("last"))
            .await
            .unwrap()
            .revision,
    );
    while delivered.last() != written.last() {
        match watch
            .next()
            .await
            .expect("the watch goes on")
            .expect("no error across the kills")
        {
            WatchUpdate::Events { events, .. } => {
                delivered.extend(events.iter().map(|e| e.revision))
            }
            WatchUpdate::Progress { .. } => {}
            other => panic!("unexpected after a kill: {other:?}"),
        }
    }
    assert_eq!(
        delivered, written,
        "every revision once, in order, across three kills"
    );
}

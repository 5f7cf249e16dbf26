//! The `servicebus-emulator` binary: start-up output, bad config, a taken port.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_servicebus-emulator");

#[test]
fn it_prints_where_it_listens_and_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--port", "0", "--management-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("servicebus-emulator listening on amqp://127.0.0.1:"), "{first}");
    let port: u16 = first.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    let management = lines.next().unwrap().unwrap();
    let health = management
        .strip_prefix("servicebus-emulator management endpoint on http://")
        .unwrap_or_else(|| panic!("{management}"));
    let health_addr = health.strip_suffix("/health").unwrap();
    let mut http = std::net::TcpStream::connect(health_addr).unwrap();
    http.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut http, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("Healthy"), "{answer}");
    let cs = lines.next().unwrap().unwrap();
    assert!(cs.contains(&format!("Endpoint=sb://127.0.0.1:{port};")), "{cs}");
    assert!(cs.contains("SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"), "{cs}");
    // SIGTERM: graceful shutdown, exit 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_bad_config_file_names_the_file_line_and_key() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "{{\n  \"UserConfig\": {{\n    \"Namespaces\": [ {{ \"Name\": \"ns\",\n      \"Queues\": [ {{ \"Name\": \"q\", \"Properties\": {{ \"MaxDeliveryCount\": 0 }} }} ] }} ]\n  }}\n}}\n"
    )
    .unwrap();
    let out = Command::new(BIN).args(["--port", "0", "--no-management", "--config"]).arg(file.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let path = file.path().display().to_string();
    assert!(err.contains(&format!("{path}:4:")), "{err}");
    assert!(err.contains("UserConfig.Namespaces[0].Queues[0].Properties.MaxDeliveryCount"), "{err}");
    assert!(err.contains("MaxDeliveryCount must be from 1 to 4294967295"), "{err}");
}

#[test]
fn a_missing_config_file_says_so() {
    let out = Command::new(BIN)
        .args(["--port", "0", "--no-management", "--config", "/nonexistent/Config.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read config file /nonexistent/Config.json"), "{err}");
}

#[test]
fn a_port_in_use_says_so() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN).args(["--port", &port, "--no-management"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}: the address is already in use")), "{err}");
}

#[test]
fn a_malformed_key_flag_is_refused() {
    for (flag, expected) in [
        ("novalue", "--key \"novalue\": a key is NAME=VALUE or NAME=VALUE:RIGHTS"),
        ("a=b:Write", "--key \"a=b:Write\": \"Write\" is not a right: use Manage, Send or Listen"),
    ] {
        let out = Command::new(BIN).args(["--port", "0", "--no-management", "--key", flag]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{err}");
    }
}

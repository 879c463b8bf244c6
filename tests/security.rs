//! Secrets and sandboxing: scripts reach nothing outside the VM except through functions the
//! host registers; API keys appear in no output of a failing run; TLS certificates are checked.

use serde_json::json;
use sglc::{Engine, Error, RunConfig, TestBackend};

/// Every function a script can call, with the host registering nothing: pure computation and
/// `print` (which writes into the program's result, not to the process's stdout). Adding to
/// this list is adding to what scripts can reach: review it as such.
const STDLIB_FUNCTIONS: &[&str] = &[
    "abs",
    "bool",
    "div",
    "enumerate",
    "float",
    "int",
    "json_dump",
    "json_parse",
    "len",
    "list",
    "max",
    "min",
    "print",
    "range",
    "reversed",
    "round",
    "sorted",
    "str",
    "sum",
    "type",
    "zip",
];

#[test]
fn scripts_can_call_only_pure_functions_unless_the_host_adds_more() {
    let engine = Engine::new(TestBackend::new());
    let mut names: Vec<String> = engine
        .natives()
        .compile_env()
        .functions
        .into_iter()
        .map(|f| f.name)
        .collect();
    names.sort();
    assert_eq!(names, STDLIB_FUNCTIONS);
}

#[test]
fn files_environment_and_network_are_out_of_reach() {
    let engine = Engine::new(TestBackend::new());
    for call in [
        "open(\"/etc/passwd\")",
        "getenv(\"HOME\")",
        "env(\"OPENAI_API_KEY\")",
        "read_file(\"x\")",
        "http_get(\"http://127.0.0.1/\")",
        "__import__(\"os\")",
        "exec(\"1\")",
        "eval(\"1\")",
    ] {
        let source = format!("fn main() {{\n    return {call}\n}}\n");
        let error = engine
            .compile("escape.sgl", &source)
            .err()
            .unwrap_or_else(|| panic!("`{call}` compiled"));
        let codes: Vec<&str> = error.diagnostics.iter().map(|d| d.code).collect();
        assert!(
            error
                .diagnostics
                .iter()
                .any(|d| d.message.contains("undefined")),
            "`{call}`: {codes:?} {:?}",
            error.diagnostics
        );
    }
}

#[test]
fn the_host_grants_access_by_registering_a_function() {
    let mut engine = Engine::new(TestBackend::new());
    engine
        .natives_mut()
        .register("setting", 1, Some(1), |_, args, _| {
            Ok(sglc::Value::str(&format!(
                "value of {}",
                args[0].as_str().unwrap_or_default()
            )))
        });
    let script = engine
        .compile("host.sgl", "fn main() { return setting(\"mode\") }")
        .unwrap();
    let state = engine
        .run(&script, "main", json!({}), &RunConfig::default())
        .unwrap();
    assert_eq!(state.return_value, json!("value of mode"));
}

#[test]
fn print_does_not_write_to_the_process() {
    let dir = std::env::temp_dir().join(format!("sglc-print-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.sgl");
    std::fs::write(
        &file,
        "fn main() {\n    print(\"hello\")\n    return 1\n}\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sglc"))
        .args(["run", "--backend", "test", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stdout["output"], json!(["hello"]));
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(feature = "http")]
mod over_http {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A server that answers every request with 500 (enough to make every call fail).
    fn failing_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buffer = [0u8; 65536];
                    while let Ok(n) = stream.read(&mut buffer) {
                        if n == 0 {
                            break;
                        }
                        let body = "upstream failed";
                        let response = format!(
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(response.as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        format!("http://{address}")
    }

    #[test]
    fn the_api_key_is_in_no_output_of_a_failing_run() {
        const KEY: &str = "sk-proj-9b1e4f7a2c";
        let url = failing_server();
        let dir = std::env::temp_dir().join(format!("sglc-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("k.sgl");
        std::fs::write(
            &file,
            "fn main(s) {\n    s += user(\"hi\")\n    s += assistant(gen(\"a\"))\n}\n",
        )
        .unwrap();
        let input = dir.join("in.jsonl");
        std::fs::write(&input, "{}\n{}\n").unwrap();
        let runs: [&[&str]; 3] = [
            &["--json"],
            &["--stream", "--json"],
            &["--batch", input.to_str().unwrap(), "--progress"],
        ];
        for extra in runs {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_sglc"))
                .arg("run")
                .arg(&file)
                .args(["--backend", &format!("openai:{url}"), "--model", "m"])
                .args(["--attempts", "2", "-vvv"])
                .args(extra)
                .env("OPENAI_API_KEY", KEY)
                .env("RUST_LOG", "trace")
                .env("RUST_BACKTRACE", "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_ne!(output.status.code(), Some(0), "{extra:?}: the run failed");
            assert!(
                format!("{stdout}{stderr}").contains("HTTP 500"),
                "{extra:?}: the failure is reported: {stdout} {stderr}"
            );
            assert!(!stdout.contains(KEY), "{extra:?}: the key is on stdout");
            assert!(!stderr.contains(KEY), "{extra:?}: the key is on stderr");
            // Not even a prefix long enough to identify it.
            assert!(!stderr.contains(&KEY[..10]), "{extra:?}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_self_signed_certificate_is_refused() {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certified.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        )
        .unwrap();
        let config = std::sync::Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = handshakes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut stream = stream;
                // The client aborts the handshake; nothing is ever served.
                let _ = tls.complete_io(&mut stream);
            }
        });
        let backend = sglc::http::OpenAiBackend::new(
            &format!("https://{address}"),
            Some("sk-tls".to_string()),
            "m",
            sglc::http::Api::Chat,
            sglc::http::HttpOptions {
                max_attempts: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let engine = Engine::new(backend);
        let script = engine
            .compile(
                "t.sgl",
                "fn main(s) { s += user(\"x\"); s += assistant(gen(\"a\")) }",
            )
            .unwrap();
        let error = engine
            .run(&script, "main", json!({}), &RunConfig::default())
            .unwrap_err();
        let Error::Runtime(error) = error else {
            panic!("expected a runtime error, got {error}")
        };
        assert!(
            error.message.to_lowercase().contains("certificate"),
            "{}",
            error.message
        );
        assert!(handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }
}

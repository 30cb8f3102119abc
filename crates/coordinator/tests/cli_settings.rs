//! The program as an operator meets it: settings from flags, `COORDINATOR_*`
//! variables, a `--config` file and the stores' own variables, in that order;
//! refusals at start-up; fast failure of the admin commands on a store that
//! does not answer; the conventions of the tools around it (`--version`,
//! completions, a man page, log formats, grouped help). Every test runs the
//! real binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

mod common;

use common::{Scratch, BIN, WAIT};

/// The program with none of the variables it reads inherited from the test's
/// environment.
fn coordinator(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("COORDINATOR_")
            || k.starts_with("CONSUL_")
            || k.starts_with("ETCDCTL_")
            || k == "NO_COLOR"
            || k == "RUST_LOG"
        {
            c.env_remove(&*k);
        }
    }
    c
}

/// Runs to the end (at most [`WAIT`]).
async fn run(mut c: Command) -> Output {
    timeout(WAIT, c.output())
        .await
        .expect("the program must end by itself")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `--print-config`'s lines: key -> (value, where it came from).
fn printed(o: &Output) -> BTreeMap<String, (String, String)> {
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    stdout(o)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (kv, from) = l.rsplit_once("  # ")?;
            let (k, v) = kv.split_once(" = ")?;
            Some((k.to_owned(), (v.to_owned(), from.to_owned())))
        })
        .collect()
}

fn setting(o: &Output, key: &str) -> (String, String) {
    printed(o)
        .remove(key)
        .unwrap_or_else(|| panic!("{key} missing from {}", stdout(o)))
}

fn pair(value: &str, from: &str) -> (String, String) {
    (value.to_owned(), from.to_owned())
}

// ---------------------------------------------------------------------------
// 1. Flags > COORDINATOR_* > file > defaults, for every command

#[tokio::test]
async fn flags_win_over_variables_which_win_over_the_file_which_wins_over_defaults() {
    let dir = Scratch::new("layers");
    let f = dir.file(
        "c.toml",
        "backend = \"memory\"\ninstance_id = \"from-file\"\nsoak = \"2s\"\nleader_settle = \"7s\"\nlog_format = \"json\"\nexec_timeout = \"9s\"\n",
    );
    let base = ["worker", "--config", &f, "--print-config"];

    let o = run(coordinator(&base)).await;
    assert_eq!(setting(&o, "soak"), pair("\"2s\"", &f));
    assert_eq!(setting(&o, "instance_id"), pair("\"from-file\"", &f));
    assert_eq!(setting(&o, "log_format"), pair("\"json\"", &f));
    assert_eq!(setting(&o, "exec_timeout"), pair("\"9s\"", &f));
    assert_eq!(setting(&o, "prefix").1, "default");

    let mut c = coordinator(&base);
    c.env("COORDINATOR_SOAK", "3s")
        .env("COORDINATOR_INSTANCE_ID", "from-env");
    let o = run(c).await;
    assert_eq!(setting(&o, "soak"), pair("\"3s\"", "COORDINATOR_SOAK"));
    assert_eq!(
        setting(&o, "instance_id"),
        pair("\"from-env\"", "COORDINATOR_INSTANCE_ID")
    );
    assert_eq!(setting(&o, "leader_settle"), pair("\"7s\"", &f));

    let mut c = coordinator(&[&base[..], &["--soak", "4s", "--instance-id", "from-flag"]].concat());
    c.env("COORDINATOR_SOAK", "3s")
        .env("COORDINATOR_INSTANCE_ID", "from-env");
    let o = run(c).await;
    assert_eq!(setting(&o, "soak"), pair("\"4s\"", "--soak"));
    assert_eq!(
        setting(&o, "instance_id"),
        pair("\"from-flag\"", "--instance-id")
    );

    // Without a file, the defaults.
    let o = run(coordinator(&[
        "worker",
        "--backend",
        "memory",
        "--instance-id",
        "m1",
        "--print-config",
    ]))
    .await;
    assert_eq!(setting(&o, "soak"), pair("\"500ms\"", "default"));
    assert_eq!(setting(&o, "backend"), pair("\"memory\"", "--backend"));
}

#[tokio::test]
async fn a_worker_runs_from_variables_alone_and_from_a_file_alone() {
    async fn first_line(mut c: Command) -> serde_json::Value {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = timeout(WAIT, lines.next_line())
            .await
            .expect("a JSON line")
            .unwrap()
            .expect("stdout open");
        let _ = child.start_kill();
        serde_json::from_str(&line).unwrap()
    }
    let mut c = coordinator(&["worker"]);
    c.env("COORDINATOR_BACKEND", "memory")
        .env("COORDINATOR_INSTANCE_ID", "m1")
        .env("COORDINATOR_SOAK", "10ms");
    assert_eq!(first_line(c).await["instance_id"], "m1");

    let dir = Scratch::new("file-alone");
    let f = dir.file(
        "c.toml",
        "backend = \"memory\"\ninstance_id = \"m2\"\nsoak = \"10ms\"\n",
    );
    assert_eq!(
        first_line(coordinator(&["worker", "--config", &f])).await["instance_id"],
        "m2"
    );
    let mut c = coordinator(&["worker"]);
    c.env("COORDINATOR_CONFIG", &f);
    assert_eq!(first_line(c).await["instance_id"], "m2");
}

#[tokio::test]
async fn every_command_that_talks_to_a_store_reads_the_file_and_the_variables() {
    let dir = Scratch::new("all-commands");
    let f = dir.file(
        "c.toml",
        "instance_id = \"m1\"\nwork_prefix = \"svc/work/\"\nendpoints = [\"http://127.0.0.1:18500\"]\n",
    );
    for cmd in [
        &["worker"][..],
        &["member"],
        &["status"],
        &["work", "ls"],
        &["work", "put", "w1"],
        &["work", "rm", "w1"],
        &["drain", "m1"],
    ] {
        let mut args: Vec<&str> = cmd.to_vec();
        args.extend(["--config", &f, "--print-config"]);
        let mut c = coordinator(&args);
        c.env("COORDINATOR_LEADER", "svc/leader");
        let o = run(c).await;
        assert_eq!(
            setting(&o, "endpoints"),
            pair("[\"http://127.0.0.1:18500\"]", &f),
            "{cmd:?}"
        );
        assert_eq!(
            setting(&o, "leader"),
            pair("\"svc/leader\"", "COORDINATOR_LEADER"),
            "{cmd:?}"
        );
        if cmd[0] != "worker" {
            assert_eq!(setting(&o, "work_prefix"), pair("\"svc/work/\"", &f));
        }
    }
}

#[tokio::test]
async fn member_settings_are_reachable_from_file_variable_and_flag() {
    // Each of these keys, set three ways, shows up with its origin.
    let cases: &[(&str, &str, &str)] = &[
        ("handoff", "false", "false"),
        ("session_check", "true", "true"),
        ("prepare", "false", "false"),
        ("exclusive", "true", "true"),
        ("handoff_timeout", "\"90s\"", "90s"),
        ("drain_timeout", "\"45s\"", "45s"),
        ("rebalance_delay", "\"1m\"", "1m"),
        ("weight", "3", "3"),
        ("zone", "\"eu-west-1a\"", "eu-west-1a"),
        ("max_moves_in_flight", "5", "5"),
        ("http_addr", "\"127.0.0.1:9100\"", "127.0.0.1:9100"),
        ("exec_timeout", "\"5s\"", "5s"),
        ("log_format", "\"json\"", "json"),
    ];
    let dir = Scratch::new("member-keys");
    for (key, toml_value, raw) in cases {
        let f = dir.file(
            "m.toml",
            &format!("instance_id = \"m1\"\n{key} = {toml_value}\n"),
        );
        let o = run(coordinator(&["member", "--config", &f, "--print-config"])).await;
        assert_eq!(setting(&o, key).1, f, "{key} from the file");
        let mut c = coordinator(&["member", "--instance-id", "m1", "--print-config"]);
        c.env(format!("COORDINATOR_{}", key.to_uppercase()), raw);
        let o = run(c).await;
        assert_eq!(
            setting(&o, key).1,
            format!("COORDINATOR_{}", key.to_uppercase()),
            "{key} from the variable"
        );
        let flag = format!("--{}", key.replace('_', "-"));
        let o = run(coordinator(&[
            "member",
            "--instance-id",
            "m1",
            "--print-config",
            &flag,
            raw,
        ]))
        .await;
        assert_eq!(setting(&o, key).1, flag, "{key} from the flag");
    }
    // A boolean flag alone means true; the value reaches the setting.
    let o = run(coordinator(&[
        "member",
        "--instance-id",
        "m1",
        "--print-config",
    ]))
    .await;
    assert_eq!(setting(&o, "prepare"), pair("true", "default"));
    for (args, want) in [
        (&["--prepare"][..], "true"),
        (&["--prepare", "false"], "false"),
    ] {
        let mut all = vec!["member", "--instance-id", "m1", "--print-config"];
        all.extend(args);
        let o = run(coordinator(&all)).await;
        assert_eq!(setting(&o, "prepare"), pair(want, "--prepare"), "{args:?}");
    }
    let mut c = coordinator(&["member", "--instance-id", "m1", "--print-config"]);
    c.env("COORDINATOR_PREPARE", "off");
    let o = run(c).await;
    assert_eq!(setting(&o, "prepare"), pair("false", "COORDINATOR_PREPARE"));
}

/// Every key `--print-config` shows for a member is a flag of `member`.
#[tokio::test]
async fn every_setting_has_a_flag() {
    let o = run(coordinator(&[
        "member",
        "--instance-id",
        "m1",
        "--print-config",
    ]))
    .await;
    let help = stdout(&run(coordinator(&["member", "--help"])).await);
    for key in printed(&o).keys() {
        let flag = format!("--{} ", key.replace('_', "-"));
        let flag_eq = format!("--{} <", key.replace('_', "-"));
        assert!(
            help.contains(&flag) || help.contains(&flag_eq),
            "{key} has no flag {flag}in `member --help`"
        );
    }
}

// ---------------------------------------------------------------------------
// 2. The stores' own variables, below ours

#[tokio::test]
async fn consul_variables_mean_what_they_mean_to_consul() {
    let base = ["worker", "--instance-id", "m1", "--print-config"];
    let mut c = coordinator(&base);
    c.env("CONSUL_HTTP_ADDR", "127.0.0.1:8600")
        .env("CONSUL_HTTP_SSL", "true")
        .env("CONSUL_HTTP_TOKEN_FILE", "/run/token")
        .env("CONSUL_CACERT", "/etc/ca.pem")
        .env("CONSUL_CLIENT_CERT", "/etc/c.pem")
        .env("CONSUL_CLIENT_KEY", "/etc/k.pem");
    let o = run(c).await;
    assert_eq!(
        setting(&o, "endpoints"),
        pair("[\"https://127.0.0.1:8600\"]", "CONSUL_HTTP_ADDR")
    );
    assert_eq!(
        setting(&o, "token_file"),
        pair("\"/run/token\"", "CONSUL_HTTP_TOKEN_FILE")
    );
    assert_eq!(
        setting(&o, "ca_cert"),
        pair("\"/etc/ca.pem\"", "CONSUL_CACERT")
    );
    assert_eq!(
        setting(&o, "client_cert"),
        pair("\"/etc/c.pem\"", "CONSUL_CLIENT_CERT")
    );
    assert_eq!(
        setting(&o, "client_key"),
        pair("\"/etc/k.pem\"", "CONSUL_CLIENT_KEY")
    );

    // A scheme in the address is kept; CONSUL_HTTP_TOKEN beats the token file, as for consul.
    let mut c = coordinator(&base);
    c.env("CONSUL_HTTP_ADDR", "http://127.0.0.2:8500")
        .env("CONSUL_HTTP_TOKEN", "t")
        .env("CONSUL_HTTP_TOKEN_FILE", "/run/token");
    let o = run(c).await;
    assert_eq!(
        setting(&o, "endpoints"),
        pair("[\"http://127.0.0.2:8500\"]", "CONSUL_HTTP_ADDR")
    );
    assert!(!printed(&o).contains_key("token_file"));

    // Ours win: the variable, the file, the flag.
    let dir = Scratch::new("consul-vars");
    let f = dir.file("c.toml", "endpoints = [\"http://127.0.0.3:8500\"]\n");
    let mut c = coordinator(&[&base[..], &["--config", &f]].concat());
    c.env("CONSUL_HTTP_ADDR", "127.0.0.1:8600");
    assert_eq!(setting(&run(c).await, "endpoints").1, f);
    let mut c = coordinator(&base);
    c.env("CONSUL_HTTP_ADDR", "127.0.0.1:8600")
        .env("COORDINATOR_ENDPOINTS", "http://127.0.0.4:8500");
    assert_eq!(
        setting(&run(c).await, "endpoints").1,
        "COORDINATOR_ENDPOINTS"
    );

    // A bad one is named.
    let mut c = coordinator(&base);
    c.env("CONSUL_HTTP_ADDR", "127.0.0.1:99999");
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr(&o).contains("CONSUL_HTTP_ADDR"), "{}", stderr(&o));
}

#[tokio::test]
async fn etcdctl_variables_mean_what_they_mean_to_etcdctl() {
    let base = [
        "worker",
        "--backend",
        "etcd",
        "--instance-id",
        "m1",
        "--print-config",
    ];
    let mut c = coordinator(&base);
    c.env("ETCDCTL_ENDPOINTS", "127.0.0.1:2379,http://127.0.0.2:2379")
        .env("ETCDCTL_USER", "root:secret");
    let o = run(c).await;
    assert_eq!(
        setting(&o, "endpoints"),
        pair(
            "[\"http://127.0.0.1:2379\", \"http://127.0.0.2:2379\"]",
            "ETCDCTL_ENDPOINTS"
        )
    );
    assert_eq!(setting(&o, "user"), pair("\"root\"", "ETCDCTL_USER"));
    assert!(
        !stdout(&o).contains("secret"),
        "the password is never shown"
    );

    let mut c = coordinator(&base);
    c.env("ETCDCTL_ENDPOINTS", "127.0.0.1:2379")
        .env("ETCDCTL_CACERT", "/etc/ca.pem")
        .env("ETCDCTL_CERT", "/etc/c.pem")
        .env("ETCDCTL_KEY", "/etc/k.pem")
        .env("ETCDCTL_USER", "root")
        .env("ETCDCTL_PASSWORD", "pw");
    let o = run(c).await;
    assert_eq!(
        setting(&o, "endpoints").0,
        "[\"https://127.0.0.1:2379\"]",
        "TLS files make a bare address https"
    );
    assert_eq!(setting(&o, "ca_cert").1, "ETCDCTL_CACERT");
    assert_eq!(setting(&o, "client_cert").1, "ETCDCTL_CERT");
    assert_eq!(setting(&o, "client_key").1, "ETCDCTL_KEY");

    let mut c = coordinator(&base);
    c.env("ETCDCTL_USER", "root");
    let o = run(c).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr(&o).contains("ETCDCTL_USER"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------
// 3. Refusals at start-up: exit 2, one line naming the setting and the fix

/// Arguments, variables, and what the one-line error must contain.
type Refusal<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a [&'a str]);

#[tokio::test]
#[allow(clippy::too_many_lines)] // one table of cases
async fn what_cannot_work_is_refused_naming_the_setting() {
    let dir = Scratch::new("refusals");
    let not_exec = dir.file("handler.sh", "#!/bin/sh\n");
    let file = dir.file(
        "c.toml",
        "instance_id = \"m1\"\nexclusive_margin = \"2s\"\n",
    );
    let bad_prepare = dir.file("p.toml", "instance_id = \"m1\"\nprepare = \"maybe\"\n");
    let worker = ["worker", "--backend", "memory", "--instance-id", "m1"];
    let member = ["member", "--backend", "consul", "--instance-id", "m1"];
    let etcd_member = ["member", "--backend", "etcd", "--instance-id", "m1"];
    let no_id = ["worker", "--backend", "memory"];
    let with = |base: &[&'static str], extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(extra.iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    // A refusal with no variables set.
    let case = |base: &[&'static str], extra: &[&str], wants: &'static [&'static str]| -> Refusal {
        (with(base, extra), vec![], wants)
    };
    let cases: Vec<Refusal> = vec![
        case(&worker, &["--prefix", "foo"], &["--prefix", "\"foo/\""]),
        case(&worker, &["--prefix", ""], &["--prefix", "empty"]),
        case(&member, &["--zone", " "], &["zone", "empty"]),
        case(
            &["work", "put", "w1", "--backend", "consul"],
            &["--replicas", "0"],
            &["--replicas", "1 to 16"],
        ),
        case(
            &["work", "put", "w1", "--backend", "consul"],
            &["--replicas", "17"],
            &["--replicas", "1 to 16"],
        ),
        case(
            &member,
            &["--zone", "a\tb"],
            &["zone", "control characters"],
        ),
        case(
            &["worker", "--instance-id", "m1"],
            &["--endpoints", ""],
            &["--endpoints", "empty"],
        ),
        case(
            &["worker", "--instance-id", "m1"],
            &["--endpoints", " , "],
            &["--endpoints", "empty"],
        ),
        case(
            &worker,
            &["--exec", "/nonexistent/handler"],
            &["--exec", "does not exist"],
        ),
        case(
            &worker,
            &["--exec", "no-such-handler-anywhere"],
            &["--exec", "PATH"],
        ),
        case(
            &worker,
            &["--exec", &not_exec],
            &["--exec", "not executable"],
        ),
        case(&worker, &["--soak", "1000years"], &["--soak", "too long"]),
        case(&worker, &["--soak", "-1s"], &["--soak", "negative"]),
        case(
            &member,
            &["--drain-timeout", "30days"],
            &["--drain-timeout", "too long"],
        ),
        case(
            &member,
            &["--ttl", "5s", "--session-check", "false"],
            &["--ttl", "10s", "--session-check"],
        ),
        case(&no_id, &["--instance-id", " "], &["--instance-id", "blank"]),
        case(&no_id, &["--instance-id", "."], &["--instance-id"]),
        case(&no_id, &["--instance-id", ".."], &["--instance-id"]),
        case(
            &no_id,
            &["--instance-id", "a b"],
            &["--instance-id", "whitespace"],
        ),
        case(&no_id, &["--instance-id", "a/b"], &["--instance-id", "'/'"]),
        case(&no_id, &[], &["--instance-id", "COORDINATOR_INSTANCE_ID"]),
        case(
            &etcd_member,
            &["--endpoints", "http://127.0.0.1:99999"],
            &["--endpoints", "port"],
        ),
        case(&member, &["--weight", "-1"], &["--weight", "must be ≥ 0"]),
        case(
            &member,
            &["--prepare", "maybe"],
            &["--prepare", "true or false"],
        ),
        (
            with(&member, &[]),
            vec![("COORDINATOR_PREPARE", "maybe")],
            &["COORDINATOR_PREPARE", "true or false"],
        ),
        case(
            &["member"],
            &["--config", &bad_prepare],
            &["p.toml", "prepare"],
        ),
        case(
            &member,
            &["--exclusive-margin", "2s"],
            &["--exclusive-margin", "--exclusive"],
        ),
        (
            with(&member, &[]),
            vec![("COORDINATOR_EXCLUSIVE_MARGIN", "2s")],
            &["COORDINATOR_EXCLUSIVE_MARGIN", "COORDINATOR_EXCLUSIVE"],
        ),
        case(
            &["member"],
            &["--config", &file],
            &["exclusive_margin in", "c.toml"],
        ),
        case(
            &member,
            &["--work-prefix", "service/coordinator/assignments/w/"],
            &["invalid --work-prefix", "overlaps --prefix"],
        ),
        case(
            &member,
            &["--drain-prefix", "service/coordinator/members/d/"],
            &["invalid --drain-prefix", "overlaps --members-prefix"],
        ),
        case(
            &member,
            &["--sequence-key", "service/coordinator/work/seq"],
            &["invalid --sequence-key"],
        ),
        (
            with(&worker, &[]),
            vec![("COORDINATOR_SOAK", "soon")],
            &["COORDINATOR_SOAK"],
        ),
        case(
            &["member", "--instance-id", "m1"],
            &["--backend", "memory"],
            &["--backend", "consul, etcd"],
        ),
        case(
            &["status"],
            &["--backend", "memory"],
            &["--backend", "consul, etcd"],
        ),
        case(&worker, &["--http-addr", "nowhere:x"], &["--http-addr"]),
    ];
    for (args, env, wants) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = coordinator(&args);
        for (k, v) in &env {
            c.env(k, v);
        }
        let o = timeout(WAIT, c.output())
            .await
            .unwrap_or_else(|_| panic!("{args:?} {env:?} must be refused at once"))
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err}"
        );
        for want in wants {
            assert!(
                err.contains(want),
                "{args:?} {env:?}: want {want:?} in {err}"
            );
        }
    }
}

#[tokio::test]
async fn an_http_addr_of_only_a_port_listens_on_every_interface() {
    let o = run(coordinator(&[
        "worker",
        "--backend",
        "memory",
        "--instance-id",
        "m1",
        "--metrics-addr",
        ":9100",
        "--print-config",
    ]))
    .await;
    assert_eq!(setting(&o, "http_addr").0, "\"0.0.0.0:9100\"");
}

// ---------------------------------------------------------------------------
// 4. Fail fast where waiting helps nobody

/// A store address that accepts connections and never answers.
fn black_hole() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// A store address that refuses connections.
fn refusing() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

#[tokio::test]
async fn admin_commands_fail_fast_on_a_store_that_does_not_answer() {
    let (_hole, silent) = black_hole();
    let closed = refusing();
    let commands: &[&[&str]] = &[
        &["status"],
        &["work", "ls"],
        &["work", "put", "w1"],
        &["work", "rm", "w1"],
        &["drain", "m1"],
        &["drain", "m1", "--no-wait"],
    ];
    let mut backends = vec!["consul"];
    if cfg!(feature = "etcd") {
        backends.push("etcd");
    }
    for backend in backends {
        for url in [&silent, &closed] {
            for cmd in commands {
                let mut args = cmd.to_vec();
                args.extend([
                    "--backend",
                    backend,
                    "--endpoints",
                    url,
                    "--connect-timeout",
                    "1s",
                ]);
                let started = Instant::now();
                let o = run(coordinator(&args)).await;
                let took = started.elapsed();
                let err = stderr(&o);
                assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
                assert!(err.contains("store unreachable: "), "{args:?}: {err}");
                assert!(
                    took < Duration::from_secs(10),
                    "{args:?} took {took:?}: the bound is the connect timeout"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 5. Conventions of the tools around it

#[tokio::test]
async fn version_names_the_commit_and_the_backends() {
    let o = run(coordinator(&["--version"])).await;
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(text.contains("commit "), "{text}");
    assert!(text.contains("backends: "), "{text}");
    assert!(text.contains("memory"), "{text}");
    assert_eq!(text.contains("consul"), cfg!(feature = "consul"), "{text}");
    assert_eq!(text.contains("etcd"), cfg!(feature = "etcd"), "{text}");
}

/// Output piped into a reader that leaves at once (`| head -1`): the
/// program ends with 0 and says nothing, as other tools do; it does not
/// panic on the closed pipe.
#[tokio::test]
async fn output_into_a_closed_pipe_is_not_an_error() {
    for args in [
        &["completions", "bash"][..],
        &["completions", "fish"],
        &["man"],
        &[
            "worker",
            "--backend",
            "memory",
            "--instance-id",
            "m1",
            "--print-config",
        ],
    ] {
        let mut c = coordinator(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        // The only read end closes before the program writes anything.
        drop(child.stdout.take());
        let o = timeout(WAIT, child.wait_with_output())
            .await
            .expect("the program must end by itself")
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn completions_and_man_page() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef coordinator"),
        ("fish", "complete -c coordinator"),
    ] {
        let o = run(coordinator(&["completions", shell])).await;
        assert_eq!(o.status.code(), Some(0), "{shell}");
        let text = stdout(&o);
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(text.contains("instance-id"), "{shell} completes flags");
    }
    let o = run(coordinator(&["completions", "tcsh"])).await;
    assert_eq!(o.status.code(), Some(2));
    let o = run(coordinator(&["man"])).await;
    assert_eq!(o.status.code(), Some(0));
    let page = stdout(&o);
    assert!(
        page.starts_with(".ie") || page.contains(".TH coordinator"),
        "{page}"
    );
    assert!(page.contains("member"), "{page}");
}

/// Runs a memory worker until its first line, and returns its stderr.
async fn worker_stderr(extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = vec![
        "worker",
        "--backend",
        "memory",
        "--instance-id",
        "m1",
        "--soak",
        "10ms",
    ];
    args.extend(extra);
    let mut c = coordinator(&args);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    timeout(WAIT, lines.next_line())
        .await
        .expect("a JSON line")
        .unwrap()
        .expect("stdout open");
    // SIGTERM: it halts and exits 0, and its stderr ends.
    let pid = child.id().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let o = timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    stderr(&o)
}

#[tokio::test]
async fn log_format_json_and_no_colour_off_a_terminal() {
    let err = worker_stderr(&["--log-format", "json"], &[]).await;
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    let err = worker_stderr(&[], &[("COORDINATOR_LOG_FORMAT", "text")]).await;
    assert!(err.contains("INFO"), "{err}");
    assert!(!err.contains('\u{1b}'), "no colour off a terminal: {err:?}");
}

#[tokio::test]
async fn help_is_grouped_with_the_needed_flags_first() {
    for cmd in [
        &["worker"][..],
        &["member"],
        &["status"],
        &["work", "ls"],
        &["drain"],
    ] {
        let mut args = cmd.to_vec();
        args.push("-h");
        let o = run(coordinator(&args)).await;
        assert_eq!(o.status.code(), Some(0), "{cmd:?}");
        let help = stdout(&o);
        let at = |s: &str| {
            help.find(s)
                .unwrap_or_else(|| panic!("{cmd:?}: {s} missing in {help}"))
        };
        assert!(at("--backend") < at("Connection:"), "{cmd:?}");
        assert!(at("--endpoints") < at("Connection:"), "{cmd:?}");
        assert!(at("--config") < at("Connection:"), "{cmd:?}");
        assert!(at("Connection:") < at("Keys:"), "{cmd:?}");
        if cmd[0] == "worker" || cmd[0] == "member" {
            assert!(at("--instance-id") < at("--backend"), "{cmd:?}");
            at("Timing:");
            at("Output:");
        }
    }
    let o = run(coordinator(&["worker", "--help"])).await;
    assert!(stdout(&o).contains("[possible values: consul, etcd, memory]"));
    let o = run(coordinator(&["member", "--help"])).await;
    assert!(stdout(&o).contains("[possible values: consul, etcd]"));
    assert!(stdout(&o).contains("Member:"));
}

// ---------------------------------------------------------------------------
// The docs mention only flags that exist

/// Flags the docs mention that belong to other programs: cargo, the
/// simulator and benchmark binaries, consul and etcd.
const OTHER_PROGRAMS_FLAGS: &[&str] = &[
    // cargo and the test harness
    "--release",
    "--test",
    "--features",
    "--bench",
    "--all-features",
    "--workspace",
    "--all-targets",
    "--example",
    "--all",
    "--nocapture",
    "--path",
    "--locked",
    "--no-default-features",
    "--package",
    "--doc",
    "--lib",
    "--no-run",
    "--no-fail-fast",
    // the simulator (crates/sim) and the benchmarks (crates/bench)
    "--seeds",
    "--seed",
    "--store",
    "--safeguard",
    "--seconds",
    "--start",
    "--scenario",
    "--quick",
    "--control",
    "--trace",
    "--zones",
    "--planned",
    "--total",
    "--leader-sizes",
    "--runs",
    // etcd
    "--grpc-keepalive-min-time",
    "--auth-token-ttl",
    "--max-txn-ops",
    "--max-request-bytes",
    "--trusted-ca-file",
    "--listen-client-urls",
    "--election-timeout",
    "--data-dir",
    "--client-cert-auth",
    "--advertise-client-urls",
    "--auth-token",
    "--name",
    "--initial-cluster",
    "--listen-peer-urls",
    "--initial-advertise-peer-urls",
    "--cert-file",
    "--key-file",
    "--cacert",
    "--cert",
    "--key",
    "--keys-only",
    "--heartbeat-interval",
    "--interactive",
    "--new-user-password",
    // docker
    "--stop-timeout",
    // consul
    "--dev",
    "--bind",
    "--client",
    "--hcl",
    "--config-file",
    "--config-dir",
    // promtool, systemd-analyze, kubectl
    "--rules",
    "--man",
    "--dry-run",
];

#[tokio::test]
async fn every_flag_the_docs_mention_exists() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut docs = vec![root.join("README.md")];
    for dir in ["docs", "deploy"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "md") {
                    docs.push(e.path());
                }
            }
        }
    }
    let mut help = String::new();
    for cmd in [
        &[][..],
        &["worker"],
        &["member"],
        &["status"],
        &["drain"],
        &["work", "put"],
        &["work", "rm"],
        &["work", "ls"],
        &["demo"],
        &["completions"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        help.push_str(&stdout(&run(coordinator(&args)).await));
    }
    let ours: BTreeSet<String> = flags_in(&help);
    let mut missing = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for flag in flags_in(&text) {
            if !ours.contains(&flag) && !OTHER_PROGRAMS_FLAGS.contains(&flag.as_str()) {
                missing.push(format!("{}: {flag}", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags the docs mention that no `coordinator` command has: {missing:#?}"
    );
}

/// The `--long-flags` in a text.
fn flags_in(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'-');
        if boundary && bytes[i] == b'-' && bytes[i + 1] == b'-' && bytes[i + 2].is_ascii_lowercase()
        {
            let mut j = i + 2;
            while j < bytes.len()
                && (bytes[j].is_ascii_lowercase() || bytes[j].is_ascii_digit() || bytes[j] == b'-')
            {
                j += 1;
            }
            out.insert(text[i..j].trim_end_matches('-').to_owned());
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// On a terminal the log is coloured, unless `NO_COLOR` is set (run under
/// `script`, which gives the program a pseudo-terminal; SIGTERM after a
/// second ends it, as a user's Ctrl-C would).
///
/// `timeout --foreground` keeps the program in the terminal's foreground
/// process group: without it, a `script` whose shell forks (dash, which is
/// what `script` runs when `SHELL` is unset, as under CI) leaves the program
/// in a background group of the pseudo-terminal, where it never ends. `SHELL`
/// is pinned so the test does not depend on the caller's.
#[tokio::test]
async fn colour_on_a_terminal_unless_no_color() {
    let inner = format!(
        "timeout --foreground -s TERM 1 {BIN} worker --backend memory --instance-id m1 --soak 10ms"
    );
    let on_a_terminal = |no_color: bool| {
        let mut c = Command::new("script");
        c.args(["-qec", &inner, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("COORDINATOR_") || k == "NO_COLOR" || k == "RUST_LOG" {
                c.env_remove(&k);
            }
        }
        if no_color {
            c.env("NO_COLOR", "1");
        }
        c
    };
    let text = stdout(&run(on_a_terminal(false)).await);
    assert!(text.contains("worker started"), "{text:?}");
    assert!(text.contains('\u{1b}'), "coloured on a terminal: {text:?}");
    let text = stdout(&run(on_a_terminal(true)).await);
    assert!(text.contains("worker started"), "{text:?}");
    assert!(!text.contains('\u{1b}'), "NO_COLOR: {text:?}");
}

//! The deploy kit (`deploy/`) checked as far as this machine allows: the example config is the
//! library's schema; the systemd unit parses with the settings a draining member needs (and
//! `systemd-analyze verify` accepts it where systemd is installed); the Dockerfile passes
//! hadolint and builds what exists; the Kubernetes manifests and the Nomad job carry the probes,
//! the member id and a stop timeout above the drain timeout; the Prometheus rules pass
//! `promtool check rules` and their unit tests, and name metrics the code records;
//! docs/deploy.md links only to files of the repository.
//!
//! Tools (hadolint, promtool) come from `scripts/install-stores`; a missing one fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// The program's own config keys, beside the library's schema.
const PROGRAM_KEYS: [&str; 5] = [
    "http_addr",
    "exec",
    "exec_timeout",
    "log_format",
    "connect_timeout",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// A tool installed by `scripts/install-stores` (tools dir first, then PATH); panics when
/// missing.
fn tool(name: &str) -> PathBuf {
    let in_tools = test_support::tools_dir().join("bin").join(name);
    if in_tools.exists() {
        return in_tools;
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
        {
            return found;
        }
    }
    panic!(
        "`{name}` was not found in {} nor on PATH: run scripts/install-stores",
        in_tools.display()
    );
}

/// Runs `cmd`, panicking with its output unless it exits 0.
fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn seconds(value: &str) -> Duration {
    let v = value.trim().trim_matches('"');
    humantime_like(v).unwrap_or_else(|| panic!("not a duration: {value:?}"))
}

/// `90`, `90s`, `1m30s`, `5m`, `500ms` (systemd, Nomad and TOML spellings).
fn humantime_like(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            "ms"
        } else if c == 'm' && chars.peek() == Some(&'i') {
            // "min"
            chars.next();
            chars.next();
            "m"
        } else {
            match c {
                's' => "s",
                'm' => "m",
                'h' => "h",
                _ => return None,
            }
        };
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(60 * n),
            _ => Duration::from_secs(3600 * n),
        };
    }
    number.is_empty().then_some(total)
}

/// A TOML config as the program reads it: the program's keys taken out (each must be one of
/// [`PROGRAM_KEYS`]), an instance id added when the platform sets it, then the library's
/// schema (`deny_unknown_fields`).
fn library_config(text: &str, what: &str) -> coordinator::Config {
    let mut table: toml::Table =
        toml::from_str(text).unwrap_or_else(|e| panic!("{what}: not TOML: {e}"));
    for key in PROGRAM_KEYS {
        table.remove(key);
    }
    table
        .entry("instance_id")
        .or_insert_with(|| toml::Value::String("from-the-environment".into()));
    let config: coordinator::Config = table
        .try_into()
        .unwrap_or_else(|e| panic!("{what}: not the library's schema: {e}"));
    // And the program itself takes it, as the platform runs it (the id from
    // the environment): `--print-config` reads and checks every setting.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write the config");
    let mut cmd = Command::new(coordinator_e2e::coordinator_bin());
    cmd.args(["member", "--config"])
        .arg(file.path())
        .arg("--print-config")
        .env("COORDINATOR_INSTANCE_ID", "from-the-environment");
    for (k, _) in std::env::vars() {
        if k.starts_with("COORDINATOR_") && k != "COORDINATOR_INSTANCE_ID"
            || k.starts_with("CONSUL_")
            || k.starts_with("ETCDCTL_")
        {
            cmd.env_remove(k);
        }
    }
    let printed = run_ok(
        cmd,
        &format!("coordinator member --config <{what}> --print-config"),
    );
    assert!(
        printed.contains("instance_id = \"from-the-environment\"  # COORDINATOR_INSTANCE_ID"),
        "{what}: {printed}"
    );
    config
}

/// The example config: the library's schema plus the program's keys, draining within 60 s.
fn example_config() -> (coordinator::Config, toml::Table) {
    let text = read("deploy/coordinator.toml");
    let table: toml::Table = toml::from_str(&text).expect("deploy/coordinator.toml is TOML");
    (library_config(&text, "deploy/coordinator.toml"), table)
}

#[test]
fn example_config_is_the_schema_and_leaves_the_id_to_the_platform() {
    let (config, table) = example_config();
    assert_eq!(config.drain_timeout, Duration::from_secs(60));
    assert!(
        !table.contains_key("instance_id"),
        "the id comes from COORDINATOR_INSTANCE_ID"
    );
    assert_eq!(
        table.get("http_addr").and_then(toml::Value::as_str),
        Some("0.0.0.0:9100")
    );
    assert!(matches!(
        table.get("log_format").and_then(toml::Value::as_str),
        Some("json" | "text")
    ));
    // On Consul a TTL below 10 s needs sessions bound to an agent check.
    assert!(config.session_check || config.ttl >= Duration::from_secs(10));
    config.member_config().expect("a member can run with it");
}

/// `[Section]` → key → values (a key may repeat).
fn systemd_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let section = current.clone().expect("a setting before any [Section]");
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line:?}"));
        sections
            .get_mut(&section)
            .unwrap()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

#[test]
fn systemd_unit_drains_on_sigterm_within_its_stop_timeout() {
    let text = read("deploy/systemd/coordinator.service");
    let unit = systemd_unit(&text);
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] has no {key}="));
        values.last().unwrap()
    };
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/coordinator member --config /etc/coordinator/coordinator.toml"
    );
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert!(matches!(one("KillMode"), "mixed" | "main"), "KillMode");
    let (config, _) = example_config();
    assert!(
        seconds(one("TimeoutStopSec")) > config.drain_timeout,
        "TimeoutStopSec must exceed drain_timeout ({:?})",
        config.drain_timeout
    );
    assert_eq!(one("Restart"), "on-failure");
    assert!(seconds(one("RestartSec")) > Duration::ZERO);
    let dynamic = service.get("DynamicUser").and_then(|v| v.last());
    let user = service.get("User").and_then(|v| v.last());
    assert!(
        dynamic.is_some_and(|v| v == "yes") || user.is_some_and(|u| u != "root" && u != "0"),
        "runs as a non-root user"
    );
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert!(one("Environment").starts_with("COORDINATOR_INSTANCE_ID="));
    assert!(unit["Install"].contains_key("WantedBy"));

    // systemd's own check, where systemd is installed: the unit with ExecStart pointing at
    // this build's program (verify wants the binary to exist).
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if analyze.exists() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("coordinator.service");
        let bin = coordinator_e2e::coordinator_bin();
        std::fs::write(
            &copy,
            text.replace("/usr/local/bin/coordinator", &bin.display().to_string()),
        )
        .unwrap();
        let mut cmd = Command::new(analyze);
        cmd.arg("verify").arg(&copy);
        let out = run_ok(cmd, "systemd-analyze verify");
        assert!(
            !out.contains("coordinator.service"),
            "systemd-analyze verify complains:\n{out}"
        );
    } else {
        eprintln!("systemd-analyze is not installed here: only the parse checks ran");
    }
}

/// The Dockerfile's instructions (continuation lines joined, comments dropped).
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (op, args) = pending
            .split_once(' ')
            .map_or((pending.as_str(), ""), |(o, a)| (o, a));
        out.push((op.to_ascii_uppercase(), args.trim().to_owned()));
        pending.clear();
    }
    out
}

#[test]
fn dockerfile_is_lint_clean_and_builds_what_exists() {
    let path = repo().join("deploy/docker/Dockerfile");
    let mut cmd = Command::new(tool("hadolint"));
    cmd.arg("--no-color").arg(&path);
    run_ok(cmd, "hadolint deploy/docker/Dockerfile");

    let text = read("deploy/docker/Dockerfile");
    let ins = dockerfile_instructions(&text);
    let froms: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let last = &ins[*froms.last().unwrap()..];
    let user = last
        .iter()
        .rfind(|(op, _)| op == "USER")
        .map(|(_, a)| a.clone())
        .expect("the last stage sets USER");
    let name = user.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "USER {user} is root");
    let get = |op: &str| -> String {
        last.iter()
            .rfind(|(o, _)| o == op)
            .map_or_else(|| panic!("the last stage has no {op}"), |(_, a)| a.clone())
    };
    let entrypoint: Vec<String> = serde_json::from_str(&get("ENTRYPOINT")).expect("exec form");
    assert!(
        entrypoint[0].ends_with("/coordinator"),
        "ENTRYPOINT {entrypoint:?}"
    );
    let cmd: Vec<String> = serde_json::from_str(&get("CMD")).expect("exec form");
    assert_eq!(cmd[0], "member");
    assert_eq!(get("STOPSIGNAL"), "SIGTERM");
    assert_eq!(get("EXPOSE"), "9100");

    // Every COPY from the build context names something in the repository.
    for (op, args) in &ins {
        if op != "COPY" || args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(repo().join(source).exists(), "COPY source {source} missing");
        }
    }
    // The cargo build names a real package and real features, and keeps the lock file.
    let build = ins
        .iter()
        .find(|(op, a)| op == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a.clone())
        .expect("a cargo build");
    assert!(build.contains("--locked") && build.contains("--release"));
    let words: Vec<&str> = build.split_whitespace().collect();
    let after =
        |flag: &str| -> &str { words[words.iter().position(|w| *w == flag).expect(flag) + 1] };
    // The package is named for the registry (`kv-coordinator`), its directory is not: find
    // the crate whose manifest names it.
    let package = after("-p");
    let manifest: toml::Table = std::fs::read_dir(repo().join("crates"))
        .expect("crates/")
        .map(|entry| entry.expect("crates/ entry").path().join("Cargo.toml"))
        .filter(|path| path.is_file())
        .map(|path| toml::from_str::<toml::Table>(&std::fs::read_to_string(&path).expect("read")))
        .map(|manifest| manifest.unwrap_or_else(|e| panic!("a crate's Cargo.toml: {e}")))
        .find(|manifest| manifest["package"]["name"].as_str() == Some(package))
        .unwrap_or_else(|| panic!("no crate in crates/ is the package {package}"));
    let features = manifest["features"].as_table().expect("features");
    for feature in after("--features").split(',') {
        assert!(features.contains_key(feature), "no feature {feature:?}");
    }
    for feature in ["consul", "etcd"] {
        assert!(after("--features").contains(feature), "both backends");
    }
}

/// The documents of a multi-document YAML file, as JSON (through Python's yaml module:
/// there is no YAML parser among the workspace's dependencies).
fn yaml_documents(path: &str) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(repo().join(path))
        .output()
        .expect("python3 (with PyYAML) is needed to read the Kubernetes manifests");
    assert!(
        out.status.success(),
        "{path} does not parse as YAML (or PyYAML is missing: pip install pyyaml): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

#[test]
fn kubernetes_manifests_probe_drain_and_run_unprivileged() {
    let docs = yaml_documents("deploy/kubernetes/coordinator.yaml");
    let kind = |k: &str| -> &Value {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let config = library_config(
        kind("ConfigMap")["data"]["coordinator.toml"]
            .as_str()
            .expect("coordinator.toml in the ConfigMap"),
        "the ConfigMap's coordinator.toml",
    );
    let deployment = kind("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!(
        Duration::from_secs(grace) > config.drain_timeout,
        "terminationGracePeriodSeconds {grace} must exceed drain_timeout"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!(["member", "--config", "/etc/coordinator/coordinator.toml"])
    );
    let env = container["env"].as_array().expect("env");
    let id = env
        .iter()
        .find(|e| e["name"] == "COORDINATOR_INSTANCE_ID")
        .expect("COORDINATOR_INSTANCE_ID");
    assert_eq!(id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(port, 9100);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/etc/coordinator");
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "coordinator");
    assert_eq!(kind("Service")["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(kind("PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    // Every object's selector matches the pods' labels.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&kind("Service")["spec"]["selector"], labels);
}

/// The value of `key = value` lines of an HCL text (quotes removed), in order.
fn hcl_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn nomad_job_drains_within_its_kill_timeout_and_checks_readiness() {
    let text = read("deploy/nomad/coordinator.nomad.hcl");
    // Balanced braces and quotes: a cheap stand-in for an HCL parser.
    let opens = text.matches('{').count();
    assert_eq!(opens, text.matches('}').count(), "unbalanced braces");
    assert_eq!(text.matches('"').count() % 2, 0, "unbalanced quotes");
    assert_eq!(
        hcl_values(&text, "type").first().map(String::as_str),
        Some("service")
    );
    assert_eq!(hcl_values(&text, "kill_signal"), ["SIGTERM"]);
    let template = text
        .split("<<-EOT")
        .nth(1)
        .and_then(|t| t.split("EOT").next())
        .expect("the config template");
    let config = library_config(template, "the Nomad template's coordinator.toml");
    let kill = hcl_values(&text, "kill_timeout");
    assert_eq!(kill.len(), 1);
    assert!(
        seconds(&kill[0]) > config.drain_timeout,
        "kill_timeout must exceed drain_timeout"
    );
    assert_eq!(
        hcl_values(&text, "COORDINATOR_INSTANCE_ID"),
        ["${NOMAD_ALLOC_ID}"]
    );
    assert!(hcl_values(&text, "path").contains(&"/readyz".to_owned()));
    assert!(text.contains(r#"args  = ["member", "--config", "/local/coordinator.toml"]"#));
    assert!(hcl_values(&text, "destination").contains(&"local/coordinator.toml".to_owned()));
}

#[test]
fn prometheus_rules_pass_promtool_and_name_recorded_metrics() {
    let promtool = tool("promtool");
    let dir = repo().join("deploy/prometheus");
    let mut check = Command::new(&promtool);
    check
        .current_dir(&dir)
        .args(["check", "rules", "alerts.yml"]);
    let out = run_ok(check, "promtool check rules");
    assert!(out.contains("SUCCESS"), "{out}");
    let mut test = Command::new(&promtool);
    test.current_dir(&dir)
        .args(["test", "rules", "alerts_test.yml"]);
    run_ok(test, "promtool test rules");

    // Every metric an alert uses is one the code records.
    let rules = read("deploy/prometheus/alerts.yml");
    let mut sources = String::new();
    for file in [
        "crates/worker-core/src/metrics.rs",
        "crates/leader-core/src/metrics.rs",
    ] {
        sources.push_str(&read(file));
    }
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("coordinator_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        let base = name.trim_end_matches("_total");
        assert!(
            sources.contains(&format!("\"{name}\"")) || sources.contains(&format!("\"{base}\"")),
            "alerts.yml uses {name}, which no metrics.rs records"
        );
    }
}

#[test]
fn deploy_doc_links_stay_in_the_repository() {
    let doc = read("docs/deploy.md");
    let docs_dir = repo().join("docs");
    let mut checked = 0;
    for part in doc.split("](").skip(1) {
        let target = part.split(')').next().unwrap();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let file = target.split('#').next().unwrap();
        let path = docs_dir.join(file);
        let resolved = path
            .canonicalize()
            .unwrap_or_else(|e| panic!("docs/deploy.md links to {target}: {e}"));
        assert!(
            resolved.starts_with(repo().canonicalize().unwrap()),
            "docs/deploy.md links outside the repository: {target}"
        );
        checked += 1;
    }
    assert!(checked >= 5, "docs/deploy.md links to the kit's files");
    assert!(
        !doc.contains("../shared") && !doc.contains("](/"),
        "docs/deploy.md points outside the repository"
    );
    for file in [
        "deploy/coordinator.toml",
        "deploy/systemd/coordinator.service",
        "deploy/docker/Dockerfile",
        "deploy/kubernetes/coordinator.yaml",
        "deploy/nomad/coordinator.nomad.hcl",
        "deploy/consul/member-policy.hcl",
        "deploy/consul/worker-policy.hcl",
        "deploy/etcd/roles.sh",
        "deploy/prometheus/alerts.yml",
    ] {
        assert!(doc.contains(file), "docs/deploy.md does not mention {file}");
        assert!(repo().join(file).exists(), "{file} missing");
    }
}

#[test]
fn duration_spellings() {
    assert_eq!(seconds("90s"), Duration::from_secs(90));
    assert_eq!(seconds("90"), Duration::from_secs(90));
    assert_eq!(seconds("\"1m30s\""), Duration::from_secs(90));
    assert_eq!(seconds("5min"), Duration::from_secs(300));
    assert_eq!(humantime_like("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(humantime_like("x"), None);
}

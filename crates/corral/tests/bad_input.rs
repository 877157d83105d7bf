//! End-to-end: bad input gives a clear error, a non-zero exit, and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;
use common::*;

/// Everything a failed command could have changed: the VM list, the volume files, the
/// storage repositories (without their free space, which other tests move) and the networks.
fn snapshot(
    a: &TestAgent,
) -> (
    serde_json::Value,
    Vec<String>,
    serde_json::Value,
    serde_json::Value,
) {
    let mut files: Vec<String> = std::fs::read_dir(a.state_dir().join("srs/default"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut srs = a.json(&["sr", "list"]);
    for sr in srs.as_array_mut().expect("sr list is an array") {
        if let Some(o) = sr.as_object_mut() {
            o.remove("free_bytes");
            o.remove("total_bytes");
        }
    }
    (
        a.json(&["vm", "list"]),
        files,
        srs,
        a.json(&["network", "list"]),
    )
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let a = TestAgent::start();
    let g = guest();
    let kernel = g.kernel.to_string_lossy().into_owned();
    a.create_kernel_vm("taken", &["--disk", "16M"]);
    let not_iso = a.state_dir().join("not-an.iso");
    std::fs::write(&not_iso, b"hello").unwrap();
    let not_iso = not_iso.to_string_lossy().into_owned();
    let nine_nics: Vec<String> = (0..9)
        .flat_map(|_| ["--nic".to_string(), "default".to_string()])
        .collect();
    let mut nine: Vec<&str> = vec!["vm", "create", "--name", "many"];
    nine.extend(nine_nics.iter().map(|s| s.as_str()));

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["vm", "create", "--name", "taken"], "already exists"),
        (vec!["vm", "create", "--name", "web,01"], "','"),
        (vec!["vm", "create", "--name", "web/01"], "'/'"),
        (vec!["vm", "create", "--name", "web 01"], "' '"),
        (vec!["vm", "create", "--name", ""], "empty"),
        (
            vec!["vm", "create", "--name", "m0", "--memory", "0"],
            "memory must be larger than 0",
        ),
        (
            vec!["vm", "create", "--name", "m1", "--memory", "64T"],
            "more than this host has",
        ),
        (
            vec!["vm", "create", "--name", "c0", "--vcpus", "0"],
            "at least 1",
        ),
        (
            vec!["vm", "create", "--name", "c65", "--vcpus", "65"],
            "maximum of 64",
        ),
        (nine, "maximum of 8"),
        (
            vec!["vm", "create", "--name", "d1", "--disk", "abc"],
            "\"abc\"",
        ),
        (
            vec!["vm", "create", "--name", "d2", "--disk", "0"],
            "disk size must be larger than 0",
        ),
        (
            vec![
                "vm", "create", "--name", "d3", "--disk", "1G", "--disk", "abc",
            ],
            "\"abc\"",
        ),
        (
            vec![
                "vm",
                "create",
                "--name",
                "i1",
                "--cdrom",
                "/nonexistent/x.iso",
            ],
            "does not exist",
        ),
        (
            vec!["vm", "create", "--name", "i2", "--cdrom", &not_iso],
            "not an ISO 9660 image",
        ),
        (
            vec!["vm", "create", "--name", "n1", "--nic", "nosuchnet"],
            "no network named \"nosuchnet\"",
        ),
        (
            vec!["vm", "create", "--name", "s1", "--disk", "1G,sr=nosuchsr"],
            "no storage repository named \"nosuchsr\"",
        ),
        (
            vec![
                "vm",
                "create",
                "--name",
                "t1",
                "--template",
                "nosuchtemplate",
            ],
            "nosuchtemplate",
        ),
        (
            vec!["vm", "create", "--name", "w1", "--cpu-weight", "0"],
            "outside 1..65535",
        ),
        (
            vec!["vm", "create", "--name", "w2", "--cpu-weight", "fast"],
            "not low, normal, high",
        ),
        (
            vec![
                "vm",
                "create",
                "--name",
                "k1",
                "--kernel",
                "/nonexistent/vmlinuz",
            ],
            "does not exist",
        ),
        (
            vec![
                "vm",
                "create",
                "--name",
                "k2",
                "--kernel",
                &kernel,
                "--disk",
                "1G",
                "--disk",
                "2G,bus=floppy",
            ],
            "bus",
        ),
        (vec!["vm", "start", "nosuchvm"], "no VM named"),
        (vec!["vm", "set", "taken", "--vcpus", "99"], "maximum of 64"),
        (vec!["vm", "set", "taken", "--rename", "bad name"], "' '"),
        (
            vec!["vm", "disk", "remove", "taken", "disk7"],
            "no disk \"disk7\"",
        ),
        (
            vec!["sr", "create", "x", "--path", "/nonexistent/dir"],
            "not a directory",
        ),
        (
            vec!["sr", "create", "x", "--path", "/proc/version"],
            "not a directory",
        ),
        (vec!["sr", "create", "bad name", "--path", "/tmp"], "' '"),
        (
            vec!["sr", "create", "default", "--path", "/tmp"],
            "already exists",
        ),
        (
            vec!["network", "create", "lan", "--bridge", "nosuchbr0"],
            "does not exist",
        ),
        (
            vec!["network", "create", "default", "--bridge", "br0"],
            "built in",
        ),
        (
            vec!["network", "create", "bad,name", "--bridge", "br0"],
            "','",
        ),
        (
            vec!["network", "create", "lan", "--bridge", "br/0"],
            "bridge",
        ),
    ];
    for (args, needle) in cases {
        let before = snapshot(&a);
        let err = a.fails(&args);
        assert!(
            err.contains(needle),
            "corral {}: expected {needle:?} in error, got: {err}",
            args.join(" ")
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            snapshot(&a),
            before,
            "corral {} changed state",
            args.join(" ")
        );
    }

    // start on a running VM names the state; delete of a running VM needs --force.
    a.ok(&["vm", "start", "taken"]);
    let before = snapshot(&a);
    let err = a.fails(&["vm", "start", "taken"]);
    assert!(err.contains("it is running"), "{err}");
    let err = a.fails(&["vm", "delete", "taken"]);
    assert!(err.contains("--force"), "{err}");
    let err = a.fails(&["vm", "disk", "add", "taken", "1G"]);
    assert!(err.contains("it is running"), "{err}");
    assert_eq!(snapshot(&a), before);
    assert_eq!(a.power_state("taken"), "running");

    // HA restart elsewhere is refused for disks on local storage and for a TPM (its state
    // lives on this host), and nothing changes.
    a.ok(&[
        "vm",
        "create",
        "--name",
        "tpm1",
        "--memory",
        "64M",
        "--no-disks",
        "--tpm",
    ]);
    let before = snapshot(&a);
    let err = a.fails(&["vm", "set", "tpm1", "--ha", "restart"]);
    assert!(err.contains("TPM"), "{err}");
    let err = a.fails(&["vm", "set", "taken", "--ha", "restart"]);
    assert!(err.contains("shared repository"), "{err}");
    assert_eq!(snapshot(&a), before);
    assert_eq!(a.vm("tpm1")["ha"]["restart"], false);
}

#[test]
fn api_rejects_unknown_fields_and_bad_bodies() {
    let a = TestAgent::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = corral_client::Client::unix(&a.socket);
    rt.block_on(async {
        use hyper::Method;
        let cases: Vec<(Method, &str, &str, &str)> = vec![
            (
                Method::POST,
                "/v1/vms",
                r#"{"name":"x","vcpus":1,"colour":"blue"}"#,
                "unknown field `colour`",
            ),
            (
                Method::POST,
                "/v1/vms",
                r#"{"name":"x","disks":[{"size_bytes":1048576,"speed":1}]}"#,
                "unknown field `speed`",
            ),
            (
                Method::POST,
                "/v1/vms",
                r#"{"name":"x","vcpus":"two"}"#,
                "invalid type",
            ),
            (Method::POST, "/v1/vms", "{not json", "invalid request body"),
            (
                Method::POST,
                "/v1/srs",
                r#"{"name":"x","path":"/tmp","extra":true}"#,
                "unknown field `extra`",
            ),
        ];
        for (method, path, body, needle) in cases {
            let err = client
                .raw(method, path, Some(body.as_bytes().to_vec()))
                .await
                .unwrap_err();
            match err {
                corral_client::ClientError::Api(e) => {
                    assert_eq!(
                        e.kind,
                        corral_model::ErrorKind::InvalidInput,
                        "{path} {body}"
                    );
                    assert!(e.message.contains(needle), "{body}: {}", e.message);
                }
                other => panic!("{other}"),
            }
        }
        assert!(client.list_vms().await.unwrap().is_empty());
        // An action that is not allowed answers 409 with the current state.
        let err = client
            .raw(hyper::Method::POST, "/v1/vms/none/actions/start", None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(corral_model::ErrorKind::NotFound));
    });
}

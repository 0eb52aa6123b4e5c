//! `spec.archive`: rendered into `worker.json` (and so into the config hash, which restarts the
//! workers), with the workers' defaults, and refused by `validate` for pipelines created before the
//! CRD's rules, with the rules' messages.

use taxi_core::settings::ArchiveSettings;

use super::*;

#[test]
fn an_archive_changes_only_worker_json_and_the_config_hash() {
    let before = built(&minimal());
    let after = built(&patched(&minimal(), "archive: {uri: 's3://taxi-archive/trips', maxFileAge: 1m}"));
    assert_eq!(
        changed_paths(&before, &after),
        paths(&[
            r#"ConfigMap/nyc-taxi-worker-config:data["worker.json"]"#,
            r#"StatefulSet/nyc-taxi-worker:spec.template.metadata.annotations["taxipipeline.io/config-hash"]"#,
        ])
    );
    assert_eq!(settings_changes(&before, &after), paths(&["archive"]));
    assert_eq!(
        worker_json(&after)["archive"],
        json!({"uri": "s3://taxi-archive/trips", "max_file_bytes": 67_108_864, "max_file_age_ms": 60_000})
    );
    assert_eq!(worker_json(&before).get("archive"), None, "no archive unless the spec asks for one");

    // A changed archive rolls the workers too.
    let larger = built(&patched(&minimal(), "archive: {uri: 's3://taxi-archive/trips', maxFileBytes: 134217728}"));
    assert_eq!(settings_changes(&after, &larger), paths(&["archive.max_file_bytes", "archive.max_file_age_ms"]));
    assert_ne!(
        larger.stateful_set.spec.template.metadata.as_ref().and_then(|m| m.annotations.as_ref()),
        after.stateful_set.spec.template.metadata.as_ref().and_then(|m| m.annotations.as_ref()),
    );
}

#[test]
fn the_full_example_archives_with_the_sizes_it_names() {
    let settings = valid(&full()).settings;
    let expected = ArchiveSettings {
        uri: "s3://example-taxi-archive/prod/nyc-taxi".to_owned(),
        max_file_bytes: 128 * 1024 * 1024,
        max_file_age_ms: 10 * 60 * 1000,
    };
    assert_eq!(settings.archive, Some(expected));
}

#[test]
fn an_archive_created_before_the_cel_rules_is_refused_with_their_message() {
    let cases = [
        (
            "{uri: 'gs://taxi-archive/trips'}",
            "spec.archive.uri",
            "must be an S3 URI with a bucket, like s3://bucket/prefix",
        ),
        ("{uri: 's3:///trips'}", "spec.archive.uri", "must be an S3 URI with a bucket, like s3://bucket/prefix"),
        (
            "{uri: 's3://taxi-archive', maxFileBytes: 65535}",
            "spec.archive.maxFileBytes",
            "must be between 65536 (64 KiB) and 1073741824 (1 GiB)",
        ),
        (
            "{uri: 's3://taxi-archive', maxFileBytes: 1073741825}",
            "spec.archive.maxFileBytes",
            "must be between 65536 (64 KiB) and 1073741824 (1 GiB)",
        ),
        (
            "{uri: 's3://taxi-archive', maxFileAge: 999ms}",
            "spec.archive.maxFileAge",
            "must be a duration between 1s and 1h",
        ),
        (
            "{uri: 's3://taxi-archive', maxFileAge: 61m}",
            "spec.archive.maxFileAge",
            "must be a duration between 1s and 1h",
        ),
    ];
    for (archive, field, reason) in cases {
        let patch = format!("archive: {archive}");
        let err = validate(&patched(&minimal(), &patch), &defaults()).expect_err(&patch);
        assert_eq!((err.field, err.reason.as_str()), (field, reason), "{patch}");
    }
    let err = validate(&patched(&minimal(), "archive: {uri: 's3://taxi-archive', maxFileAge: 5min}"), &defaults())
        .expect_err("not a duration");
    assert_eq!(err.field, "spec.archive.maxFileAge");
}

#[test]
fn archive_bounds_are_accepted_at_their_ends() {
    for (archive, bytes, age_ms) in [
        ("{uri: 's3://taxi-archive', maxFileBytes: 65536, maxFileAge: 1s}", 65_536, 1_000),
        ("{uri: 's3://taxi-archive', maxFileBytes: 1073741824, maxFileAge: 1h}", 1_073_741_824, 3_600_000),
    ] {
        let settings = valid(&patched(&minimal(), &format!("archive: {archive}"))).settings;
        let expected =
            ArchiveSettings { uri: "s3://taxi-archive".to_owned(), max_file_bytes: bytes, max_file_age_ms: age_ms };
        assert_eq!(settings.archive, Some(expected), "{archive}");
    }
}

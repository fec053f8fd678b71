//! Loading a synthetic delivery end to end: recognition, validation,
//! pseudonymisation, encryption bound to the object path, atomic snapshots.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray};
use pds_home::{Home, InitMaster};
use pds_load::{LoadError, LoadOptions, Progress, ProgressFn, load, read_file};

fn synth(dir: &Path, n: u64, seed: u64) {
    let cfg = pds_synth::Config {
        beneficiaries: n,
        first_year: 2021,
        last_year: 2021,
        seed,
        out: dir.to_path_buf(),
        format: pds_synth::Format::Csv,
        threads: Some(2),
    };
    pds_synth::generate(&cfg, &|_| {}).unwrap();
}

async fn home(dir: &Path) -> Home {
    Home::init(
        &dir.join("home"),
        &InitMaster::KeyFile(dir.join("master.key")),
    )
    .await
    .unwrap()
}

fn opts() -> LoadOptions {
    LoadOptions {
        max_errors: 100,
        created_by: "steward".into(),
        note: String::new(),
        threads: 2,
        ..Default::default()
    }
}

fn quiet() -> ProgressFn {
    Arc::new(|_: &Progress| {})
}

fn strings(batches: &[RecordBatch], col: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let a = b
            .column(b.schema().index_of(col).unwrap())
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        out.extend(
            (0..a.len())
                .filter(|i| a.is_valid(*i))
                .map(|i| a.value(i).to_string()),
        );
    }
    out
}

fn csv_column(path: &Path, col: &str) -> Vec<String> {
    let mut r = csv::ReaderBuilder::new()
        .delimiter(b';')
        .from_path(path)
        .unwrap();
    let i = r.headers().unwrap().iter().position(|h| h == col).unwrap();
    r.records().map(|x| x.unwrap()[i].to_string()).collect()
}

#[tokio::test]
async fn a_delivery_becomes_an_encrypted_pseudonymised_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let delivery = dir.path().join("delivery");
    synth(&delivery, 400, 3);
    let h = home(dir.path()).await;
    let report = load(&h, &delivery, &opts(), quiet()).await.unwrap();
    assert_eq!(report.snapshot, 1);
    let cat = h.catalog().await.unwrap();
    let tables = cat.tables(1).await.unwrap();
    let names: HashSet<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    for t in [
        "ER_PRS_F", "ER_PHA_F", "IR_BEN_R", "T_MCO21B", "T_MCO21C", "KI_CCI_R",
    ] {
        assert!(names.contains(t), "{t} missing: {names:?}");
    }
    // Referentials are loaded typed, unpartitioned, not pseudonymised.
    let pha = tables.iter().find(|t| t.name == "IR_PHA_R").unwrap();
    assert_eq!(pha.rows, 23_126);
    assert_eq!(pha.files.len(), 1);
    assert_eq!(pha.columns[0].name, "PHA_CIP_C13");
    assert_eq!(
        pha.columns[0].data_type, "Int64",
        "joins ER_PHA_F.PHA_PRS_C13 (Int64) without a cast"
    );
    // Row counts equal the CSV's.
    let prs = tables.iter().find(|t| t.name == "ER_PRS_F").unwrap();
    let csv_rows = csv_column(&delivery.join("ER_PRS_F_2021.csv"), "BEN_NIR_PSA").len() as i64;
    assert_eq!(prs.rows, csv_rows);
    assert_eq!(prs.files.iter().map(|f| f.rows).sum::<i64>(), csv_rows);
    // DCIR partitioned by flow month.
    assert!(
        prs.files.len() > 3 && prs.files.iter().all(|f| f.path.contains("/flx_month=2")),
        "{:?}",
        prs.files
    );
    // The 123 SNDS columns, then the prestation key PDS adds to every
    // table with the nine DCIR join keys (and to no other).
    assert_eq!(prs.columns.len(), 124);
    let key = prs.columns.last().unwrap();
    assert_eq!(
        (key.name.as_str(), key.data_type.as_str()),
        ("PDS_PRS_KEY", "Decimal128(38, 0)")
    );
    for t in &tables {
        let has = t.columns.iter().any(|c| c.name == "PDS_PRS_KEY");
        let dcir =
            ["ER_PRS_F", "ER_PHA_F", "ER_BIO_F", "ER_CAM_F", "ER_ETE_F"].contains(&t.name.as_str());
        assert_eq!(has, dcir, "{}", t.name);
    }
    assert!(
        prs.columns
            .iter()
            .any(|c| c.name == "PRS_NAT_REF" && c.nomenclature == "IR_NAT_V")
    );

    let snap = cat.snapshot(1).await.unwrap();
    let wrapped: pds_keys::WrappedKey = serde_json::from_str(&snap.wrapped_key).unwrap();
    let keys = h.keys().unwrap();
    let key = keys.unwrap_data_key(&wrapped, "pds/snapshot/1").unwrap();
    let objects = h.local_storage_dir().unwrap();
    let storage = h.storage().unwrap();

    // Encrypted: no clear identifier, no readable footer without the key.
    let ben_file = &tables.iter().find(|t| t.name == "IR_BEN_R").unwrap().files[0];
    let raw = std::fs::read(objects.join(&ben_file.path)).unwrap();
    assert_eq!(&raw[raw.len() - 4..], b"PARE", "encrypted footer magic");
    let clear_psa = csv_column(&delivery.join("IR_BEN_R.csv"), "BEN_NIR_PSA");
    let needle = clear_psa[0].as_bytes();
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle),
        "clear identifier in the file"
    );
    let other = keys.new_data_key("pds/snapshot/1").unwrap().0;
    assert!(
        read_file(&storage, &ben_file.path, &other).await.is_err(),
        "another key cannot read"
    );
    // Bound to its path: the same bytes under another name do not decrypt.
    let moved = format!("{}.copy", ben_file.path);
    std::fs::copy(objects.join(&ben_file.path), objects.join(&moved)).unwrap();
    assert!(
        read_file(&storage, &moved, &key).await.is_err(),
        "a swapped file must not decrypt"
    );

    // Pseudonymised, with linkage kept across DCIR, PMSI and IR_BEN_R.
    let ben = read_file(&storage, &ben_file.path, &key).await.unwrap();
    let ben_psa: HashSet<String> = strings(&ben, "BEN_NIR_PSA").into_iter().collect();
    assert_eq!(ben_psa.len(), clear_psa.len());
    assert!(
        ben_psa.iter().all(|p| p.len() == 32),
        "pseudonyms are 128-bit hex"
    );
    assert!(
        clear_psa.iter().all(|c| !ben_psa.contains(c)),
        "no clear value survives"
    );
    let mut prs_psa = HashSet::new();
    for f in &prs.files {
        prs_psa.extend(strings(
            &read_file(&storage, &f.path, &key).await.unwrap(),
            "BEN_NIR_PSA",
        ));
    }
    assert!(prs_psa.is_subset(&ben_psa), "DCIR ↔ IR_BEN_R linkage");
    // Row groups are sorted by nature of prestation (clustered): at this
    // scale each file is one row group, so each file is sorted, and the
    // loader did sort (the delivery is in patient order, not nature order).
    let mut natures_in_files = 0;
    for f in &prs.files {
        let batches = read_file(&storage, &f.path, &key).await.unwrap();
        let mut natures = Vec::new();
        for b in &batches {
            let i = b.schema().index_of("PRS_NAT_REF").unwrap();
            let a = b
                .column(i)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            natures.extend((0..a.len()).map(|r| a.is_valid(r).then(|| a.value(r))));
        }
        assert!(natures.is_sorted(), "{}: not sorted by PRS_NAT_REF", f.path);
        natures_in_files += natures.len();
    }
    let delivered: Vec<Option<i64>> =
        csv_column(&delivery.join("ER_PRS_F_2021.csv"), "PRS_NAT_REF")
            .iter()
            .map(|v| v.parse().ok())
            .collect();
    assert_eq!(natures_in_files, delivered.len());
    assert!(
        !delivered.is_sorted(),
        "the delivery itself is not in nature order"
    );
    // PMSI stays are clustered by main diagnosis the same way.
    let b = tables.iter().find(|t| t.name == "T_MCO21B").unwrap();
    let mut stays = 0;
    for f in &b.files {
        let dgn = strings(
            &read_file(&storage, &f.path, &key).await.unwrap(),
            "DGN_PAL",
        );
        assert!(dgn.is_sorted(), "{}: not sorted by DGN_PAL", f.path);
        stays += dgn.len();
    }
    let delivered = csv_column(&delivery.join("T_MCO21B.csv"), "DGN_PAL");
    assert_eq!(stays, delivered.iter().filter(|v| !v.is_empty()).count());
    assert!(
        !delivered.is_sorted(),
        "the delivery is not in diagnosis order"
    );
    let c = tables.iter().find(|t| t.name == "T_MCO21C").unwrap();
    let nir17 = strings(
        &read_file(&storage, &c.files[0].path, &key).await.unwrap(),
        "NIR_ANO_17",
    );
    let linked = nir17.iter().filter(|n| ben_psa.contains(*n)).count();
    assert!(
        linked as f64 > 0.95 * nir17.len() as f64,
        "PMSI ↔ IR_BEN_R linkage: {linked}/{}",
        nir17.len()
    );
    assert!(
        nir17
            .iter()
            .all(|n| ben_psa.contains(n) || n == "xxxxxxxxxxxxxxxxx")
    );

    // Sources are recorded with their SHA-256.
    let sources = cat.sources(1).await.unwrap();
    assert!(
        sources
            .iter()
            .all(|s| s.sha256.len() == 64 && s.rows_rejected == 0)
    );
    // ... and the digest and size are those of the delivered file.
    for s in &sources {
        use sha2::Digest;
        let bytes = std::fs::read(delivery.join(&s.name)).unwrap();
        assert_eq!(s.bytes as usize, bytes.len(), "{}", s.name);
        assert_eq!(
            s.sha256,
            hex::encode(sha2::Sha256::digest(&bytes)),
            "{}",
            s.name
        );
    }

    // A second load is a new snapshot; the first is untouched.
    let before: Vec<_> = tables
        .iter()
        .flat_map(|t| t.files.iter().map(|f| (f.path.clone(), f.sha256.clone())))
        .collect();
    let r2 = load(&h, &delivery, &opts(), quiet()).await.unwrap();
    assert_eq!(r2.snapshot, 2);
    for (path, sha) in before {
        let bytes = std::fs::read(objects.join(&path)).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            sha,
            "{path} changed"
        );
    }
    // Same platform key: the same person has the same pseudonym in both.
    let t2 = cat.tables(2).await.unwrap();
    let ben2 = &t2.iter().find(|t| t.name == "IR_BEN_R").unwrap().files[0];
    let snap2 = cat.snapshot(2).await.unwrap();
    let key2 = keys
        .unwrap_data_key(
            &serde_json::from_str(&snap2.wrapped_key).unwrap(),
            "pds/snapshot/2",
        )
        .unwrap();
    assert!(key2 != key, "a fresh data key per snapshot");
    let psa2: HashSet<String> = strings(
        &read_file(&storage, &ben2.path, &key2).await.unwrap(),
        "BEN_NIR_PSA",
    )
    .into_iter()
    .collect();
    assert_eq!(psa2, ben_psa);
}

fn write(path: &PathBuf, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn bad_input_is_reported_precisely_and_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let delivery = dir.path().join("delivery");
    synth(&delivery, 60, 4);
    for e in std::fs::read_dir(&delivery).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if !(n.starts_with("IR_BEN_R") || n.starts_with("IR_IMB_R")) {
            std::fs::remove_file(p).unwrap();
        }
    }
    let h = home(dir.path()).await;
    // Break a date on line 3 and empty a key on line 4 of IR_IMB_R.
    let path = delivery.join("IR_IMB_R.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let header: Vec<&str> = lines[0].split(';').collect();
    let dtd = header.iter().position(|c| *c == "IMB_ALD_DTD").unwrap();
    let psa = header.iter().position(|c| *c == "BEN_NIR_PSA").unwrap();
    assert!(lines.len() > 4, "need a few ALD rows");
    let mut f: Vec<String> = lines[2].split(';').map(String::from).collect();
    f[dtd] = "2021-13-45".into();
    lines[2] = f.join(";");
    let mut f: Vec<String> = lines[3].split(';').map(String::from).collect();
    f[psa] = String::new();
    lines[3] = f.join(";");
    write(&path, &(lines.join("\n") + "\n"));
    // A sex code outside IR_SEX_V on line 2 of IR_BEN_R (value-list check).
    let ben_path = delivery.join("IR_BEN_R.csv");
    let ben_text = std::fs::read_to_string(&ben_path).unwrap();
    let mut ben_lines: Vec<String> = ben_text.lines().map(String::from).collect();
    let sex = ben_lines[0]
        .split(';')
        .position(|c| c == "BEN_SEX_COD")
        .unwrap();
    let mut f: Vec<String> = ben_lines[1].split(';').map(String::from).collect();
    f[sex] = "7".into();
    ben_lines[1] = f.join(";");
    write(&ben_path, &(ben_lines.join("\n") + "\n"));
    let e = load(&h, &delivery, &opts(), quiet()).await.unwrap_err();
    let LoadError::Invalid { problems, aborted } = &e else {
        panic!("{e}")
    };
    assert!(!aborted);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert_eq!(
        (
            problems[0].0.as_str(),
            problems[0].1.line,
            problems[0].1.column.as_str(),
            problems[0].1.value.as_str()
        ),
        ("IR_BEN_R.csv", 2, "BEN_SEX_COD", "7")
    );
    assert!(
        problems[0].1.rule.contains("not in IR_SEX_V"),
        "{}",
        problems[0].1.rule
    );
    assert_eq!(
        (
            problems[1].0.as_str(),
            problems[1].1.line,
            problems[1].1.column.as_str()
        ),
        ("IR_IMB_R.csv", 3, "IMB_ALD_DTD")
    );
    assert_eq!(problems[1].1.value, "2021-13-45");
    assert_eq!(
        (problems[2].1.line, problems[2].1.column.as_str()),
        (4, "BEN_NIR_PSA")
    );
    // Nothing visible, nothing left in storage.
    let cat = h.catalog().await.unwrap();
    assert!(cat.snapshots().await.unwrap().is_empty());
    let objects = h.local_storage_dir().unwrap();
    let left: Vec<_> = std::fs::read_dir(&objects)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.iter().all(|n| n == "snapshots"), "leftovers: {left:?}");
    assert!(!objects.join("snapshots/1").exists());
    assert!(h.storage().unwrap().list("").await.unwrap().is_empty());
    // --max-errors 1 stops at the first problem.
    let e = load(
        &h,
        &delivery,
        &LoadOptions {
            max_errors: 1,
            ..opts()
        },
        quiet(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, LoadError::Invalid { aborted: true, ref problems } if problems.len() == 1),
        "{e}"
    );
    // A wrong header names the column.
    write(&path, &text.replacen("BEN_NIR_PSA", "BEN_NIR_XXX", 1));
    let e = load(&h, &delivery, &opts(), quiet())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("IR_IMB_R.csv") && e.contains("column 1") && e.contains("BEN_NIR_XXX"),
        "{e}"
    );
    // An unknown file is refused before anything is written.
    write(&delivery.join("NOTES.csv"), "a;b\n");
    std::fs::write(&path, &text).unwrap();
    let e = load(&h, &delivery, &opts(), quiet())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("NOTES.csv") && e.contains("not an SNDS table"),
        "{e}"
    );
    std::fs::remove_file(delivery.join("NOTES.csv")).unwrap();
    write(&ben_path, &ben_text);
    // The repaired delivery loads as snapshot 1.
    assert_eq!(
        load(&h, &delivery, &opts(), quiet())
            .await
            .unwrap()
            .snapshot,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_early_on_a_large_file_returns_promptly_and_hides_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let delivery = dir.path().join("delivery");
    // ER_PRS_F of 6 000 people is several read chunks: the reader is still
    // far from the end when the load stops.
    synth(&delivery, 6000, 8);
    let prs = delivery.join("ER_PRS_F_2021.csv");
    let size = std::fs::metadata(&prs).unwrap().len();
    assert!(
        size > 30 << 20,
        "{size} bytes: too small to test a blocked reader"
    );
    let text = std::fs::read_to_string(&prs).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let header: Vec<String> = lines[0].split(';').map(String::from).collect();
    let psa = header.iter().position(|c| c == "BEN_NIR_PSA").unwrap();
    let mut f: Vec<String> = lines[1].split(';').map(String::from).collect();
    let clear = format!("{}XYZ", f[psa]);
    f[psa] = clear.clone(); // too long for its column
    lines[1] = f.join(";");
    std::fs::write(&prs, lines.join("\n") + "\n").unwrap();
    let h = home(dir.path()).await;
    let o = LoadOptions {
        max_errors: 1,
        ..opts()
    };
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        load(&h, &delivery, &o, quiet()),
    )
    .await
    .expect("the load hung after stopping at --max-errors");
    let Err(LoadError::Invalid { problems, aborted }) = r else {
        panic!("expected a refused load")
    };
    assert!(aborted);
    assert_eq!(
        (problems[0].1.line, problems[0].1.column.as_str()),
        (2, "BEN_NIR_PSA")
    );
    assert!(
        !problems[0].1.value.contains(&clear[..17]),
        "clear identifier in the report: {}",
        problems[0].1.value
    );
    assert!(problems[0].1.value.contains("not shown"));
    assert!(
        h.catalog()
            .await
            .unwrap()
            .snapshots()
            .await
            .unwrap()
            .is_empty()
    );
}

/// (stored identifier, number) of every identifier cell of `batches`,
/// with the number column each identifier column must have beside it.
fn numbered_cells(batches: &[RecordBatch], table: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        for f in schema.fields() {
            if !pds_load::IDENTIFIER_COLUMNS.contains(&f.name().as_str()) {
                continue;
            }
            let num = pds_snds::identifiers::number_column(f.name());
            let ids = b
                .column(schema.index_of(f.name()).unwrap())
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let Ok(at) = schema.index_of(&num) else {
                panic!("{table}: {} has no {num}", f.name());
            };
            let nums = b
                .column(at)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            for r in 0..b.num_rows() {
                assert_eq!(ids.is_null(r), nums.is_null(r), "{table}.{num} row {r}");
                if ids.is_valid(r) {
                    out.push((ids.value(r).to_string(), nums.value(r)));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn identifiers_are_numbered_once_per_snapshot_with_an_encrypted_dictionary() {
    let dir = tempfile::tempdir().unwrap();
    let delivery = dir.path().join("delivery");
    synth(&delivery, 300, 11);
    let h = home(dir.path()).await;
    let first = load(&h, &delivery, &opts(), quiet()).await.unwrap();
    let second = load(&h, &delivery, &opts(), quiet()).await.unwrap();
    let cat = h.catalog().await.unwrap();
    let keys = h.keys().unwrap();
    let storage = h.storage().unwrap();
    let mut dictionaries = Vec::new();
    for snapshot in [first.snapshot, second.snapshot] {
        let info = cat.snapshot(snapshot).await.unwrap();
        let wrapped: pds_keys::WrappedKey = serde_json::from_str(&info.wrapped_key).unwrap();
        let key = keys
            .unwrap_data_key(&wrapped, &format!("pds/snapshot/{snapshot}"))
            .unwrap();
        // Every identifier cell of every table, with its number.
        let mut cells = Vec::new();
        let mut tables_with_ids = 0;
        for t in cat.tables(snapshot).await.unwrap() {
            // Numbers are internal: the catalogue never lists them, so no
            // perimeter can grant them.
            assert!(
                t.columns
                    .iter()
                    .all(|c| pds_snds::identifiers::numbered_column(&c.name).is_none()),
                "{}: a number column is listed",
                t.name
            );
            let before = cells.len();
            for f in &t.files {
                let batches = read_file(&storage, &f.path, &key).await.unwrap();
                cells.extend(numbered_cells(&batches, &t.name));
            }
            tables_with_ids += usize::from(cells.len() > before);
        }
        assert!(tables_with_ids >= 5, "{tables_with_ids}");
        // The dictionary: row n holds number n and the identifier it stands for.
        let path = format!(
            "{}/{}",
            info.storage_prefix,
            pds_snds::identifiers::DICTIONARY_PATH
        );
        let dict = read_file(&storage, &path, &key).await.unwrap();
        let values = strings(&dict, "VALUE");
        let mut numbers = Vec::new();
        for b in &dict {
            let a = b
                .column(b.schema().index_of("PDS_ID").unwrap())
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            numbers.extend(a.values().iter().copied());
        }
        assert_eq!(numbers, (0..values.len() as i64).collect::<Vec<_>>());
        let report = if snapshot == first.snapshot {
            &first
        } else {
            &second
        };
        assert_eq!(report.identifiers, values.len() as u64);
        // One numbering for all columns: equal identifiers, equal numbers,
        // and each number is its dictionary entry.
        for (id, n) in &cells {
            assert_eq!(&values[*n as usize], id);
        }
        let distinct: HashSet<&String> = cells.iter().map(|(id, _)| id).collect();
        assert_eq!(distinct.len(), values.len(), "every entry is used");
        // Encrypted under the snapshot key, bound to its path.
        let other = keys.new_data_key("pds/snapshot/x").unwrap().0;
        assert!(read_file(&storage, &path, &other).await.is_err());
        dictionaries.push(values);
    }
    // Reproducible: the same delivery numbers the same way.
    assert_eq!(dictionaries[0], dictionaries[1]);
}

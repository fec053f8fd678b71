//! End-to-end checks of a generated dataset: schema conformance, DCIR and
//! PMSI mechanics, linkage, population, medical coherence, determinism and
//! error handling. One dataset is generated once and shared by the tests.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chrono::{Datelike, NaiveDate};
use pds_snds::nomenclature::{self, Nomenclature};
use pds_synth::population::Population;
use pds_synth::tables::table_columns;
use pds_synth::{Config, Format, Report, Table};

const Y0: u16 = 2021;
const Y1: u16 = 2022;

struct Data {
    dir: tempfile::TempDir,
    report: Report,
}

fn data() -> &'static Data {
    static D: OnceLock<Data> = OnceLock::new();
    D.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = Config {
            beneficiaries: 4000,
            first_year: Y0,
            last_year: Y1,
            seed: 7,
            out: dir.path().join("out"),
            format: Format::Csv,
            threads: None,
        };
        let report = pds_synth::generate(&cfg, &|_| {}).expect("generation succeeds");
        Data { dir, report }
    })
}

fn out() -> PathBuf {
    data().dir.path().join("out")
}

struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn col(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }
    fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let i = self.col(name);
        self.rows.iter().map(move |r| r[i].as_str())
    }
}

fn read(dir: &Path, stem: &str) -> Csv {
    let path = dir.join(format!("{stem}.csv"));
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b';')
        .from_path(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = rdr
        .headers()
        .expect("header")
        .iter()
        .map(String::from)
        .collect();
    let rows = rdr
        .records()
        .map(|r| r.expect("record").iter().map(String::from).collect())
        .collect();
    Csv { header, rows }
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%d/%m/%Y").unwrap_or_else(|_| panic!("bad date {s}"))
}

fn all_years() -> impl Iterator<Item = u16> {
    Y0..=Y1
}

fn stems(t: Table) -> Vec<(String, u16)> {
    if t.per_year() {
        all_years().map(|y| (t.file_stem(y), y)).collect()
    } else {
        vec![(t.file_stem(Y1), Y1)]
    }
}

#[test]
fn every_file_matches_its_snds_schema_and_types() {
    for t in Table::ALL {
        for (stem, year) in stems(t) {
            let cols = table_columns(t, year).unwrap();
            let f = read(&out(), &stem);
            let expected: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
            assert_eq!(
                f.header, expected,
                "{stem}: header must be the schema's columns in order"
            );
            assert!(!f.rows.is_empty(), "{stem} is empty");
            // Every value parses as its declared type (dates in the dialect).
            let text = std::fs::read(out().join(format!("{stem}.csv"))).unwrap();
            let body = &text[text.iter().position(|b| *b == b'\n').unwrap() + 1..];
            // ... and passes the loader's checks (lengths, required keys).
            let (schema, _) = pds_snds::schema::table(t.generic()).unwrap();
            let required: Vec<usize> = schema
                .required_columns()
                .iter()
                .filter_map(|k| cols.iter().position(|c| c.name == *k))
                .collect();
            let mut problems = Vec::new();
            let (batch, rejected) =
                pds_snds::arrow::csv_to_batch_checked(&cols, &required, body, 2, &mut problems, 20)
                    .unwrap_or_else(|e| panic!("{stem}: {e}"));
            assert!(problems.is_empty(), "{stem}: {problems:?}");
            assert_eq!((batch.num_rows(), rejected), (f.rows.len(), 0));
        }
    }
    // PMSI variants follow the year: a column deleted in 2010 is absent.
    assert!(
        !read(&out(), "T_MCO21B")
            .header
            .contains(&"COD_IGS".to_string())
    );
}

#[test]
fn referentials_are_written_with_their_schema_columns() {
    let pha = read(&out(), "IR_PHA_R");
    assert_eq!(pha.header, nomenclature::drug_columns().unwrap());
    assert!(pha.rows.len() > 20_000);
    for name in [
        "IR_CIM_V",
        "IR_CCAM_V63",
        "IR_NAT_V",
        "IR_SPE_V",
        "IR_DPT_V",
        "IR_BIO_R",
    ] {
        let f = read(&out(), name);
        let n = Nomenclature::get(name).unwrap();
        assert_eq!(f.header, n.columns().unwrap(), "{name}");
        assert_eq!(f.rows.len(), n.records().unwrap().len(), "{name}");
    }
}

const K9: [&str; 9] = pds_snds::schema::DCIR_JOIN_KEYS;

fn key9(f: &Csv, r: &[String]) -> Vec<String> {
    K9.iter().map(|k| r[f.col(k)].clone()).collect()
}

#[test]
fn refinement_rows_join_their_prestation_on_the_nine_keys() {
    for y in all_years() {
        let prs = read(&out(), &format!("ER_PRS_F_{y}"));
        let keys: HashSet<Vec<String>> = prs.rows.iter().map(|r| key9(&prs, r)).collect();
        assert_eq!(
            keys.len(),
            prs.rows.len(),
            "the 9 keys identify one ER_PRS_F line"
        );
        for t in ["ER_PHA_F", "ER_BIO_F", "ER_CAM_F", "ER_ETE_F"] {
            let f = read(&out(), &format!("{t}_{y}"));
            assert!(!f.rows.is_empty());
            for r in &f.rows {
                assert!(
                    keys.contains(&key9(&f, r)),
                    "{t}_{y}: orphan row {:?}",
                    key9(&f, r)
                );
            }
        }
        // Pharmacy lines (natures 3311-3341) have their ER_PHA_F row.
        let pha = read(&out(), &format!("ER_PHA_F_{y}"));
        let pha_keys: HashSet<Vec<String>> = pha.rows.iter().map(|r| key9(&pha, r)).collect();
        let nat = prs.col("PRS_NAT_REF");
        for r in prs
            .rows
            .iter()
            .filter(|r| ["3311", "3312", "3313", "3341"].contains(&r[nat].as_str()))
        {
            assert!(
                pha_keys.contains(&key9(&prs, r)),
                "pharmacy line without ER_PHA_F row"
            );
        }
    }
}

#[test]
fn dcir_mechanics_flows_regularisations_majorations_and_information_lines() {
    let mut delays = Vec::new();
    let (mut negative, mut maj, mut info, mut infants) = (0, 0, 0, 0);
    for y in all_years() {
        let prs = read(&out(), &format!("ER_PRS_F_{y}"));
        let (flx, dtd, qte, top, dpn, ama, nai) = (
            prs.col("FLX_DIS_DTD"),
            prs.col("EXE_SOI_DTD"),
            prs.col("PRS_ACT_QTE"),
            prs.col("CPL_MAJ_TOP"),
            prs.col("DPN_QLF"),
            prs.col("BEN_AMA_COD"),
            prs.col("BEN_NAI_ANN"),
        );
        for r in &prs.rows {
            let (f, d) = (date(&r[flx]), date(&r[dtd]));
            assert_eq!(f.day(), 1, "FLX_DIS_DTD is the 1st of a month");
            assert_eq!(d.year() as u16, y, "file year = care year");
            let months = (f.year() - d.year()) * 12 + f.month() as i32 - d.month() as i32;
            assert!(
                (0..=30).contains(&months),
                "flow {months} months after care"
            );
            delays.push(months);
            let q: i64 = r[qte].parse().unwrap();
            if q < 0 {
                negative += 1;
            }
            if r[top] == "2" {
                maj += 1;
                assert_eq!(q, 0, "majoration rows do not count acts");
            }
            if r[dpn] == "71" {
                info += 1;
            }
            let a: i64 = r[ama].parse().unwrap();
            if a >= 1000 {
                infants += 1;
                assert!(a < 1024, "BEN_AMA_COD under 2 years is 1000 + months");
                assert!(d.year() - r[nai].parse::<i32>().unwrap() <= 2);
            } else {
                let by: i64 = r[nai].parse().unwrap();
                assert!(
                    (d.year() as i64 - by - a).abs() <= 1,
                    "age {a} inconsistent with birth year {by}"
                );
            }
        }
    }
    let within6 = delays.iter().filter(|m| **m <= 6).count() as f64 / delays.len() as f64;
    assert!(
        within6 > 0.95 && within6 < 1.0,
        "share of flows within 6 months: {within6}"
    );
    assert!(delays.iter().any(|m| *m > 6), "some late flows");
    assert!(
        negative > 0 && maj > 0 && info > 0 && infants > 0,
        "{negative} {maj} {info} {infants}"
    );
    let pha = read(&out(), &format!("ER_PHA_F_{Y0}"));
    assert!(
        pha.values("PHA_ACT_QSN").any(|q| q.starts_with('-')),
        "negative box regularisations"
    );
}

#[test]
fn identities_link_dcir_pmsi_alds_and_deaths() {
    let ben = read(&out(), "IR_BEN_R");
    let pairs: HashSet<(String, String)> = ben
        .rows
        .iter()
        .map(|r| {
            (
                r[ben.col("BEN_NIR_PSA")].clone(),
                r[ben.col("BEN_RNG_GEM")].clone(),
            )
        })
        .collect();
    assert_eq!(
        pairs.len(),
        ben.rows.len(),
        "(BEN_NIR_PSA, BEN_RNG_GEM) is IR_BEN_R's key"
    );
    let psa: HashSet<&str> = ben.values("BEN_NIR_PSA").collect();
    let idt: HashSet<&str> = ben.values("BEN_IDT_ANO").collect();
    // 1-3 pairs per person, sharing one BEN_IDT_ANO.
    let mut per_person: HashMap<&str, usize> = HashMap::new();
    for v in ben.values("BEN_IDT_ANO") {
        *per_person.entry(v).or_default() += 1;
    }
    assert_eq!(per_person.len(), data().report.beneficiaries as usize);
    assert!(per_person.values().all(|n| (1..=3).contains(n)));
    let multi = per_person.values().filter(|n| **n > 1).count() as f64 / per_person.len() as f64;
    assert!(
        (0.1..0.35).contains(&multi),
        "share with several pairs: {multi}"
    );
    let fict = ben
        .values("BEN_CDI_NIR")
        .filter(|c| !["00", "03", "04"].contains(c))
        .count();
    assert!(fict > 0, "a few fictitious NIRs");

    for y in all_years() {
        let prs = read(&out(), &format!("ER_PRS_F_{y}"));
        let (p, g) = (prs.col("BEN_NIR_PSA"), prs.col("BEN_RNG_GEM"));
        assert!(
            prs.rows
                .iter()
                .all(|r| pairs.contains(&(r[p].clone(), r[g].clone()))),
            "DCIR → IR_BEN_R"
        );
        let yy = y % 100;
        let c = read(&out(), &format!("T_MCO{yy}C"));
        let rets = [
            "NIR_RET", "NAI_RET", "SEX_RET", "SEJ_RET", "FHO_RET", "PMS_RET", "DAT_RET",
        ];
        let (mut ok, mut bad) = (0, 0);
        for r in &c.rows {
            if rets.iter().all(|k| r[c.col(k)] == "0") {
                ok += 1;
                assert!(
                    psa.contains(r[c.col("NIR_ANO_17")].as_str()),
                    "NIR_ANO_17 = BEN_NIR_PSA"
                );
            } else {
                bad += 1;
            }
        }
        let share = bad as f64 / (ok + bad) as f64;
        assert!(
            share > 0.005 && share < 0.08,
            "share failing a chaining code: {share}"
        );
        // B and C are one row per stay on (ETA_NUM, RSA_NUM); D and A point to B.
        let b = read(&out(), &format!("T_MCO{yy}B"));
        let key =
            |f: &Csv, r: &[String]| (r[f.col("ETA_NUM")].clone(), r[f.col("RSA_NUM")].clone());
        let bk: HashSet<_> = b.rows.iter().map(|r| key(&b, r)).collect();
        let ck: HashSet<_> = c.rows.iter().map(|r| key(&c, r)).collect();
        assert_eq!(bk.len(), b.rows.len());
        assert_eq!(bk, ck);
        for t in ["D", "A"] {
            let f = read(&out(), &format!("T_MCO{yy}{t}"));
            assert!(
                f.rows.iter().all(|r| bk.contains(&key(&f, r))),
                "T_MCO{yy}{t} → B"
            );
        }
    }
    let imb = read(&out(), "IR_IMB_R");
    for r in &imb.rows {
        assert!(pairs.contains(&(
            r[imb.col("BEN_NIR_PSA")].clone(),
            r[imb.col("BEN_RNG_GEM")].clone()
        )));
    }
    let cci = read(&out(), "KI_CCI_R");
    assert!(!cci.rows.is_empty());
    let ecd = read(&out(), "KI_ECD_R");
    let certs: HashSet<&str> = cci.values("DCD_IDT_ENC").collect();
    assert_eq!(certs.len(), cci.rows.len());
    assert!(ecd.values("DCD_IDT_ENC").all(|e| certs.contains(e)));
    for r in &cci.rows {
        assert!(
            idt.contains(r[cci.col("BEN_IDT_ANO")].as_str()),
            "death → IR_BEN_R by BEN_IDT_ANO"
        );
    }
    // Deaths are consistent between IR_BEN_R and KI_CCI_R.
    let dead: HashSet<&str> = ben
        .rows
        .iter()
        .filter(|r| r[ben.col("BEN_DCD_DTE")] != "01/01/1600")
        .map(|r| r[ben.col("BEN_IDT_ANO")].as_str())
        .collect();
    let certified: HashSet<&str> = cci.values("BEN_IDT_ANO").collect();
    assert_eq!(dead, certified);
}

#[test]
fn pmsi_carries_the_known_data_quality_traps() {
    let (mut err90, mut sej_b, mut dup, mut seances) = (0, 0, 0, 0);
    let doublons = [
        "750100018",
        "130780521",
        "690783154",
        "750100042",
        "920100013",
        "940100027",
    ];
    for y in all_years() {
        let b = read(&out(), &format!("T_MCO{}B", y % 100));
        for r in &b.rows {
            if r[b.col("GRG_GHM")].starts_with("90") {
                err90 += 1;
            }
            if r[b.col("SEJ_TYP")] == "B" {
                sej_b += 1;
            }
            if r[b.col("ETA_NUM")].starts_with("750100")
                || doublons.contains(&r[b.col("ETA_NUM")].as_str())
            {
                dup += 1;
            }
            if r[b.col("GRG_GHM")].starts_with("28") {
                seances += 1;
                assert_eq!(r[b.col("SEJ_NBJ")], "", "séances have no length of stay");
            }
        }
    }
    assert!(
        err90 > 0 && sej_b > 0 && dup > 0 && seances > 0,
        "{err90} {sej_b} {dup} {seances}"
    );
}

#[test]
fn age_and_sex_follow_the_french_pyramid() {
    let pop = Population::load().unwrap();
    let ben = read(&out(), "IR_BEN_R");
    let mut seen = HashSet::new();
    let mut counts: HashMap<(u32, u8), f64> = HashMap::new();
    let mut n = 0.0;
    let bands = [(0, 20), (20, 40), (40, 60), (60, 80), (80, 200)];
    for r in &ben.rows {
        if !seen.insert(r[ben.col("BEN_IDT_ANO")].clone()) {
            continue;
        }
        let age = (Y0 as i64 - 1 - r[ben.col("BEN_NAI_ANN")].parse::<i64>().unwrap()) as u32;
        let sex: u8 = r[ben.col("BEN_SEX_COD")].parse().unwrap();
        let band = bands
            .iter()
            .position(|(lo, hi)| age >= *lo && age < *hi)
            .unwrap() as u32;
        *counts.entry((band, sex)).or_default() += 1.0;
        n += 1.0;
    }
    // Tolerance: 2.5 percentage points per age band and sex (4 000 people).
    for (i, (lo, hi)) in bands.iter().enumerate() {
        for sex in [1u8, 2] {
            let got = counts.get(&(i as u32, sex)).copied().unwrap_or(0.0) / n;
            let want = pop.share(*lo, *hi, sex);
            assert!(
                (got - want).abs() < 0.025,
                "age {lo}-{hi} sex {sex}: {got:.3} vs INSEE {want:.3}"
            );
        }
    }
    let women = (0..5)
        .map(|b| counts.get(&(b, 2)).copied().unwrap_or(0.0))
        .sum::<f64>()
        / n;
    assert!((women - 0.516).abs() < 0.03, "share of women {women}");
}

/// ATC code of each CIP13 in the written referential.
fn atc_of() -> HashMap<String, String> {
    let pha = read(&out(), "IR_PHA_R");
    pha.rows
        .iter()
        .map(|r| {
            (
                r[pha.col("PHA_CIP_C13")].clone(),
                r[pha.col("PHA_ATC_C07")].clone(),
            )
        })
        .collect()
}

#[test]
fn conditions_drive_drugs_and_biology() {
    let ben = read(&out(), "IR_BEN_R");
    let person: HashMap<(String, String), String> = ben
        .rows
        .iter()
        .map(|r| {
            (
                (
                    r[ben.col("BEN_NIR_PSA")].clone(),
                    r[ben.col("BEN_RNG_GEM")].clone(),
                ),
                r[ben.col("BEN_IDT_ANO")].clone(),
            )
        })
        .collect();
    let imb = read(&out(), "IR_IMB_R");
    let mut ald: HashMap<&str, HashSet<String>> = HashMap::new();
    for r in &imb.rows {
        let who = person[&(
            r[imb.col("BEN_NIR_PSA")].clone(),
            r[imb.col("BEN_RNG_GEM")].clone(),
        )]
            .clone();
        let icd = &r[imb.col("MED_MTF_COD")];
        let group = if icd.starts_with("E11") {
            "diabetes"
        } else if icd.starts_with("C50") {
            "breast"
        } else {
            "other"
        };
        ald.entry(group).or_default().insert(who);
    }
    let atc = atc_of();
    let mut a10: HashSet<String> = HashSet::new();
    let mut l02: HashSet<String> = HashSet::new();
    let mut hba1c: HashSet<String> = HashSet::new();
    let mut everyone: HashSet<String> = HashSet::new();
    for y in all_years() {
        let prs = read(&out(), &format!("ER_PRS_F_{y}"));
        let who: HashMap<Vec<String>, String> = prs
            .rows
            .iter()
            .map(|r| {
                (
                    key9(&prs, r),
                    person[&(
                        r[prs.col("BEN_NIR_PSA")].clone(),
                        r[prs.col("BEN_RNG_GEM")].clone(),
                    )]
                        .clone(),
                )
            })
            .collect();
        everyone.extend(who.values().cloned());
        let pha = read(&out(), &format!("ER_PHA_F_{y}"));
        for r in &pha.rows {
            let a = atc
                .get(&r[pha.col("PHA_PRS_C13")])
                .expect("CIP13 in IR_PHA_R");
            if a.starts_with("A10") {
                a10.insert(who[&key9(&pha, r)].clone());
            }
            if a.starts_with("L02") {
                l02.insert(who[&key9(&pha, r)].clone());
            }
        }
        let bio = read(&out(), &format!("ER_BIO_F_{y}"));
        for r in &bio.rows {
            if r[bio.col("BIO_PRS_IDE")] == "1577" {
                hba1c.insert(who[&key9(&bio, r)].clone());
            }
        }
    }
    let diab = &ald["diabetes"];
    assert!(diab.len() > 40, "diabetics in ALD: {}", diab.len());
    let share = |set: &HashSet<String>, of: &HashSet<String>| {
        of.iter().filter(|p| set.contains(*p)).count() as f64 / of.len() as f64
    };
    let d_a10 = share(&a10, diab);
    let d_hb = share(&hba1c, diab);
    let others: HashSet<String> = everyone.difference(diab).cloned().collect();
    assert!(d_a10 > 0.7, "diabetics with an A10 dispensing: {d_a10}");
    assert!(d_hb > 0.7, "diabetics with HbA1c: {d_hb}");
    assert!(share(&hba1c, &others) < 0.1, "HbA1c is a diabetes test");
    assert!(
        share(&a10, &others) < d_a10 / 3.0,
        "antidiabetics go to diabetics"
    );
    if let Some(breast) = ald.get("breast") {
        assert!(
            share(&l02, breast) > 0.5,
            "breast cancer patients on hormone therapy"
        );
    }
}

#[test]
fn every_code_exists_in_its_referential() {
    let cim = Nomenclature::get("IR_CIM_V").unwrap().codes().unwrap();
    let ccam = Nomenclature::get("IR_CCAM_V63").unwrap().codes().unwrap();
    let bio = Nomenclature::get("IR_BIO_R").unwrap().codes().unwrap();
    let nat = Nomenclature::get("IR_NAT_V").unwrap().codes().unwrap();
    let spe = Nomenclature::get("IR_SPE_V").unwrap().codes().unwrap();
    let dpt = Nomenclature::get("IR_DPT_V").unwrap().codes().unwrap();
    let atc = atc_of();
    let check = |set: &HashSet<String>, f: &Csv, col: &str, what: &str| {
        for v in f.values(col).filter(|v| !v.is_empty()) {
            assert!(
                set.contains(v),
                "{what} {col} = {v} is not in the referential"
            );
        }
    };
    for y in all_years() {
        let prs = read(&out(), &format!("ER_PRS_F_{y}"));
        check(&nat, &prs, "PRS_NAT_REF", "ER_PRS_F");
        check(&spe, &prs, "PSE_SPE_COD", "ER_PRS_F");
        check(&dpt, &prs, "BEN_RES_DPT", "ER_PRS_F");
        let pha = read(&out(), &format!("ER_PHA_F_{y}"));
        assert!(pha.values("PHA_PRS_C13").all(|c| atc.contains_key(c)));
        check(
            &bio,
            &read(&out(), &format!("ER_BIO_F_{y}")),
            "BIO_PRS_IDE",
            "ER_BIO_F",
        );
        check(
            &ccam,
            &read(&out(), &format!("ER_CAM_F_{y}")),
            "CAM_PRS_IDE",
            "ER_CAM_F",
        );
        let yy = y % 100;
        check(
            &cim,
            &read(&out(), &format!("T_MCO{yy}B")),
            "DGN_PAL",
            "T_MCOaaB",
        );
        check(
            &cim,
            &read(&out(), &format!("T_MCO{yy}D")),
            "ASS_DGN",
            "T_MCOaaD",
        );
        check(
            &ccam,
            &read(&out(), &format!("T_MCO{yy}A")),
            "CDC_ACT",
            "T_MCOaaA",
        );
    }
    check(&cim, &read(&out(), "IR_IMB_R"), "MED_MTF_COD", "IR_IMB_R");
    check(&cim, &read(&out(), "KI_CCI_R"), "DCD_CIM_COD", "KI_CCI_R");
    check(&cim, &read(&out(), "KI_ECD_R"), "ECD_CIM_COD", "KI_ECD_R");
}

#[test]
fn volumes_per_person_year_are_close_to_the_real_base() {
    let r = &data().report;
    let prs = r.per_person_year(Table::ErPrs);
    let pha = r.per_person_year(Table::ErPha);
    let stays = r.per_person_year(Table::McoB);
    assert!(
        (25.0..=35.0).contains(&prs),
        "ER_PRS_F lines per person-year: {prs}"
    );
    assert!(
        (10.0..=15.0).contains(&pha),
        "ER_PHA_F lines per person-year: {pha}"
    );
    assert!(
        (0.2..=0.3).contains(&stays),
        "MCO stays per person-year: {stays}"
    );
    let mortality = r.deaths as f64 / r.person_years;
    assert!(
        (0.006..0.015).contains(&mortality),
        "crude mortality {mortality}"
    );
    // Report rows equal the rows on disk.
    let on_disk: usize = all_years()
        .map(|y| read(&out(), &format!("ER_PRS_F_{y}")).rows.len())
        .sum();
    assert_eq!(on_disk as u64, r.rows(Table::ErPrs));
}

fn small(out: PathBuf, seed: u64, threads: usize, format: Format) -> Config {
    Config {
        beneficiaries: 700,
        first_year: 2022,
        last_year: 2023,
        seed,
        out,
        format,
        threads: Some(threads),
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn same_seed_gives_identical_bytes_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    pds_synth::generate(&small(a.clone(), 11, 1, Format::Csv), &|_| {}).unwrap();
    pds_synth::generate(&small(b.clone(), 11, 3, Format::Csv), &|_| {}).unwrap();
    pds_synth::generate(&small(c.clone(), 12, 2, Format::Csv), &|_| {}).unwrap();
    let (fa, fb, fc) = (files(&a), files(&b), files(&c));
    // 10 per-year tables x 2 years, 4 single tables, 7 referentials.
    assert_eq!(fa.len(), 10 * 2 + 4 + 7);
    assert!(fa == fb, "1 thread and 3 threads differ");
    let prs = |f: &[(String, Vec<u8>)]| {
        f.iter()
            .find(|x| x.0 == "ER_PRS_F_2022.csv")
            .unwrap()
            .1
            .clone()
    };
    assert_ne!(prs(&fa), prs(&fc), "another seed gives other data");
}

#[test]
fn parquet_output_has_the_same_rows_as_csv() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (dir.path().join("csv"), dir.path().join("pq"));
    let rc = pds_synth::generate(&small(c.clone(), 5, 2, Format::Csv), &|_| {}).unwrap();
    let rp = pds_synth::generate(&small(p.clone(), 5, 2, Format::Parquet), &|_| {}).unwrap();
    for t in Table::ALL {
        assert_eq!(rc.rows(t), rp.rows(t), "{}", t.generic());
    }
    let f = std::fs::File::open(p.join("ER_PRS_F_2022.parquet")).unwrap();
    let reader = SerializedFileReader::new(f).unwrap();
    let meta = reader.metadata();
    let rows: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
    assert_eq!(rows as usize, read(&c, "ER_PRS_F_2022").rows.len());
    let schema = meta.file_metadata().schema_descr();
    assert_eq!(schema.num_columns(), 123);
    assert_eq!(schema.column(0).name(), "BEN_AMA_COD");
}

#[test]
fn bad_arguments_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let mut cfg = small(out.clone(), 1, 1, Format::Csv);
    cfg.first_year = 2023;
    cfg.last_year = 2021;
    let e = pds_synth::generate(&cfg, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("reversed") && e.contains("2021-2023"), "{e}");
    cfg.first_year = 2021;
    cfg.beneficiaries = 0;
    let e = pds_synth::generate(&cfg, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("--beneficiaries"), "{e}");
    assert!(!out.exists(), "nothing written for bad arguments");
    // An output path under a regular file cannot be created.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let cfg = small(file.join("sub"), 1, 1, Format::Csv);
    let e = pds_synth::generate(&cfg, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("cannot write to") && e.contains("a-file"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn older_years_get_their_own_column_variants() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        beneficiaries: 300,
        first_year: 2009,
        last_year: 2010,
        seed: 2,
        out: dir.path().to_path_buf(),
        format: Format::Csv,
        threads: Some(2),
    };
    pds_synth::generate(&cfg, &|_| {}).unwrap();
    let b = read(dir.path(), "T_MCO09B");
    assert!(
        b.header.contains(&"COD_IGS".to_string()),
        "COD_IGS exists 2005-2010"
    );
    assert!(
        !b.header.contains(&"TYP_GEN_RSA".to_string()),
        "TYP_GEN_RSA appears in 2015"
    );
    let expected: Vec<String> = table_columns(Table::McoB, 2009)
        .unwrap()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(b.header, expected);
    assert!(b.rows.iter().all(|r| r.len() == expected.len()));
    assert!(!b.rows.is_empty());
}

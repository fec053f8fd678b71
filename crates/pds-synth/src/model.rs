//! The medical model: chronic conditions, acute events and care patterns.
//!
//! Figures are orders of magnitude from public French sources (CNAM
//! "Cartographie des pathologies" 2021, Santé publique France, INSEE life
//! tables); `docs/synthetic-data.md` lists them. Every code used here (ICD-10,
//! ATC, NABM, CCAM) must exist in the vendored referentials; a test checks it.

/// A stay pattern: what the PMSI record of a hospitalisation looks like.
#[derive(Debug, Clone, Copy)]
pub struct StayPattern {
    /// Main diagnoses (ICD-10 without dot), one is drawn.
    pub dp: &'static [&'static str],
    /// GHM root (5 chars) completed by a severity level.
    pub ghm: &'static str,
    /// CCAM acts done during the stay (activity 1).
    pub acts: &'static [&'static str],
    /// Length of stay range in days (0 = ambulatory).
    pub los: (u32, u32),
    /// Share of such stays in private clinics.
    pub private_share: f64,
}

/// A chronic condition and the care it drives.
#[derive(Debug)]
pub struct Condition {
    /// Short identifier used in reports and docs.
    pub id: &'static str,
    /// ICD-10 codes for ALD and diagnoses (first = most frequent).
    pub icd: &'static [&'static str],
    /// ALD number (IR_ALD_V) when the condition qualifies, and the share of
    /// patients who have the exemption.
    pub ald: Option<(u8, f64)>,
    /// Prevalence by age: `(age, men, women)` points, linearly interpolated.
    pub prevalence: &'static [(f64, f64, f64)],
    /// Mean years since onset among prevalent patients (sets the share of new
    /// cases inside the generated window).
    pub mean_duration: f64,
    /// Long-term drugs: ATC prefix and share of patients on it.
    pub drugs: &'static [(&'static str, f64)],
    /// Biology: NABM code and tests per year.
    pub biology: &'static [(u32, f64)],
    /// Specialist follow-up: specialty code (IR_SPE_V) and visits per year.
    pub specialist: Option<(u16, f64)>,
    /// Extra GP visits per year.
    pub gp_extra: f64,
    /// Outpatient CCAM acts: code and acts per year.
    pub outpatient_acts: &'static [(&'static str, f64)],
    /// Hospital stays per patient-year.
    pub stay_rate: f64,
    /// The stay pattern.
    pub stay: StayPattern,
    /// Extra stays in the year of onset (cancer surgery, chemotherapy).
    pub onset_stays: u32,
    /// Relative risk of death.
    pub mortality_rr: f64,
    /// Initial cause of death when the condition kills (CépiDc, 4 chars max).
    pub death_icd: &'static str,
}

/// The modelled chronic conditions.
pub static CONDITIONS: &[Condition] = &[
    Condition {
        id: "diabetes",
        icd: &["E119", "E117", "E112", "E110", "E118"],
        ald: Some((8, 0.8)),
        prevalence: &[
            (0.0, 0.001, 0.001),
            (20.0, 0.004, 0.004),
            (40.0, 0.035, 0.025),
            (55.0, 0.10, 0.065),
            (70.0, 0.20, 0.13),
            (80.0, 0.21, 0.15),
            (95.0, 0.14, 0.12),
        ],
        mean_duration: 9.0,
        drugs: &[
            ("A10BA02", 0.75),
            ("A10BB", 0.2),
            ("A10BH", 0.25),
            ("A10AE", 0.2),
        ],
        biology: &[(1577, 3.0), (552, 2.0), (592, 1.5), (1133, 1.0)],
        specialist: Some((15, 0.6)),
        gp_extra: 2.0,
        outpatient_acts: &[],
        stay_rate: 0.06,
        stay: StayPattern {
            dp: &["E115", "E116", "E111", "E117"],
            ghm: "10M02",
            acts: &[],
            los: (2, 9),
            private_share: 0.2,
        },
        onset_stays: 0,
        mortality_rr: 1.6,
        death_icd: "E149",
    },
    Condition {
        id: "hypertension",
        icd: &["I10"],
        ald: None,
        prevalence: &[
            (0.0, 0.0, 0.0),
            (30.0, 0.02, 0.015),
            (45.0, 0.12, 0.08),
            (60.0, 0.32, 0.26),
            (75.0, 0.52, 0.50),
            (90.0, 0.55, 0.58),
        ],
        mean_duration: 12.0,
        drugs: &[
            ("C09AA", 0.35),
            ("C09CA", 0.35),
            ("C08CA01", 0.35),
            ("C03AA", 0.15),
            ("C07AB", 0.25),
        ],
        biology: &[(1610, 1.0), (592, 1.0)],
        specialist: Some((3, 0.4)),
        gp_extra: 1.5,
        outpatient_acts: &[("DEQP003", 0.4)],
        stay_rate: 0.01,
        stay: StayPattern {
            dp: &["I10"],
            ghm: "05M17",
            acts: &[],
            los: (1, 4),
            private_share: 0.2,
        },
        onset_stays: 0,
        mortality_rr: 1.2,
        death_icd: "I10",
    },
    Condition {
        id: "copd_asthma",
        icd: &["J449", "J441", "J459", "J450"],
        ald: Some((14, 0.25)),
        prevalence: &[
            (0.0, 0.03, 0.02),
            (15.0, 0.05, 0.05),
            (40.0, 0.04, 0.045),
            (65.0, 0.09, 0.07),
            (85.0, 0.11, 0.07),
        ],
        mean_duration: 10.0,
        drugs: &[("R03AK", 0.6), ("R03AC", 0.5), ("R03BB", 0.2)],
        biology: &[],
        specialist: Some((13, 0.5)),
        gp_extra: 1.5,
        outpatient_acts: &[("GLQP012", 0.5)],
        stay_rate: 0.07,
        stay: StayPattern {
            dp: &["J441", "J440", "J459"],
            ghm: "04M20",
            acts: &[],
            los: (3, 12),
            private_share: 0.15,
        },
        onset_stays: 0,
        mortality_rr: 1.8,
        death_icd: "J449",
    },
    Condition {
        id: "heart_failure",
        icd: &["I509", "I500", "I501"],
        ald: Some((5, 0.8)),
        prevalence: &[
            (0.0, 0.0, 0.0),
            (45.0, 0.002, 0.001),
            (60.0, 0.012, 0.006),
            (75.0, 0.045, 0.03),
            (85.0, 0.11, 0.09),
            (95.0, 0.16, 0.15),
        ],
        mean_duration: 4.0,
        drugs: &[("C03CA01", 0.8), ("C07AB", 0.7), ("C09AA", 0.5)],
        biology: &[(1821, 2.0), (1610, 4.0), (592, 3.0)],
        specialist: Some((3, 2.0)),
        gp_extra: 4.0,
        outpatient_acts: &[("DZQM006", 0.8), ("DEQP003", 1.5)],
        stay_rate: 0.45,
        stay: StayPattern {
            dp: &["I500", "I501", "I509"],
            ghm: "05M09",
            acts: &["DZQM006"],
            los: (4, 15),
            private_share: 0.15,
        },
        onset_stays: 1,
        mortality_rr: 3.5,
        death_icd: "I509",
    },
    Condition {
        id: "ischaemic_heart",
        icd: &["I251", "I209", "I259"],
        ald: Some((13, 0.7)),
        prevalence: &[
            (0.0, 0.0, 0.0),
            (40.0, 0.006, 0.002),
            (55.0, 0.04, 0.012),
            (70.0, 0.10, 0.04),
            (85.0, 0.16, 0.09),
        ],
        mean_duration: 8.0,
        drugs: &[("C10AA", 0.85), ("B01AC06", 0.8), ("C07AB", 0.6)],
        biology: &[(2001, 1.0), (592, 1.0)],
        specialist: Some((3, 1.0)),
        gp_extra: 1.5,
        outpatient_acts: &[("DEQP003", 1.0)],
        stay_rate: 0.08,
        stay: StayPattern {
            dp: &["I200", "I251"],
            ghm: "05K10",
            acts: &["DDAF006"],
            los: (1, 5),
            private_share: 0.35,
        },
        onset_stays: 1,
        mortality_rr: 1.7,
        death_icd: "I259",
    },
    Condition {
        id: "atrial_fibrillation",
        icd: &["I489", "I480"],
        ald: Some((5, 0.5)),
        prevalence: &[
            (0.0, 0.0, 0.0),
            (50.0, 0.005, 0.002),
            (65.0, 0.03, 0.015),
            (80.0, 0.09, 0.07),
            (95.0, 0.14, 0.12),
        ],
        mean_duration: 6.0,
        drugs: &[("B01AF", 0.7), ("B01AA", 0.2), ("C07AB", 0.5)],
        biology: &[(127, 3.0), (592, 1.0)],
        specialist: Some((3, 1.0)),
        gp_extra: 1.0,
        outpatient_acts: &[("DEQP003", 1.0)],
        stay_rate: 0.06,
        stay: StayPattern {
            dp: &["I480", "I489"],
            ghm: "05M08",
            acts: &[],
            los: (2, 6),
            private_share: 0.2,
        },
        onset_stays: 0,
        mortality_rr: 1.5,
        death_icd: "I489",
    },
    Condition {
        id: "breast_cancer",
        icd: &["C509", "C504", "C508"],
        ald: Some((30, 0.95)),
        prevalence: &[
            (0.0, 0.0, 0.0),
            (30.0, 0.0, 0.001),
            (45.0, 0.0, 0.012),
            (60.0, 0.0005, 0.028),
            (75.0, 0.0005, 0.035),
            (90.0, 0.0003, 0.025),
        ],
        mean_duration: 5.0,
        drugs: &[("L02BG", 0.6), ("L02BA01", 0.3)],
        biology: &[(1104, 2.0)],
        specialist: Some((73, 3.0)),
        gp_extra: 2.0,
        outpatient_acts: &[("QEQK004", 1.0)],
        stay_rate: 0.05,
        stay: StayPattern {
            dp: &["C504", "C509"],
            ghm: "09C05",
            acts: &["QEFA004", "ZZLP025"],
            los: (1, 4),
            private_share: 0.4,
        },
        onset_stays: 1,
        mortality_rr: 2.0,
        death_icd: "C509",
    },
    Condition {
        id: "prostate_cancer",
        icd: &["C61"],
        ald: Some((30, 0.95)),
        prevalence: &[
            (0.0, 0.0, 0.0),
            (50.0, 0.004, 0.0),
            (65.0, 0.035, 0.0),
            (75.0, 0.07, 0.0),
            (90.0, 0.08, 0.0),
        ],
        mean_duration: 6.0,
        drugs: &[("L02AE", 0.4)],
        biology: &[(7318, 2.0)],
        specialist: Some((16, 2.0)),
        gp_extra: 1.0,
        outpatient_acts: &[],
        stay_rate: 0.04,
        stay: StayPattern {
            dp: &["C61"],
            ghm: "12C11",
            acts: &["JGFC001", "ZZLP025"],
            los: (3, 8),
            private_share: 0.5,
        },
        onset_stays: 1,
        mortality_rr: 1.8,
        death_icd: "C61",
    },
    Condition {
        id: "colorectal_cancer",
        icd: &["C189", "C187", "C20"],
        ald: Some((30, 0.95)),
        prevalence: &[
            (0.0, 0.0, 0.0),
            (45.0, 0.001, 0.001),
            (60.0, 0.005, 0.004),
            (75.0, 0.013, 0.009),
            (90.0, 0.015, 0.011),
        ],
        mean_duration: 4.0,
        drugs: &[("L01BC", 0.3)],
        biology: &[(1104, 3.0)],
        specialist: Some((73, 4.0)),
        gp_extra: 2.0,
        outpatient_acts: &[("HHQE005", 0.5)],
        stay_rate: 0.1,
        stay: StayPattern {
            dp: &["C187", "C189", "C20"],
            ghm: "06C04",
            acts: &["HHFA017", "ZZLP025"],
            los: (6, 14),
            private_share: 0.35,
        },
        onset_stays: 1,
        mortality_rr: 3.0,
        death_icd: "C189",
    },
    Condition {
        id: "depression",
        icd: &["F329", "F332", "F334"],
        ald: Some((23, 0.15)),
        prevalence: &[
            (0.0, 0.0, 0.0),
            (15.0, 0.01, 0.02),
            (30.0, 0.04, 0.08),
            (50.0, 0.05, 0.10),
            (70.0, 0.05, 0.10),
            (90.0, 0.06, 0.11),
        ],
        mean_duration: 3.0,
        drugs: &[("N06AB", 0.85), ("N05BA", 0.3)],
        biology: &[],
        specialist: Some((33, 3.0)),
        gp_extra: 2.0,
        outpatient_acts: &[],
        stay_rate: 0.02,
        stay: StayPattern {
            dp: &["F322", "F332"],
            ghm: "19M10",
            acts: &[],
            los: (5, 20),
            private_share: 0.3,
        },
        onset_stays: 0,
        mortality_rr: 1.3,
        death_icd: "X70",
    },
    Condition {
        id: "dementia",
        icd: &["G309", "F009", "F03"],
        ald: Some((15, 0.7)),
        prevalence: &[
            (0.0, 0.0, 0.0),
            (60.0, 0.002, 0.002),
            (70.0, 0.012, 0.013),
            (80.0, 0.05, 0.065),
            (90.0, 0.15, 0.2),
            (100.0, 0.22, 0.3),
        ],
        mean_duration: 4.0,
        drugs: &[("N06DA", 0.4), ("N05BA", 0.2)],
        biology: &[(1208, 0.5)],
        specialist: Some((32, 1.0)),
        gp_extra: 4.0,
        outpatient_acts: &[],
        stay_rate: 0.15,
        stay: StayPattern {
            dp: &["G309", "F03"],
            ghm: "19M11",
            acts: &[],
            los: (5, 20),
            private_share: 0.1,
        },
        onset_stays: 0,
        mortality_rr: 2.5,
        death_icd: "G309",
    },
];

/// An acute event that may happen to anyone, at an age/sex-dependent rate.
#[derive(Debug)]
pub struct AcuteEvent {
    /// Identifier.
    pub id: &'static str,
    /// Yearly rate by age: `(age, men, women)`, linearly interpolated.
    pub rate: &'static [(f64, f64, f64)],
    /// Rate multiplier per chronic condition id.
    pub risk: &'static [(&'static str, f64)],
    /// The stay.
    pub stay: StayPattern,
    /// Case fatality within the stay.
    pub fatality: f64,
    /// Cause of death when fatal.
    pub death_icd: &'static str,
}

/// Acute hospital events.
pub static ACUTE: &[AcuteEvent] = &[
    AcuteEvent {
        id: "stroke",
        rate: &[
            (0.0, 0.0, 0.0),
            (45.0, 0.0006, 0.0004),
            (65.0, 0.003, 0.002),
            (80.0, 0.01, 0.008),
            (95.0, 0.02, 0.018),
        ],
        risk: &[
            ("hypertension", 1.8),
            ("atrial_fibrillation", 3.0),
            ("diabetes", 1.5),
        ],
        stay: StayPattern {
            dp: &["I639", "I634", "I635"],
            ghm: "01M30",
            acts: &["ACQK001"],
            los: (5, 20),
            private_share: 0.05,
        },
        fatality: 0.12,
        death_icd: "I64",
    },
    AcuteEvent {
        id: "myocardial_infarction",
        rate: &[
            (0.0, 0.0, 0.0),
            (40.0, 0.0008, 0.0002),
            (60.0, 0.003, 0.001),
            (80.0, 0.006, 0.004),
        ],
        risk: &[
            ("ischaemic_heart", 3.0),
            ("diabetes", 1.8),
            ("hypertension", 1.5),
        ],
        stay: StayPattern {
            dp: &["I214", "I210", "I211"],
            ghm: "05M04",
            acts: &["DDAF006", "DEQP003"],
            los: (3, 10),
            private_share: 0.2,
        },
        fatality: 0.06,
        death_icd: "I219",
    },
    AcuteEvent {
        id: "hip_fracture",
        rate: &[
            (0.0, 0.0, 0.0),
            (60.0, 0.0005, 0.001),
            (75.0, 0.003, 0.006),
            (90.0, 0.015, 0.025),
        ],
        risk: &[("dementia", 2.0)],
        stay: StayPattern {
            dp: &["S7200", "S7210", "S7220"],
            ghm: "08C47",
            acts: &["NEKA020", "ZZLP025"],
            los: (6, 15),
            private_share: 0.3,
        },
        fatality: 0.04,
        death_icd: "W19",
    },
    AcuteEvent {
        id: "knee_replacement",
        rate: &[
            (0.0, 0.0, 0.0),
            (55.0, 0.0008, 0.0012),
            (70.0, 0.003, 0.004),
            (85.0, 0.002, 0.003),
        ],
        risk: &[],
        stay: StayPattern {
            dp: &["M171", "M179"],
            ghm: "08C24",
            acts: &["NFKA007", "ZZLP025"],
            los: (3, 7),
            private_share: 0.6,
        },
        fatality: 0.0,
        death_icd: "M179",
    },
    AcuteEvent {
        id: "pneumonia",
        rate: &[
            (0.0, 0.004, 0.003),
            (5.0, 0.0008, 0.0006),
            (50.0, 0.001, 0.0008),
            (75.0, 0.008, 0.006),
            (90.0, 0.03, 0.025),
        ],
        risk: &[
            ("copd_asthma", 3.0),
            ("heart_failure", 2.0),
            ("dementia", 2.0),
        ],
        stay: StayPattern {
            dp: &["J189", "J159", "J13"],
            ghm: "04M05",
            acts: &["ZBQK002"],
            los: (3, 12),
            private_share: 0.1,
        },
        fatality: 0.06,
        death_icd: "J189",
    },
    AcuteEvent {
        id: "appendicitis",
        rate: &[
            (0.0, 0.0, 0.0),
            (5.0, 0.0012, 0.001),
            (30.0, 0.0008, 0.0007),
            (60.0, 0.0004, 0.0004),
        ],
        risk: &[],
        stay: StayPattern {
            dp: &["K358", "K359"],
            ghm: "06C09",
            acts: &["HHFA016", "ZZLP025"],
            los: (1, 4),
            private_share: 0.35,
        },
        fatality: 0.0,
        death_icd: "K359",
    },
];

/// Delivery stays: women aged 15-49, rate by age.
pub static BIRTH_RATE: &[(f64, f64, f64)] = &[
    (15.0, 0.0, 0.002),
    (20.0, 0.0, 0.03),
    (25.0, 0.0, 0.09),
    (30.0, 0.0, 0.13),
    (35.0, 0.0, 0.075),
    (40.0, 0.0, 0.02),
    (45.0, 0.0, 0.003),
    (50.0, 0.0, 0.0),
];
/// Vaginal delivery stay.
pub static DELIVERY: StayPattern = StayPattern {
    dp: &["O800", "O809"],
    ghm: "14Z14",
    acts: &["JQGD010"],
    los: (2, 5),
    private_share: 0.25,
};
/// Caesarean stay (about 20% of births).
pub static CAESAREAN: StayPattern = StayPattern {
    dp: &["O821", "O820"],
    ghm: "14C08",
    acts: &["JQGA002", "ZZLP025"],
    los: (4, 7),
    private_share: 0.25,
};
/// Chemotherapy session (séance, empty `SEJ_NBJ`).
pub static CHEMO: StayPattern = StayPattern {
    dp: &["Z511"],
    ghm: "28Z07",
    acts: &[],
    los: (0, 0),
    private_share: 0.3,
};

/// Drugs for acute episodes after a GP visit: ATC prefix and weight.
pub static ACUTE_DRUGS: &[(&str, f64)] = &[
    ("N02BE01", 0.40),
    ("M01AE", 0.12),
    ("A02BC", 0.10),
    ("N02AX02", 0.04),
    ("H03AA01", 0.05),
    ("R03AC", 0.03),
];
/// Antibiotics for infections.
pub static ANTIBIOTICS: &[(&str, f64)] = &[("J01CA04", 0.6), ("J01CR02", 0.4)];
/// Oral contraception (women 15-49).
pub static CONTRACEPTION: &str = "G03AA";
/// Drugs started after a stroke or an infarction.
pub static SECONDARY_PREVENTION: &[&str] = &["C10AA", "B01AC06"];

/// Baseline GP visits per year by age: `(age, men, women)`.
pub static GP_VISITS: &[(f64, f64, f64)] = &[
    (0.0, 6.0, 6.0),
    (3.0, 3.5, 3.5),
    (12.0, 2.0, 2.5),
    (20.0, 2.2, 3.6),
    (40.0, 2.8, 3.8),
    (60.0, 4.0, 4.6),
    (75.0, 5.5, 6.0),
    (90.0, 7.0, 7.5),
];
/// Infections needing an antibiotic per year by age.
pub static INFECTIONS: &[(f64, f64, f64)] = &[
    (0.0, 1.0, 1.0),
    (6.0, 0.5, 0.5),
    (16.0, 0.3, 0.4),
    (65.0, 0.4, 0.45),
    (90.0, 0.6, 0.6),
];

/// Yearly death probability by age for people without a modelled condition:
/// INSEE 2019-2022 life-table rates scaled by 0.5, because the conditions'
/// relative risks add back the excess of the sick. `(age, men, women)`,
/// interpolated on a log scale.
pub static MORTALITY: &[(f64, f64, f64)] = &[
    (0.0, 0.00200, 0.00165),
    (1.0, 0.00015, 0.00010),
    (10.0, 0.00005, 0.00005),
    (20.0, 0.00030, 0.00010),
    (30.0, 0.00045, 0.00020),
    (40.0, 0.00085, 0.00045),
    (50.0, 0.00200, 0.00110),
    (60.0, 0.00450, 0.00225),
    (70.0, 0.00900, 0.00450),
    (80.0, 0.02400, 0.01450),
    (90.0, 0.07500, 0.05500),
    (100.0, 0.20000, 0.17500),
];
/// Causes of death for people without a modelled fatal condition.
pub static OTHER_DEATH_CAUSES: &[(&str, f64)] = &[
    ("C349", 0.12),
    ("C259", 0.04),
    ("I64", 0.06),
    ("J189", 0.05),
    ("R99", 0.08),
    ("R54", 0.10),
    ("X59", 0.04),
    ("V892", 0.02),
    ("N189", 0.03),
    ("K746", 0.03),
    ("I249", 0.06),
    ("C189", 0.04),
    ("U071", 0.05),
    ("I678", 0.04),
    ("C80", 0.06),
    ("E149", 0.03),
    ("G309", 0.06),
    ("X70", 0.02),
    ("C220", 0.03),
];

/// Linear interpolation in an `(age, men, women)` table.
pub fn by_age(table: &[(f64, f64, f64)], age: f64, sex: u8) -> f64 {
    interpolate(table, age, sex, false)
}

/// Log-scale interpolation (for mortality, which grows exponentially).
pub fn by_age_log(table: &[(f64, f64, f64)], age: f64, sex: u8) -> f64 {
    interpolate(table, age, sex, true)
}

fn interpolate(table: &[(f64, f64, f64)], age: f64, sex: u8, log: bool) -> f64 {
    let pick = |p: &(f64, f64, f64)| {
        let v = if sex == 1 { p.1 } else { p.2 };
        if log { v.max(1e-9).ln() } else { v }
    };
    let back = |v: f64| if log { v.exp() } else { v };
    let (Some(first), Some(last)) = (table.first(), table.last()) else {
        return 0.0;
    };
    if age <= first.0 {
        return back(pick(first));
    }
    for w in table.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if age <= b.0 {
            let t = (age - a.0) / (b.0 - a.0);
            return back(pick(a) + t * (pick(b) - pick(a)));
        }
    }
    back(pick(last))
}

/// Stays not driven by a modelled condition (cataract, endoscopy, acute
/// medical problems), per person-year by age.
pub static OTHER_STAY_RATE: &[(f64, f64, f64)] = &[
    (0.0, 0.10, 0.08),
    (2.0, 0.05, 0.04),
    (15.0, 0.05, 0.06),
    (30.0, 0.07, 0.08),
    (50.0, 0.13, 0.12),
    (65.0, 0.25, 0.21),
    (75.0, 0.36, 0.31),
    (85.0, 0.45, 0.40),
];

/// Other stays: pattern, weight, minimum age.
pub static OTHER_STAYS: &[(StayPattern, f64, f64)] = &[
    (
        StayPattern {
            dp: &["H259", "H251"],
            ghm: "02C05",
            acts: &["BFGA427"],
            los: (0, 0),
            private_share: 0.6,
        },
        0.20,
        55.0,
    ),
    (
        StayPattern {
            dp: &["K573", "Z098"],
            ghm: "06K04",
            acts: &["HHQE005"],
            los: (0, 0),
            private_share: 0.5,
        },
        0.14,
        40.0,
    ),
    (
        StayPattern {
            dp: &["K802", "K801"],
            ghm: "07C14",
            acts: &["HMFC004", "ZZLP025"],
            los: (1, 3),
            private_share: 0.4,
        },
        0.07,
        20.0,
    ),
    (
        StayPattern {
            dp: &["R074"],
            ghm: "05M13",
            acts: &["DEQP003"],
            los: (0, 2),
            private_share: 0.1,
        },
        0.08,
        20.0,
    ),
    (
        StayPattern {
            dp: &["R55"],
            ghm: "05M12",
            acts: &["DEQP003"],
            los: (0, 3),
            private_share: 0.1,
        },
        0.05,
        20.0,
    ),
    (
        StayPattern {
            dp: &["A099"],
            ghm: "06M11",
            acts: &[],
            los: (1, 4),
            private_share: 0.1,
        },
        0.07,
        0.0,
    ),
    (
        StayPattern {
            dp: &["R104", "R101"],
            ghm: "06M12",
            acts: &["ZCQM008"],
            los: (0, 2),
            private_share: 0.15,
        },
        0.09,
        5.0,
    ),
    (
        StayPattern {
            dp: &["N390"],
            ghm: "11M04",
            acts: &[],
            los: (2, 6),
            private_share: 0.1,
        },
        0.06,
        15.0,
    ),
    (
        StayPattern {
            dp: &["L031"],
            ghm: "09M05",
            acts: &[],
            los: (3, 8),
            private_share: 0.1,
        },
        0.04,
        15.0,
    ),
    (
        StayPattern {
            dp: &["S0600"],
            ghm: "01M24",
            acts: &["ACQK001"],
            los: (0, 2),
            private_share: 0.05,
        },
        0.06,
        0.0,
    ),
    (
        StayPattern {
            dp: &["G473"],
            ghm: "03M12",
            acts: &[],
            los: (0, 1),
            private_share: 0.3,
        },
        0.04,
        30.0,
    ),
];

/// Dental care episodes per person-year (age 3 and over).
pub static DENTAL_RATE: f64 = 0.9;
/// Nurse visits per year for people aged 75 and over.
pub static NURSE_ELDERLY: f64 = 5.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_is_linear_or_geometric_between_points() {
        let t = [(0.0, 1.0, 2.0), (10.0, 3.0, 8.0)];
        assert_eq!(by_age(&t, 5.0, 1), 2.0);
        assert_eq!(by_age(&t, 5.0, 2), 5.0);
        assert!((by_age_log(&t, 5.0, 2) - 4.0).abs() < 1e-9);
        assert_eq!(by_age(&t, -1.0, 1), 1.0);
        assert_eq!(by_age(&t, 99.0, 2), 8.0);
    }
}

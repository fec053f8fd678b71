//! Per-chunk simulation: people first, then their conditions, events and the
//! claims, stays and deaths those events produce.
//!
//! Each chunk of beneficiaries has its own random stream derived from the
//! seed and the chunk index only, so the output is the same whatever the
//! number of threads; chunk outputs are concatenated in chunk order.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate, TimeDelta};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::SynthError;
use crate::model::{self, ACUTE, CONDITIONS, Condition, StayPattern};
use crate::population::Population;
use crate::rows::RowWriter;
use crate::tables::{Table, YearColumns};

/// A drug presentation usable by the generator.
#[derive(Debug, Clone)]
pub struct DrugRef {
    /// CIP13.
    pub cip13: u64,
    /// Units per box.
    pub units: u32,
    /// Price per box in cents.
    pub price: i64,
    /// Reimbursement rate.
    pub rate: u8,
}

/// A hospital.
#[derive(Debug, Clone)]
pub struct Establishment {
    /// e-PMSI FINESS (9 chars).
    pub eta_num: String,
    /// Name.
    pub name: String,
    /// Public (true) or private clinic.
    pub public: bool,
    /// INSEE region code.
    pub region: String,
    /// Geographic FINESS under which some stays are duplicated (AP-HP, AP-HM, HCL).
    pub duplicates: Vec<&'static str>,
}

/// Everything a chunk needs, shared read-only between threads.
pub struct Context {
    /// First year.
    pub y0: u16,
    /// Last year.
    pub y1: u16,
    /// Seed.
    pub seed: u64,
    /// Beneficiaries in total.
    pub n: u64,
    /// Beneficiaries per chunk.
    pub chunk_size: u64,
    /// Reference population.
    pub pop: Population,
    /// Column indices per year (index = year - y0).
    pub cols: Vec<YearColumns>,
    /// Drugs by ATC prefix.
    pub drugs: HashMap<&'static str, Vec<DrugRef>>,
    /// Biology prices in cents by NABM code.
    pub bio_price: HashMap<u32, i64>,
    /// ICD-10 labels (for `ECD_CAU_LIB`).
    pub cim_labels: HashMap<String, String>,
    /// Hospitals per department index.
    pub hospitals: Vec<Vec<Establishment>>,
}

/// AP-HP, AP-HM and HCL geographic FINESS duplicated in PMSI (CNAM list).
pub static DUPLICATE_FINESS: &[(&str, &[&str])] = &[
    (
        "750712184",
        &[
            "750100018",
            "750100042",
            "750100075",
            "750100083",
            "750100091",
            "750100109",
            "750100125",
            "750100166",
            "750100208",
            "750100216",
            "750100232",
            "750100273",
            "750100299",
            "750801441",
            "750803447",
            "750803454",
            "910100015",
            "910100023",
            "920100013",
            "920100021",
            "920100039",
            "920100047",
            "920100054",
            "920100062",
            "930100011",
            "930100037",
            "930100045",
            "940100027",
            "940100035",
            "940100043",
            "940100050",
            "940100068",
            "950100016",
            "750041543",
            "600100101",
        ],
    ),
    (
        "130786049",
        &[
            "130780521",
            "130783236",
            "130783293",
            "130784234",
            "130804297",
            "830100558",
        ],
    ),
    (
        "690781810",
        &[
            "690783154",
            "690784137",
            "690784152",
            "690784178",
            "690787478",
        ],
    ),
];

/// Output of one chunk: one buffer per table and year, plus statistics.
#[derive(Default)]
pub struct ChunkOut {
    /// `bufs[table.index()][year index]` (year index 0 for single-file tables).
    pub bufs: Vec<Vec<Vec<u8>>>,
    /// Person-years alive inside the window.
    pub person_years: f64,
    /// Deaths inside the window.
    pub deaths: u64,
    /// Rows in each buffer (same shape as `bufs`).
    pub rows: Vec<Vec<u64>>,
}

fn mix(mut x: u64) -> u64 {
    // SplitMix64 finaliser: a bijection on u64, so distinct inputs give
    // distinct identifiers.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const B36: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A 17-character pseudonymous identifier, unique per `(domain, id)`.
fn ident17(seed: u64, domain: u64, id: u64) -> [u8; 17] {
    let k = mix(seed ^ domain.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let mut v = mix(id ^ k);
    let mut out = [b'0'; 17];
    for slot in out.iter_mut().take(13) {
        *slot = B36[(v % 36) as usize];
        v /= 36;
    }
    let mut w = mix(v ^ id ^ k.rotate_left(17));
    for slot in out.iter_mut().skip(13) {
        *slot = B36[(w % 36) as usize];
        w /= 36;
    }
    out
}

fn days(d: NaiveDate, n: i64) -> NaiveDate {
    d.checked_add_signed(TimeDelta::days(n)).unwrap_or(d)
}

fn first_of_month_plus(d: NaiveDate, months: u32) -> NaiveDate {
    let m0 = d.year() * 12 + d.month0() as i32 + months as i32;
    NaiveDate::from_ymd_opt(m0 / 12, (m0 % 12) as u32 + 1, 1).unwrap_or(d)
}

fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or(NaiveDate::MIN)
}

fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        // Normal approximation; the generator never needs exact tails there.
        let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
        return (lambda + z * lambda.sqrt()).round().max(0.0) as u32;
    }
    let l = (-lambda).exp();
    let (mut k, mut p) = (0u32, 1.0f64);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

fn pick_weighted<'a, T>(rng: &mut ChaCha8Rng, items: &'a [(T, f64)]) -> &'a T {
    let total: f64 = items.iter().map(|i| i.1).sum();
    let mut u = rng.random::<f64>() * total;
    for it in items {
        if u < it.1 {
            return &it.0;
        }
        u -= it.1;
    }
    &items[items.len() - 1].0
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

struct Pair {
    psa: [u8; 17],
    rng: u8,
    from: NaiveDate,
    cdi: &'static str,
}

struct Person {
    sex: u8,
    birth: NaiveDate,
    dpt: usize,
    com: u16,
    pairs: Vec<Pair>,
    nir_ano: Option<[u8; 17]>,
    grg: u8,
    rgm: u16,
    org_aff: String,
    org_cle: String,
    cmu: bool,
    gp_id: u32,
    conditions: Vec<(usize, NaiveDate)>,
    death: Option<NaiveDate>,
    death_cause: &'static str,
    fictitious: bool,
    max_flow: Option<NaiveDate>,
    ald: Vec<usize>,
    idx: u64,
}

impl Person {
    fn pair_at(&self, d: NaiveDate) -> &Pair {
        let mut p = &self.pairs[0];
        for q in &self.pairs {
            if q.from <= d {
                p = q;
            }
        }
        p
    }

    fn age_at(&self, d: NaiveDate) -> f64 {
        (d - self.birth).num_days() as f64 / 365.25
    }

    fn idt_ano(&self) -> Vec<u8> {
        match &self.nir_ano {
            Some(n) => n.to_vec(),
            None => {
                let p = &self.pairs[0];
                let mut v = p.psa.to_vec();
                v.push(b'0' + p.rng);
                v
            }
        }
    }

    fn has(&self, id: &str) -> bool {
        self.conditions.iter().any(|(c, _)| CONDITIONS[*c].id == id)
    }
}

#[derive(Clone)]
enum Detail {
    None,
    Pha {
        cip: u64,
        boxes: i32,
        price: i64,
        seq: u32,
    },
    Bio {
        code: u32,
    },
    Cam {
        code: &'static str,
        price: i64,
    },
}

#[derive(Clone)]
struct EteInfo {
    finess: String,
    taa: u8,
    public: bool,
}

#[derive(Clone)]
struct Line {
    nat: u16,
    qty: i32,
    unit: i64,
    rate: u8,
    coef: i64,
    spe: u16,
    act_nat: u16,
    maj: bool,
    dpn: u8,
    exo: u8,
    dep: i64,
    presc: Option<NaiveDate>,
    end: Option<NaiveDate>,
    detail: Detail,
    ete: Option<EteInfo>,
    hosp: Option<NaiveDate>,
}

impl Line {
    fn new(nat: u16, unit: i64, rate: u8, spe: u16) -> Self {
        Line {
            nat,
            qty: 1,
            unit,
            rate,
            coef: 100,
            spe,
            act_nat: 1,
            maj: false,
            dpn: 0,
            exo: 0,
            dep: 0,
            presc: None,
            end: None,
            detail: Detail::None,
            ete: None,
            hosp: None,
        }
    }
}

struct Chunk<'a> {
    ctx: &'a Context,
    rng: ChaCha8Rng,
    out: ChunkOut,
    w: RowWriter,
    chunk: u64,
    next_claim: u64,
    next_rsa: u64,
    win_start: NaiveDate,
    win_end: NaiveDate,
}

/// Generates chunk `chunk` (beneficiaries `chunk*chunk_size ..`).
pub fn generate_chunk(ctx: &Context, chunk: u64) -> Result<ChunkOut, SynthError> {
    let years = (ctx.y1 - ctx.y0 + 1) as usize;
    let mut out = ChunkOut::default();
    out.bufs = Table::ALL
        .iter()
        .map(|t| vec![Vec::new(); if t.per_year() { years } else { 1 }])
        .collect();
    out.rows = out.bufs.iter().map(|v| vec![0; v.len()]).collect();
    let mut c = Chunk {
        ctx,
        rng: ChaCha8Rng::seed_from_u64(mix(ctx.seed ^ mix(chunk.wrapping_add(0xC0FFEE)))),
        out,
        w: RowWriter::new(),
        chunk,
        next_claim: 0,
        next_rsa: 0,
        win_start: ymd(ctx.y0 as i32, 1, 1),
        win_end: ymd(ctx.y1 as i32, 12, 31),
    };
    let first = chunk * ctx.chunk_size;
    let last = (first + ctx.chunk_size).min(ctx.n);
    for idx in first..last {
        c.person(idx)?;
    }
    Ok(c.out)
}

impl<'a> Chunk<'a> {
    /// Appends the row being built to its table's buffer.
    fn emit(&mut self, t: Table, year: u16) {
        let yi = if t.per_year() {
            (year - self.ctx.y0) as usize
        } else {
            0
        };
        let ti = t.index();
        self.w.finish(&mut self.out.bufs[ti][yi]);
        self.out.rows[ti][yi] += 1;
    }

    fn in_window(&self, d: NaiveDate) -> bool {
        d >= self.win_start && d <= self.win_end
    }

    fn yc(&self, year: u16) -> &'a YearColumns {
        &self.ctx.cols[(year - self.ctx.y0) as usize]
    }

    fn person(&mut self, idx: u64) -> Result<(), SynthError> {
        let ctx = self.ctx;
        let seed = ctx.seed;
        let fictitious = self.rng.random_bool(0.004);
        let (mut age, mut sex) = ctx.pop.age_sex(self.rng.random());
        let dpt = ctx.pop.department(self.rng.random());
        if fictitious {
            // Fictitious NIRs carry the conventional birth year 1955.
            age = (self.ctx.y0 as i32 - 1 - 1955).max(0) as u32;
            sex = if self.rng.random_bool(0.7) { 2 } else { 1 };
        }
        let birth_year = self.ctx.y0 as i32 - 1 - age as i32;
        let birth = ymd(
            birth_year,
            self.rng.random_range(1..=12),
            self.rng.random_range(1..=28),
        );
        // Pairs: most people have one (BEN_NIR_PSA, rank), some two or three
        // (child on a parent's card, then on their own; scheme changes).
        let n_pairs = if fictitious {
            1
        } else if self.rng.random_bool(0.22) {
            if self.rng.random_bool(0.25) { 3 } else { 2 }
        } else {
            1
        };
        let provisional = !fictitious && n_pairs == 1 && self.rng.random_bool(0.01);
        let mut pairs = Vec::new();
        for k in 0..n_pairs {
            let from = if k == 0 {
                NaiveDate::MIN
            } else {
                days(
                    self.win_start,
                    self.rng
                        .random_range(-3000..((ctx.y1 - ctx.y0 + 1) as i64 * 365)),
                )
            };
            let cdi = if fictitious {
                *pick(&mut self.rng, &["01", "05", "06", "08", "09", "11"])
            } else if provisional {
                "03"
            } else {
                "00"
            };
            pairs.push(Pair {
                psa: ident17(seed, 1, idx * 4 + k as u64),
                rng: if self.rng.random_bool(0.01) { 2 } else { 1 },
                from,
                cdi,
            });
        }
        pairs.sort_by_key(|p| p.from);
        let nir_ano = (!fictitious && !provisional).then(|| ident17(seed, 2, idx));
        let grg_u: f64 = self.rng.random();
        let (grg, rgm) = if fictitious {
            (1, 888)
        } else if grg_u < 0.88 {
            (1, 10)
        } else if grg_u < 0.94 {
            (2, 20)
        } else if grg_u < 0.96 {
            (8, 80)
        } else if grg_u < 0.98 {
            (4, 40)
        } else {
            (7, 70)
        };
        let dcode = &ctx.pop.departments[dpt].code;
        let org_aff = format!("{:02}C{}000", grg, dcode);
        let mut p = Person {
            sex,
            birth,
            dpt,
            com: self.rng.random_range(1..400),
            pairs,
            nir_ano,
            grg,
            rgm,
            org_aff,
            org_cle: format!("01C{dcode}{:03}", dpt % 7),
            cmu: self.rng.random_bool(0.08),
            gp_id: self.rng.random_range(0..100_000),
            conditions: Vec::new(),
            death: None,
            death_cause: "R99",
            fictitious,
            max_flow: None,
            ald: Vec::new(),
            idx,
        };
        if !fictitious {
            self.draw_conditions(&mut p);
        }
        let events = if fictitious {
            Vec::new()
        } else {
            self.draw_acute(&mut p)
        };
        self.draw_death(&mut p, &events);
        // Person-years alive inside the window.
        let end = p.death.map_or(self.win_end, |d| d.min(self.win_end));
        let start = self.win_start.max(p.birth);
        if end >= start {
            self.out.person_years += ((end - start).num_days() + 1) as f64 / 365.25;
        }
        self.care(&mut p, &events)?;
        self.write_ben(&p);
        self.write_imb(&p);
        if let Some(d) = p.death
            && self.in_window(d)
        {
            self.out.deaths += 1;
            self.write_death(&p, d);
        }
        Ok(())
    }

    fn draw_conditions(&mut self, p: &mut Person) {
        let age_end = p.age_at(self.win_end);
        for (ci, c) in CONDITIONS.iter().enumerate() {
            let prev = model::by_age(c.prevalence, age_end, p.sex);
            if self.rng.random::<f64>() >= prev {
                continue;
            }
            // Years since onset, exponential with the condition's mean
            // duration, never before age 0.
            let u: f64 = self.rng.random::<f64>().max(1e-12);
            let years = (-u.ln() * c.mean_duration).min(age_end.max(0.0));
            let onset = days(self.win_end, -(years * 365.25) as i64);
            p.conditions.push((ci, onset.max(p.birth)));
            if let Some((_, share)) = c.ald
                && self.rng.random_bool(share)
            {
                p.ald.push(ci);
            }
        }
    }

    fn draw_acute(&mut self, p: &mut Person) -> Vec<(usize, NaiveDate)> {
        let mut ev = Vec::new();
        for y in self.ctx.y0..=self.ctx.y1 {
            let mid = ymd(y as i32, 7, 1);
            let age = p.age_at(mid);
            if age < 0.0 {
                continue;
            }
            for (ei, e) in ACUTE.iter().enumerate() {
                let mut r = model::by_age(e.rate, age, p.sex);
                for (cid, rr) in e.risk {
                    if p.has(cid) {
                        r *= rr;
                    }
                }
                if self.rng.random::<f64>() < r {
                    ev.push((
                        ei,
                        ymd(y as i32, 1, 1) + TimeDelta::days(self.rng.random_range(0..365)),
                    ));
                }
            }
            if p.sex == 2 && self.rng.random::<f64>() < model::by_age(model::BIRTH_RATE, age, 2) {
                ev.push((
                    usize::MAX,
                    ymd(y as i32, 1, 1) + TimeDelta::days(self.rng.random_range(0..365)),
                ));
            }
        }
        ev.sort_by_key(|e| e.1);
        ev
    }

    fn draw_death(&mut self, p: &mut Person, events: &[(usize, NaiveDate)]) {
        for y in self.ctx.y0..=self.ctx.y1 {
            let start = ymd(y as i32, 1, 1);
            if start < p.birth {
                continue;
            }
            let age = p.age_at(ymd(y as i32, 7, 1));
            let mut q = model::by_age_log(model::MORTALITY, age, p.sex);
            let mut causes: Vec<(&'static str, f64)> = vec![("", 1.0)];
            for (ci, onset) in &p.conditions {
                if *onset <= start {
                    let c = &CONDITIONS[*ci];
                    q *= c.mortality_rr;
                    causes.push((c.death_icd, c.mortality_rr - 1.0));
                }
            }
            if self.rng.random::<f64>() < q.min(0.9) {
                let d = days(start, self.rng.random_range(0..365));
                let cause = *pick_weighted(&mut self.rng, &causes);
                p.death_cause = if cause.is_empty() {
                    *pick_weighted(&mut self.rng, model::OTHER_DEATH_CAUSES)
                } else {
                    cause
                };
                p.death = Some(d);
                break;
            }
        }
        // A fatal acute event before the natural death replaces it.
        for (ei, d) in events {
            if *ei == usize::MAX || p.death.is_some_and(|x| x <= *d) {
                continue;
            }
            let e = &ACUTE[*ei];
            if e.fatality > 0.0 && self.rng.random::<f64>() < e.fatality {
                let los = self.rng.random_range(e.stay.los.0..=e.stay.los.1) as i64;
                p.death = Some(days(*d, los));
                p.death_cause = e.death_icd;
                break;
            }
        }
    }

    fn alive(&self, p: &Person, d: NaiveDate) -> bool {
        d >= p.birth && p.death.is_none_or(|x| d <= x) && self.in_window(d)
    }

    fn drug(&mut self, prefix: &str) -> Option<DrugRef> {
        let list = self.ctx.drugs.get(prefix)?;
        if list.is_empty() {
            return None;
        }
        Some(list[self.rng.random_range(0..list.len())].clone())
    }

    /// All care of one person inside the window.
    fn care(&mut self, p: &mut Person, events: &[(usize, NaiveDate)]) -> Result<(), SynthError> {
        let ctx = self.ctx;
        // Long-term treatments: (drug, start date, exempted by an ALD).
        let mut regimen: Vec<(DrugRef, NaiveDate, bool)> = Vec::new();
        for (ci, onset) in p.conditions.clone() {
            let c = &CONDITIONS[ci];
            let ald = p.ald.contains(&ci);
            for (atc, share) in c.drugs {
                if self.rng.random_bool(*share)
                    && let Some(d) = self.drug(atc)
                {
                    regimen.push((d, days(onset, self.rng.random_range(0..30)), ald));
                }
            }
        }
        let age = p.age_at(self.win_start);
        if p.sex == 2
            && (15.0..45.0).contains(&age)
            && self.rng.random_bool(0.25)
            && let Some(d) = self.drug(model::CONTRACEPTION)
        {
            regimen.push((d, self.win_start, false));
        }
        for (ei, d) in events {
            if *ei < ACUTE.len() && matches!(ACUTE[*ei].id, "stroke" | "myocardial_infarction") {
                for atc in model::SECONDARY_PREVENTION {
                    if let Some(dr) = self.drug(atc) {
                        regimen.push((dr, days(*d, 10), false));
                    }
                }
            }
        }
        // Monthly pharmacy visits dispense what is due.
        if !regimen.is_empty() {
            let mut next_due: Vec<NaiveDate> = regimen.iter().map(|r| r.1).collect();
            let mut seq: Vec<u32> = vec![0; regimen.len()];
            let mut visit = days(self.win_start, self.rng.random_range(0..28));
            let gp = p.gp_id;
            while visit <= self.win_end {
                if !self.alive(p, visit) {
                    if p.death.is_some_and(|d| visit > d) {
                        break;
                    }
                    visit = days(visit, 30);
                    continue;
                }
                let mut lines = Vec::new();
                for (i, (d, _, ald)) in regimen.iter().enumerate() {
                    if next_due[i] <= visit {
                        let quarterly = d.units >= 84;
                        let boxes = if !quarterly && self.rng.random_bool(0.08) {
                            2
                        } else {
                            1
                        };
                        let rate = if *ald { 100 } else { d.rate };
                        let nat = match rate {
                            100 => 3311,
                            65 => 3313,
                            30 => 3312,
                            _ => 3341,
                        };
                        let mut l = Line::new(nat, d.price, rate, 0);
                        l.qty = boxes;
                        l.act_nat = 50;
                        l.exo = if *ald { 41 } else { 0 };
                        l.presc = Some(days(visit, -self.rng.random_range(1..60)));
                        l.detail = Detail::Pha {
                            cip: d.cip13,
                            boxes,
                            price: d.price,
                            seq: seq[i],
                        };
                        seq[i] += 1;
                        lines.push(l);
                        let period = if quarterly {
                            90
                        } else {
                            (d.units.clamp(28, 31) as i64) * boxes as i64
                        };
                        next_due[i] = days(visit, period - 3);
                    }
                }
                if !lines.is_empty() {
                    Self::pharmacy_fee(p, visit, &mut lines);
                    self.claim(p, visit, lines, gp)?;
                }
                visit = days(visit, self.rng.random_range(26..34));
            }
        }
        // Year by year: consultations, acute prescriptions, biology, acts.
        for y in ctx.y0..=ctx.y1 {
            let ystart = ymd(y as i32, 1, 1);
            let age = p.age_at(ymd(y as i32, 7, 1));
            if age < 0.0 {
                continue;
            }
            let active: Vec<usize> = p
                .conditions
                .iter()
                .filter(|(_, o)| *o <= ymd(y as i32, 12, 31))
                .map(|(c, _)| *c)
                .collect();
            let extra: f64 = active.iter().map(|c| CONDITIONS[*c].gp_extra).sum();
            let n_gp = poisson(
                &mut self.rng,
                model::by_age(model::GP_VISITS, age, p.sex) * if p.fictitious { 0.3 } else { 1.1 }
                    + extra,
            );
            let n_inf = poisson(&mut self.rng, model::by_age(model::INFECTIONS, age, p.sex));
            for i in 0..n_gp {
                let d = days(ystart, self.rng.random_range(0..365));
                if !self.alive(p, d) {
                    continue;
                }
                let ald = !p.ald.is_empty() && self.rng.random_bool(0.6);
                let spe = *pick(&mut self.rng, &[1u16, 22, 23, 22]);
                let mut lines = vec![{
                    let mut l = Line::new(1110, 2500, if ald { 100 } else { 70 }, spe);
                    l.exo = if ald { 41 } else { 0 };
                    l
                }];
                if self.rng.random_bool(0.35) {
                    let mut m = Line::new(1125, 500, 70, spe);
                    m.maj = true;
                    m.qty = 0;
                    lines.push(m);
                }
                self.claim(p, d, lines, p.gp_id)?;
                // Acute prescription, or antibiotics for an infection.
                let infection = i < n_inf;
                if infection || self.rng.random_bool(0.6) {
                    let pd = days(d, self.rng.random_range(0..3));
                    if self.alive(p, pd) {
                        let mut lines = Vec::new();
                        let n = if infection {
                            1
                        } else {
                            self.rng.random_range(1..=3)
                        };
                        let mut atcs: Vec<&str> = (0..n)
                            .map(|_| *pick_weighted(&mut self.rng, model::ACUTE_DRUGS))
                            .collect();
                        if infection {
                            atcs.push(*pick_weighted(&mut self.rng, model::ANTIBIOTICS));
                        }
                        for atc in atcs {
                            if let Some(dr) = self.drug(atc) {
                                let mut l = Line::new(
                                    if dr.rate == 100 { 3311 } else { 3313 },
                                    dr.price,
                                    dr.rate,
                                    0,
                                );
                                l.act_nat = 50;
                                l.presc = Some(d);
                                l.detail = Detail::Pha {
                                    cip: dr.cip13,
                                    boxes: 1,
                                    price: dr.price,
                                    seq: 0,
                                };
                                lines.push(l);
                            }
                        }
                        Self::pharmacy_fee(p, pd, &mut lines);
                        self.claim(p, pd, lines, p.gp_id)?;
                    }
                }
            }
            if p.fictitious {
                continue;
            }
            // Dental care and nurse visits for the elderly.
            if age >= 3.0 {
                for _ in 0..poisson(&mut self.rng, model::DENTAL_RATE) {
                    let d = days(ystart, self.rng.random_range(0..365));
                    if self.alive(p, d) {
                        let mut l = Line::new(1451, 2892, 70, 0);
                        l.act_nat = 19;
                        self.claim(p, d, vec![l], 300_000 + p.dpt as u32)?;
                    }
                }
            }
            if age >= 75.0 {
                for _ in 0..poisson(&mut self.rng, model::NURSE_ELDERLY) {
                    let d = days(ystart, self.rng.random_range(0..365));
                    if self.alive(p, d) {
                        let mut l = Line::new(3111, 315, 60, 0);
                        l.act_nat = 24;
                        self.claim(p, d, vec![l], 800_000 + p.dpt as u32)?;
                    }
                }
            }
            // Stays not driven by a modelled condition.
            for _ in 0..poisson(
                &mut self.rng,
                model::by_age(model::OTHER_STAY_RATE, age, p.sex),
            ) {
                let d = days(ystart, self.rng.random_range(0..365));
                let eligible: Vec<(usize, f64)> = model::OTHER_STAYS
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| age >= s.2)
                    .map(|(i, s)| (i, s.1))
                    .collect();
                if eligible.is_empty() || !self.alive(p, d) {
                    continue;
                }
                let i = *pick_weighted(&mut self.rng, &eligible);
                let pat = model::OTHER_STAYS[i].0;
                self.stay(p, d, &pat, false)?;
            }
            // Biology: a yearly check-up for adults, plus condition follow-up.
            let mut lab: Vec<(u32, f64)> = Vec::new();
            if age >= 18.0 && self.rng.random_bool((0.25 + age / 150.0).min(0.8)) {
                lab.extend([
                    (1104, 1.0),
                    (552, 1.0),
                    (592, 1.0),
                    (2001, 0.6),
                    (1208, 0.3),
                ]);
            }
            for c in &active {
                lab.extend(CONDITIONS[*c].biology.iter().copied());
            }
            if !lab.is_empty() {
                let max = lab.iter().map(|l| l.1).fold(0.0, f64::max);
                let visits = poisson(&mut self.rng, max).max(1);
                for _ in 0..visits {
                    let d = days(ystart, self.rng.random_range(0..365));
                    if !self.alive(p, d) {
                        continue;
                    }
                    let mut lines = Vec::new();
                    let mut seen = Vec::new();
                    for (code, per_year) in &lab {
                        if !seen.contains(code) && self.rng.random_bool((per_year / max).min(1.0)) {
                            seen.push(*code);
                            let price = *ctx.bio_price.get(code).unwrap_or(&700);
                            let mut l = Line::new(3211, price, 60, 38);
                            l.act_nat = 40;
                            l.presc = Some(days(d, -self.rng.random_range(1..20)));
                            l.detail = Detail::Bio { code: *code };
                            lines.push(l);
                        }
                    }
                    if !lines.is_empty() {
                        self.claim(p, d, lines, 700_000 + p.dpt as u32)?;
                    }
                }
            }
            // Specialists and outpatient acts.
            for c in &active {
                let cond: &Condition = &CONDITIONS[*c];
                let ald = p.ald.contains(c);
                if let Some((spe, rate)) = cond.specialist {
                    for _ in 0..poisson(&mut self.rng, rate) {
                        let d = days(ystart, self.rng.random_range(0..365));
                        if self.alive(p, d) {
                            self.specialist(p, d, spe, ald)?;
                        }
                    }
                }
                for (code, rate) in cond.outpatient_acts {
                    for _ in 0..poisson(&mut self.rng, *rate) {
                        let d = days(ystart, self.rng.random_range(0..365));
                        if self.alive(p, d) {
                            self.outpatient_act(p, d, code, ald)?;
                        }
                    }
                }
                if cond.id == "dementia" {
                    for _ in 0..poisson(&mut self.rng, 12.0) {
                        let d = days(ystart, self.rng.random_range(0..365));
                        if self.alive(p, d) {
                            let mut l = Line::new(3111, 315, 100, 0);
                            l.act_nat = 24;
                            l.exo = if ald { 41 } else { 0 };
                            self.claim(p, d, vec![l], 800_000 + p.dpt as u32)?;
                        }
                    }
                }
                // Chronic-condition stays.
                let mut n_stays = poisson(&mut self.rng, cond.stay_rate);
                let onset = p.conditions.iter().find(|(ci, _)| ci == c).map(|x| x.1);
                if onset.is_some_and(|o| o.year() == y as i32) {
                    n_stays += cond.onset_stays;
                }
                if onset.is_some_and(|o| o.year() == y as i32 || o.year() + 1 == y as i32)
                    && matches!(cond.id, "breast_cancer" | "colorectal_cancer")
                {
                    {
                        // Chemotherapy sessions after surgery.
                        let o = onset.unwrap_or(ystart);
                        for k in 0..self.rng.random_range(4..12) {
                            let d = days(o, 30 + 21 * k);
                            if self.alive(p, d) && d.year() == y as i32 {
                                self.stay(p, d, &model::CHEMO, false)?;
                            }
                        }
                    }
                }
                for _ in 0..n_stays {
                    let d = match onset {
                        Some(o) if o.year() == y as i32 => days(o, self.rng.random_range(0..20)),
                        _ => days(ystart, self.rng.random_range(0..365)),
                    };
                    if self.alive(p, d) {
                        self.stay(p, d, &cond.stay, false)?;
                    }
                }
            }
            // Screening: mammography 50-74 every other year; colonoscopy.
            if p.sex == 2 && (50.0..75.0).contains(&age) && self.rng.random_bool(0.3) {
                let d = days(ystart, self.rng.random_range(0..365));
                if self.alive(p, d) {
                    self.outpatient_act(p, d, "QEQK004", false)?;
                }
            }
            if (50.0..75.0).contains(&age) && self.rng.random_bool(0.03) {
                let d = days(ystart, self.rng.random_range(0..365));
                if self.alive(p, d) {
                    self.outpatient_act(p, d, "HHQE005", false)?;
                }
            }
            // Public hospital outpatient consultations (ACE).
            if self.rng.random_bool(0.12) {
                let d = days(ystart, self.rng.random_range(0..365));
                if self.alive(p, d) {
                    let h = self.hospital(p, true);
                    let taa = if self.rng.random_bool(0.35) { 1 } else { 0 };
                    let mut l = Line::new(1112, 3000, 70, 9);
                    l.dpn = if taa == 1 { 0 } else { 71 };
                    l.ete = Some(EteInfo {
                        finess: h.eta_num[..8].to_string(),
                        taa,
                        public: true,
                    });
                    self.claim(p, d, vec![l], 0)?;
                }
            }
        }
        // Acute events and births.
        for (ei, d) in events {
            if !self.alive(p, *d) {
                continue;
            }
            if *ei == usize::MAX {
                let pat = if self.rng.random_bool(0.2) {
                    &model::CAESAREAN
                } else {
                    &model::DELIVERY
                };
                self.stay(p, *d, pat, false)?;
                continue;
            }
            let e = &ACUTE[*ei];
            let fatal = p.death.is_some_and(|x| {
                x > *d && p.death_cause == e.death_icd && (x - *d).num_days() <= e.stay.los.1 as i64
            });
            if e.id == "knee_replacement" {
                for k in 0..8 {
                    let pd = days(*d, -150 + 15 * k);
                    if self.alive(p, pd) {
                        let mut l = Line::new(3122, 1613, 60, 0);
                        l.act_nat = 26;
                        self.claim(p, pd, vec![l], 900_000 + p.dpt as u32)?;
                    }
                }
            }
            let end = self.stay(p, *d, &e.stay, fatal)?;
            if matches!(e.id, "hip_fracture" | "knee_replacement") {
                for k in 0..15 {
                    let pd = days(end, 7 + 4 * k);
                    if self.alive(p, pd) {
                        let mut l = Line::new(3122, 1613, 60, 0);
                        l.act_nat = 26;
                        self.claim(p, pd, vec![l], 900_000 + p.dpt as u32)?;
                    }
                }
            }
        }
        // In-hospital deaths from chronic conditions: a final stay.
        if let Some(dd) = p.death
            && self.in_window(dd)
            && p.age_at(dd) >= 30.0
            && !ACUTE.iter().any(|e| e.death_icd == p.death_cause)
            && self.rng.random_bool(0.55)
        {
            let los = self.rng.random_range(2..15);
            let adm = days(dd, -los);
            if self.in_window(adm) && adm >= p.birth {
                let cause = p.death_cause;
                let pat = p
                    .conditions
                    .iter()
                    .map(|(c, _)| &CONDITIONS[*c])
                    .find(|c| c.death_icd == cause)
                    .map(|c| c.stay)
                    .unwrap_or(StayPattern {
                        dp: &["R54"],
                        ghm: "23M20",
                        acts: &[],
                        los: (2, 14),
                        private_share: 0.1,
                    });
                self.stay_exact(p, adm, dd, &pat, true)?;
            }
        }
        Ok(())
    }

    /// Pharmacists bill an age-related dispensing fee (under 3, 70 and
    /// over) as its own prestation line, with no `ER_PHA_F` row.
    fn pharmacy_fee(p: &Person, d: NaiveDate, lines: &mut Vec<Line>) {
        let age = p.age_at(d);
        if !lines.is_empty() && !(3.0..70.0).contains(&age) {
            let mut l = Line::new(3365, 155, 70, 0);
            l.act_nat = 50;
            lines.push(l);
        }
    }

    fn hospital(&mut self, p: &Person, public: bool) -> Establishment {
        let list = &self.ctx.hospitals[p.dpt];
        let cands: Vec<&Establishment> = list.iter().filter(|e| e.public == public).collect();
        if cands.is_empty() {
            return list[0].clone();
        }
        (*pick(&mut self.rng, &cands)).clone()
    }

    fn specialist(
        &mut self,
        p: &mut Person,
        d: NaiveDate,
        spe: u16,
        ald: bool,
    ) -> Result<(), SynthError> {
        let mut l = Line::new(
            if spe == 33 { 1118 } else { 1112 },
            if spe == 33 { 5100 } else { 3000 },
            if ald { 100 } else { 70 },
            spe,
        );
        l.exo = if ald { 41 } else { 0 };
        if self.rng.random_bool(0.3) {
            l.dep = self.rng.random_range(5..40) * 100;
        }
        self.claim(p, d, vec![l], 500_000 + spe as u32 * 100 + p.dpt as u32)
    }

    fn outpatient_act(
        &mut self,
        p: &mut Person,
        d: NaiveDate,
        code: &'static str,
        ald: bool,
    ) -> Result<(), SynthError> {
        let (nat, price) = match code {
            "QEQK004" => (1351, 6699),
            "DZQM006" => (1324, 9561),
            "HHQE005" => (1321, 14_000),
            "GLQP012" => (1321, 4011),
            _ => (1321, 1452),
        };
        let mut l = Line::new(nat, price, if ald { 100 } else { 70 }, 0);
        l.spe = match code {
            "QEQK004" => 6,
            "HHQE005" => 8,
            "GLQP012" => 13,
            _ => 3,
        };
        l.detail = Detail::Cam { code, price };
        l.exo = if ald { 41 } else { 0 };
        self.claim(p, d, vec![l], 600_000 + p.dpt as u32)
    }

    /// Writes one claim (décompte) and its refinement rows; sometimes a
    /// regularisation claim follows in a later flow.
    fn claim(
        &mut self,
        p: &mut Person,
        care: NaiveDate,
        lines: Vec<Line>,
        provider: u32,
    ) -> Result<(), SynthError> {
        if lines.is_empty() {
            return Ok(());
        }
        // Flow month: data arrive on the 1st of a later month, 1-6 months
        // after the care month, rarely up to 27.
        let u: f64 = self.rng.random();
        let delay = if u < 0.70 {
            1
        } else if u < 0.85 {
            2
        } else if u < 0.91 {
            3
        } else if u < 0.95 {
            4
        } else if u < 0.97 {
            5
        } else if u < 0.985 {
            6
        } else {
            self.rng.random_range(7..=27)
        };
        let flx = first_of_month_plus(care, delay);
        self.write_claim(p, care, &lines, provider, flx, 1)?;
        if self.rng.random_bool(0.015) {
            let later = first_of_month_plus(flx, self.rng.random_range(1..4));
            let mut neg: Vec<Line> = lines.clone();
            for l in &mut neg {
                l.qty = -l.qty;
                if let Detail::Pha { boxes, .. } = &mut l.detail {
                    *boxes = -*boxes;
                }
            }
            if self.rng.random_bool(0.5) {
                neg.extend(lines);
            }
            self.write_claim(p, care, &neg, provider, later, 1)?;
        }
        Ok(())
    }

    fn write_claim(
        &mut self,
        p: &mut Person,
        care: NaiveDate,
        lines: &[Line],
        provider: u32,
        flx: NaiveDate,
        emt_typ: i64,
    ) -> Result<(), SynthError> {
        let year = care.year() as u16;
        if year < self.ctx.y0 || year > self.ctx.y1 {
            return Ok(());
        }
        let id = (self.chunk << 24) | self.next_claim;
        self.next_claim += 1;
        if self.next_claim >= 1 << 24 {
            return Err(SynthError::Schema(
                "more than 16M claims in one chunk; lower the chunk size".into(),
            ));
        }
        let dct = (id % 1_000_000_000) as i64;
        let emt_ord = (id / 1_000_000_000) as i64;
        let ctx = self.ctx;
        let dcode: &str = &ctx.pop.departments[p.dpt].code;
        let org: &str = &p.org_cle;
        let emt_num = (p.dpt % 90 + 1) as i64;
        // Processing date: some day before the flow, not before care.
        let trt_lo = care.max(first_of_month_plus(flx, 0) - TimeDelta::days(28));
        let span = (flx - trt_lo).num_days().max(1);
        let trt = days(trt_lo, self.rng.random_range(0..span))
            .min(flx - TimeDelta::days(1))
            .max(care);
        p.max_flow = Some(p.max_flow.map_or(flx, |m| m.max(flx)));
        let pair = p.pair_at(care);
        let (psa, rng_gem, cdi) = (pair.psa, pair.rng, pair.cdi);
        let months = (care.year() - p.birth.year()) * 12 + care.month() as i32
            - p.birth.month() as i32
            - i32::from(care.day() < p.birth.day());
        let ama = if months < 24 {
            1000 + months.max(0) as i64
        } else {
            (months / 12) as i64
        };
        let yc = self.yc(year);
        let c = &yc.prs;
        let dpt_code = dcode;
        for (i, l) in lines.iter().enumerate() {
            let prs_ord = (i + 1) as i64;
            let base = l.unit * l.qty as i64;
            let reimb = base * l.rate as i64 / 100
                - if l.nat == 1110 && l.qty > 0 && p.age_at(care) >= 18.0 {
                    100
                } else {
                    0
                };
            let sign = if l.qty < 0 { 2 } else { 1 };
            let w = &mut self.w;
            w.start(c.width);
            w.int(c.BEN_AMA_COD, ama)
                .str(c.BEN_CDI_NIR, cdi)
                .int(c.BEN_CMU_TOP, i64::from(p.cmu))
                .str(c.BEN_DCD_DTE, "01/01/1600")
                .int(c.BEN_NAI_ANN, p.birth.year() as i64)
                .bytes(c.BEN_NIR_PSA, &psa)
                .int(c.BEN_RNG_GEM, rng_gem as i64)
                .int(c.BEN_RES_COM, p.com as i64)
                .str(c.BEN_RES_DPT, dpt_code)
                .int(c.BEN_SEX_COD, p.sex as i64)
                .str(c.ORG_AFF_BEN, &p.org_aff)
                .year_month(c.EXE_SOI_AMD, care)
                .year_month(c.EXE_SOI_AMF, l.end.unwrap_or(care))
                .date(c.EXE_SOI_DTD, care)
                .date(c.EXE_SOI_DTF, l.end.unwrap_or(care))
                .int(c.RGM_COD, p.rgm as i64)
                .int(c.RGM_GRG_COD, p.grg as i64)
                .int(c.DPN_QLF, l.dpn as i64)
                .int(c.PRS_DPN_QLP, 0)
                .int(c.EXO_MTF, l.exo as i64)
                .int(c.PRS_NAT_REF, l.nat as i64)
                .int(c.RGO_REM_TAU, l.rate as i64)
                .int(c.PSE_ACT_NAT, l.act_nat as i64)
                .int(c.PSE_SPE_COD, l.spe as i64)
                .int(c.PSE_STJ_COD, 1)
                .str(c.ORG_CLE_NUM, org)
                .str(c.ORG_CLE_NEW, org)
                .date(c.FLX_DIS_DTD, flx)
                .date(c.FLX_TRT_DTD, trt)
                .int(c.FLX_EMT_TYP, emt_typ)
                .int(c.FLX_EMT_NUM, emt_num)
                .int(c.FLX_EMT_ORD, emt_ord)
                .int(c.DCT_ORD_NUM, dct)
                .int(c.PRS_ORD_NUM, prs_ord)
                .int(c.REM_TYP_AFF, 1);
            if provider > 0 {
                w.int(c.PFS_EXE_NUM, 10_000_000 + provider as i64);
            }
            if let Some(pr) = l.presc {
                w.date(c.PRE_PRE_DTD, pr)
                    .year_month(c.PRE_PRE_AMD, pr)
                    .int(c.PFS_PRE_NUM, 10_000_000 + p.gp_id as i64)
                    .int(c.PSP_SPE_COD, 1);
            }
            if let Some(h) = l.hosp {
                w.date(c.PRS_HOS_DTD, h);
            }
            if l.maj {
                w.int(c.BSE_PRS_NAT, 1110)
                    .int(c.CPL_PRS_NAT, l.nat as i64)
                    .int(c.CPL_MAJ_TOP, 2)
                    .money(c.CPL_REM_BSE, l.unit * l.qty.signum().max(0) as i64)
                    .money(c.CPL_REM_MNT, l.unit * l.rate as i64 / 100)
                    .int(c.CPL_REM_SGN, 1)
                    .money(c.BSE_REM_BSE, 0)
                    .money(c.BSE_REM_MNT, 0)
                    .int(c.PRS_ACT_QTE, 0)
                    .int(c.PRS_ACT_NBR, 0)
                    .money(c.PRS_PAI_MNT, l.unit);
            } else {
                w.int(c.BSE_PRS_NAT, l.nat as i64)
                    .int(c.CPL_PRS_NAT, 0)
                    .int(c.CPL_MAJ_TOP, 0)
                    .money(c.BSE_REM_BSE, base)
                    .money(c.BSE_REM_MNT, reimb)
                    .money(c.BSE_REM_PRU, l.unit)
                    .int(c.BSE_REM_SGN, sign)
                    .money(c.CPL_REM_BSE, 0)
                    .money(c.CPL_REM_MNT, 0)
                    .int(c.PRS_ACT_QTE, l.qty as i64)
                    .int(c.PRS_ACT_NBR, l.qty as i64)
                    .int(c.PRS_ACT_COG, l.coef / 100)
                    .int(c.PRS_ACT_CFT, l.coef / 100)
                    .money(c.PRS_DEP_MNT, l.dep * l.qty.signum() as i64)
                    .money(c.PRS_PAI_MNT, base + l.dep * l.qty.signum() as i64);
            }
            if let Some(e) = &l.ete {
                w.str(c.ETB_PRE_FIN, &e.finess)
                    .int(c.PRS_PPU_SEC, if e.public { 1 } else { 2 });
            }
            self.emit(Table::ErPrs, year);

            // Refinement rows carry the same 9 keys.
            let keys = |w: &mut RowWriter, k: &crate::tables::Keys9, width: usize| {
                w.start(width);
                w.int(k.DCT_ORD_NUM, dct)
                    .date(k.FLX_DIS_DTD, flx)
                    .int(k.FLX_EMT_NUM, emt_num)
                    .int(k.FLX_EMT_ORD, emt_ord)
                    .int(k.FLX_EMT_TYP, emt_typ)
                    .date(k.FLX_TRT_DTD, trt)
                    .str(k.ORG_CLE_NUM, org)
                    .str(k.ORG_CLE_NEW, org)
                    .int(k.PRS_ORD_NUM, prs_ord)
                    .int(k.REM_TYP_AFF, 1);
            };
            match &l.detail {
                Detail::None => {}
                Detail::Pha {
                    cip,
                    boxes,
                    price,
                    seq,
                } => {
                    keys(&mut self.w, &yc.keys[0], yc.pha.width);
                    self.w
                        .int(yc.pha.PHA_PRS_C13, *cip as i64)
                        .int(yc.pha.PHA_ACT_QSN, *boxes as i64)
                        .money(yc.pha.PHA_ACT_PRU, *price)
                        .int(yc.pha.PHA_ORD_NUM, 1)
                        .int(yc.pha.PHA_SEQ_RNV, *seq as i64);
                    self.emit(Table::ErPha, year);
                }
                Detail::Bio { code } => {
                    keys(&mut self.w, &yc.keys[1], yc.bio.width);
                    self.w
                        .int(yc.bio.BIO_PRS_IDE, *code as i64)
                        .int(yc.bio.BIO_ACT_QSN, l.qty as i64)
                        .int(yc.bio.BIO_ORD_NUM, 1);
                    self.emit(Table::ErBio, year);
                }
                Detail::Cam { code, price } => {
                    keys(&mut self.w, &yc.keys[2], yc.cam.width);
                    self.w
                        .str(yc.cam.CAM_PRS_IDE, code)
                        .int(yc.cam.CAM_ACT_COD, 1)
                        .int(yc.cam.CAM_TRT_PHA, 0)
                        .money(yc.cam.CAM_ACT_PRU, *price)
                        .money(yc.cam.CAM_REM_BSE, *price * l.qty as i64)
                        .int(yc.cam.CAM_ORD_NUM, 1);
                    self.emit(Table::ErCam, year);
                }
            }
            if let Some(e) = &l.ete {
                keys(&mut self.w, &yc.keys[3], yc.ete.width);
                self.w
                    .str(yc.ete.ETB_EXE_FIN, &e.finess)
                    .int(yc.ete.ETE_IND_TAA, e.taa as i64)
                    .int(yc.ete.PRS_PPU_SEC, if e.public { 1 } else { 2 })
                    .int(yc.ete.ETE_CAT_COD, if e.public { 101 } else { 365 });
                self.emit(Table::ErEte, year);
            }
        }
        Ok(())
    }

    fn stay(
        &mut self,
        p: &mut Person,
        adm: NaiveDate,
        pat: &StayPattern,
        died: bool,
    ) -> Result<NaiveDate, SynthError> {
        let los = self.rng.random_range(pat.los.0..=pat.los.1) as i64;
        let mut dis = days(adm, los);
        if died && let Some(d) = p.death {
            dis = d.max(adm);
        }
        self.stay_exact(p, adm, dis, pat, died)?;
        Ok(dis)
    }

    /// Writes one MCO stay (B, C, D, A rows) and its DCIR counterpart.
    fn stay_exact(
        &mut self,
        p: &mut Person,
        adm: NaiveDate,
        dis: NaiveDate,
        pat: &StayPattern,
        died: bool,
    ) -> Result<(), SynthError> {
        let year = dis.year() as u16;
        if year < self.ctx.y0 || year > self.ctx.y1 || adm < p.birth {
            return Ok(());
        }
        let public = !self.rng.random_bool(pat.private_share);
        let h = self.hospital(p, public);
        let dp = *pick(&mut self.rng, pat.dp);
        let los = (dis - adm).num_days();
        let seance = pat.ghm.starts_with("28");
        let sev = if seance {
            'Z'
        } else if pat.ghm.starts_with("14Z") {
            'A'
        } else if los == 0 {
            if pat.ghm.as_bytes()[2] == b'M' {
                'T'
            } else {
                'J'
            }
        } else {
            *pick_weighted(
                &mut self.rng,
                &[('1', 0.55), ('2', 0.25), ('3', 0.15), ('4', 0.05)],
            )
        };
        let error = self.rng.random_bool(0.005);
        let ghm = if error {
            "90Z00Z".to_string()
        } else {
            format!("{}{}", pat.ghm, sev)
        };
        let ghs = 1000 + (mix(pat.ghm.bytes().fold(0u64, |a, b| a * 31 + b as u64)) % 8000) as i64;
        // Associated diagnoses: the person's other conditions.
        let das: Vec<&'static str> = p
            .conditions
            .iter()
            .filter(|(_, o)| *o <= adm)
            .map(|(c, _)| CONDITIONS[*c].icd[0])
            .filter(|c| *c != dp)
            .take(6)
            .collect();
        let pair_psa = p.pair_at(adm).psa;
        let age = p.age_at(adm);
        let dcode = self.ctx.pop.departments[p.dpt].code.clone();
        let bdi_dep = if dcode.starts_with('9') && dcode.len() == 3 && dcode.as_bytes()[1] == b'7' {
            "97".to_string()
        } else {
            dcode[1..].to_string()
        };
        let sor_mod = if died {
            "9"
        } else if self.rng.random_bool(0.05) {
            "7"
        } else {
            "8"
        };
        // Stays duplicated for AP-HP/AP-HM/HCL, and inter-establishment
        // service stays (SEJ_TYP 'B').
        let mut records: Vec<(String, Option<&'static str>)> = vec![(h.eta_num.clone(), None)];
        if !h.duplicates.is_empty() && self.rng.random_bool(0.5) {
            records.push((pick(&mut self.rng, &h.duplicates).to_string(), None));
        }
        if self.rng.random_bool(0.015) {
            records.push((h.eta_num.clone(), Some("B")));
        }
        let yc = self.yc(year);
        let seq_num = self.rng.random_range(1..99_999);
        // A few % of stays fail one chaining check.
        let bad_link = self.rng.random_bool(0.03);
        let which_bad = self.rng.random_range(0..7);
        for (eta, sej_typ) in records {
            // RSA_NUM (10 digits) = chunk x 10^4 + a counter: unique per
            // establishment and year up to 10^6 chunks (100 M people).
            if self.next_rsa >= 10_000 {
                return Err(SynthError::Schema(
                    "more than 10 000 stays in one chunk; RSA_NUM would repeat".into(),
                ));
            }
            let rsa = (self.chunk * 10_000 + self.next_rsa) as i64;
            self.next_rsa += 1;
            let b = &yc.b;
            let w = &mut self.w;
            w.start(b.width);
            w.str(b.ETA_NUM, &eta)
                .int(b.RSA_NUM, rsa)
                .str(b.DGN_PAL, dp)
                .str(b.GRG_GHM, &ghm)
                .str(b.GRG_RET, if error { "1" } else { "0" })
                .int(b.GHS_NUM, ghs)
                .int(b.AGE_ANN, age.floor().max(0.0) as i64)
                .str(b.COD_SEX, if p.sex == 1 { "1" } else { "2" })
                .str(b.BDI_DEP, &bdi_dep)
                .str(b.BDI_COD, &format!("{}{:03}", &bdi_dep, p.com))
                .int(b.SOR_ANN, dis.year() as i64)
                .int(b.SOR_MOI, dis.month() as i64)
                .str(b.ENT_MOD, "8")
                .str(b.SOR_MOD, sor_mod)
                .int(b.NBR_DGN, das.len() as i64)
                .int(b.NBR_RUM, 1)
                .int(b.NBR_ACT, pat.acts.len() as i64)
                .str(b.TYP_GEN_RSA, "0");
            if age < 1.0 {
                w.int(b.AGE_JOU, (adm - p.birth).num_days());
            }
            if seance {
                w.int(b.NBR_SEA, 1);
            } else {
                w.int(b.SEJ_NBJ, los);
            }
            if let Some(t) = sej_typ {
                w.str(b.SEJ_TYP, t);
            }
            if sor_mod == "7" {
                w.str(b.SOR_DES, "1");
            }
            self.emit(Table::McoB, year);

            let c = &yc.c;
            let w = &mut self.w;
            w.start(c.width);
            let ret = |k: usize| if bad_link && which_bad == k { "1" } else { "0" };
            if bad_link && which_bad == 0 && self.rng.random_bool(0.5) {
                w.str(c.NIR_ANO_17, "xxxxxxxxxxxxxxxxx");
            } else {
                w.bytes(c.NIR_ANO_17, &pair_psa);
            }
            w.str(c.ETA_NUM, &eta)
                .int(c.RSA_NUM, rsa)
                .int(c.SEJ_NUM, seq_num)
                .sas(c.EXE_SOI_DTD, adm)
                .sas(c.EXE_SOI_DTF, dis)
                .year_month(c.EXE_SOI_AMD, adm)
                .year_month(c.EXE_SOI_AMF, dis)
                .compact(c.ENT_DAT, adm)
                .compact(c.SOR_DAT, dis)
                .int(c.SOR_ANN, dis.year() as i64)
                .int(c.SOR_MOI, dis.month() as i64)
                .str(c.NIR_RET, ret(0))
                .str(c.NAI_RET, ret(1))
                .str(c.SEX_RET, ret(2))
                .str(c.SEJ_RET, ret(3))
                .str(c.FHO_RET, ret(4))
                .str(c.PMS_RET, ret(5))
                .str(c.DAT_RET, ret(6))
                .str(c.COH_NAI_RET, "0")
                .str(c.COH_SEX_RET, "0");
            self.emit(Table::McoC, year);

            for (k, da) in das.iter().enumerate() {
                let d = &yc.d;
                self.w.start(d.width);
                self.w
                    .str(d.ETA_NUM, &eta)
                    .int(d.RSA_NUM, rsa)
                    .str(d.ASS_DGN, da)
                    .int(d.DGN_ASS_NUM, k as i64 + 1);
                self.emit(Table::McoD, year);
            }
            for act in pat.acts {
                let a = &yc.a;
                let delay = if los > 0 {
                    self.rng.random_range(0..=los.min(3))
                } else {
                    0
                };
                self.w.start(a.width);
                self.w
                    .str(a.ETA_NUM, &eta)
                    .int(a.RSA_NUM, rsa)
                    .str(a.CDC_ACT, act)
                    .str(a.ACV_ACT, if act.starts_with("ZZLP") { "4" } else { "1" })
                    .str(a.PHA_ACT, "0")
                    .int(a.NBR_EXE_ACT, 1)
                    .int(a.ENT_DAT_DEL, delay);
                self.emit(Table::McoA, year);
            }
        }
        // The DCIR side: public stays arrive "for information" (DPN_QLF 71),
        // private clinic stays are billed: fees plus the surgeon's CCAM act.
        let fin8 = h.eta_num[..8].to_string();
        let mut lines = Vec::new();
        let mut l = Line::new(2211, 60_000 + 40_000 * los.min(20), 80, 0);
        l.end = Some(dis);
        l.hosp = Some(adm);
        l.act_nat = 0;
        if public {
            let taa = if self.rng.random_bool(0.35) { 1 } else { 0 };
            l.dpn = 71;
            l.ete = Some(EteInfo {
                finess: fin8,
                taa,
                public: true,
            });
            lines.push(l);
        } else {
            l.ete = Some(EteInfo {
                finess: fin8.clone(),
                taa: 2,
                public: false,
            });
            lines.push(l);
            if let Some(act) = pat.acts.first() {
                let mut s = Line::new(1321, 30_000, 100, 41);
                s.detail = Detail::Cam {
                    code: act,
                    price: 30_000,
                };
                s.ete = Some(EteInfo {
                    finess: fin8,
                    taa: 2,
                    public: false,
                });
                s.hosp = Some(adm);
                lines.push(s);
            }
        }
        let flx = first_of_month_plus(dis, self.rng.random_range(1..4));
        self.write_claim(p, adm, &lines, 0, flx, 2)?;
        Ok(())
    }

    fn write_ben(&mut self, p: &Person) {
        let yc = self.yc(self.ctx.y1);
        let c = &yc.ben;
        let dcode = self.ctx.pop.departments[p.dpt].code.clone();
        let idt = p.idt_ano();
        for pair in &p.pairs {
            self.w.start(c.width);
            self.w
                .bytes(c.BEN_NIR_PSA, &pair.psa)
                .int(c.BEN_RNG_GEM, pair.rng as i64);
            if let Some(n) = &p.nir_ano {
                self.w.bytes(c.BEN_NIR_ANO, n);
            }
            self.w
                .bytes(c.BEN_IDT_ANO, &idt)
                .int(c.BEN_IDT_TOP, i64::from(p.nir_ano.is_some()))
                .str(c.BEN_CDI_NIR, pair.cdi)
                .int(c.BEN_NAI_ANN, p.birth.year() as i64)
                .str(c.BEN_NAI_MOI, &format!("{:02}", p.birth.month()))
                .int(c.BEN_SEX_COD, p.sex as i64)
                .str(c.ORG_AFF_BEN, &p.org_aff)
                .str(c.BEN_RES_DPT, &dcode)
                .int(c.BEN_RES_COM, p.com as i64)
                .int(c.BEN_TOP_CNS, i64::from(p.max_flow.is_some()))
                .date(
                    c.BEN_DTE_INS,
                    if pair.from == NaiveDate::MIN {
                        p.birth.max(ymd(2012, 1, 1))
                    } else {
                        pair.from
                    },
                )
                .date(c.BEN_DTE_MAJ, self.win_end);
            match p.death.filter(|d| self.in_window(*d)) {
                Some(d) => {
                    self.w.date(c.BEN_DCD_DTE, d).year_month(c.BEN_DCD_AME, d);
                }
                None => {
                    self.w.str(c.BEN_DCD_DTE, "01/01/1600");
                }
            }
            match p.max_flow {
                Some(f) => self.w.date(c.MAX_TRT_DTD, f),
                None => self.w.str(c.MAX_TRT_DTD, "01/01/1600"),
            };
            self.emit(Table::IrBen, 0);
        }
    }

    fn write_imb(&mut self, p: &Person) {
        let yc = self.yc(self.ctx.y1);
        let c = &yc.imb;
        for ci in &p.ald {
            let Some((_, onset)) = p.conditions.iter().find(|(c, _)| c == ci) else {
                continue;
            };
            let cond = &CONDITIONS[*ci];
            let Some((num, _)) = cond.ald else { continue };
            let pair = p.pair_at(self.win_end);
            let icd = cond.icd[0];
            // ALD granted 0-3 months after onset for 5 years (renewal rows
            // follow), a few open-ended (2099 or sentinel).
            let mut start = days(*onset, self.rng.random_range(15..90));
            loop {
                let open = self.rng.random_bool(0.1);
                let end = days(start, 5 * 365);
                self.w.start(c.width);
                self.w
                    .bytes(c.BEN_NIR_PSA, &pair.psa)
                    .int(c.BEN_RNG_GEM, pair.rng as i64)
                    .date(c.IMB_ALD_DTD, start)
                    .int(c.IMB_ALD_NUM, num as i64)
                    .int(
                        c.IMB_ETM_NAT,
                        if self.rng.random_bool(0.95) { 41 } else { 45 },
                    )
                    .str(c.MED_MTF_COD, icd)
                    .str(c.MED_NCL_IDT, "CIM10")
                    .date(c.INS_DTE, start)
                    .date(c.UPD_DTE, start);
                if end > self.win_end || open {
                    if open {
                        self.w.str(c.IMB_ALD_DTF, "31/12/2099");
                    } else if self.rng.random_bool(0.5) {
                        self.w.str(c.IMB_ALD_DTF, "01/01/1600");
                    } else {
                        self.w.date(c.IMB_ALD_DTF, end);
                    }
                } else {
                    self.w.date(c.IMB_ALD_DTF, end);
                }
                self.emit(Table::IrImb, 0);
                if open || end > self.win_end || p.death.is_some_and(|d| d < end) {
                    break;
                }
                start = days(end, 1);
            }
        }
    }

    fn write_death(&mut self, p: &Person, d: NaiveDate) {
        let yc = self.yc(self.ctx.y1);
        let idt = p.idt_ano();
        let dcode = self.ctx.pop.departments[p.dpt].code.clone();
        let k = mix(self.ctx.seed ^ 0x00DE_CE5D);
        let enc = format!(
            "{:016X}{:016X}{:016X}{:016X}",
            mix(p.idx ^ k),
            mix(p.idx.wrapping_add(k)),
            mix(k ^ 7),
            mix(p.idx ^ 3)
        );
        let c = &yc.cci;
        self.w.start(c.width);
        self.w
            .str(c.DCD_IDT_ENC, &enc)
            .int(c.DCD_IDT_TOP, 1)
            .bytes(c.BEN_IDT_ANO, &idt)
            .int(c.BEN_IDT_TOP, i64::from(p.nir_ano.is_some()))
            .int(c.FLX_PER_ANN, d.year() as i64)
            .str(c.DCD_DPT_COD, &dcode)
            .str(c.BEN_RES_DPT, &dcode)
            .int(c.BEN_RES_COM, p.com as i64)
            .date(c.BEN_DCD_DTE, d)
            .year_month(c.BEN_DCD_AME, d)
            .int(
                c.DCD_LIE_COD,
                if self.rng.random_bool(0.55) {
                    2
                } else {
                    *pick(&mut self.rng, &[1, 1, 4, 6])
                },
            )
            .int(c.BEN_NAI_ANN, p.birth.year() as i64)
            .str(c.BEN_NAI_MOI, &format!("{:02}", p.birth.month()))
            .int(c.BEN_SEX_COD, p.sex as i64)
            .str(c.DCD_CIM_COD, p.death_cause);
        if let Some(n) = &p.nir_ano {
            self.w.bytes(c.BEN_NIR_ANO, n);
        }
        self.emit(Table::KiCci, 0);
        // All causes on the certificate: the initial cause and comorbidities.
        let mut causes = vec![p.death_cause];
        for (ci, _) in &p.conditions {
            let code = CONDITIONS[*ci].icd[0];
            if !causes.contains(&code) && causes.len() < 4 {
                causes.push(code);
            }
        }
        let e = &yc.ecd;
        for (k, cause) in causes.iter().enumerate() {
            let label = self.ctx.cim_labels.get(*cause).cloned().unwrap_or_default();
            self.w.start(e.width);
            self.w
                .str(e.DCD_IDT_ENC, &enc)
                .int(e.DCD_IDT_TOP, 1)
                .bytes(e.BEN_IDT_ANO, &idt)
                .int(e.BEN_IDT_TOP, i64::from(p.nir_ano.is_some()))
                .int(e.FLX_PER_ANN, d.year() as i64)
                .int(e.CER_LIG_NUM, if k == 0 { 1 } else { 2 })
                .int(e.ECD_CAU_RNG, k as i64 + 1)
                .str(e.ECD_CAU_LIB, &label.replace([';', '\n'], " "))
                .str(e.ECD_CIM_COD, cause)
                .date(e.BEN_DCD_DTE, d)
                .year_month(e.BEN_DCD_AME, d);
            if let Some(n) = &p.nir_ano {
                self.w.bytes(e.BEN_NIR_ANO, n);
            }
            self.emit(Table::KiEcd, 0);
        }
    }
}

//! Who the synthetic beneficiaries are: France's age/sex pyramid and the
//! population of each department (INSEE figures, see `data/SOURCES.md`).

use crate::SynthError;

const PYRAMID: &str = include_str!("../data/age_sex_pyramid.csv");
const DEPARTMENTS: &str = include_str!("../data/departments.csv");

/// A department and its population weight.
#[derive(Debug, Clone)]
pub struct Department {
    /// SNDS code (`075`, `02A`, `971`).
    pub code: String,
    /// Name.
    pub name: String,
    /// INSEE region code.
    pub region: String,
    /// Legal population.
    pub population: u64,
}

/// The reference population the generator samples from.
#[derive(Debug, Clone)]
pub struct Population {
    /// `(age, men, women)` counts, ages 0..=100 (100 = 100 and over).
    pub pyramid: Vec<(u32, u64, u64)>,
    /// Departments.
    pub departments: Vec<Department>,
    cum_age_sex: Vec<(u64, u32, u8)>,
    cum_dpt: Vec<u64>,
}

fn bad(file: &str, line: usize, why: &str) -> SynthError {
    SynthError::Schema(format!("embedded data file {file}, line {line}: {why}"))
}

impl Population {
    /// Parses the embedded reference tables.
    pub fn load() -> Result<Self, SynthError> {
        let mut pyramid = Vec::new();
        for (i, l) in PYRAMID.lines().enumerate().skip(1) {
            if l.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = l.split(';').collect();
            let parse = |s: Option<&&str>| s.and_then(|s| s.trim().parse::<u64>().ok());
            match (parse(f.first()), parse(f.get(1)), parse(f.get(2))) {
                (Some(a), Some(m), Some(w)) => pyramid.push((a as u32, m, w)),
                _ => return Err(bad("age_sex_pyramid.csv", i + 1, "expected age;men;women")),
            }
        }
        let mut departments = Vec::new();
        for (i, l) in DEPARTMENTS.lines().enumerate().skip(1) {
            if l.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = l.split(';').collect();
            let pop = f.get(3).and_then(|s| s.trim().parse::<u64>().ok());
            match (f.first(), f.get(1), f.get(2), pop) {
                (Some(c), Some(r), Some(n), Some(p)) => departments.push(Department {
                    code: c.to_string(),
                    region: r.to_string(),
                    name: n.to_string(),
                    population: p,
                }),
                _ => {
                    return Err(bad(
                        "departments.csv",
                        i + 1,
                        "expected dpt;region;name;population",
                    ));
                }
            }
        }
        let mut cum_age_sex = Vec::new();
        let mut acc = 0;
        for &(age, m, w) in &pyramid {
            acc += m;
            cum_age_sex.push((acc, age, 1));
            acc += w;
            cum_age_sex.push((acc, age, 2));
        }
        let mut cum_dpt = Vec::new();
        let mut acc = 0;
        for d in &departments {
            acc += d.population;
            cum_dpt.push(acc);
        }
        if cum_age_sex.is_empty() || cum_dpt.is_empty() {
            return Err(SynthError::Schema(
                "embedded population tables are empty".into(),
            ));
        }
        Ok(Population {
            pyramid,
            departments,
            cum_age_sex,
            cum_dpt,
        })
    }

    /// Draws `(age, sex)` from a uniform `u` in `[0, 1)`.
    pub fn age_sex(&self, u: f64) -> (u32, u8) {
        let total = self.cum_age_sex.last().map(|c| c.0).unwrap_or(1);
        let target = (u * total as f64) as u64;
        let i = self
            .cum_age_sex
            .partition_point(|c| c.0 <= target)
            .min(self.cum_age_sex.len() - 1);
        (self.cum_age_sex[i].1, self.cum_age_sex[i].2)
    }

    /// Draws a department index from a uniform `u` in `[0, 1)`.
    pub fn department(&self, u: f64) -> usize {
        let total = self.cum_dpt.last().copied().unwrap_or(1);
        let target = (u * total as f64) as u64;
        self.cum_dpt
            .partition_point(|c| *c <= target)
            .min(self.cum_dpt.len() - 1)
    }

    /// Expected share of each sex in each age band `[lo, hi)`, for tests and
    /// reports.
    pub fn share(&self, lo: u32, hi: u32, sex: u8) -> f64 {
        let total: u64 = self.pyramid.iter().map(|p| p.1 + p.2).sum();
        let part: u64 = self
            .pyramid
            .iter()
            .filter(|p| p.0 >= lo && p.0 < hi)
            .map(|p| if sex == 1 { p.1 } else { p.2 })
            .sum();
        part as f64 / total as f64
    }
}

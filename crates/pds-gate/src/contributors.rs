//! Counting the patients behind aggregated values.
//!
//! [`Contributors`] is the aggregate the gate adds to every aggregate of an
//! aggregate-only project. Per group, in one pass and one hash lookup per
//! row, it counts the distinct patients behind the group and behind each of
//! the user's aggregated values (a value only counts the patients whose rows
//! reached it: `count(x)` those with `x` not null, `sum(x) FILTER (WHERE c)`
//! those with `c` true and `x` not null or zero), and the share of each sum
//! held by its largest contributors (the dominance rule). It also hands the
//! set of every patient it saw to the statement's query-set tracker.
//!
//! Patients are keyed 64-bit hashes (SipHash-1-3 under a key derived from
//! the platform key) of the stored platform pseudonym: no project
//! pseudonym has to be computed, and nothing that leaves the gate names a
//! patient.
//!
//! [`Iblt`] is the invertible Bloom lookup table the tracker keeps of each
//! published population: subtracting two of them and peeling the result
//! recovers the patients two populations differ by, when there are few.

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray, UInt64Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

/// The keyed hash of patients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PatientKey(pub u64, pub u64);

impl PatientKey {
    /// Derives the key from the platform key: stable across statements and
    /// restarts (the tracker compares populations over time), unknown
    /// outside the platform.
    pub fn derive(platform: &[u8; 32]) -> PatientKey {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(platform);
        h.update(b"pds/disclosure/patients/v1");
        let d = h.finalize();
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&d[..8]);
        b.copy_from_slice(&d[8..16]);
        PatientKey(u64::from_le_bytes(a), u64::from_le_bytes(b))
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.0, self.1);
        h.write(bytes);
        h.finish()
    }
}

/// Patients are already keyed hashes, uniformly spread: the maps use them
/// as they are instead of hashing them again.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyedBuild;

/// The hasher of [`KeyedBuild`].
#[derive(Debug, Default)]
pub struct KeyedHasher(u64);

impl Hasher for KeyedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl std::hash::BuildHasher for KeyedBuild {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher(0)
    }
}

/// Where the patients of one aggregate go, for the query-set tracker: one
/// set per condition (0: every patient of the aggregate; then those behind
/// each filtered value).
pub type PopulationSink = Arc<Mutex<Vec<HashSet<u64>>>>;

/// `pds_contributors(patient, cond_1..cond_m, value_1..value_d)`: a list of
/// `1 + m + d` numbers per group: distinct patients of the group, distinct
/// patients with `cond_i` true, and for each value the share (0 to 1) of
/// the sum of absolute per-patient sums held by the `top_n` largest.
#[derive(Debug)]
pub struct Contributors {
    id: u64,
    signature: Signature,
    key: PatientKey,
    conditions: usize,
    values: usize,
    top_n: usize,
    sink: Option<PopulationSink>,
}

impl PartialEq for Contributors {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Contributors {}
impl std::hash::Hash for Contributors {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl Contributors {
    /// An instance for one aggregate of one statement (`id` distinguishes
    /// them in a plan).
    pub fn new(
        id: u64,
        key: PatientKey,
        conditions: usize,
        values: usize,
        top_n: usize,
        sink: Option<PopulationSink>,
    ) -> Contributors {
        Contributors {
            id,
            signature: Signature::variadic_any(Volatility::Immutable),
            key,
            conditions,
            values,
            top_n,
            sink,
        }
    }
}

fn list_field(name: &str, item: DataType) -> FieldRef {
    Arc::new(Field::new(
        name,
        DataType::List(Arc::new(Field::new_list_field(item, true))),
        true,
    ))
}

impl AggregateUDFImpl for Contributors {
    fn name(&self) -> &str {
        "pds_contributors"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Float64,
            true,
        ))))
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(ContributorsAcc {
            key: self.key,
            conditions: self.conditions,
            values: self.values,
            top_n: self.top_n,
            sink: self.sink.clone(),
            patients: HashMap::default(),
            sums: Vec::new(),
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            list_field(&format!("{}[patients]", args.name), DataType::UInt64),
            list_field(&format!("{}[masks]", args.name), DataType::UInt64),
            list_field(&format!("{}[sums]", args.name), DataType::Float64),
        ])
    }
}

/// Per group: patient → (bit mask of the conditions it met, index of its
/// sums in `sums`).
#[derive(Debug)]
struct ContributorsAcc {
    key: PatientKey,
    conditions: usize,
    values: usize,
    top_n: usize,
    sink: Option<PopulationSink>,
    patients: HashMap<u64, (u64, usize), KeyedBuild>,
    sums: Vec<f64>,
}

impl ContributorsAcc {
    fn entry(&mut self, patient: u64) -> &mut (u64, usize) {
        let values = self.values;
        let sums = &mut self.sums;
        self.patients.entry(patient).or_insert_with(|| {
            let at = sums.len();
            sums.resize(at + values, 0.0);
            (1, at)
        })
    }
}

/// The keyed hashes of a column of stored patient identifiers (`None`:
/// no patient on that row).
fn hashes(key: PatientKey, a: &ArrayRef) -> Result<Vec<Option<u64>>> {
    let n = a.len();
    let mut out = Vec::with_capacity(n);
    match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            for i in 0..n {
                out.push(s.is_valid(i).then(|| key.hash(s.value(i).as_bytes())));
            }
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            for i in 0..n {
                out.push(s.is_valid(i).then(|| key.hash(s.value(i).as_bytes())));
            }
        }
        DataType::Utf8View => {
            let s = a.as_string_view();
            for i in 0..n {
                out.push(s.is_valid(i).then(|| key.hash(s.value(i).as_bytes())));
            }
        }
        other => {
            return Err(DataFusionError::Internal(format!(
                "patient identifiers of type {other} cannot be counted"
            )));
        }
    }
    Ok(out)
}

fn list_values(a: &ArrayRef, row: usize) -> Result<ArrayRef> {
    let l = a
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or_else(|| DataFusionError::Internal("contributors state is not a list".into()))?;
    Ok(l.value(row))
}

impl Accumulator for ContributorsAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let want = 1 + self.conditions + self.values;
        if values.len() != want {
            return Err(DataFusionError::Internal(format!(
                "pds_contributors takes {want} arguments, got {}",
                values.len()
            )));
        }
        let ids = hashes(self.key, &values[0])?;
        let conds: Vec<&BooleanArray> = values[1..1 + self.conditions]
            .iter()
            .map(|a| {
                a.as_any().downcast_ref::<BooleanArray>().ok_or_else(|| {
                    DataFusionError::Internal("contributors condition is not boolean".into())
                })
            })
            .collect::<Result<_>>()?;
        let vals: Vec<&Float64Array> = values[1 + self.conditions..]
            .iter()
            .map(|a| {
                a.as_any().downcast_ref::<Float64Array>().ok_or_else(|| {
                    DataFusionError::Internal("contributors value is not a double".into())
                })
            })
            .collect::<Result<_>>()?;
        for (row, id) in ids.into_iter().enumerate() {
            let Some(id) = id else { continue };
            let mut mask = 1u64;
            for (i, c) in conds.iter().enumerate() {
                if c.is_valid(row) && c.value(row) {
                    mask |= 1 << (i + 1);
                }
            }
            let e = self.entry(id);
            e.0 |= mask;
            let at = e.1;
            for (j, v) in vals.iter().enumerate() {
                if v.is_valid(row) {
                    self.sums[at + j] += v.value(row);
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mut out = vec![0f64; 1 + self.conditions + self.values];
        for (mask, _) in self.patients.values() {
            for (b, slot) in out.iter_mut().take(1 + self.conditions).enumerate() {
                if mask & (1 << b) != 0 {
                    *slot += 1.0;
                }
            }
        }
        for j in 0..self.values {
            let mut contributions: Vec<f64> = self
                .patients
                .values()
                .map(|(_, at)| self.sums[at + j].abs())
                .filter(|v| *v > 0.0)
                .collect();
            let total: f64 = contributions.iter().sum();
            contributions.sort_by(|a, b| b.total_cmp(a));
            let top: f64 = contributions.iter().take(self.top_n).sum();
            out[1 + self.conditions + j] = if total > 0.0 { top / total } else { 0.0 };
        }
        if let Some(sink) = &self.sink
            && let Ok(mut s) = sink.lock()
        {
            if s.len() < 1 + self.conditions {
                s.resize_with(1 + self.conditions, HashSet::new);
            }
            for (id, (mask, _)) in &self.patients {
                for (b, set) in s.iter_mut().enumerate() {
                    if mask & (1 << b) != 0 {
                        set.insert(*id);
                    }
                }
            }
        }
        Ok(ScalarValue::List(ScalarValue::new_list_nullable(
            &out.into_iter()
                .map(|v| ScalarValue::Float64(Some(v)))
                .collect::<Vec<_>>(),
            &DataType::Float64,
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self.patients.capacity() * (8 + 16 + 8)
            + self.sums.capacity() * 8
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let mut ids = Vec::with_capacity(self.patients.len());
        let mut masks = Vec::with_capacity(self.patients.len());
        let mut sums = Vec::with_capacity(self.patients.len() * self.values);
        for (id, (mask, at)) in &self.patients {
            ids.push(*id);
            masks.push(*mask);
            sums.extend_from_slice(&self.sums[*at..*at + self.values]);
        }
        let list = |a: ArrayRef| {
            let n = a.len();
            let item = a.data_type().clone();
            ScalarValue::List(Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(item, true)),
                OffsetBuffer::from_lengths([n]),
                a,
                None,
            )))
        };
        Ok(vec![
            list(Arc::new(UInt64Array::from(ids))),
            list(Arc::new(UInt64Array::from(masks))),
            list(Arc::new(Float64Array::from(sums))),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        if states.len() != 3 {
            return Err(DataFusionError::Internal(
                "contributors state has three parts".into(),
            ));
        }
        for row in 0..states[0].len() {
            if states[0].is_null(row) {
                continue;
            }
            let ids = list_values(&states[0], row)?;
            let masks = list_values(&states[1], row)?;
            let sums = list_values(&states[2], row)?;
            let ids = ids.as_primitive::<arrow::datatypes::UInt64Type>();
            let masks = masks.as_primitive::<arrow::datatypes::UInt64Type>();
            let sums = sums.as_primitive::<arrow::datatypes::Float64Type>();
            if masks.len() != ids.len() || sums.len() != ids.len() * self.values {
                return Err(DataFusionError::Internal(
                    "contributors state parts differ in length".into(),
                ));
            }
            for i in 0..ids.len() {
                let e = self.entry(ids.value(i));
                e.0 |= masks.value(i);
                let at = e.1;
                for j in 0..self.values {
                    self.sums[at + j] += sums.value(i * self.values + j);
                }
            }
        }
        Ok(())
    }
}

/// Number of hash functions of an [`Iblt`] (one sub-table each).
const IBLT_HASHES: usize = 4;

/// An invertible Bloom lookup table of 64-bit keys (Goodrich and
/// Mitzenmacher, 2011), used as a fixed-size summary of a population.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iblt {
    count: Vec<i64>,
    keys: Vec<u64>,
    checks: Vec<u64>,
}

fn mix(mut x: u64) -> u64 {
    // SplitMix64's finaliser: a bijection that spreads every input bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Iblt {
    /// The size that recovers differences of up to `threshold` keys with
    /// overwhelming probability: 4 sub-tables of `3 × threshold` cells (at
    /// least 24). The unit tests measure no failure in 4 000 trials.
    pub fn cells_for(threshold: u64) -> usize {
        IBLT_HASHES * (3 * threshold as usize).max(24)
    }

    /// An empty table of `cells` cells (rounded up to a multiple of 4).
    pub fn new(cells: usize) -> Iblt {
        let cells = cells.div_ceil(IBLT_HASHES) * IBLT_HASHES;
        Iblt {
            count: vec![0; cells],
            keys: vec![0; cells],
            checks: vec![0; cells],
        }
    }

    /// Number of cells.
    pub fn cells(&self) -> usize {
        self.count.len()
    }

    fn slots(&self, key: u64) -> [usize; IBLT_HASHES] {
        let part = self.count.len() / IBLT_HASHES;
        let mut out = [0; IBLT_HASHES];
        for (i, o) in out.iter_mut().enumerate() {
            let h = mix(key ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)));
            *o = i * part + (h % part as u64) as usize;
        }
        out
    }

    fn add(&mut self, key: u64, sign: i64) {
        let check = mix(key ^ 0x5851_f42d_4c95_7f2d);
        for s in self.slots(key) {
            self.count[s] += sign;
            self.keys[s] ^= key;
            self.checks[s] ^= check;
        }
    }

    /// Adds a key.
    pub fn insert(&mut self, key: u64) {
        self.add(key, 1);
    }

    /// `self - other`: a table of the keys in one but not the other.
    pub fn subtract(&self, other: &Iblt) -> Option<Iblt> {
        if self.cells() != other.cells() {
            return None;
        }
        let mut d = self.clone();
        for i in 0..d.cells() {
            d.count[i] -= other.count[i];
            d.keys[i] ^= other.keys[i];
            d.checks[i] ^= other.checks[i];
        }
        Some(d)
    }

    /// Peels a difference table: the number of keys it holds, or `None`
    /// when there are too many to recover (the populations differ a lot).
    pub fn difference_size(mut self) -> Option<usize> {
        let mut found = 0;
        loop {
            let pure = (0..self.cells()).find(|&i| {
                (self.count[i] == 1 || self.count[i] == -1)
                    && mix(self.keys[i] ^ 0x5851_f42d_4c95_7f2d) == self.checks[i]
            });
            match pure {
                Some(i) => {
                    let key = self.keys[i];
                    let sign = self.count[i];
                    self.add(key, -sign);
                    found += 1;
                }
                None => break,
            }
        }
        let empty = self.count.iter().all(|c| *c == 0)
            && self.keys.iter().all(|k| *k == 0)
            && self.checks.iter().all(|c| *c == 0);
        empty.then_some(found)
    }

    /// Hex form, for the catalogue.
    pub fn to_hex(&self) -> String {
        let mut b = Vec::with_capacity(self.cells() * 24);
        for i in 0..self.cells() {
            b.extend_from_slice(&self.count[i].to_le_bytes());
            b.extend_from_slice(&self.keys[i].to_le_bytes());
            b.extend_from_slice(&self.checks[i].to_le_bytes());
        }
        hex::encode(b)
    }

    /// Parses [`Iblt::to_hex`].
    pub fn from_hex(s: &str) -> Option<Iblt> {
        let b = hex::decode(s).ok()?;
        if b.is_empty() || b.len() % 24 != 0 || (b.len() / 24) % IBLT_HASHES != 0 {
            return None;
        }
        let n = b.len() / 24;
        let mut t = Iblt::new(n);
        for i in 0..n {
            let w = |o: usize| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[i * 24 + o..i * 24 + o + 8]);
                a
            };
            t.count[i] = i64::from_le_bytes(w(0));
            t.keys[i] = u64::from_le_bytes(w(8));
            t.checks[i] = u64::from_le_bytes(w(16));
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(keys: impl IntoIterator<Item = u64>, cells: usize) -> Iblt {
        let mut t = Iblt::new(cells);
        for k in keys {
            t.insert(mix(k));
        }
        t
    }

    #[test]
    fn small_differences_between_large_populations_are_recovered_exactly() {
        let cells = Iblt::cells_for(10);
        let mut failures = 0;
        for trial in 0..4000u64 {
            let d = (trial % 12) as usize; // 0 to 11 patients apart
            let base = trial * 1_000_000;
            let a = table(base..base + 5_000, cells);
            // b drops the first d/2 and adds d - d/2 new ones.
            let drop = d / 2;
            let b = table(
                (base + drop as u64..base + 5_000)
                    .chain(base + 900_000..base + 900_000 + (d - drop) as u64),
                cells,
            );
            match a.subtract(&b).and_then(Iblt::difference_size) {
                Some(n) => assert_eq!(n, d, "trial {trial}"),
                None => failures += 1,
            }
        }
        assert_eq!(failures, 0, "differences under 12 must always decode");
    }

    #[test]
    fn large_differences_do_not_decode_as_small_ones() {
        let cells = Iblt::cells_for(10);
        for trial in 0..200u64 {
            let a = table(trial * 10_000..trial * 10_000 + 5_000, cells);
            let b = table(trial * 10_000 + 2_000..trial * 10_000 + 7_000, cells);
            let got = a.subtract(&b).and_then(Iblt::difference_size);
            assert!(
                got.is_none() || got == Some(4_000),
                "trial {trial}: {got:?}"
            );
        }
    }

    #[test]
    fn hex_round_trips() {
        let t = table(0..100, Iblt::cells_for(10));
        assert_eq!(Iblt::from_hex(&t.to_hex()), Some(t));
        assert_eq!(Iblt::from_hex("zz"), None);
    }
}

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
//! It is a vectorised [`GroupsAccumulator`]: one hash table of (group,
//! patient) pairs for all groups, rows hashed a batch at a time with a fast
//! hash of the stored identifier. The population handed to the tracker is
//! made of keyed 64-bit hashes (SipHash-1-3 under a key derived from the
//! platform key) of the stored platform pseudonym, computed once per new
//! pair: no project pseudonym has to be computed, and nothing that leaves
//! the gate names a patient.
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
use datafusion::common::hash_utils::{QualityRandomState, create_hashes};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

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
        Ok(Box::new(ContributorsAcc(self.groups())))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.groups()))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            list_field(&format!("{}[rows]", args.name), DataType::UInt64),
            list_field(&format!("{}[patients]", args.name), DataType::UInt64),
            list_field(&format!("{}[masks]", args.name), DataType::UInt64),
            list_field(&format!("{}[sums]", args.name), DataType::Float64),
        ])
    }
}

impl Contributors {
    #[cfg(test)]
    fn accumulator_for_tests(&self) -> ContributorsAcc {
        ContributorsAcc(self.groups())
    }

    fn groups(&self) -> ContributorsGroups {
        ContributorsGroups::new(
            self.key,
            self.conditions,
            self.values,
            self.top_n,
            self.sink.clone(),
        )
    }
}

/// One (group, patient) pair of [`ContributorsGroups`]. `row` is the fast
/// hash of the stored identifier, the same in every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pair {
    group: usize,
    row: u64,
}

impl std::hash::Hash for Pair {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // `row` is already uniformly spread; mixing the group in by a
        // multiplication keeps pairs of one patient in different groups apart.
        state.write_u64(self.row ^ (self.group as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
}

/// The state of every group at once: one hash table of (group, patient)
/// pairs, one lookup per row, and the pairs' data in flat vectors.
///
/// Rows are told apart by a fast 64-bit hash of the identifier (computed
/// a batch at a time); the keyed SipHash the tracker needs is computed
/// once per new pair, not once per row. Two patients sharing a fast hash
/// would be counted as one: fewer patients, so more is withheld, never
/// less.
#[derive(Debug)]
pub struct ContributorsGroups {
    key: PatientKey,
    rows: QualityRandomState,
    conditions: usize,
    values: usize,
    top_n: usize,
    sink: Option<PopulationSink>,
    map: HashMap<Pair, usize, KeyedBuild>,
    group_of: Vec<usize>,
    row_hash: Vec<u64>,
    patient: Vec<u64>,
    masks: Vec<u64>,
    sums: Vec<f64>,
    groups: usize,
    buffer: Vec<u64>,
}

/// The stored patient identifiers of a batch.
enum Ids<'a> {
    Utf8(&'a arrow::array::StringArray),
    LargeUtf8(&'a arrow::array::LargeStringArray),
    Utf8View(&'a arrow::array::StringViewArray),
    Int64(&'a arrow::array::Int64Array),
    Int32(&'a arrow::array::Int32Array),
    UInt64(&'a UInt64Array),
}

impl<'a> Ids<'a> {
    fn new(a: &'a ArrayRef) -> Result<Ids<'a>> {
        use arrow::datatypes::{Int32Type, Int64Type, UInt64Type};
        Ok(match a.data_type() {
            DataType::Utf8 => Ids::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => Ids::LargeUtf8(a.as_string::<i64>()),
            DataType::Utf8View => Ids::Utf8View(a.as_string_view()),
            DataType::Int64 => Ids::Int64(a.as_primitive::<Int64Type>()),
            DataType::Int32 => Ids::Int32(a.as_primitive::<Int32Type>()),
            DataType::UInt64 => Ids::UInt64(a.as_primitive::<UInt64Type>()),
            other => {
                return Err(DataFusionError::Internal(format!(
                    "patient identifiers of type {other} cannot be counted"
                )));
            }
        })
    }

    fn keyed(&self, key: PatientKey, i: usize) -> u64 {
        match self {
            Ids::Utf8(s) => key.hash(s.value(i).as_bytes()),
            Ids::LargeUtf8(s) => key.hash(s.value(i).as_bytes()),
            Ids::Utf8View(s) => key.hash(s.value(i).as_bytes()),
            Ids::Int64(s) => key.hash(&s.value(i).to_le_bytes()),
            Ids::Int32(s) => key.hash(&i64::from(s.value(i)).to_le_bytes()),
            Ids::UInt64(s) => key.hash(&s.value(i).to_le_bytes()),
        }
    }
}

fn downcast<'a, T: 'static>(a: &'a ArrayRef, what: &str) -> Result<&'a T> {
    a.as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| DataFusionError::Internal(format!("contributors {what}")))
}

/// The values of a list column and where each row's list starts.
fn list_parts<'a>(a: &'a ArrayRef, what: &str) -> Result<(&'a [i32], &'a ArrayRef)> {
    let l = downcast::<ListArray>(a, what)?;
    Ok((l.value_offsets(), l.values()))
}

fn lists(values: ArrayRef, lengths: impl IntoIterator<Item = usize>) -> ArrayRef {
    let item = values.data_type().clone();
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(item, true)),
        OffsetBuffer::from_lengths(lengths),
        values,
        None,
    ))
}

impl ContributorsGroups {
    fn new(
        key: PatientKey,
        conditions: usize,
        values: usize,
        top_n: usize,
        sink: Option<PopulationSink>,
    ) -> ContributorsGroups {
        ContributorsGroups {
            key,
            rows: QualityRandomState::with_seed(key.0 ^ key.1.rotate_left(32)),
            conditions,
            values,
            top_n,
            sink,
            map: HashMap::default(),
            group_of: Vec::new(),
            row_hash: Vec::new(),
            patient: Vec::new(),
            masks: Vec::new(),
            sums: Vec::new(),
            groups: 0,
            buffer: Vec::new(),
        }
    }

    fn width(&self) -> usize {
        1 + self.conditions + self.values
    }

    /// The index of the pair, created with `patient` (computed only then)
    /// when it is new.
    fn pair(&mut self, group: usize, row: u64, patient: impl FnOnce() -> u64) -> usize {
        let values = self.values;
        match self.map.entry(Pair { group, row }) {
            std::collections::hash_map::Entry::Occupied(e) => *e.get(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let at = self.group_of.len();
                self.group_of.push(group);
                self.row_hash.push(row);
                self.patient.push(patient());
                self.masks.push(0);
                self.sums.resize(self.sums.len() + values, 0.0);
                v.insert(at);
                at
            }
        }
    }

    fn emitted(&self, emit_to: EmitTo) -> usize {
        match emit_to {
            EmitTo::All => self.groups,
            EmitTo::First(n) => n.min(self.groups),
        }
    }

    /// The numbers of groups `0..n`: per group `1 + m + d` values (see
    /// [`Contributors`]), and the patients of each condition to the sink.
    fn numbers(&self, n: usize) -> Result<ArrayRef> {
        let width = self.width();
        let (m, d, top_n) = (self.conditions, self.values, self.top_n.max(1));
        let mut out = vec![0f64; n * width];
        let mut totals = vec![0f64; n * d];
        // Per group and value, the `top_n` largest contributions, largest first.
        let mut tops = vec![0f64; n * d * top_n];
        for (i, &g) in self.group_of.iter().enumerate() {
            if g >= n {
                continue;
            }
            let mask = self.masks[i];
            let slots = &mut out[g * width..g * width + 1 + m];
            for (b, slot) in slots.iter_mut().enumerate() {
                if mask & (1 << b) != 0 {
                    *slot += 1.0;
                }
            }
            for j in 0..d {
                let v = self.sums[i * d + j].abs();
                if v > 0.0 {
                    totals[g * d + j] += v;
                    let top = &mut tops[(g * d + j) * top_n..(g * d + j + 1) * top_n];
                    if v > top[top_n - 1] {
                        let mut k = top_n - 1;
                        while k > 0 && top[k - 1] < v {
                            top[k] = top[k - 1];
                            k -= 1;
                        }
                        top[k] = v;
                    }
                }
            }
        }
        for g in 0..n {
            for j in 0..d {
                let total = totals[g * d + j];
                let top: f64 = tops[(g * d + j) * top_n..(g * d + j + 1) * top_n]
                    .iter()
                    .take(self.top_n)
                    .sum();
                out[g * width + 1 + m + j] = if total > 0.0 { top / total } else { 0.0 };
            }
        }
        if let Some(sink) = &self.sink {
            let mut s = sink
                .lock()
                .map_err(|_| DataFusionError::Internal("population poisoned".into()))?;
            if s.len() < 1 + m {
                s.resize_with(1 + m, HashSet::new);
            }
            for (i, &g) in self.group_of.iter().enumerate() {
                if g >= n {
                    continue;
                }
                let mask = self.masks[i];
                for (b, set) in s.iter_mut().enumerate() {
                    if mask & (1 << b) != 0 {
                        set.insert(self.patient[i]);
                    }
                }
            }
        }
        Ok(lists(
            Arc::new(Float64Array::from(out)),
            std::iter::repeat_n(width, n),
        ))
    }

    /// The state of groups `0..n`: per group the lists of its pairs.
    fn state_of(&self, n: usize) -> Vec<ArrayRef> {
        let d = self.values;
        let mut per_group = vec![0usize; n];
        for &g in &self.group_of {
            if g < n {
                per_group[g] += 1;
            }
        }
        // Counting sort of the pairs by group.
        let mut start = Vec::with_capacity(n);
        let mut at = 0;
        for c in &per_group {
            start.push(at);
            at += c;
        }
        let mut rows = vec![0u64; at];
        let mut patients = vec![0u64; at];
        let mut masks = vec![0u64; at];
        let mut sums = vec![0f64; at * d];
        for (i, &g) in self.group_of.iter().enumerate() {
            if g >= n {
                continue;
            }
            let k = start[g];
            start[g] += 1;
            rows[k] = self.row_hash[i];
            patients[k] = self.patient[i];
            masks[k] = self.masks[i];
            sums[k * d..(k + 1) * d].copy_from_slice(&self.sums[i * d..(i + 1) * d]);
        }
        vec![
            lists(Arc::new(UInt64Array::from(rows)), per_group.iter().copied()),
            lists(
                Arc::new(UInt64Array::from(patients)),
                per_group.iter().copied(),
            ),
            lists(
                Arc::new(UInt64Array::from(masks)),
                per_group.iter().copied(),
            ),
            lists(
                Arc::new(Float64Array::from(sums)),
                per_group.iter().map(|c| c * d),
            ),
        ]
    }

    /// Forgets groups `0..n` and renumbers the others from 0.
    fn drop_first(&mut self, n: usize) {
        if n >= self.groups {
            self.map.clear();
            self.group_of.clear();
            self.row_hash.clear();
            self.patient.clear();
            self.masks.clear();
            self.sums.clear();
            self.groups = 0;
            return;
        }
        let d = self.values;
        let mut w = 0;
        for i in 0..self.group_of.len() {
            if self.group_of[i] < n {
                continue;
            }
            self.group_of[w] = self.group_of[i] - n;
            self.row_hash[w] = self.row_hash[i];
            self.patient[w] = self.patient[i];
            self.masks[w] = self.masks[i];
            self.sums.copy_within(i * d..(i + 1) * d, w * d);
            w += 1;
        }
        self.group_of.truncate(w);
        self.row_hash.truncate(w);
        self.patient.truncate(w);
        self.masks.truncate(w);
        self.sums.truncate(w * d);
        self.map.clear();
        for i in 0..w {
            self.map.insert(
                Pair {
                    group: self.group_of[i],
                    row: self.row_hash[i],
                },
                i,
            );
        }
        self.groups -= n;
    }
}

impl GroupsAccumulator for ContributorsGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let want = self.width();
        if values.len() != want {
            return Err(DataFusionError::Internal(format!(
                "pds_contributors takes {want} arguments, got {}",
                values.len()
            )));
        }
        self.groups = self.groups.max(total_num_groups);
        let n = values[0].len();
        let ids = Ids::new(&values[0])?;
        let conds: Vec<&BooleanArray> = values[1..1 + self.conditions]
            .iter()
            .map(|a| downcast::<BooleanArray>(a, "condition is not boolean"))
            .collect::<Result<_>>()?;
        let vals: Vec<&Float64Array> = values[1 + self.conditions..]
            .iter()
            .map(|a| downcast::<Float64Array>(a, "value is not a double"))
            .collect::<Result<_>>()?;
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        buffer.resize(n, 0);
        create_hashes([&values[0]], &self.rows, &mut buffer)?;
        let key = self.key;
        let patients = values[0].as_ref();
        for (row, &group) in group_indices.iter().enumerate().take(n) {
            if patients.is_null(row) {
                continue;
            }
            if let Some(f) = opt_filter
                && !(f.is_valid(row) && f.value(row))
            {
                continue;
            }
            let mut mask = 1u64;
            for (i, c) in conds.iter().enumerate() {
                if c.is_valid(row) && c.value(row) {
                    mask |= 1 << (i + 1);
                }
            }
            let at = self.pair(group, buffer[row], || ids.keyed(key, row));
            self.masks[at] |= mask;
            let d = self.values;
            for (j, v) in vals.iter().enumerate() {
                if v.is_valid(row) {
                    self.sums[at * d + j] += v.value(row);
                }
            }
        }
        self.buffer = buffer;
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let n = self.emitted(emit_to);
        let out = self.numbers(n)?;
        self.drop_first(n);
        Ok(out)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let n = self.emitted(emit_to);
        let out = self.state_of(n);
        self.drop_first(n);
        Ok(out)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        if values.len() != 4 {
            return Err(DataFusionError::Internal(
                "contributors state has four parts".into(),
            ));
        }
        self.groups = self.groups.max(total_num_groups);
        let (offsets, rows) = list_parts(&values[0], "state is not a list")?;
        let (_, patients) = list_parts(&values[1], "state is not a list")?;
        let (_, masks) = list_parts(&values[2], "state is not a list")?;
        let (sum_offsets, sums) = list_parts(&values[3], "state is not a list")?;
        let rows = downcast::<UInt64Array>(rows, "state rows are not numbers")?;
        let patients = downcast::<UInt64Array>(patients, "state patients are not numbers")?;
        let masks = downcast::<UInt64Array>(masks, "state masks are not numbers")?;
        let sums = downcast::<Float64Array>(sums, "state sums are not numbers")?;
        let d = self.values;
        let lists = downcast::<ListArray>(&values[0], "state is not a list")?;
        if patients.len() != rows.len()
            || masks.len() != rows.len()
            || sums.len() != rows.len() * d
            || offsets.len() != group_indices.len() + 1
        {
            return Err(DataFusionError::Internal(
                "contributors state parts differ in length".into(),
            ));
        }
        for (r, &group) in group_indices.iter().enumerate() {
            if lists.is_null(r) {
                continue;
            }
            let (from, to) = (offsets[r] as usize, offsets[r + 1] as usize);
            let sums_from = sum_offsets[r] as usize;
            for i in from..to {
                let at = self.pair(group, rows.value(i), || patients.value(i));
                self.masks[at] |= masks.value(i);
                for j in 0..d {
                    self.sums[at * d + j] += sums.value(sums_from + (i - from) * d + j);
                }
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Every row its own group: one pair, or none when the row has no
        // patient or is filtered out.
        let mut one =
            ContributorsGroups::new(self.key, self.conditions, self.values, self.top_n, None);
        let n = values.first().map_or(0, |a| a.len());
        let groups: Vec<usize> = (0..n).collect();
        one.update_batch(values, &groups, opt_filter, n)?;
        Ok(one.state_of(n))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self.map.capacity() * (std::mem::size_of::<Pair>() + 8 + 1)
            + self.group_of.capacity() * 8
            + self.row_hash.capacity() * 8
            + self.patient.capacity() * 8
            + self.masks.capacity() * 8
            + self.sums.capacity() * 8
            + self.buffer.capacity() * 8
    }
}

/// The same state for an aggregate without groups (one group, 0).
#[derive(Debug)]
struct ContributorsAcc(ContributorsGroups);

impl Accumulator for ContributorsAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let n = values.first().map_or(0, |a| a.len());
        self.0.update_batch(values, &vec![0; n], None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.groups = 1;
        ScalarValue::try_from_array(&self.0.numbers(1)?, 0)
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.groups = 1;
        self.0
            .state_of(1)
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states.first().map_or(0, |a| a.len());
        self.0.merge_batch(states, &vec![0; n], 1)
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

    /// A small batch: patients (some null), their group, one condition
    /// and one value.
    fn batch(seed: u64, n: usize) -> (Vec<ArrayRef>, Vec<usize>) {
        let mut x = seed;
        let mut next = move || {
            x = mix(x.wrapping_add(1));
            x
        };
        let mut ids = Vec::new();
        let mut groups = Vec::new();
        let mut conds = Vec::new();
        let mut vals = Vec::new();
        for _ in 0..n {
            let r = next();
            ids.push((r % 13 != 0).then(|| format!("P{:016}", r % 40)));
            groups.push((next() % 5) as usize);
            conds.push((r % 7 != 0).then_some(r % 3 == 0));
            vals.push((r % 11 != 0).then_some((r % 100) as f64 - 20.0));
        }
        (
            vec![
                Arc::new(arrow::array::StringViewArray::from(ids)) as ArrayRef,
                Arc::new(BooleanArray::from(conds)),
                Arc::new(Float64Array::from(vals)),
            ],
            groups,
        )
    }

    /// The same numbers computed naively from the rows.
    fn naive(batches: &[(Vec<ArrayRef>, Vec<usize>)], top_n: usize) -> Vec<Vec<f64>> {
        let mut per: Vec<HashMap<String, (bool, f64)>> = vec![HashMap::new(); 5];
        for (cols, groups) in batches {
            let ids = cols[0].as_string_view();
            let conds = cols[1].as_boolean();
            let vals = cols[2].as_primitive::<arrow::datatypes::Float64Type>();
            for (row, &g) in groups.iter().enumerate() {
                if ids.is_null(row) {
                    continue;
                }
                let e = per[g].entry(ids.value(row).to_string()).or_default();
                e.0 |= conds.is_valid(row) && conds.value(row);
                if vals.is_valid(row) {
                    e.1 += vals.value(row);
                }
            }
        }
        per.iter()
            .map(|m| {
                let mut c: Vec<f64> = m
                    .values()
                    .map(|(_, v)| v.abs())
                    .filter(|v| *v > 0.0)
                    .collect();
                c.sort_by(|a, b| b.total_cmp(a));
                let total: f64 = c.iter().sum();
                let top: f64 = c.iter().take(top_n).sum();
                vec![
                    m.len() as f64,
                    m.values().filter(|(c, _)| *c).count() as f64,
                    if total > 0.0 { top / total } else { 0.0 },
                ]
            })
            .collect()
    }

    fn rows_of(a: &ArrayRef) -> Vec<Vec<f64>> {
        let l = a.as_list::<i32>();
        (0..l.len())
            .map(|i| {
                l.value(i)
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    fn close(a: &[Vec<f64>], b: &[Vec<f64>]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-9)
            })
    }

    #[test]
    fn grouped_counts_match_a_naive_count_through_partial_and_final_phases() {
        let sink: PopulationSink = Arc::new(Mutex::new(Vec::new()));
        let udaf = Contributors::new(1, PatientKey(7, 9), 1, 1, 2, Some(sink.clone()));
        let batches: Vec<_> = (0..4).map(|s| batch(s, 300)).collect();
        let want = naive(&batches, 2);

        // One phase.
        let mut one = udaf.groups();
        for (cols, groups) in &batches {
            one.update_batch(cols, groups, None, 5).unwrap();
        }
        let got = rows_of(&one.evaluate(EmitTo::All).unwrap());
        assert!(close(&got, &want), "{got:?} != {want:?}");
        let patients = sink.lock().unwrap()[0].len();
        let distinct: HashSet<String> = batches
            .iter()
            .flat_map(|(c, _)| {
                let s = c[0].as_string_view();
                (0..s.len())
                    .filter(|&i| s.is_valid(i))
                    .map(|i| s.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            patients,
            distinct.len(),
            "every patient reaches the tracker once"
        );

        // Two partial accumulators (partitions), then a final one; the
        // final one emits its first two groups, then the rest.
        let mut parts = [udaf.groups(), udaf.groups()];
        for (i, (cols, groups)) in batches.iter().enumerate() {
            parts[i % 2].update_batch(cols, groups, None, 5).unwrap();
        }
        let mut last = udaf.groups();
        for p in &mut parts {
            let state = p.state(EmitTo::All).unwrap();
            last.merge_batch(&state, &[0, 1, 2, 3, 4], 5).unwrap();
            assert!(
                p.group_of.is_empty(),
                "state() resets the partial accumulator"
            );
        }
        let mut got = rows_of(&last.evaluate(EmitTo::First(2)).unwrap());
        got.extend(rows_of(&last.evaluate(EmitTo::All).unwrap()));
        assert!(close(&got, &want), "{got:?} != {want:?}");

        // Rows passed on as states one by one (partial aggregation skipped).
        let mut merged = udaf.groups();
        for (cols, groups) in &batches {
            let states = udaf.groups().convert_to_state(cols, None).unwrap();
            merged.merge_batch(&states, groups, 5).unwrap();
        }
        let got = rows_of(&merged.evaluate(EmitTo::All).unwrap());
        assert!(close(&got, &want), "{got:?} != {want:?}");

        // Without groups: the plain accumulator sees every row as group 0.
        let mut acc = udaf.accumulator_for_tests();
        for (cols, _) in &batches {
            acc.update_batch(cols).unwrap();
        }
        let all: Vec<_> = batches
            .iter()
            .map(|(c, g)| (c.clone(), vec![0; g.len()]))
            .collect();
        let want0 = naive(&all, 2)[0].clone();
        let ScalarValue::List(l) = acc.evaluate().unwrap() else {
            panic!("a list")
        };
        let got0 = rows_of(&(l as ArrayRef))[0].clone();
        assert!(
            close(std::slice::from_ref(&got0), std::slice::from_ref(&want0)),
            "{got0:?} != {want0:?}"
        );
    }

    #[test]
    fn hex_round_trips() {
        let t = table(0..100, Iblt::cells_for(10));
        assert_eq!(Iblt::from_hex(&t.to_hex()), Some(t));
        assert_eq!(Iblt::from_hex("zz"), None);
    }
}

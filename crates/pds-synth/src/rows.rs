//! Allocation-free row formatting in the extraction dialect.
//!
//! A [`RowWriter`] collects the fields a generator sets, by column index, and
//! writes the whole row with every other column left empty. Column indices
//! are resolved once per table and year by the `columns!` structs, so a
//! schema change shows up as a clear start-up error, not a wrong file.

use chrono::NaiveDate;
use pds_snds::dialect;

/// Builds one `;`-separated row at a time.
pub struct RowWriter {
    fields: Vec<Option<(u32, u32)>>,
    scratch: Vec<u8>,
}

impl RowWriter {
    /// A writer for rows of at most `width` columns.
    pub fn new() -> Self {
        RowWriter {
            fields: Vec::with_capacity(160),
            scratch: Vec::with_capacity(1024),
        }
    }

    /// Starts a row of `width` columns.
    pub fn start(&mut self, width: usize) -> &mut Self {
        self.fields.clear();
        self.fields.resize(width, None);
        self.scratch.clear();
        self
    }

    fn mark(&mut self, idx: usize, start: usize) {
        // `ABSENT` (a column that does not exist in this year's variant) is
        // past the end: the value is dropped, as a real extraction would.
        if let Some(f) = self.fields.get_mut(idx) {
            *f = Some((start as u32, self.scratch.len() as u32));
        }
    }

    /// Sets a text field.
    pub fn str(&mut self, idx: usize, v: &str) -> &mut Self {
        self.bytes(idx, v.as_bytes())
    }

    /// Sets a raw field.
    pub fn bytes(&mut self, idx: usize, v: &[u8]) -> &mut Self {
        let s = self.scratch.len();
        self.scratch.extend_from_slice(v);
        self.mark(idx, s);
        self
    }

    /// Sets an integer field.
    pub fn int(&mut self, idx: usize, v: i64) -> &mut Self {
        let s = self.scratch.len();
        let mut b = itoa::Buffer::new();
        self.scratch.extend_from_slice(b.format(v).as_bytes());
        self.mark(idx, s);
        self
    }

    /// Sets an amount given in cents, written `12.34` / `-0.50`.
    pub fn money(&mut self, idx: usize, cents: i64) -> &mut Self {
        let s = self.scratch.len();
        if cents < 0 {
            self.scratch.push(b'-');
        }
        let c = cents.unsigned_abs();
        let mut b = itoa::Buffer::new();
        self.scratch.extend_from_slice(b.format(c / 100).as_bytes());
        self.scratch.push(b'.');
        self.scratch.push(b'0' + (c % 100 / 10) as u8);
        self.scratch.push(b'0' + (c % 10) as u8);
        self.mark(idx, s);
        self
    }

    /// Sets a `dd/MM/yyyy` date.
    pub fn date(&mut self, idx: usize, d: NaiveDate) -> &mut Self {
        let s = self.scratch.len();
        dialect::push_date(&mut self.scratch, d);
        self.mark(idx, s);
        self
    }

    /// Sets a SAS datetime (PMSI).
    pub fn sas(&mut self, idx: usize, d: NaiveDate) -> &mut Self {
        let s = self.scratch.len();
        dialect::push_sas_datetime(&mut self.scratch, d);
        self.mark(idx, s);
        self
    }

    /// Sets a `ddmmyyyy` date (PMSI `ENT_DAT`/`SOR_DAT`).
    pub fn compact(&mut self, idx: usize, d: NaiveDate) -> &mut Self {
        let s = self.scratch.len();
        dialect::push_compact_date(&mut self.scratch, d);
        self.mark(idx, s);
        self
    }

    /// Sets a `yyyyMM` year-month.
    pub fn year_month(&mut self, idx: usize, d: NaiveDate) -> &mut Self {
        let s = self.scratch.len();
        dialect::push_year_month(&mut self.scratch, d);
        self.mark(idx, s);
        self
    }

    /// Appends the row, newline-terminated, to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b';');
            }
            if let Some((a, b)) = f {
                out.extend_from_slice(&self.scratch[*a as usize..*b as usize]);
            }
        }
        out.push(b'\n');
    }
}

impl Default for RowWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// Index of a column that the table has, but not in this year's variant.
pub const ABSENT: usize = usize::MAX;

/// Declares a struct holding the index of each named column of a table.
macro_rules! columns {
    ($(#[$m:meta])* $name:ident { $($col:ident),* $(,)? }) => {
        $(#[$m])*
        #[allow(non_snake_case, dead_code)]
        #[derive(Debug, Clone)]
        pub struct $name {
            /// Number of columns in the table variant.
            pub width: usize,
            $(pub $col: usize,)*
        }

        impl $name {
            /// Resolves every column index in `columns` (one yearly variant).
            ///
            /// A name the table never had is an error; a column that exists
            /// in other years only gets [`ABSENT`] and is not written.
            pub fn resolve(table: &str, columns: &[&pds_snds::Column], all: &[pds_snds::Column]) -> Result<Self, crate::SynthError> {
                let find = |n: &str| match columns.iter().position(|c| c.name == n) {
                    Some(i) => Ok(i),
                    None if all.iter().any(|c| c.name == n) => Ok(crate::rows::ABSENT),
                    None => Err(crate::SynthError::Schema(format!(
                        "table {table} has no column {n} in the vendored schema"
                    ))),
                };
                Ok($name { width: columns.len(), $($col: find(stringify!($col))?,)* })
            }
        }
    };
}
pub(crate) use columns;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_set_fields_in_column_order() {
        let mut w = RowWriter::new();
        let mut out = Vec::new();
        w.start(5)
            .int(3, -12)
            .str(0, "A")
            .money(1, -150)
            .date(4, NaiveDate::from_ymd_opt(2021, 2, 3).unwrap());
        w.finish(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "A;-1.50;;-12;03/02/2021\n");
    }
}

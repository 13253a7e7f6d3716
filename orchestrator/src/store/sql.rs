//! The SQL text and the write logic both dialects share.
//!
//! Statements are written once with `?` placeholders (SQLite's spelling);
//! PostgreSQL gets them numbered by [`numbered`]. Both schemas store the same
//! columns, so rows map to [`LogRow`] the same way. Whether a write is allowed
//! and what it appends is decided here by [`plan`], from the key's latest row,
//! so the two back ends cannot disagree on conflicts or on skipping unchanged
//! updates.

use super::{Event, KeyValue, ListResult, Result, Revision, StoreError};

/// The latest row of a key.
pub(crate) const LATEST: &str = "SELECT id, name, create_revision, deleted, value \
     FROM cairn_log WHERE name = ? ORDER BY id DESC LIMIT 1";

/// Appends a row and returns its id, the new revision.
pub(crate) const INSERT: &str = "INSERT INTO cairn_log \
     (name, create_revision, prev_revision, deleted, value) VALUES (?, ?, ?, ?, ?) RETURNING id";

/// Live keys in `[lo, hi)` after a key, as of a revision, sorted by key.
/// Binds: lo, hi, start_after, revision, revision, limit.
pub(crate) const LIST: &str = "SELECT l.id, l.name, l.create_revision, l.deleted, l.value \
     FROM cairn_log l \
     WHERE l.name >= ? AND l.name < ? AND l.name > ? AND l.id <= ? \
       AND l.id = (SELECT MAX(m.id) FROM cairn_log m WHERE m.name = l.name AND m.id <= ?) \
       AND l.deleted = FALSE \
     ORDER BY l.name LIMIT ?";

/// Log rows in `(after, upto]` for keys in `[lo, hi)`, with the live value each
/// replaced. Binds: after, upto, lo, hi, limit.
pub(crate) const EVENTS: &str = "SELECT l.id, l.name, l.create_revision, l.deleted, l.value, \
            p.id, p.create_revision, p.value \
     FROM cairn_log l LEFT JOIN cairn_log p ON p.id = l.prev_revision AND p.deleted = FALSE \
     WHERE l.id > ? AND l.id <= ? AND l.name >= ? AND l.name < ? \
     ORDER BY l.id LIMIT ?";

/// The newest revision and the compacted revision.
pub(crate) const REVISIONS: &str = "SELECT COALESCE((SELECT MAX(id) FROM cairn_log), 0), \
     COALESCE((SELECT value FROM cairn_meta WHERE name = 'compact_rev'), 0)";

/// Removes superseded rows and deletion markers at or below a revision.
/// Binds: revision, revision.
pub(crate) const COMPACT: &str = "DELETE FROM cairn_log WHERE id <= ? AND (deleted = TRUE OR EXISTS \
     (SELECT 1 FROM cairn_log m WHERE m.name = cairn_log.name AND m.id > cairn_log.id AND m.id <= ?))";

/// Records the compacted revision (never moving it back).
pub(crate) const SET_COMPACTED: &str = "INSERT INTO cairn_meta (name, value) VALUES ('compact_rev', ?) \
     ON CONFLICT (name) DO UPDATE SET value = excluded.value WHERE cairn_meta.value < excluded.value";

/// Rows fetched per replay query.
pub(crate) const EVENT_BATCH: i64 = 1000;

/// Rewrites `?` placeholders as `$1`, `$2`, … (PostgreSQL). The shared
/// statements contain no `?` inside literals.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// Keys are non-empty (an empty `start_after` means "from the start") and
/// hold no NUL (PostgreSQL text cannot).
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.contains('\0') {
        return Err(StoreError::InvalidKey {
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// A half-open key range `[lo, hi)` covering every key that starts with a prefix.
#[derive(Debug, Clone)]
pub(crate) struct Range {
    pub(crate) lo: String,
    pub(crate) hi: String,
}

impl Range {
    pub(crate) fn prefix(prefix: &str) -> Range {
        let mut hi = prefix.to_owned();
        // Keys compare bytewise (SQLite BINARY, PostgreSQL COLLATE "C").
        // Bumping a final ASCII character gives the exact upper bound;
        // otherwise the highest code point bounds every real key.
        match hi.pop() {
            Some(c) if c.is_ascii() && c < '\x7f' => hi.push((c as u8 + 1) as char),
            Some(c) => {
                hi.push(c);
                hi.push(char::MAX);
            }
            None => hi.push(char::MAX),
        }
        Range {
            lo: prefix.to_owned(),
            hi,
        }
    }
}

impl Range {
    pub(crate) fn contains(&self, key: &str) -> bool {
        key >= self.lo.as_str() && key < self.hi.as_str()
    }
}

/// One row of the log.
#[derive(Debug, Clone)]
pub(crate) struct LogRow {
    pub(crate) id: Revision,
    pub(crate) name: String,
    pub(crate) create_revision: Revision,
    pub(crate) deleted: bool,
    pub(crate) value: Vec<u8>,
}

impl LogRow {
    /// Builds a row; a stored create revision of 0 means "this row created the key".
    pub(crate) fn new(
        id: Revision,
        name: String,
        create_revision: Revision,
        deleted: bool,
        value: Vec<u8>,
    ) -> LogRow {
        LogRow {
            id,
            create_revision: if create_revision == 0 {
                id
            } else {
                create_revision
            },
            name,
            deleted,
            value,
        }
    }

    pub(crate) fn kv(self) -> KeyValue {
        KeyValue {
            key: self.name,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.id,
        }
    }

    /// The row's event, given the live value it replaced (`prev` = id,
    /// create revision, value).
    pub(crate) fn event(self, prev: Option<(Revision, Revision, Vec<u8>)>) -> Event {
        if self.deleted {
            return Event::Delete { kv: self.kv() };
        }
        let prev = prev.map(|(id, create_revision, value)| KeyValue {
            key: self.name.clone(),
            value,
            create_revision,
            mod_revision: id,
        });
        Event::Put {
            kv: self.kv(),
            prev,
        }
    }
}

/// A requested write.
#[derive(Debug)]
pub(crate) enum Write {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Write {
    pub(crate) fn key(&self) -> &str {
        match self {
            Write::Create { key, .. } | Write::Update { key, .. } | Write::Delete { key, .. } => {
                key
            }
        }
    }
}

/// A row to append. `create_revision` 0 stands for the row's own id.
#[derive(Debug)]
pub(crate) struct NewRow {
    pub(crate) create_revision: Revision,
    pub(crate) prev_revision: Revision,
    pub(crate) deleted: bool,
    pub(crate) value: Vec<u8>,
}

/// What a write does, decided from the key's latest row.
#[derive(Debug)]
pub(crate) enum Plan {
    Append(NewRow),
    /// Nothing to write; the key's current revision.
    Unchanged(Revision),
}

/// Decides a write against the key's latest row (live or deletion marker).
pub(crate) fn plan(write: &Write, latest: Option<&LogRow>) -> Result<Plan> {
    let live = latest.filter(|r| !r.deleted);
    let not_found = || StoreError::NotFound {
        key: write.key().to_owned(),
    };
    match write {
        Write::Create { key, value } => {
            if live.is_some() {
                return Err(StoreError::AlreadyExists { key: key.clone() });
            }
            Ok(Plan::Append(NewRow {
                create_revision: 0,
                prev_revision: latest.map_or(0, |r| r.id),
                deleted: false,
                value: value.clone(),
            }))
        }
        Write::Update {
            key,
            value,
            expected,
        } => {
            let cur = live.ok_or_else(not_found)?;
            if cur.id != *expected {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    current: cur.id,
                });
            }
            if cur.value == *value {
                return Ok(Plan::Unchanged(cur.id));
            }
            Ok(Plan::Append(NewRow {
                create_revision: cur.create_revision,
                prev_revision: cur.id,
                deleted: false,
                value: value.clone(),
            }))
        }
        Write::Delete { key, expected } => {
            let cur = live.ok_or_else(not_found)?;
            if let Some(expected) = expected
                && cur.id != *expected
            {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    current: cur.id,
                });
            }
            // The marker keeps the last value so a delete event carries it.
            Ok(Plan::Append(NewRow {
                create_revision: cur.create_revision,
                prev_revision: cur.id,
                deleted: true,
                value: cur.value.clone(),
            }))
        }
    }
}

/// The outcome of a write.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) revision: Revision,
    /// For deletes: the last value, with the deletion's revision (what
    /// Kubernetes returns from a delete).
    pub(crate) deleted: Option<KeyValue>,
    /// The event to publish, if anything was written.
    pub(crate) event: Option<Event>,
}

impl Written {
    /// The outcome of appending `row` as revision `id` over `latest`.
    pub(crate) fn appended(
        write: &Write,
        latest: Option<LogRow>,
        row: NewRow,
        id: Revision,
    ) -> Written {
        let prev = latest
            .filter(|r| !r.deleted)
            .map(|r| (r.id, r.create_revision, r.value));
        let appended = LogRow::new(
            id,
            write.key().to_owned(),
            row.create_revision,
            row.deleted,
            row.value,
        );
        let event = appended.event(prev);
        let deleted = match &event {
            Event::Delete { kv } => Some(kv.clone()),
            Event::Put { .. } => None,
        };
        Written {
            revision: id,
            deleted,
            event: Some(event),
        }
    }

    pub(crate) fn unchanged(revision: Revision) -> Written {
        Written {
            revision,
            deleted: None,
            event: None,
        }
    }
}

/// A list request, normalized for the `LIST` statement.
#[derive(Debug, Clone)]
pub(crate) struct ListQuery {
    pub(crate) range: Range,
    pub(crate) start_after: String,
    pub(crate) limit: Option<usize>,
    pub(crate) revision: Option<Revision>,
}

impl ListQuery {
    pub(crate) fn new(
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        revision: Option<Revision>,
    ) -> ListQuery {
        ListQuery {
            range: Range::prefix(prefix),
            start_after: start_after.unwrap_or_default().to_owned(),
            limit,
            revision,
        }
    }

    /// Rows to fetch: one more than the limit tells whether more follow.
    pub(crate) fn fetch(&self) -> i64 {
        self.limit
            .and_then(|l| i64::try_from(l).ok())
            .map_or(i64::MAX, |l| l.saturating_add(1))
    }

    /// Checks the revision against the log's and returns the one to read at.
    pub(crate) fn read_at(&self, revs: Revisions) -> Result<Revision> {
        match self.revision {
            None => Ok(revs.current),
            Some(r) => {
                revs.check(r)?;
                Ok(r)
            }
        }
    }

    pub(crate) fn finish(&self, rows: Vec<LogRow>, revision: Revision) -> ListResult {
        let mut items: Vec<KeyValue> = rows.into_iter().map(LogRow::kv).collect();
        let more = match self.limit {
            Some(l) if items.len() > l => {
                items.truncate(l);
                true
            }
            _ => false,
        };
        ListResult {
            items,
            revision,
            more,
        }
    }
}

/// The newest and the compacted revision of a log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Revisions {
    pub(crate) current: Revision,
    pub(crate) compacted: Revision,
}

impl Revisions {
    /// The newest revision never goes below the compacted one, even when
    /// compaction removed the newest row (a deletion marker).
    pub(crate) fn new(max_id: Revision, compacted: Revision) -> Revisions {
        Revisions {
            current: max_id.max(compacted),
            compacted,
        }
    }

    /// Fails if `requested` is compacted.
    pub(crate) fn check_not_compacted(&self, requested: Revision) -> Result<()> {
        if requested < self.compacted {
            return Err(StoreError::Compacted {
                requested,
                compacted: self.compacted,
            });
        }
        Ok(())
    }

    /// Fails if `requested` is compacted or not written yet.
    pub(crate) fn check(&self, requested: Revision) -> Result<()> {
        self.check_not_compacted(requested)?;
        if requested > self.current {
            return Err(StoreError::FutureRevision {
                requested,
                current: self.current,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders() {
        assert_eq!(numbered("a = ? AND b > ?"), "a = $1 AND b > $2");
    }

    #[test]
    fn prefix_range_bounds() {
        let r = Range::prefix("/registry/pods/");
        assert_eq!(r.hi, "/registry/pods0");
        let all = Range::prefix("");
        assert!(all.contains("/anything"));
        assert!(!r.contains("/registry/pods0"));
    }

    #[test]
    fn unchanged_update_plans_no_write() {
        let row = LogRow::new(7, "/a".into(), 0, false, b"x".to_vec());
        let write = Write::Update {
            key: "/a".into(),
            value: b"x".to_vec(),
            expected: 7,
        };
        assert!(matches!(plan(&write, Some(&row)), Ok(Plan::Unchanged(7))));
    }
}

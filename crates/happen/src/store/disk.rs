//! The embedded store's disk: one redb database file holding node state,
//! global state and state history, one row per node or key (feature
//! `redb`). Without the feature there is no disk, and the type cannot be
//! constructed.

#[cfg(feature = "redb")]
pub(crate) use redb_disk::Disk;

#[cfg(not(feature = "redb"))]
pub(crate) enum Disk {}

/// The tables of the database.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Table {
    State,
    Global,
    History,
    /// Events waiting for durable nodes (see [`crate::spool`]).
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    Spool,
    /// Spooled rows that could not be read back: set aside, once, for
    /// whoever wants to look at them.
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    SpoolUnreadable,
}

#[cfg(not(feature = "redb"))]
impl Disk {
    pub(crate) async fn write(
        &self,
        _table: Table,
        _key: &str,
        _bytes: Option<Vec<u8>>,
    ) -> crate::Result<()> {
        match *self {}
    }
}

#[cfg(feature = "redb")]
mod redb_disk {
    use std::path::Path;
    use std::sync::Arc;

    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

    use super::Table;
    use crate::error::{HappenError, Result};
    use crate::store::memory::{Data, decode, decode_state};

    const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
    const GLOBAL: TableDefinition<&str, &[u8]> = TableDefinition::new("global");
    const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("history");
    const SPOOL: TableDefinition<&str, &[u8]> = TableDefinition::new("spool");
    const SPOOL_UNREADABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("spool_unreadable");

    fn definition(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match table {
            Table::State => STATE,
            Table::Global => GLOBAL,
            Table::History => HISTORY,
            Table::Spool => SPOOL,
            Table::SpoolUnreadable => SPOOL_UNREADABLE,
        }
    }

    /// Opens the database; a lock still held for a moment (redb probes
    /// its file locks when a database opens, and another database opening
    /// in the same process at that instant, or the last handle of the file
    /// being dropped on another thread, can make the open fail) is tried
    /// again for up to half a second before it is an error.
    fn create(path: &Path) -> std::result::Result<Database, redb::DatabaseError> {
        let mut tries = 0;
        loop {
            match Database::create(path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 25 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn disk_error(e: impl Into<crate::error::BoxError>) -> HappenError {
        HappenError::store("state database", e)
    }

    /// The database (clones share it).
    pub(crate) struct Disk {
        db: Arc<Database>,
        /// Makes the next write fail (tests of what a failed write leaves).
        #[cfg(test)]
        pub(crate) fail_next: std::sync::atomic::AtomicBool,
    }

    impl Clone for Disk {
        fn clone(&self) -> Self {
            Disk {
                db: self.db.clone(),
                #[cfg(test)]
                fail_next: std::sync::atomic::AtomicBool::new(false),
            }
        }
    }

    impl Disk {
        /// Opens (or creates) `dir/happen.redb` and reads what it holds.
        pub(crate) fn open(dir: &Path) -> Result<(Disk, Data)> {
            std::fs::create_dir_all(dir).map_err(|e| {
                HappenError::Config(format!(
                    "cannot create state directory {}: {e}",
                    dir.display()
                ))
            })?;
            let db = create(&dir.join("happen.redb")).map_err(|e| {
                HappenError::Config(format!(
                    "cannot open state database in {}: {e}",
                    dir.display()
                ))
            })?;
            let mut data = Data::default();
            let write = db.begin_write().map_err(disk_error)?;
            // Make sure the tables exist before reading them.
            write.open_table(STATE).map_err(disk_error)?;
            write.open_table(GLOBAL).map_err(disk_error)?;
            write.open_table(HISTORY).map_err(disk_error)?;
            write.open_table(SPOOL).map_err(disk_error)?;
            write.open_table(SPOOL_UNREADABLE).map_err(disk_error)?;
            write.commit().map_err(disk_error)?;
            let read = db.begin_read().map_err(disk_error)?;
            for row in read
                .open_table(STATE)
                .map_err(disk_error)?
                .iter()
                .map_err(disk_error)?
            {
                let (k, v) = row.map_err(disk_error)?;
                data.state
                    .insert(k.value().to_owned(), decode_state(v.value())?);
            }
            for row in read
                .open_table(GLOBAL)
                .map_err(disk_error)?
                .iter()
                .map_err(disk_error)?
            {
                let (k, v) = row.map_err(disk_error)?;
                data.global.insert(k.value().to_owned(), decode(v.value())?);
            }
            for row in read
                .open_table(HISTORY)
                .map_err(disk_error)?
                .iter()
                .map_err(disk_error)?
            {
                let (k, v) = row.map_err(disk_error)?;
                data.history
                    .insert(k.value().to_owned(), decode(v.value())?);
            }
            for row in read
                .open_table(SPOOL)
                .map_err(disk_error)?
                .iter()
                .map_err(disk_error)?
            {
                let (k, v) = row.map_err(disk_error)?;
                data.spool.insert(k.value().to_owned(), v.value().to_vec());
            }
            let disk = Disk {
                db: Arc::new(db),
                #[cfg(test)]
                fail_next: std::sync::atomic::AtomicBool::new(false),
            };
            Ok((disk, data))
        }

        /// Writes one row (or removes it, for `None`) and commits.
        pub(crate) async fn write(
            &self,
            table: Table,
            key: &str,
            bytes: Option<Vec<u8>>,
        ) -> Result<()> {
            self.write_many(table, vec![(key.to_owned(), bytes)]).await
        }

        /// Writes (or removes, for `None`) several rows in one commit.
        pub(crate) async fn write_many(
            &self,
            table: Table,
            rows: Vec<(String, Option<Vec<u8>>)>,
        ) -> Result<()> {
            self.write_rows(table, rows)
                .await
                .map_err(|(error, _)| error)
        }

        /// The keys `table` holds now, in order (tests of what is on disk).
        #[cfg(test)]
        pub(crate) fn keys(&self, table: Table) -> Vec<String> {
            let read = self.db.begin_read().expect("a read");
            let t = read.open_table(definition(table)).expect("the table");
            t.iter()
                .expect("rows")
                .map(|row| row.expect("a row").0.value().to_owned())
                .collect()
        }

        /// [`Disk::write_many`], giving the rows back when the commit
        /// fails (to be written again).
        pub(crate) async fn write_rows(
            &self,
            table: Table,
            rows: Vec<(String, Option<Vec<u8>>)>,
        ) -> std::result::Result<(), (HappenError, Vec<(String, Option<Vec<u8>>)>)> {
            #[cfg(test)]
            if self
                .fail_next
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err((disk_error("injected write failure"), rows));
            }
            let db = self.db.clone();
            let commit = move |rows: &[(String, Option<Vec<u8>>)]| -> Result<()> {
                let write = db.begin_write().map_err(disk_error)?;
                {
                    let mut t = write.open_table(definition(table)).map_err(disk_error)?;
                    for (key, bytes) in rows {
                        match bytes {
                            Some(bytes) => {
                                t.insert(key.as_str(), bytes.as_slice())
                                    .map_err(disk_error)?;
                            }
                            None => {
                                t.remove(key.as_str()).map_err(disk_error)?;
                            }
                        }
                    }
                }
                write.commit().map_err(disk_error)
            };
            let (written, rows) = tokio::task::spawn_blocking(move || {
                let written = commit(&rows);
                (written, rows)
            })
            .await
            .map_err(|e| (disk_error(e), Vec::new()))?;
            written.map_err(|error| (error, rows))
        }
    }
}

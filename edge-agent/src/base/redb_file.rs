//! How the agent opens its redb files (the outbox, the event history): with a bounded cache.

use std::path::Path;

use redb::{Database, DatabaseError};

/// Bytes of pages redb keeps in memory per open file (half of it at most for a transaction's
/// writes before they go to the file). redb's default, 1 GiB, would grow with an outbox that grows
/// for weeks; the kernel's page cache keeps the hot pages anyway (bench/RESULTS.md, memory by part).
pub const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Opens the file, or creates it, with the agent's cache bound. Its folder is synced: a file redb
/// created, its commits fsynced, is still gone after a power cut until its name is durable.
pub fn create(path: &Path) -> Result<Database, DatabaseError> {
    let db = Database::builder().set_cache_size(CACHE_BYTES).create(path)?;
    crate::base::write_file::sync_folder(path)?;
    Ok(db)
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    use super::*;

    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("rows");

    /// A transaction of several times the cache, and reading it all back after a reopen: the bound
    /// limits memory, never what the file holds.
    #[test]
    fn a_file_larger_than_the_cache_keeps_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.redb");
        let row = vec![7u8; 4096];
        let rows = (3 * CACHE_BYTES / row.len()) as u64;
        {
            let db = create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(TABLE).unwrap();
                for key in 0..rows {
                    table.insert(key, row.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let db = create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        let mut read = 0u64;
        for entry in table.iter().unwrap() {
            let (key, value) = entry.unwrap();
            assert_eq!(key.value(), read);
            assert_eq!(value.value(), row.as_slice());
            read += 1;
        }
        assert_eq!(read, rows);
    }
}

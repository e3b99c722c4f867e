//! Our own small migration runner.
//!
//! Migrations are an ordered list; each carries the SQL for SQLite and for
//! PostgreSQL as separate statement lists (the dialects differ in column types:
//! `INTEGER`/`BIGINT`, `BLOB`/`BYTEA`). Each migration runs in its own
//! transaction together with the insert of its row into
//! `schema_migrations(version)`, so a migration is applied entirely or not at
//! all, and re-running the list on restart applies nothing twice.
//!
//! Concurrent start-ups are serialised: on SQLite by `BEGIN IMMEDIATE` (the
//! write lock is taken before the "already applied?" check), on PostgreSQL by a
//! transaction-scoped advisory lock taken first thing in each transaction.
//!
//! Rules for writing migrations: never edit a released migration, only append;
//! SQLite column types must be `INTEGER`, `TEXT` or `BLOB` (the `Any` driver
//! refuses others such as `BOOLEAN`), PostgreSQL ones `BIGINT`, `TEXT` or
//! `BYTEA` (so every integer decodes as `i64` on both).

use sqlx::{AnyPool, Row};

use crate::{Backend, Result, StoreError, begin_write, now_micros};

/// One schema migration.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static [&'static str],
    pub postgres: &'static [&'static str],
}

impl Migration {
    fn statements(&self, backend: Backend) -> &'static [&'static str] {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        }
    }
}

/// Advisory-lock key used on PostgreSQL ("kith" in ASCII).
const PG_LOCK_SQL: &str = "SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(1802073192)) AS l";

/// Every migration, in order. Append only.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial schema",
        sqlite: &[
            "CREATE TABLE users (
            username TEXT NOT NULL PRIMARY KEY,
            sha1_salt BLOB NOT NULL,
            sha1_iterations INTEGER NOT NULL,
            sha1_stored_key BLOB NOT NULL,
            sha1_server_key BLOB NOT NULL,
            sha256_salt BLOB NOT NULL,
            sha256_iterations INTEGER NOT NULL,
            sha256_stored_key BLOB NOT NULL,
            sha256_server_key BLOB NOT NULL,
            roster_version INTEGER NOT NULL DEFAULT 0,
            inbox_seq INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL
        )",
            "CREATE TABLE roster_items (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            contact TEXT NOT NULL,
            name TEXT,
            subscription TEXT NOT NULL DEFAULT 'none',
            ask INTEGER NOT NULL DEFAULT 0,
            pending_in INTEGER NOT NULL DEFAULT 0,
            approved INTEGER NOT NULL DEFAULT 0,
            group_names TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (owner, contact)
        )",
            "CREATE INDEX roster_items_contact ON roster_items (contact)",
            "CREATE TABLE inbox (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            stanza_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            xml TEXT NOT NULL,
            at_micros INTEGER NOT NULL,
            PRIMARY KEY (owner, seq)
        )",
            "CREATE TABLE vcards (
            owner TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            xml TEXT NOT NULL
        )",
            "CREATE TABLE private_xml (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            namespace TEXT NOT NULL,
            xml TEXT NOT NULL,
            PRIMARY KEY (owner, namespace)
        )",
            "CREATE TABLE blocklist (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            jid TEXT NOT NULL,
            PRIMARY KEY (owner, jid)
        )",
            "CREATE TABLE last_activity (
            owner TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            at_secs INTEGER NOT NULL,
            status TEXT NOT NULL
        )",
        ],
        postgres: &[
            "CREATE TABLE users (
            username TEXT NOT NULL PRIMARY KEY,
            sha1_salt BYTEA NOT NULL,
            sha1_iterations BIGINT NOT NULL,
            sha1_stored_key BYTEA NOT NULL,
            sha1_server_key BYTEA NOT NULL,
            sha256_salt BYTEA NOT NULL,
            sha256_iterations BIGINT NOT NULL,
            sha256_stored_key BYTEA NOT NULL,
            sha256_server_key BYTEA NOT NULL,
            roster_version BIGINT NOT NULL DEFAULT 0,
            inbox_seq BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL
        )",
            "CREATE TABLE roster_items (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            contact TEXT NOT NULL,
            name TEXT,
            subscription TEXT NOT NULL DEFAULT 'none',
            ask BIGINT NOT NULL DEFAULT 0,
            pending_in BIGINT NOT NULL DEFAULT 0,
            approved BIGINT NOT NULL DEFAULT 0,
            group_names TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (owner, contact)
        )",
            "CREATE INDEX roster_items_contact ON roster_items (contact)",
            "CREATE TABLE inbox (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            seq BIGINT NOT NULL,
            stanza_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            xml TEXT NOT NULL,
            at_micros BIGINT NOT NULL,
            PRIMARY KEY (owner, seq)
        )",
            "CREATE TABLE vcards (
            owner TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            xml TEXT NOT NULL
        )",
            "CREATE TABLE private_xml (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            namespace TEXT NOT NULL,
            xml TEXT NOT NULL,
            PRIMARY KEY (owner, namespace)
        )",
            "CREATE TABLE blocklist (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            jid TEXT NOT NULL,
            PRIMARY KEY (owner, jid)
        )",
            "CREATE TABLE last_activity (
            owner TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            at_secs BIGINT NOT NULL,
            status TEXT NOT NULL
        )",
        ],
    },
    Migration {
        version: 2,
        name: "inbox log: peers, directions, bodies; devices with cursors",
        sqlite: &[
            "ALTER TABLE inbox ADD COLUMN peer TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE inbox ADD COLUMN direction TEXT NOT NULL DEFAULT 'in'",
            "ALTER TABLE inbox ADD COLUMN body TEXT",
            "CREATE INDEX inbox_owner_peer ON inbox (owner, peer, seq)",
            "CREATE INDEX inbox_owner_time ON inbox (owner, at_micros)",
            "CREATE INDEX inbox_owner_stanza_id ON inbox (owner, stanza_id)",
            "ALTER TABLE users ADD COLUMN delivered_seq INTEGER NOT NULL DEFAULT 0",
            "CREATE TABLE devices (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            resource TEXT NOT NULL,
            cursor INTEGER NOT NULL,
            last_seen_micros INTEGER NOT NULL,
            PRIMARY KEY (owner, resource)
        )",
        ],
        postgres: &[
            "ALTER TABLE inbox ADD COLUMN peer TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE inbox ADD COLUMN direction TEXT NOT NULL DEFAULT 'in'",
            "ALTER TABLE inbox ADD COLUMN body TEXT",
            "CREATE INDEX inbox_owner_peer ON inbox (owner, peer, seq)",
            "CREATE INDEX inbox_owner_time ON inbox (owner, at_micros)",
            "CREATE INDEX inbox_owner_stanza_id ON inbox (owner, stanza_id)",
            "ALTER TABLE users ADD COLUMN delivered_seq BIGINT NOT NULL DEFAULT 0",
            "CREATE TABLE devices (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            resource TEXT NOT NULL,
            cursor BIGINT NOT NULL,
            last_seen_micros BIGINT NOT NULL,
            PRIMARY KEY (owner, resource)
        )",
        ],
    },
    Migration {
        version: 3,
        name: "archive: full-text index over inbox bodies; MAM preferences",
        // SQLite: a contentless FTS5 table holds the index of `inbox.body`. Its
        // rowids come from `inbox_fts_rows`, whose INTEGER PRIMARY KEY is stable
        // (the implicit rowid of `inbox` is not: VACUUM may renumber it). Triggers
        // keep both in step with every insert, delete and body change of `inbox`;
        // a contentless table forgets a row through its 'delete' command, which
        // needs the indexed text, and the triggers have it in `old.body`.
        // `remove_diacritics 0` matches PostgreSQL's 'simple' configuration, so
        // both engines find the same words ("cafe" does not find "café").
        sqlite: &[
            "CREATE TABLE inbox_fts_rows (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            seq INTEGER NOT NULL,
            UNIQUE (owner, seq)
        )",
            "CREATE VIRTUAL TABLE inbox_fts USING fts5(
            body, content='', tokenize='unicode61 remove_diacritics 0'
        )",
            "INSERT INTO inbox_fts_rows (owner, seq)
            SELECT owner, seq FROM inbox WHERE body IS NOT NULL ORDER BY owner, seq",
            "INSERT INTO inbox_fts (rowid, body)
            SELECT r.id, i.body FROM inbox_fts_rows r
            JOIN inbox i ON i.owner = r.owner AND i.seq = r.seq",
            "CREATE TRIGGER inbox_fts_insert AFTER INSERT ON inbox
            WHEN new.body IS NOT NULL
        BEGIN
            INSERT INTO inbox_fts_rows (owner, seq) VALUES (new.owner, new.seq);
            INSERT INTO inbox_fts (rowid, body)
                SELECT id, new.body FROM inbox_fts_rows
                WHERE owner = new.owner AND seq = new.seq;
        END",
            "CREATE TRIGGER inbox_fts_delete AFTER DELETE ON inbox
            WHEN old.body IS NOT NULL
        BEGIN
            INSERT INTO inbox_fts (inbox_fts, rowid, body)
                SELECT 'delete', id, old.body FROM inbox_fts_rows
                WHERE owner = old.owner AND seq = old.seq;
            DELETE FROM inbox_fts_rows WHERE owner = old.owner AND seq = old.seq;
        END",
            "CREATE TRIGGER inbox_fts_update AFTER UPDATE OF owner, seq, body ON inbox
        BEGIN
            INSERT INTO inbox_fts (inbox_fts, rowid, body)
                SELECT 'delete', id, old.body FROM inbox_fts_rows
                WHERE owner = old.owner AND seq = old.seq AND old.body IS NOT NULL;
            DELETE FROM inbox_fts_rows WHERE owner = old.owner AND seq = old.seq;
            INSERT INTO inbox_fts_rows (owner, seq)
                SELECT new.owner, new.seq WHERE new.body IS NOT NULL;
            INSERT INTO inbox_fts (rowid, body)
                SELECT id, new.body FROM inbox_fts_rows
                WHERE owner = new.owner AND seq = new.seq AND new.body IS NOT NULL;
        END",
            "CREATE TABLE mam_prefs (
            owner TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            default_mode TEXT NOT NULL,
            always_jids TEXT NOT NULL DEFAULT '',
            never_jids TEXT NOT NULL DEFAULT ''
        )",
        ],
        // PostgreSQL: a partial GIN expression index; queries repeat the exact
        // expression (and `body IS NOT NULL`) so the planner can use it.
        postgres: &[
            "CREATE INDEX inbox_body_fts ON inbox
            USING GIN (to_tsvector('simple', coalesce(body, '')))
            WHERE body IS NOT NULL",
            "CREATE TABLE mam_prefs (
            owner TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            default_mode TEXT NOT NULL,
            always_jids TEXT NOT NULL DEFAULT '',
            never_jids TEXT NOT NULL DEFAULT ''
        )",
        ],
    },
    Migration {
        version: 4,
        name: "push registrations (XEP-0357, Web Push, webhook); server secrets",
        // One row per (account, app server JID, node), owned by the device that
        // enabled it. `endpoint`, `p256dh` and `auth` are set for Web Push only.
        sqlite: &[
            "CREATE TABLE push_registrations (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            jid TEXT NOT NULL,
            node TEXT NOT NULL,
            resource TEXT NOT NULL,
            kind TEXT NOT NULL,
            endpoint TEXT,
            p256dh TEXT,
            auth TEXT,
            options TEXT,
            created_micros INTEGER NOT NULL,
            PRIMARY KEY (owner, jid, node)
        )",
            "CREATE TABLE server_secrets (
            name TEXT NOT NULL PRIMARY KEY,
            value BLOB NOT NULL,
            created_micros INTEGER NOT NULL
        )",
        ],
        postgres: &[
            "CREATE TABLE push_registrations (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            jid TEXT NOT NULL,
            node TEXT NOT NULL,
            resource TEXT NOT NULL,
            kind TEXT NOT NULL,
            endpoint TEXT,
            p256dh TEXT,
            auth TEXT,
            options TEXT,
            created_micros BIGINT NOT NULL,
            PRIMARY KEY (owner, jid, node)
        )",
            "CREATE TABLE server_secrets (
            name TEXT NOT NULL PRIMARY KEY,
            value BYTEA NOT NULL,
            created_micros BIGINT NOT NULL
        )",
        ],
    },
    Migration {
        version: 5,
        name: "inbox origin keys (XEP-0359 duplicate sends stored once)",
        sqlite: &[
            "ALTER TABLE inbox ADD COLUMN origin TEXT",
            "CREATE UNIQUE INDEX inbox_origin ON inbox (owner, origin)",
        ],
        postgres: &[
            "ALTER TABLE inbox ADD COLUMN origin TEXT",
            "CREATE UNIQUE INDEX inbox_origin ON inbox (owner, origin)",
        ],
    },
    // SQLite: the inbox-log writer indexes new entries for full-text search in
    // passes of its own (`batch::sqlite`), not in the commit that appends them.
    // `fts_state.next_rowid` is the lowest `inbox` rowid that may not be indexed
    // yet; every existing row was indexed by the trigger dropped here.
    // PostgreSQL keeps its expression index: nothing changes.
    Migration {
        version: 6,
        name: "full-text indexing off the commit path (SQLite)",
        sqlite: &[
            "DROP TRIGGER inbox_fts_insert",
            "CREATE TABLE fts_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            next_rowid INTEGER NOT NULL
        )",
            "INSERT INTO fts_state (id, next_rowid) SELECT 1, COALESCE(MAX(rowid), 0) + 1 FROM inbox",
        ],
        postgres: &[],
    },
    // Most entries carry no origin key (chat states, receipts, clients without
    // XEP-0359): a partial index skips them instead of writing `(owner, NULL)`
    // for each. `ON CONFLICT DO NOTHING` (no target) still honours it.
    Migration {
        version: 7,
        name: "inbox origin index only where there is an origin",
        sqlite: &[
            "DROP INDEX inbox_origin",
            "CREATE UNIQUE INDEX inbox_origin ON inbox (owner, origin) WHERE origin IS NOT NULL",
        ],
        postgres: &[
            "DROP INDEX inbox_origin",
            "CREATE UNIQUE INDEX inbox_origin ON inbox (owner, origin) WHERE origin IS NOT NULL",
        ],
    },
    // Phone-number accounts (issue 4): the number of each phone account, device
    // credentials (a hash for HTTP bearer use and per-device SCRAM keys under the
    // user's salt), pending SMS codes (hashed), link-a-device requests, and contact
    // discovery (who looked up which number; a per-day quota).
    Migration {
        version: 10,
        name: "phone accounts and device credentials",
        sqlite: &[
            "CREATE TABLE phone_numbers (
            phone TEXT NOT NULL PRIMARY KEY,
            username TEXT NOT NULL UNIQUE REFERENCES users(username) ON DELETE CASCADE,
            created_micros INTEGER NOT NULL
        )",
            "CREATE TABLE device_credentials (
            id TEXT NOT NULL PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            name TEXT NOT NULL,
            token_hash BLOB NOT NULL,
            sha1_stored_key BLOB NOT NULL,
            sha1_server_key BLOB NOT NULL,
            sha256_stored_key BLOB NOT NULL,
            sha256_server_key BLOB NOT NULL,
            created_micros INTEGER NOT NULL,
            last_used_micros INTEGER NOT NULL
        )",
            "CREATE INDEX device_credentials_owner ON device_credentials (owner)",
            "CREATE TABLE verification_codes (
            phone TEXT NOT NULL PRIMARY KEY,
            code_hash BLOB NOT NULL,
            expires_micros INTEGER NOT NULL,
            failures INTEGER NOT NULL,
            locked_until_micros INTEGER NOT NULL
        )",
            "CREATE TABLE link_requests (
            id TEXT NOT NULL PRIMARY KEY,
            code_hash BLOB NOT NULL UNIQUE,
            poll_hash BLOB NOT NULL,
            device_name TEXT NOT NULL,
            expires_micros INTEGER NOT NULL,
            approved_owner TEXT REFERENCES users(username) ON DELETE CASCADE
        )",
            "CREATE TABLE discovered_contacts (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            phone TEXT NOT NULL,
            PRIMARY KEY (owner, phone)
        )",
            "CREATE TABLE discovery_quota (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            day INTEGER NOT NULL,
            used INTEGER NOT NULL,
            PRIMARY KEY (owner, day)
        )",
        ],
        postgres: &[
            "CREATE TABLE phone_numbers (
            phone TEXT NOT NULL PRIMARY KEY,
            username TEXT NOT NULL UNIQUE REFERENCES users(username) ON DELETE CASCADE,
            created_micros BIGINT NOT NULL
        )",
            "CREATE TABLE device_credentials (
            id TEXT NOT NULL PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            name TEXT NOT NULL,
            token_hash BYTEA NOT NULL,
            sha1_stored_key BYTEA NOT NULL,
            sha1_server_key BYTEA NOT NULL,
            sha256_stored_key BYTEA NOT NULL,
            sha256_server_key BYTEA NOT NULL,
            created_micros BIGINT NOT NULL,
            last_used_micros BIGINT NOT NULL
        )",
            "CREATE INDEX device_credentials_owner ON device_credentials (owner)",
            "CREATE TABLE verification_codes (
            phone TEXT NOT NULL PRIMARY KEY,
            code_hash BYTEA NOT NULL,
            expires_micros BIGINT NOT NULL,
            failures BIGINT NOT NULL,
            locked_until_micros BIGINT NOT NULL
        )",
            "CREATE TABLE link_requests (
            id TEXT NOT NULL PRIMARY KEY,
            code_hash BYTEA NOT NULL UNIQUE,
            poll_hash BYTEA NOT NULL,
            device_name TEXT NOT NULL,
            expires_micros BIGINT NOT NULL,
            approved_owner TEXT REFERENCES users(username) ON DELETE CASCADE
        )",
            "CREATE TABLE discovered_contacts (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            phone TEXT NOT NULL,
            PRIMARY KEY (owner, phone)
        )",
            "CREATE TABLE discovery_quota (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            day BIGINT NOT NULL,
            used BIGINT NOT NULL,
            PRIMARY KEY (owner, day)
        )",
        ],
    },
    // Privacy settings (issue 4, WhatsApp's): who sees last seen, profile photo and
    // about (`everyone` | `contacts` | `nobody`), and whether read receipts flow.
    // No row means the defaults; the server, not the store, knows what they are.
    Migration {
        version: 11,
        name: "privacy settings",
        sqlite: &["CREATE TABLE privacy_settings (
            owner TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            last_seen TEXT NOT NULL,
            profile_photo TEXT NOT NULL,
            about TEXT NOT NULL,
            read_receipts INTEGER NOT NULL
        )"],
        postgres: &["CREATE TABLE privacy_settings (
            owner TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            last_seen TEXT NOT NULL,
            profile_photo TEXT NOT NULL,
            about TEXT NOT NULL,
            read_receipts BIGINT NOT NULL
        )"],
    },
    Migration {
        version: 20,
        name: "group chat rooms (XEP-0045): rooms, affiliations, invite links",
        // A room's archive is an inbox log owned by the room's bare JID: each room
        // gets a `users` row without usable credentials (a name with '@' can never
        // sign in), so MAM, retraction tombstones and fan-out reuse the log.
        sqlite: &[
            "CREATE TABLE muc_rooms (
            jid TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            config TEXT NOT NULL,
            subject TEXT NOT NULL DEFAULT '',
            subject_by TEXT NOT NULL DEFAULT '',
            created_micros INTEGER NOT NULL
        )",
            "CREATE TABLE muc_affiliations (
            room TEXT NOT NULL REFERENCES muc_rooms(jid) ON DELETE CASCADE,
            jid TEXT NOT NULL,
            affiliation TEXT NOT NULL,
            since_micros INTEGER NOT NULL,
            PRIMARY KEY (room, jid)
        )",
            "CREATE INDEX muc_affiliations_jid ON muc_affiliations (jid)",
            "CREATE TABLE muc_invites (
            token TEXT NOT NULL PRIMARY KEY,
            room TEXT NOT NULL REFERENCES muc_rooms(jid) ON DELETE CASCADE,
            created_by TEXT NOT NULL,
            created_micros INTEGER NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0
        )",
            "CREATE INDEX muc_invites_room ON muc_invites (room)",
        ],
        postgres: &[
            "CREATE TABLE muc_rooms (
            jid TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            config TEXT NOT NULL,
            subject TEXT NOT NULL DEFAULT '',
            subject_by TEXT NOT NULL DEFAULT '',
            created_micros BIGINT NOT NULL
        )",
            "CREATE TABLE muc_affiliations (
            room TEXT NOT NULL REFERENCES muc_rooms(jid) ON DELETE CASCADE,
            jid TEXT NOT NULL,
            affiliation TEXT NOT NULL,
            since_micros BIGINT NOT NULL,
            PRIMARY KEY (room, jid)
        )",
            "CREATE INDEX muc_affiliations_jid ON muc_affiliations (jid)",
            "CREATE TABLE muc_invites (
            token TEXT NOT NULL PRIMARY KEY,
            room TEXT NOT NULL REFERENCES muc_rooms(jid) ON DELETE CASCADE,
            created_by TEXT NOT NULL,
            created_micros BIGINT NOT NULL,
            revoked BIGINT NOT NULL DEFAULT 0
        )",
            "CREATE INDEX muc_invites_room ON muc_invites (room)",
        ],
    },
    Migration {
        version: 30,
        name: "uploads (XEP-0363 slots and stored files)",
        // One row per slot; the file's bytes live in the blob store under the
        // same id. `state`: 0 slot handed out, 1 PUT in progress, 2 stored.
        // No foreign key on `owner`: the blobs must be deleted before the rows,
        // so account deletion purges uploads itself and upkeep sweeps orphans.
        sqlite: &[
            "CREATE TABLE uploads (
            id TEXT NOT NULL PRIMARY KEY,
            owner TEXT NOT NULL,
            filename TEXT NOT NULL,
            content_type TEXT NOT NULL,
            size INTEGER NOT NULL,
            token_hash TEXT NOT NULL,
            state INTEGER NOT NULL,
            created_micros INTEGER NOT NULL,
            slot_expires_micros INTEGER NOT NULL,
            expires_micros INTEGER,
            meta TEXT
        )",
            "CREATE INDEX uploads_owner ON uploads (owner)",
            "CREATE INDEX uploads_expires ON uploads (expires_micros)",
        ],
        postgres: &[
            "CREATE TABLE uploads (
            id TEXT NOT NULL PRIMARY KEY,
            owner TEXT NOT NULL,
            filename TEXT NOT NULL,
            content_type TEXT NOT NULL,
            size BIGINT NOT NULL,
            token_hash TEXT NOT NULL,
            state BIGINT NOT NULL,
            created_micros BIGINT NOT NULL,
            slot_expires_micros BIGINT NOT NULL,
            expires_micros BIGINT,
            meta TEXT
        )",
            "CREATE INDEX uploads_owner ON uploads (owner)",
            "CREATE INDEX uploads_expires ON uploads (expires_micros)",
        ],
    },
    Migration {
        version: 40,
        name: "PEP nodes, items and affiliations (XEP-0163/0060); vCard photo hash (XEP-0153)",
        // A node belongs to an account; its configuration is a few columns (the
        // server reads them on every publish and notification). Items are ordered
        // by `seq`, per node, increasing with each publish (a re-published id moves
        // to the end). `max_items` -1 means "max" (the server's cap).
        sqlite: &[
            "CREATE TABLE pep_nodes (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            node TEXT NOT NULL,
            access_model TEXT NOT NULL,
            roster_groups TEXT NOT NULL DEFAULT '',
            max_items INTEGER NOT NULL,
            persist_items INTEGER NOT NULL,
            send_last TEXT NOT NULL,
            notify_retract INTEGER NOT NULL,
            title TEXT NOT NULL DEFAULT '',
            next_seq INTEGER NOT NULL DEFAULT 1,
            created_micros INTEGER NOT NULL,
            PRIMARY KEY (owner, node)
        )",
            "CREATE TABLE pep_items (
            owner TEXT NOT NULL,
            node TEXT NOT NULL,
            item_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            payload TEXT NOT NULL,
            publisher TEXT NOT NULL,
            published_micros INTEGER NOT NULL,
            PRIMARY KEY (owner, node, item_id),
            FOREIGN KEY (owner, node) REFERENCES pep_nodes(owner, node) ON DELETE CASCADE
        )",
            "CREATE INDEX pep_items_by_seq ON pep_items (owner, node, seq)",
            "CREATE TABLE pep_affiliations (
            owner TEXT NOT NULL,
            node TEXT NOT NULL,
            jid TEXT NOT NULL,
            affiliation TEXT NOT NULL,
            PRIMARY KEY (owner, node, jid),
            FOREIGN KEY (owner, node) REFERENCES pep_nodes(owner, node) ON DELETE CASCADE
        )",
            "ALTER TABLE vcards ADD COLUMN photo_hash TEXT",
        ],
        postgres: &[
            "CREATE TABLE pep_nodes (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            node TEXT NOT NULL,
            access_model TEXT NOT NULL,
            roster_groups TEXT NOT NULL DEFAULT '',
            max_items BIGINT NOT NULL,
            persist_items BIGINT NOT NULL,
            send_last TEXT NOT NULL,
            notify_retract BIGINT NOT NULL,
            title TEXT NOT NULL DEFAULT '',
            next_seq BIGINT NOT NULL DEFAULT 1,
            created_micros BIGINT NOT NULL,
            PRIMARY KEY (owner, node)
        )",
            "CREATE TABLE pep_items (
            owner TEXT NOT NULL,
            node TEXT NOT NULL,
            item_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            payload TEXT NOT NULL,
            publisher TEXT NOT NULL,
            published_micros BIGINT NOT NULL,
            PRIMARY KEY (owner, node, item_id),
            FOREIGN KEY (owner, node) REFERENCES pep_nodes(owner, node) ON DELETE CASCADE
        )",
            "CREATE INDEX pep_items_by_seq ON pep_items (owner, node, seq)",
            "CREATE TABLE pep_affiliations (
            owner TEXT NOT NULL,
            node TEXT NOT NULL,
            jid TEXT NOT NULL,
            affiliation TEXT NOT NULL,
            PRIMARY KEY (owner, node, jid),
            FOREIGN KEY (owner, node) REFERENCES pep_nodes(owner, node) ON DELETE CASCADE
        )",
            "ALTER TABLE vcards ADD COLUMN photo_hash TEXT",
        ],
    },
    Migration {
        version: 41,
        name: "PEP item expiry (pubsub#item_expire) and explicit subscriptions (XEP-0060 §6.1)",
        // `item_expire` is the node's setting in seconds (0: never); an item's
        // `expires_micros` is fixed when it is published (NULL: never), indexed for
        // the sweep. Subscriptions are by bare JID, one per (node, subscriber).
        sqlite: &[
            "ALTER TABLE pep_nodes ADD COLUMN item_expire INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE pep_items ADD COLUMN expires_micros INTEGER",
            "CREATE INDEX pep_items_expiry ON pep_items (expires_micros)",
            "CREATE TABLE pep_subscriptions (
            owner TEXT NOT NULL,
            node TEXT NOT NULL,
            jid TEXT NOT NULL,
            subid TEXT NOT NULL,
            created_micros INTEGER NOT NULL,
            PRIMARY KEY (owner, node, jid),
            FOREIGN KEY (owner, node) REFERENCES pep_nodes(owner, node) ON DELETE CASCADE
        )",
            "CREATE INDEX pep_subscriptions_by_jid ON pep_subscriptions (jid)",
        ],
        postgres: &[
            "ALTER TABLE pep_nodes ADD COLUMN item_expire BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE pep_items ADD COLUMN expires_micros BIGINT",
            "CREATE INDEX pep_items_expiry ON pep_items (expires_micros)",
            "CREATE TABLE pep_subscriptions (
            owner TEXT NOT NULL,
            node TEXT NOT NULL,
            jid TEXT NOT NULL,
            subid TEXT NOT NULL,
            created_micros BIGINT NOT NULL,
            PRIMARY KEY (owner, node, jid),
            FOREIGN KEY (owner, node) REFERENCES pep_nodes(owner, node) ON DELETE CASCADE
        )",
            "CREATE INDEX pep_subscriptions_by_jid ON pep_subscriptions (jid)",
        ],
    },
    // The archive's two indexes cover archived entries only (those with an id):
    // a group message's member copies (one per member, for delivery only) and
    // entries the owner's XEP-0441 preferences keep out of the archive were
    // written to both, with `stanza_id = ''`, and never looked up there. Every
    // query that can use them says `stanza_id <> ''` (SQLite uses a partial
    // index only for a query whose WHERE implies the index's).
    Migration {
        version: 42,
        name: "archive indexes only for archived inbox entries",
        sqlite: &[
            "DROP INDEX inbox_owner_time",
            "CREATE INDEX inbox_owner_time ON inbox (owner, at_micros) WHERE stanza_id <> ''",
            "DROP INDEX inbox_owner_stanza_id",
            "CREATE INDEX inbox_owner_stanza_id ON inbox (owner, stanza_id) WHERE stanza_id <> ''",
        ],
        postgres: &[
            "DROP INDEX inbox_owner_time",
            "CREATE INDEX inbox_owner_time ON inbox (owner, at_micros) WHERE stanza_id <> ''",
            "DROP INDEX inbox_owner_stanza_id",
            "CREATE INDEX inbox_owner_stanza_id ON inbox (owner, stanza_id) WHERE stanza_id <> ''",
        ],
    },
    // The conversation index (MAM's `with`, XEP-0424's lookup of the message a
    // retraction names) also covers archived entries only: every group message
    // put one entry per member into it, and without an archive every 1:1
    // message did, on pages of its own per owner — a third of the pages a
    // fan-out commit wrote. Unarchived entries are delivered and never looked
    // up by conversation (a retraction tombstones what an archive keeps).
    Migration {
        version: 43,
        name: "conversation index only for archived inbox entries",
        sqlite: &[
            "DROP INDEX inbox_owner_peer",
            "CREATE INDEX inbox_owner_peer ON inbox (owner, peer, seq) WHERE stanza_id <> ''",
        ],
        postgres: &[
            "DROP INDEX inbox_owner_peer",
            "CREATE INDEX inbox_owner_peer ON inbox (owner, peer, seq) WHERE stanza_id <> ''",
        ],
    },
    // Group messages are appended once, to the room's log; a member without a
    // session is owed them (`batch::rooms`). `room_fill.seq`: through which
    // entry of the room's log the member's log holds copies; NULL: through the
    // room's `room_marks.seq` (members that get every message cost no write
    // per message). Rows are made when a room is loaded or a member joins (so
    // members from before this start at the room's head: their copies are
    // already in their logs).
    Migration {
        version: 44,
        name: "room cursors: members' copies of group messages made when they connect",
        sqlite: &[
            "CREATE TABLE room_fill (
            room TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            seq INTEGER,
            PRIMARY KEY (room, owner)
        )",
            "CREATE INDEX room_fill_owner ON room_fill (owner)",
            "CREATE TABLE room_marks (
            room TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            seq INTEGER NOT NULL
        )",
        ],
        postgres: &[
            "CREATE TABLE room_fill (
            room TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            seq BIGINT,
            PRIMARY KEY (room, owner)
        )",
            "CREATE INDEX room_fill_owner ON room_fill (owner)",
            "CREATE TABLE room_marks (
            room TEXT NOT NULL PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            seq BIGINT NOT NULL
        )",
        ],
    },
    // SQLite with retention "until delivered": new 1:1 entries of users with a
    // session wait here, in rowid order only (appending dirties a table's last
    // page, not a page of the `(owner, seq)` index per entry), until
    // `batch::tail` drops what every device of the owner has received or moves
    // the rest into `inbox`. Four generations, used in turn, so that each is
    // emptied whole. They hold exactly the entries still waiting: a start
    // moves them all.
    Migration {
        version: 45,
        name: "inbox tail: entries waiting to be delivered or indexed (SQLite)",
        sqlite: &[
            "CREATE TABLE inbox_tail_0 (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            stanza_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            xml TEXT NOT NULL,
            at_micros INTEGER NOT NULL,
            peer TEXT NOT NULL,
            direction TEXT NOT NULL,
            body TEXT,
            origin TEXT
        )",
            "CREATE TABLE inbox_tail_1 (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            stanza_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            xml TEXT NOT NULL,
            at_micros INTEGER NOT NULL,
            peer TEXT NOT NULL,
            direction TEXT NOT NULL,
            body TEXT,
            origin TEXT
        )",
            "CREATE TABLE inbox_tail_2 (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            stanza_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            xml TEXT NOT NULL,
            at_micros INTEGER NOT NULL,
            peer TEXT NOT NULL,
            direction TEXT NOT NULL,
            body TEXT,
            origin TEXT
        )",
            "CREATE TABLE inbox_tail_3 (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            stanza_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            xml TEXT NOT NULL,
            at_micros INTEGER NOT NULL,
            peer TEXT NOT NULL,
            direction TEXT NOT NULL,
            body TEXT,
            origin TEXT
        )",
        ],
        postgres: &[],
    },
    // The log's tail moved to files of its own (`<database>-tail/`, see
    // `batch::tail`): the
    // entries a crash left in migration 45's tables move into `inbox` (as a
    // start would have moved them), and the tables go.
    Migration {
        version: 46,
        name: "inbox tail: its generations in files of their own (SQLite)",
        sqlite: &[
            "UPDATE fts_state SET next_rowid = MIN(next_rowid,
                (SELECT COALESCE(MAX(rowid), 0) + 1 FROM inbox))
             WHERE EXISTS (SELECT 1 FROM inbox_tail_0) OR EXISTS (SELECT 1 FROM inbox_tail_1) OR EXISTS (SELECT 1 FROM inbox_tail_2) OR EXISTS (SELECT 1 FROM inbox_tail_3)",
            "INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin)
             SELECT owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin FROM (SELECT id, owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin FROM inbox_tail_0 UNION ALL SELECT id, owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin FROM inbox_tail_1 UNION ALL SELECT id, owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin FROM inbox_tail_2 UNION ALL SELECT id, owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin FROM inbox_tail_3)
             WHERE owner IN (SELECT username FROM users) ORDER BY id
             ON CONFLICT DO NOTHING",
            "DROP TABLE inbox_tail_0",
            "DROP TABLE inbox_tail_1",
            "DROP TABLE inbox_tail_2",
            "DROP TABLE inbox_tail_3",
        ],
        postgres: &[],
    },
    // The full-text index is keyed by the entry's own id: `inbox` gets an
    // explicit `id INTEGER PRIMARY KEY` (its rowid, kept: VACUUM renumbers
    // only implicit rowids), and the FTS5 rowid is that id. Migration 3's
    // mapping table (`inbox_fts_rows`: a row and a unique-index entry per
    // indexed entry, and a join back to `inbox` per row indexed) goes, and
    // so does FTS5's per-row size table (`columnsize=0`: nothing ranks).
    // An entry is in the index exactly when its id is below
    // `fts_state.next_rowid` (a pass indexes the ids from there and moves it
    // on; an insert below it lowers it), so the triggers that keep the index
    // in step with deletions and edits look there rather than in a mapping.
    // The contentless table forgets a row through its 'delete' command,
    // which needs the indexed text: `old.body`.
    Migration {
        version: 47,
        name: "full-text index keyed by the entry's id (SQLite)",
        sqlite: &[
            "DROP TRIGGER inbox_fts_delete",
            "DROP TRIGGER inbox_fts_update",
            "DROP TABLE inbox_fts",
            "DROP TABLE inbox_fts_rows",
            "CREATE TABLE inbox_by_id (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            stanza_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            xml TEXT NOT NULL,
            at_micros INTEGER NOT NULL,
            peer TEXT NOT NULL DEFAULT '',
            direction TEXT NOT NULL DEFAULT 'in',
            body TEXT,
            origin TEXT,
            UNIQUE (owner, seq)
        )",
            "INSERT INTO inbox_by_id (id, owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin)
             SELECT rowid, owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body, origin
             FROM inbox ORDER BY rowid",
            "DROP TABLE inbox",
            "ALTER TABLE inbox_by_id RENAME TO inbox",
            "CREATE UNIQUE INDEX inbox_origin ON inbox (owner, origin) WHERE origin IS NOT NULL",
            "CREATE INDEX inbox_owner_time ON inbox (owner, at_micros) WHERE stanza_id <> ''",
            "CREATE INDEX inbox_owner_stanza_id ON inbox (owner, stanza_id) WHERE stanza_id <> ''",
            "CREATE VIRTUAL TABLE inbox_fts USING fts5(
            body, content='', columnsize=0, tokenize='unicode61 remove_diacritics 0'
        )",
            "INSERT INTO inbox_fts (rowid, body)
             SELECT id, body FROM inbox
             WHERE body IS NOT NULL AND id < (SELECT next_rowid FROM fts_state)",
            "CREATE TRIGGER inbox_fts_delete AFTER DELETE ON inbox
            WHEN old.body IS NOT NULL AND old.id < (SELECT next_rowid FROM fts_state)
        BEGIN
            INSERT INTO inbox_fts (inbox_fts, rowid, body) VALUES ('delete', old.id, old.body);
        END",
            "CREATE TRIGGER inbox_fts_update AFTER UPDATE OF body ON inbox
            WHEN old.id < (SELECT next_rowid FROM fts_state)
        BEGIN
            INSERT INTO inbox_fts (inbox_fts, rowid, body)
                SELECT 'delete', old.id, old.body WHERE old.body IS NOT NULL;
            INSERT INTO inbox_fts (rowid, body)
                SELECT new.id, new.body WHERE new.body IS NOT NULL;
        END",
        ],
        postgres: &[],
    },
    // The conversation index in buckets of the log (`archive::BUCKET`):
    // `(owner, seq >> 12, peer, seq)` rather than `(owner, peer, seq)`. Keyed
    // by peer first, each new entry went to the end of its conversation,
    // anywhere in the owner's whole history: an owner's entries of a few
    // seconds, across many peers, dirtied a page each of an index that only
    // grows (at 20,000 archived msg/s between 200 users, 90 pages per 500
    // entries after 45 s, and rising). In buckets of 4,096 of the owner's
    // numbers, new entries land in the newest bucket only: a few dozen pages
    // however long the history. A query by conversation walks the buckets
    // (`archive.rs`): one look-up each, newest or oldest first, stopping once
    // its page is full.
    Migration {
        version: 48,
        name: "conversation index in buckets of the log",
        sqlite: &[
            "DROP INDEX IF EXISTS inbox_owner_peer",
            "CREATE INDEX inbox_conversation ON inbox (owner, (seq >> 12), peer, seq)
             WHERE stanza_id <> ''",
        ],
        postgres: &[
            "DROP INDEX inbox_owner_peer",
            "CREATE INDEX inbox_conversation ON inbox (owner, (seq >> 12), peer, seq)
             WHERE stanza_id <> ''",
        ],
    },
    // No index by archive id for ids of today's form (`archive::archive_id`,
    // 21 characters): such an id names its entry's time, and the store finds
    // it through `inbox_owner_time` — one b-tree insert fewer for every
    // archived entry (0.7 µs of 5.4 in `tail_move`'s large archive). Ids of
    // the earlier forms (20 characters, and any other length) keep this
    // index, now holding only those; every query that uses it says
    // `length(stanza_id) <> 21` (`archive::seqs_of`).
    Migration {
        version: 49,
        name: "archive ids found through their time",
        sqlite: &[
            "DROP INDEX inbox_owner_stanza_id",
            "CREATE INDEX inbox_owner_stanza_id ON inbox (owner, stanza_id)
             WHERE stanza_id <> '' AND length(stanza_id) <> 21",
        ],
        postgres: &[
            "DROP INDEX inbox_owner_stanza_id",
            "CREATE INDEX inbox_owner_stanza_id ON inbox (owner, stanza_id)
             WHERE stanza_id <> '' AND length(stanza_id) <> 21",
        ],
    },
    // PostgreSQL's group commit in one statement (`batch::postgres`): a batch
    // was a transaction of several round trips, and the users' rows it locks
    // (numbering, delivered marks) stayed locked across them all, so a
    // cluster's writers waited on each other for the round trips. The
    // function locks those rows in one order (by the names' bytes; see
    // `batch::postgres`), moves devices' cursors and users' delivered marks
    // forward, reserves each owner's numbers and writes the entries, numbered
    // from the first reserved (`n`: an entry's place among its owner's). It
    // returns each existing owner's last reserved number (`written` false) and
    // each entry written (true; an origin key already in the log is skipped).
    // Nothing on SQLite, whose writer is in-process.
    Migration {
        version: 50,
        name: "group commit in one statement (PostgreSQL)",
        sqlite: &[],
        postgres: &[r#"CREATE OR REPLACE FUNCTION kith_append(
            lock_names TEXT[], names TEXT[], counts BIGINT[],
            e_owner TEXT[], e_n BIGINT[], e_stanza_id TEXT[], e_sender TEXT[], e_kind TEXT[],
            e_xml TEXT[], e_at BIGINT[], e_peer TEXT[], e_direction TEXT[], e_body TEXT[],
            e_origin TEXT[],
            a_owner TEXT[], a_resource TEXT[], a_seq BIGINT[], a_at BIGINT[],
            d_names TEXT[], d_seqs BIGINT[])
        RETURNS TABLE (owner TEXT, seq BIGINT, written BOOLEAN)
        LANGUAGE plpgsql AS $$
        #variable_conflict use_column
        BEGIN
            PERFORM 1 FROM users u WHERE u.username = ANY(lock_names)
                ORDER BY u.username COLLATE "C" FOR NO KEY UPDATE;
            UPDATE devices d SET cursor = v.seq, last_seen_micros = v.at
                FROM unnest(a_owner, a_resource, a_seq, a_at) AS v(owner, resource, seq, at)
                WHERE d.owner = v.owner AND d.resource = v.resource AND d.cursor < v.seq;
            UPDATE users u SET delivered_seq = v.seq
                FROM unnest(d_names, d_seqs) AS v(username, seq)
                WHERE u.username = v.username AND u.delivered_seq < v.seq;
            RETURN QUERY
            WITH reserved AS (
                UPDATE users u SET inbox_seq = u.inbox_seq + v.count
                FROM unnest(names, counts) AS v(username, count)
                WHERE u.username = v.username
                RETURNING u.username, u.inbox_seq - v.count + 1 AS base, u.inbox_seq AS last
            ), inserted AS (
                INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer,
                    direction, body, origin)
                SELECT e.owner, r.base + e.n, e.stanza_id, e.sender, e.kind, e.xml, e.at,
                    e.peer, e.direction, e.body, e.origin
                FROM unnest(e_owner, e_n, e_stanza_id, e_sender, e_kind, e_xml, e_at, e_peer,
                    e_direction, e_body, e_origin)
                    AS e(owner, n, stanza_id, sender, kind, xml, at, peer, direction, body, origin)
                JOIN reserved r ON r.username = e.owner
                ON CONFLICT DO NOTHING
                RETURNING inbox.owner, inbox.seq
            )
            SELECT r.username, r.last, false FROM reserved r
            UNION ALL
            SELECT i.owner, i.seq, true FROM inserted i;
        END
        $$"#],
    },
    // XEP-0484 FAST tokens (`fast.rs`): per account and client (the XEP-0388
    // user-agent id), the token in use and the one last issued. `device` is
    // the device credential the client signed in with ('' for the password);
    // `account_key` tags the password of the login that got them.
    Migration {
        version: 51,
        name: "FAST tokens",
        sqlite: &["CREATE TABLE fast_tokens (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            agent TEXT NOT NULL,
            device TEXT NOT NULL,
            mechanism TEXT NOT NULL,
            account_key TEXT NOT NULL,
            token TEXT NOT NULL,
            expires_micros INTEGER NOT NULL,
            new_token TEXT NOT NULL,
            new_expires_micros INTEGER NOT NULL,
            issued_micros INTEGER NOT NULL,
            PRIMARY KEY (owner, agent)
        )"],
        postgres: &["CREATE TABLE fast_tokens (
            owner TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            agent TEXT NOT NULL,
            device TEXT NOT NULL,
            mechanism TEXT NOT NULL,
            account_key TEXT NOT NULL,
            token TEXT NOT NULL,
            expires_micros BIGINT NOT NULL,
            new_token TEXT NOT NULL,
            new_expires_micros BIGINT NOT NULL,
            issued_micros BIGINT NOT NULL,
            PRIMARY KEY (owner, agent)
        )"],
    },
    // When the client last signed in with its password or device credential:
    // tokens issued to FAST logins since then expire a set time after it, so a
    // chain of FAST logins alone can't go on for ever. Rows from before it
    // count from their newest token.
    Migration {
        version: 52,
        name: "FAST tokens: when the chain of FAST logins began",
        sqlite: &[
            "ALTER TABLE fast_tokens ADD COLUMN signed_in_micros INTEGER NOT NULL DEFAULT 0",
            "UPDATE fast_tokens SET signed_in_micros = issued_micros",
        ],
        postgres: &[
            "ALTER TABLE fast_tokens ADD COLUMN signed_in_micros BIGINT NOT NULL DEFAULT 0",
            "UPDATE fast_tokens SET signed_in_micros = issued_micros",
        ],
    },
];

/// The highest schema version this build knows.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Creates `schema_migrations` if needed and applies every missing migration.
pub(crate) async fn run(pool: &AnyPool, backend: Backend) -> Result<()> {
    // Bootstrap the bookkeeping table (same SQL on both backends).
    {
        let mut tx = begin_write(pool, backend).await?;
        if backend == Backend::Postgres {
            sqlx::query(PG_LOCK_SQL).execute(&mut *tx).await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT NOT NULL PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at BIGINT NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }

    let applied = applied_versions(pool).await?;
    let supported = latest_version();
    if let Some(&found) = applied.iter().max()
        && found > supported
    {
        return Err(StoreError::SchemaTooNew { found, supported });
    }

    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        apply(pool, backend, m).await?;
    }
    Ok(())
}

async fn applied_versions(pool: &AnyPool) -> Result<Vec<i64>> {
    let rows = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| r.try_get::<i64, _>("version").map_err(StoreError::from))
        .collect()
}

async fn apply(pool: &AnyPool, backend: Backend, m: &Migration) -> Result<()> {
    let fail = |source: sqlx::Error| StoreError::Migration {
        version: m.version,
        name: m.name,
        source,
    };
    let mut tx = begin_write(pool, backend).await?;
    if backend == Backend::Postgres {
        sqlx::query(PG_LOCK_SQL)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    // Re-check under the lock: another process may have applied it meanwhile.
    let already = sqlx::query("SELECT 1 AS one FROM schema_migrations WHERE version = $1")
        .bind(m.version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fail)?
        .is_some();
    if already {
        tx.commit().await?;
        return Ok(());
    }
    // Some rebuild a table or an index: on a large database, minutes.
    tracing::info!(
        version = m.version,
        name = m.name,
        "applying database migration"
    );
    for stmt in m.statements(backend) {
        sqlx::query(*stmt).execute(&mut *tx).await.map_err(fail)?;
    }
    sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
        .bind(m.version)
        .bind(m.name)
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    tracing::debug!(
        version = m.version,
        name = m.name,
        "applied database migration"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase_and_both_dialects_present() {
        let mut prev = 0;
        for m in MIGRATIONS {
            assert!(m.version > prev, "migration {} out of order", m.version);
            // A migration for one engine only says so in its name.
            assert!(!m.sqlite.is_empty() || m.name.ends_with("(PostgreSQL)"));
            assert!(!m.postgres.is_empty() || m.name.ends_with("(SQLite)"));
            prev = m.version;
        }
        assert_eq!(latest_version(), prev);
    }

    /// Applies the SQLite side of the migrations whose versions are in `versions`.
    fn apply_sqlite(conn: &rusqlite::Connection, versions: impl std::ops::RangeBounds<i64>) {
        for m in MIGRATIONS.iter().filter(|m| versions.contains(&m.version)) {
            for sql in m.sqlite {
                conn.execute_batch(sql).unwrap();
            }
        }
    }

    /// An account for alice (made-up secrets).
    const ALICE: &str = "INSERT INTO users (username, sha1_salt, sha1_iterations,
        sha1_stored_key, sha1_server_key, sha256_salt, sha256_iterations, sha256_stored_key,
        sha256_server_key, created_at) VALUES ('alice', x'', 1, x'', x'', x'', 1, x'', x'', 0)";

    /// Migration 46 moves what a crash left in migration 45's tail tables
    /// into `inbox`, as a start would have, in log order, skipping entries
    /// already there and those of deleted accounts.
    #[test]
    fn the_tail_tables_left_by_a_crash_move_into_the_log() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        apply_sqlite(&conn, ..=45);
        let entry = |table: &str, id: i64, owner: &str, seq: i64| {
            conn.execute(
                &format!(
                    "INSERT INTO {table} (id, owner, seq, stanza_id, sender, kind, xml, \
                     at_micros, peer, direction) VALUES (?1, ?2, ?3, '', 'bob', 'chat', \
                     '<message/>', 0, 'bob', 'in')"
                ),
                rusqlite::params![id, owner, seq],
            )
            .unwrap();
        };
        conn.execute_batch(ALICE).unwrap();
        conn.execute_batch(
            "INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer,
                direction) VALUES ('alice', 1, '', 'bob', 'chat', '<message/>', 0, 'bob', 'in');
             UPDATE fts_state SET next_rowid = 5;",
        )
        .unwrap();
        // Entries up to rowid 4 were indexed, those past 1 deleted since: the
        // moved ones get rowids from 2. In the tail: an entry already moved
        // before the crash, entries waiting in two generations, and one of an
        // account deleted since (foreign keys off, as if it went after).
        entry("inbox_tail_0", 1, "alice", 1);
        entry("inbox_tail_0", 3, "alice", 3);
        entry("inbox_tail_1", 2, "alice", 2);
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        entry("inbox_tail_1", 4, "ghost", 1);
        apply_sqlite(&conn, 46..=46);
        let log: Vec<(i64, String, i64)> = conn
            .prepare("SELECT rowid, owner, seq FROM inbox ORDER BY rowid")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let alice = |rowid: i64, seq: i64| (rowid, "alice".to_owned(), seq);
        assert_eq!(log, [alice(1, 1), alice(2, 2), alice(3, 3)]);
        let mark: i64 = conn
            .query_row("SELECT next_rowid FROM fts_state", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mark, 2, "the moved entries are indexed");
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'inbox_tail_%'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
    }

    /// The archive's queries by conversation spell the bucket as the index
    /// does (`archive::BUCKET`): SQLite looks each bucket up in it (were the
    /// expressions to differ, it would scan the owner's whole log instead).
    #[test]
    fn queries_by_conversation_use_the_bucketed_index() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        apply_sqlite(&conn, ..);
        let filter = "i.owner = $1 AND i.stanza_id <> '' AND i.peer = $2";
        let bucket = crate::archive::BUCKET;
        let values: [&dyn rusqlite::ToSql; 5] = [&"alice", &"bob@localhost", &0, &2, &11];
        let placeholders = |sql: &str| (1..=5).filter(|n| sql.contains(&format!("${n}"))).count();
        for sql in [
            format!(
                "SELECT {} FROM inbox i WHERE {filter} AND {bucket} = $3 ORDER BY i.seq DESC LIMIT $4",
                crate::archive::ENTRY_COLUMNS
            ),
            format!(
                "WITH RECURSIVE b (v) AS (SELECT $3 UNION ALL SELECT v + 1 FROM b WHERE v < $4)
                 SELECT SUM((SELECT COUNT(*) FROM inbox i WHERE {filter} AND {bucket} = b.v)) FROM b"
            ),
            // The rest of a page's buckets in one statement, both directions.
            crate::archive::conversation_page(Backend::Sqlite, filter, ("$3", "$4"), true, "$5"),
            crate::archive::conversation_page(Backend::Sqlite, filter, ("$3", "$4"), false, "$5"),
        ] {
            let plan = query_plan(&conn, &sql, &values[..placeholders(&sql)]);
            assert!(
                plan.contains("inbox_conversation (owner=? AND <expr>=? AND peer=?)"),
                "{sql}\n{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "no sorting: {plan}");
        }
    }

    /// An archive id is looked up in an index whichever its form
    /// (`archive::seqs_of`): through its time, or in the index by id that
    /// holds the earlier forms only (its partial index needs every term of
    /// the index's `WHERE` in the query's, or SQLite scans the owner's log).
    #[test]
    fn archive_ids_are_looked_up_in_an_index() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        apply_sqlite(&conn, ..);
        for (sql, values, index) in [
            (
                crate::archive::SEQS_BY_ID_AND_TIME,
                &[&"alice" as &dyn rusqlite::ToSql, &5, &"x"][..],
                "inbox_owner_time (owner=? AND at_micros=?)",
            ),
            (
                crate::archive::SEQS_BY_EARLIER_ID,
                &[&"alice" as &dyn rusqlite::ToSql, &"x"][..],
                "inbox_owner_stanza_id (owner=? AND stanza_id=?)",
            ),
        ] {
            let plan = query_plan(&conn, sql, values);
            assert!(plan.contains(index), "{sql}\n{plan}");
        }
    }

    /// SQLite's plan for `sql` with `values` bound, a line per step.
    fn query_plan(
        conn: &rusqlite::Connection,
        sql: &str,
        values: &[&dyn rusqlite::ToSql],
    ) -> String {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(values), |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
            .join("\n")
    }

    /// Migration 47 keeps every entry's rowid as its id, keeps in the index
    /// exactly the entries below the mark, and its triggers follow edits and
    /// deletions of indexed entries only.
    #[test]
    fn the_full_text_index_moves_to_the_entries_own_ids() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        apply_sqlite(&conn, ..=46);
        conn.execute_batch(ALICE).unwrap();
        for (seq, body) in [(1, "apple"), (2, "banana"), (3, "cherry"), (4, "damson")] {
            conn.execute(
                "INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer,
                    direction, body) VALUES ('alice', ?1, 'id' || ?1, 'bob', 'chat', '<message/>',
                    0, 'bob', 'in', ?2)",
                rusqlite::params![seq, body],
            )
            .unwrap();
        }
        // Indexed through rowid 3 as migration 3's mapping did; rowid 2 gone.
        conn.execute_batch(
            "INSERT INTO inbox_fts_rows (owner, seq) SELECT owner, seq FROM inbox WHERE rowid <= 3;
             INSERT INTO inbox_fts (rowid, body) SELECT r.id, i.body FROM inbox_fts_rows r
                JOIN inbox i ON i.owner = r.owner AND i.seq = r.seq;
             UPDATE fts_state SET next_rowid = 4;
             DELETE FROM inbox WHERE seq = 2;",
        )
        .unwrap();
        apply_sqlite(&conn, 47..=47);
        let ids: Vec<(i64, i64)> = conn
            .prepare("SELECT id, seq FROM inbox ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(ids, [(1, 1), (3, 3), (4, 4)], "rowids kept as ids");
        let found = |word: &str| -> Vec<i64> {
            conn.prepare("SELECT rowid FROM inbox_fts WHERE inbox_fts MATCH ?1 ORDER BY rowid")
                .unwrap()
                .query_map([word], |row| row.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        assert_eq!(found("apple"), [1]);
        assert_eq!(found("banana"), Vec::<i64>::new(), "deleted before");
        assert_eq!(found("cherry"), [3]);
        assert_eq!(
            found("damson"),
            Vec::<i64>::new(),
            "above the mark: not yet"
        );
        conn.execute_batch(
            "UPDATE inbox SET body = 'elder' WHERE seq = 3;
             UPDATE inbox SET body = 'fig' WHERE seq = 4;
             DELETE FROM inbox WHERE seq = 1;",
        )
        .unwrap();
        assert_eq!(
            found("cherry"),
            Vec::<i64>::new(),
            "an indexed edit forgets"
        );
        assert_eq!(found("elder"), [3], "and indexes the new text");
        assert_eq!(
            found("fig"),
            Vec::<i64>::new(),
            "an entry above the mark waits"
        );
        assert_eq!(
            found("apple"),
            Vec::<i64>::new(),
            "a deleted entry is forgotten"
        );
        // The integrity check of a contentless table needs the text it was
        // given: every indexed entry's current body.
        conn.execute_batch("INSERT INTO inbox_fts (inbox_fts, rank) VALUES ('integrity-check', 0)")
            .unwrap();
    }
}

-- Prosody 0.12 configured for kith-bench: equivalent to bench/kith/kith.toml.
-- @DIR@ and @PORT@ are filled in by bench/lib.sh.
pidfile = "@DIR@/prosody/prosody.pid"
data_path = "@DIR@/prosody/data"
log = { warn = "@DIR@/prosody/prosody.log" }
-- epoll (0.12's default backend), stated explicitly.
network_backend = "epoll"
-- Pending-connection queue like kith's (tokio) 1024; server_epoll's default is 128.
network_settings = { tcp_backlog = 1024 }
-- The Lua collector: Prosody's default unless PROSODY_GC says otherwise (bench/lib.sh).
@PROSODY_GC@

c2s_ports = { @PORT@ }
c2s_interfaces = { "127.0.0.1" }
c2s_require_encryption = @TLS_REQUIRED@
-- The same certificate and key as kith and ejabberd.
certificates = "@DIR@/tls"
ssl = {
  certificate = "@DIR@/tls/cert.pem";
  key = "@DIR@/tls/key.pem";
}

-- Salted SCRAM-SHA-1 secrets with 4096 iterations, like kith and ejabberd (Prosody's
-- default is 10000).
authentication = "internal_hashed"
default_iteration_count = 4096
-- Message archives in the storage PROSODY_ARCHIVE names (bench/lib.sh): "internal"
-- (the default) or "sql" (SQLite, the file below in data_path); all else internal.
default_storage = "internal"
storage = { archive = "@PROSODY_ARCHIVE@" }
sql = { driver = "SQLite3", database = "prosody.sqlite" }

-- In-band registration provisions the bench accounts: no throttle.
allow_registration = true

-- No rate limits: mod_limits is not loaded. 1:1 archiving follows ARCHIVE
-- (bench/lib.sh): on loads mod_mam archiving every message by default (in the
-- storage PROSODY_ARCHIVE names, above), off leaves it out. HTTP only for
-- WebSocket, no s2s. Groups: the MUC component at the end. mod_offline, mod_presence,
-- mod_message, mod_iq and mod_c2s load by default.
modules_enabled = {
  "roster"; "saslauth"; "tls"; "disco"; "register"; "ping"; "smacks";
  "blocklist"; "private"; "vcard_legacy"; "time"; "version"; "lastactivity";
  @MAM_MODULE@
  "websocket";
}
-- XMPP over WebSocket (RFC 7395) for TRANSPORT=websocket at /xmpp-websocket:
-- HTTPS, or HTTP with TLS=off.
http_ports = { @PROSODY_HTTP@ }
http_interfaces = { "127.0.0.1" }
https_ports = { @PROSODY_HTTPS@ }
https_interfaces = { "127.0.0.1" }
https_ssl = {
  certificate = "@DIR@/tls/cert.pem";
  key = "@DIR@/tls/key.pem";
}
default_archive_policy = @MAM_POLICY@
archive_expires_after = "never"
modules_disabled = { "s2s"; }
c2s_stanza_size_limit = 262144

VirtualHost "localhost"

-- Groups for the `group` scenario, like kith's: rooms are persistent, members-only
-- and archived (mod_muc_mam on every room, as kith archives every group message);
-- no history replay on join (the bench joins with maxstanzas='0'). No mod_muc_limits.
Component "conference.localhost" "muc"
  modules_enabled = { "muc_mam" }
  muc_log_by_default = true
  muc_log_all_rooms = true
  muc_room_default_persistent = true
  muc_room_default_members_only = true
  muc_room_default_history_length = 0
  max_archive_query_results = 50

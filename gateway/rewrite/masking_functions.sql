-- piigate masking functions: install once per upstream database, as the role that
-- will OWN the key (typically the database owner, not the gateway's upstream role).
--
-- piigate.pseudonym(text) is a keyed, deterministic pseudonym (HMAC-SHA256 of the
-- value, first 16 hex digits, prefixed 'psn_'): equal inputs give equal outputs, so
-- masked columns still join and group, but nobody can compute it without the key.
-- The key never appears in the text of masked queries (PostgreSQL logs them and shows
-- them in pg_stat_activity): the function is SECURITY DEFINER and reads the key from a
-- table only its owner can read. The key is stored as the two HMAC pads
-- (key XOR ipad, key XOR opad), computed by gateway.rewrite.pseudonym.install_statements.
--
-- The gateway must deny direct calls of piigate.* by users under PII policy (a caller
-- who may call the function on guesses can reverse low-entropy values such as SSNs).
CREATE SCHEMA IF NOT EXISTS piigate;
REVOKE ALL ON SCHEMA piigate FROM PUBLIC;
GRANT USAGE ON SCHEMA piigate TO PUBLIC;
CREATE TABLE IF NOT EXISTS piigate.pseudonym_key (
    id integer PRIMARY KEY CHECK (id = 1),
    inner_pad bytea NOT NULL CHECK (pg_catalog.length(inner_pad) = 64),
    outer_pad bytea NOT NULL CHECK (pg_catalog.length(outer_pad) = 64)
);
REVOKE ALL ON TABLE piigate.pseudonym_key FROM PUBLIC;
CREATE OR REPLACE FUNCTION piigate.pseudonym(value text) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT 'psn_' OPERATOR(pg_catalog.||) pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(
               k.outer_pad OPERATOR(pg_catalog.||) pg_catalog.sha256(
                   k.inner_pad OPERATOR(pg_catalog.||) pg_catalog.convert_to(value, 'UTF8'))), 'hex'), 16)
      FROM piigate.pseudonym_key AS k WHERE k.id = 1
$fn$;
REVOKE ALL ON FUNCTION piigate.pseudonym(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION piigate.pseudonym(text) TO PUBLIC;

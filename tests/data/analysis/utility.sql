-- statement kinds other than queries (format: see select.sql)

-- kind: cursor
-- command: DECLARE
-- cursor: c1
-- columns: customers.ssn=returned
-- inner_columns: customers.ssn=returned
DECLARE c1 CURSOR FOR SELECT ssn FROM ONLY customers

-- kind: cursor
-- command: FETCH
-- cursor: c1
-- columns:
FETCH ALL FROM c1

-- kind: cursor
-- command: MOVE
-- cursor: c5
MOVE FORWARD 5 IN c5

-- kind: cursor
-- command: CLOSE
-- cursor: c5
CLOSE c5

-- kind: prepare
-- command: PREPARE
-- prepared: p1
-- params: 1
-- inner_columns: customers.ssn=returned customers.id=predicate
PREPARE p1 AS SELECT ssn FROM ONLY customers WHERE id = $1

-- kind: prepare
-- command: EXECUTE
-- prepared: p1
-- columns:
EXECUTE p1(7)

-- kind: prepare
-- command: DEALLOCATE
-- prepared: p1
DEALLOCATE p1

-- kind: explain
-- command: EXPLAIN ANALYZE
-- includes: customers.ssn=predicate,returned
EXPLAIN ANALYZE VERBOSE SELECT * FROM customers WHERE ssn LIKE '000-00-000%'

-- kind: explain
-- command: EXPLAIN
EXPLAIN (ANALYZE false) SELECT 1

-- kind: explain
-- command: EXPLAIN ANALYZE
EXPLAIN (FORMAT JSON, ANALYZE) SELECT 1

-- kind: set
-- command: SET statement_timeout
-- setting: statement_timeout=5s
SET statement_timeout = '5s'

-- kind: set
-- command: SET LOCAL work_mem
-- setting: work_mem=64MB
SET LOCAL work_mem TO '64MB'

-- kind: set
-- command: RESET statement_timeout
-- setting: statement_timeout=None
RESET statement_timeout

-- kind: set
-- command: SHOW
-- setting: search_path=None
SHOW search_path

-- kind: session
-- command: SET search_path
-- setting: search_path=scratch, public
SET search_path = scratch, public

-- kind: session
-- command: SET ROLE
-- setting: role=gw_admin
SET ROLE gw_admin

-- kind: session
-- command: SET SESSION AUTHORIZATION
SET SESSION AUTHORIZATION postgres

-- kind: session
-- command: RESET ALL
RESET ALL

-- kind: session
-- command: DISCARD ALL
DISCARD ALL

-- kind: session
SET standard_conforming_strings = off

-- kind: transaction
-- command: BEGIN
BEGIN

-- kind: transaction
-- command: START TRANSACTION
START TRANSACTION ISOLATION LEVEL SERIALIZABLE

-- kind: transaction
-- command: COMMIT
COMMIT

-- kind: transaction
-- command: ROLLBACK TO SAVEPOINT
ROLLBACK TO SAVEPOINT s1

-- kind: transaction
-- command: SAVEPOINT
SAVEPOINT s1

-- kind: transaction
-- command: RELEASE
RELEASE SAVEPOINT s1

-- kind: transaction
-- command: PREPARE TRANSACTION
PREPARE TRANSACTION 'x'

-- kind: transaction
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ

-- kind: listen
-- command: LISTEN
LISTEN exfil

-- kind: listen
-- command: NOTIFY
NOTIFY exfil, 'payload'

-- kind: listen
-- command: UNLISTEN
UNLISTEN *

-- kind: do
-- unknown: DO
DO $$ BEGIN RAISE NOTICE '%', (SELECT string_agg(ssn, ',') FROM customers); END $$

-- kind: call
-- unknown: not in the live schema
CALL scratch.p()

-- kind: utility
-- command: VACUUM
VACUUM customers

-- kind: utility
-- command: ANALYZE
ANALYZE customers

-- kind: utility
-- command: LOCK
LOCK TABLE customers IN SHARE MODE

-- kind: utility
-- command: CHECKPOINT
CHECKPOINT

-- kind: utility
-- command: LOAD
-- dynamic: LOAD
LOAD 'auto_explain'

-- kind: ddl
-- command: CREATE TABLE
CREATE TABLE scratch.x (a int)

-- kind: ddl
-- command: DROP TABLE
DROP TABLE scratch.x

-- kind: ddl
-- command: ALTER TABLE
ALTER TABLE customers ADD COLUMN x int

-- kind: ddl
-- command: GRANT
GRANT SELECT ON customers TO gw_user

-- kind: ddl
-- command: REVOKE
REVOKE SELECT ON customers FROM gw_user

-- kind: ddl
-- command: COMMENT
COMMENT ON COLUMN customers.ssn IS NULL

-- kind: ddl
-- command: TRUNCATE
-- written: public.customers
TRUNCATE customers

-- kind: ddl
-- command: REFRESH MATERIALIZED VIEW
REFRESH MATERIALIZED VIEW customer_city_mv

-- kind: ddl
-- command: ALTER ROLE SET
-- setting: search_path=scratch, public
ALTER ROLE CURRENT_USER SET search_path = scratch, public

-- kind: ddl
-- command: CREATE FUNCTION
-- unknown: function
CREATE FUNCTION scratch.f2() RETURNS text LANGUAGE sql RETURN (SELECT string_agg(phone, ',') FROM customers)

-- kind: ddl
-- command: CREATE EXTENSION
CREATE EXTENSION IF NOT EXISTS hstore

-- kind: ddl
-- command: ALTER SYSTEM
ALTER SYSTEM SET log_statement = 'all'

-- extended protocol: exactly one statement
-- kind: unknown
-- unknown: extended-protocol
-- extended: yes
SELECT 1; SELECT 2

-- DDL names its target relations and the columns its clauses read
-- kind: ddl
-- command: CREATE INDEX
-- written: public.customers
-- includes: customers.ssn=other customers.email=predicate
CREATE INDEX i ON customers (lower(ssn)) WHERE email IS NOT NULL

-- kind: ddl
-- includes: customers.ssn=predicate
CREATE POLICY p ON customers USING (ssn IS NOT NULL)

-- extended statistics sample values (pg_stats_ext)
-- kind: ddl
-- includes: customers.ssn=other customers.email=other
CREATE STATISTICS s (mcv) ON ssn, email FROM customers

-- declassifying a column by its comment
-- kind: ddl
-- columns: customers.ssn=other
-- written: public.customers
COMMENT ON COLUMN public.customers.ssn IS NULL

-- kind: utility
-- command: ANALYZE
-- read: public.customers
-- includes: customers.ssn=other
ANALYZE customers (ssn)

-- kind: utility
-- read: public.customers
LOCK customers

-- kind: ddl
-- written: public.customers public.orders
GRANT SELECT ON customers, orders TO gw_user

-- a CHECK constraint is an existence oracle
-- kind: ddl
-- includes: customers.ssn=other
ALTER TABLE customers ADD CONSTRAINT c CHECK (ssn <> '000-00-0007')

-- kind: explain
-- prepared: p1
EXPLAIN ANALYZE EXECUTE p1(1)

-- kind: ddl
-- command: CREATE AGGREGATE
CREATE AGGREGATE scratch.leak(text) (sfunc = textcat, stype = text)

-- kind: ddl
-- command: CREATE OPERATOR
CREATE OPERATOR public.=== (leftarg = text, rightarg = text, function = texteq)

-- kind: ddl
-- command: ALTER DEFAULT PRIVILEGES
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO gw_user

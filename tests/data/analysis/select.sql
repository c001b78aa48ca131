-- Analyzer fixtures: one statement text per block, blocks separated by a blank line.
-- Header lines "-- key: value" state the expected facts of the LAST statement of the text:
--   kind, command, count (statements in the text), unknown (no | yes | a substring of the reason),
--   columns (exact set: [schema.]table.column=usage,usage ...; schema defaults to public),
--   includes (each listed column present with at least those usages), excludes (columns absent),
--   read / written (exact relation sets), functions (each listed present), dynamic (a substring),
--   setting (name=value, value "None" for none), cursor, prepared, params, creates, inner_columns.

-- kind: select
-- command: SELECT
-- unknown: no
-- columns: orders.id=returned orders.amount=returned
-- read: public.orders
-- written:
SELECT id, amount FROM orders

-- columns: customers.id=returned customers.city=returned customers_archive.id=returned customers_archive.city=returned
-- read: public.customers public.customers_archive
SELECT id, city FROM customers

-- columns: customers.id=returned customers.city=returned
-- read: public.customers
SELECT id, city FROM ONLY customers

-- columns: customers.ssn=returned
SELECT s FROM ONLY customers AS c(i, n, e, p, s)

-- columns: customers.id=predicate customers.city=returned
SELECT city FROM ONLY customers WHERE id = 7

-- includes: customers.ssn=predicate customers.email=returned
-- excludes: customers.phone customers.full_name
SELECT email FROM customers WHERE ssn LIKE '000%'

-- columns: orders.id=returned orders.customer_id=join customers.id=join customers.email=returned
SELECT o.id, c.email FROM orders o JOIN ONLY customers c ON c.id = o.customer_id

-- columns: orders.id=returned,join customers.id=returned,join customers.email=returned orders.customer_id=returned orders.amount=returned orders.note=returned orders.created_at=returned customers.full_name=returned customers.phone=returned customers.ssn=returned customers.dob=returned customers.card_number=returned customers.city=returned customers.created_at=returned
SELECT * FROM orders JOIN ONLY customers USING (id)

-- includes: customers.city=group_order,returned customers.dob=aggregate,returned
-- excludes: customers.ssn
SELECT city, max(dob) FROM customers GROUP BY city

-- includes: customers.ssn=group_order customers.id=returned
SELECT id FROM ONLY customers ORDER BY ssn

-- columns: customers.id=returned customers.ssn=group_order,returned
SELECT id, ssn FROM ONLY customers ORDER BY 2

-- output alias wins in ORDER BY: "ssn" here is the output column id
-- includes: customers.id=returned,group_order
SELECT id AS ssn FROM ONLY customers ORDER BY ssn

-- columns: customers.email=aggregate,returned customers.id=group_order,returned customers.city=group_order
SELECT id, lag(email) OVER (PARTITION BY city ORDER BY id) FROM ONLY customers

-- columns: customers.id=returned customers.dob=predicate
SELECT id FROM ONLY customers WHERE CASE WHEN dob < '1970-01-01' THEN true ELSE false END

-- columns: customers.ssn=predicate customers.id=returned
SELECT id, CASE WHEN ssn LIKE '0%' THEN 1 END IS NULL AS x FROM ONLY customers WHERE false

-- includes: customers.ssn=whole_row,returned customers.email=whole_row,returned customers.id=whole_row,returned
SELECT row_to_json(c) FROM customers c

-- includes: customers.ssn=whole_row,returned
SELECT c::text FROM customers c

-- includes: customers.ssn=whole_row,returned
SELECT t FROM customers t

-- includes: customers.ssn=whole_row,returned
SELECT (c).ssn FROM customers c

-- functional notation ssn(c) is c.ssn; PostgreSQL reads c as a whole row first
-- includes: customers.ssn=returned,whole_row customers.email=whole_row,other
SELECT ssn(c) FROM ONLY customers c

-- includes: customers.ssn=whole_row,returned
SELECT ROW(c.*) FROM customers c

-- columns: customers.ssn=returned,other
SELECT x FROM (SELECT ssn AS x FROM ONLY customers) t

-- columns: customers.email=returned,other customers.ssn=returned,other
WITH x(a, b) AS (SELECT email, ssn FROM ONLY customers) SELECT a, b FROM x

-- a CTE's unused output is still touched (other), never dropped
-- columns: customers.email=returned,other customers.ssn=other
WITH x(a, b) AS (SELECT email, ssn FROM ONLY customers) SELECT a FROM x

-- UNION (not ALL) compares the rows it de-duplicates: grouping
-- columns: customers.ssn=returned,group_order
SELECT 'x' UNION SELECT ssn FROM ONLY customers

-- columns: customers.ssn=join
SELECT v.guess FROM (VALUES ('000-00-0007')) AS v(guess) JOIN ONLY customers c ON c.ssn = v.guess

-- columns: customers.ssn=aggregate,returned
-- kind: select
VALUES ((SELECT string_agg(ssn, ',') FROM ONLY customers))

-- columns: customers.ssn=predicate customers.id=returned
SELECT id FROM ONLY customers WHERE ssn OPERATOR(pg_catalog.~~) '000-00-001%'

-- columns: customers.ssn=returned
SELECT/**/ssn/**/FROM/**/ONLY/**/customers

-- columns: customers.ssn=returned customers.email=returned
SELECT EMAIL, "ssn" FROM ONLY PUBLIC.CUSTOMERS

-- columns: customers.ssn=returned
SELECT U&"\0073sn" FROM ONLY customers

-- columns: customers.ssn=returned
SELECT sectest.public.customers.ssn FROM ONLY customers

-- count: 2
-- columns: customers.ssn=returned
SELECT 1; SELECT ssn FROM ONLY customers

-- system columns are columns of the relation
-- columns: customers.ssn=returned customers.tableoid=returned
SELECT c.ssn, c.tableoid::regclass FROM ONLY customers c

-- columns: customers.phone=returned,other
SELECT u FROM ONLY customers c, unnest(ARRAY[c.phone]) u

-- columns: customers.ssn=returned
SELECT ARRAY(SELECT ssn FROM ONLY customers)

-- LIMIT decides which rows exist: a predicate
-- includes: customers.ssn=predicate orders.id=returned
SELECT id FROM orders LIMIT (SELECT length(ssn) FROM ONLY customers LIMIT 1)

-- columns: customers.ssn=returned
SELECT ssn FROM ONLY customers TABLESAMPLE BERNOULLI (50)

-- includes: customers.ssn=whole_row,other
SELECT jt.s FROM ONLY customers c, JSON_TABLE(to_jsonb(c), '$' COLUMNS (s text PATH '$.ssn')) jt

-- columns: customers.email=predicate,group_order,other customers.id=join,predicate,group_order,returned,other
WITH RECURSIVE r AS (SELECT id, email FROM ONLY customers WHERE id = 1 UNION SELECT c.id, c.email FROM ONLY customers c JOIN r ON c.id = r.id + 1) SELECT id FROM r WHERE email IS NULL

-- includes: customers.ssn=group_order,returned customers.city=group_order,returned
SELECT city, ssn, count(*) FROM customers GROUP BY GROUPING SETS ((city), (ssn))

-- columns: customers.ssn=group_order customers.id=returned
SELECT DISTINCT ON (ssn) id FROM ONLY customers

-- columns: customers.ssn=returned,aggregate
SELECT JSON_ARRAYAGG(ssn) FROM ONLY customers

-- the result is one of the dob values
-- columns: customers.dob=aggregate,group_order,returned
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY dob) FROM ONLY customers

-- columns: customers.id=predicate customers.dob=predicate,aggregate
SELECT count(*) FILTER (WHERE dob < '1970-01-01') FROM ONLY customers WHERE id > 0

-- an unresolvable column is unknown, never "nothing"
-- unknown: column nosuch cannot be resolved
SELECT nosuch FROM customers

-- unknown: relation nosuch is not in the live schema
SELECT * FROM nosuch

-- unknown: parse error
SELEC ssn FROM customers

-- kind: empty
-- count: 1

-- kind: empty
-- count: 1
/* only a comment */

-- a parameter in a simple query
-- params: 2
-- columns: customers.ssn=predicate customers.id=predicate customers.email=returned
SELECT email FROM ONLY customers WHERE ssn = $1 AND id = $2

-- dynamic: regclass
-- columns:
SELECT 'customers'::regclass

-- dynamic: set_config
-- functions: pg_catalog.set_config
SELECT set_config('search_path', 'scratch', false)

-- functions: pg_catalog.upper pg_catalog.lower
-- columns: customers.email=returned customers.full_name=returned
SELECT upper(email), lower(full_name) FROM ONLY customers

-- unknown: SECURITY DEFINER
SELECT * FROM customer_lookup(7)

-- unknown: query_to_xml
SELECT query_to_xml('SELECT ssn FROM customers', true, false, '')

-- unknown: pg_stats
SELECT * FROM pg_stats WHERE tablename = 'customers'

-- harmless catalog queries resolve
-- unknown: no
-- read: pg_catalog.pg_class pg_catalog.pg_namespace
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'

-- unknown: no
SELECT now(), current_user, version()

-- unknown: no
-- includes: customers.id=returned,predicate customers.city=returned orders.customer_id=predicate orders.amount=predicate
-- excludes: customers.ssn orders.note
SELECT c.id, c.city FROM ONLY customers c WHERE c.id IN (SELECT o.customer_id FROM orders o WHERE o.amount > 10)

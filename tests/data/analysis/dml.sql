-- INSERT / UPDATE / DELETE / MERGE / COPY / CREATE ... AS fixtures (format: see select.sql)

-- kind: update
-- command: UPDATE
-- columns: customers.city=written,other customers.id=predicate customers.ssn=returned customers.email=returned
-- written: public.customers
UPDATE ONLY customers SET city = city WHERE id <= 5 RETURNING ssn, email

-- UPDATE without ONLY writes the children too
-- includes: customers_archive.city=written
-- written: public.customers public.customers_archive
UPDATE customers SET city = 'x'

-- kind: insert
-- columns: orders.customer_id=written orders.amount=written orders.note=written customers.id=other,predicate customers.ssn=other
-- written: public.orders
-- read: public.orders public.customers
INSERT INTO orders(customer_id, amount, note) SELECT id, 0, ssn FROM ONLY customers WHERE id <= 50

-- INSERT without a column list writes the leading columns
-- columns: orders.id=written orders.customer_id=written
INSERT INTO orders VALUES (1, 2)

-- includes: customers.full_name=returned,written customers.ssn=returned customers.email=returned customers.card_number=returned customers.id=predicate,written customers.city=written,other
INSERT INTO customers(id, full_name, city) VALUES (1, 'x', 'y') ON CONFLICT (id) DO UPDATE SET city = customers.city RETURNING customers.*

-- EXCLUDED carries the incoming values and the target's columns
-- includes: customers.city=written,other customers.email=predicate
INSERT INTO customers(id, city) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET city = excluded.city WHERE customers.email IS NULL

-- kind: select
-- includes: customers.email=other,returned customers.phone=other,returned customers.city=written
-- written: public.customers public.customers_archive
WITH u AS (UPDATE customers SET city = city WHERE id < 4 RETURNING email, phone) SELECT * FROM u

-- kind: delete
-- command: DELETE
-- columns: orders.customer_id=predicate customers.id=predicate customers.ssn=predicate
-- written: public.orders
DELETE FROM orders o USING ONLY customers c WHERE c.id = o.customer_id AND c.ssn LIKE '000%'

-- kind: update
-- columns: orders.note=written orders.customer_id=predicate customers.id=predicate customers.ssn=other
UPDATE orders o SET note = c.ssn FROM ONLY customers c WHERE c.id = o.customer_id

-- RETURNING old/new (PostgreSQL 18)
-- includes: customers.ssn=returned customers.email=returned
UPDATE customers SET city = 'x' RETURNING old.ssn, new.email

-- kind: merge
-- command: MERGE
-- columns: orders.customer_id=join,written orders.note=written customers.id=join,other customers.email=other
-- written: public.orders
MERGE INTO orders o USING ONLY customers c ON o.customer_id = c.id WHEN MATCHED THEN UPDATE SET note = c.email WHEN NOT MATCHED THEN INSERT (customer_id, note) VALUES (c.id, c.email)

-- includes: customers.dob=predicate
MERGE INTO customers c USING orders o ON c.id = o.customer_id WHEN MATCHED AND c.dob < '1970-01-01' THEN DELETE

-- kind: copy_to
-- command: COPY TO
-- columns: customers.full_name=returned customers.email=returned customers.phone=returned customers.ssn=returned customers.dob=returned customers.card_number=returned customers.city=returned customers.created_at=returned customers.id=returned
COPY customers TO STDOUT

-- columns: customers.email=returned customers.phone=returned
COPY customers (email, phone) TO STDOUT WITH (FORMAT csv)

-- dynamic: server file
-- unknown: server file
COPY customers TO '/tmp/customers_leak.csv'

-- dynamic: PROGRAM
-- unknown: PROGRAM
COPY customers TO PROGRAM 'cat'

-- kind: copy_from
-- unknown: server file
COPY orders (amount) FROM '/var/log/postgresql/postgresql-15-main.log'

-- kind: copy_from
-- unknown: PROGRAM
COPY orders (amount) FROM PROGRAM 'cat /var/log/postgresql/postgresql-15-main.log'

-- kind: copy_to
-- columns: customers.ssn=returned
COPY (SELECT ssn FROM ONLY customers) TO STDOUT

-- kind: copy_from
-- command: COPY FROM
-- columns: orders.note=written orders.amount=written
-- written: public.orders
COPY orders (note, amount) FROM STDIN

-- kind: ddl
-- command: CREATE TABLE AS
-- columns: customers.email=returned
-- creates: scratch.t
CREATE TABLE scratch.t AS SELECT email FROM ONLY customers

-- kind: ddl
-- command: SELECT INTO
-- columns: customers.ssn=returned
-- creates: pg_temp.t2
SELECT ssn INTO TEMP t2 FROM ONLY customers

-- kind: ddl
-- command: CREATE VIEW
-- includes: customers.ssn=returned customers.email=returned
-- creates: scratch.v
CREATE VIEW scratch.v AS SELECT * FROM customers

-- kind: ddl
-- command: CREATE MATERIALIZED VIEW
-- columns: customers.dob=returned
CREATE MATERIALIZED VIEW scratch.mv AS SELECT dob FROM ONLY customers

-- creates: pg_temp.tt
-- kind: ddl
CREATE TEMP TABLE tt (a int)

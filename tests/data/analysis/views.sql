-- views, materialized views, inheritance, partitions (format: see select.sql)

-- a view's columns and the base columns under it
-- columns: customer_contacts.id=returned customer_contacts.full_name=returned customer_contacts.email=returned customer_contacts.phone=returned customers.id=returned,other customers.full_name=returned,other customers.email=returned,other customers.phone=returned,other customers_archive.id=returned,other customers_archive.full_name=returned,other customers_archive.email=returned,other customers_archive.phone=returned,other
-- read: public.customer_contacts public.customers public.customers_archive
SELECT * FROM customer_contacts

-- only the view columns asked for reach the output; the rest are touched (other)
-- includes: customers.email=returned,other customers.phone=other
-- excludes: customers.ssn customers.dob
SELECT email FROM customer_contacts

-- includes: customers.email=returned orders.amount=returned
-- excludes: customers.ssn
SELECT customer_email, amount FROM order_report

-- the view's join condition is a join usage of the statement
-- includes: customers.id=join orders.customer_id=join
SELECT order_id FROM order_report

-- a materialized view's columns and their lineage
-- includes: customer_city_mv.full_name=returned customers.full_name=returned customers.dob=returned
SELECT * FROM customer_city_mv

-- a view over a view; scratch.v selects every column of customers, so all are touched (other)
-- includes: scratch.vv.secret=returned scratch.v.ssn=returned,other customers.ssn=returned,other customers.email=other
SELECT secret FROM scratch.vv

-- a child table's columns are also its parent's
-- columns: customers_archive.ssn=returned customers_archive.email=returned customers.ssn=returned customers.email=returned
SELECT ssn, email FROM customers_archive

-- a partition's columns are also the partitioned table's
-- columns: customers_part_testville.ssn=returned customers_part.ssn=returned
SELECT ssn FROM customers_part_testville

-- reading a partitioned table reads its partitions
-- columns: customers_part.ssn=returned customers_part_testville.ssn=returned
-- read: public.customers_part public.customers_part_testville
SELECT ssn FROM customers_part

-- ONLY reads no children
-- columns: customers.ssn=returned
-- read: public.customers
SELECT ssn FROM ONLY customers

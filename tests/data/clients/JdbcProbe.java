// What the JDBC driver (pgJDBC) does against the sample database, printed line by line,
// so that a run through piigate can be compared with a run straight to PostgreSQL.
// Used by tests/gateway/compat/test_jdbc.py; run as
//   java -cp postgresql.jar:. JdbcProbe URL USER PASSWORD MODE
// MODE "general": types, prepared statements past prepareThreshold (named server-side
// statements, binary transfer), a batch in a rolled-back transaction, an error inside
// a transaction, a portal read with a fetch size, metadata queries, a callable;
// MODE "pii": customers' PII columns through a statement executed past
// prepareThreshold, with each column's type as the driver reports it.
import java.sql.*;
import java.util.*;

public class JdbcProbe {
    public static void main(String[] a) throws Exception {
        Properties p = new Properties();
        p.setProperty("user", a[1]);
        p.setProperty("password", a[2]);
        p.setProperty("sslmode", "disable");
        p.setProperty("prepareThreshold", "2");
        StringBuilder out = new StringBuilder();
        try (Connection c = DriverManager.getConnection(a[0], p)) {
            if (a[3].equals("pii")) pii(c, out); else general(c, out);
        }
        System.out.print(out);
    }

    static void general(Connection c, StringBuilder out) throws Exception {
        try (Statement s = c.createStatement()) {
            ResultSet r = s.executeQuery("SELECT 1::int, 'x é'::text, 2.5::numeric, ARRAY[1,2]::int[], "
                + "'{\"a\":1}'::jsonb, '2024-02-29'::date, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, "
                + "'\\x00ff'::bytea, 1.5::float8, NULL::int");
            ResultSetMetaData md = r.getMetaData();
            while (r.next()) {
                for (int i = 1; i <= md.getColumnCount(); i++)
                    out.append(md.getColumnTypeName(i)).append('=').append(r.getString(i)).append('|');
                out.append('\n');
            }
        }
        try (PreparedStatement ps = c.prepareStatement(
                "SELECT id, customer_id, amount, created_at IS NOT NULL FROM orders WHERE id = ?")) {
            for (int i = 1; i <= 6; i++) {
                ps.setInt(1, i);
                ResultSet r = ps.executeQuery();
                while (r.next())
                    out.append(r.getInt(1)).append(',').append(r.getInt(2)).append(',')
                       .append(r.getBigDecimal(3)).append(',').append(r.getBoolean(4)).append('\n');
            }
        }
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO orders (customer_id, amount) VALUES (?, ?)")) {
            for (int i = 1; i <= 20; i++) { ps.setInt(1, i); ps.setBigDecimal(2, new java.math.BigDecimal(i + ".25")); ps.addBatch(); }
            out.append("batch ").append(ps.executeBatch().length).append('\n');
        }
        try (Statement s = c.createStatement()) {
            ResultSet r = s.executeQuery("SELECT count(*) FROM orders WHERE amount::text LIKE '%.25'");
            r.next();
            out.append("inserted ").append(r.getInt(1)).append('\n');
        }
        try (Statement s = c.createStatement()) {
            s.executeQuery("SELECT 1/0");
        } catch (SQLException e) {
            out.append("error ").append(e.getSQLState()).append('\n');
        }
        c.rollback();
        try (PreparedStatement ps = c.prepareStatement("SELECT id FROM orders ORDER BY id")) {
            ps.setFetchSize(7);
            ResultSet r = ps.executeQuery();
            long sum = 0;
            int n = 0;
            while (r.next()) { sum += r.getInt(1); n++; }
            out.append("fetched ").append(n).append(' ').append(sum).append('\n');
        }
        c.commit();
        c.setAutoCommit(true);
        try (Statement s = c.createStatement()) {
            ResultSet r = s.executeQuery("SELECT count(*) FROM orders WHERE amount::text LIKE '%.25'");
            r.next();
            out.append("after rollback ").append(r.getInt(1)).append('\n');
        }
        DatabaseMetaData md = c.getMetaData();
        ResultSet cols = md.getColumns(null, "public", "orders", null);
        while (cols.next())
            out.append("column ").append(cols.getString("COLUMN_NAME")).append(' ')
               .append(cols.getString("TYPE_NAME")).append('\n');
        try (CallableStatement cs = c.prepareCall("{? = call upper(?)}")) {
            cs.registerOutParameter(1, Types.VARCHAR);
            cs.setString(2, "abc");
            cs.execute();
            out.append("call ").append(cs.getString(1)).append('\n');
        }
    }

    static void pii(Connection c, StringBuilder out) throws Exception {
        try (PreparedStatement ps = c.prepareStatement(
                "SELECT id, city, email, ssn, dob FROM customers WHERE id = ?")) {
            for (int i = 1; i <= 6; i++) {
                ps.setInt(1, i);
                ResultSet r = ps.executeQuery();
                ResultSetMetaData md = r.getMetaData();
                while (r.next()) {
                    for (int k = 1; k <= md.getColumnCount(); k++)
                        out.append(md.getColumnName(k)).append(':').append(md.getColumnTypeName(k))
                           .append('=').append(r.getString(k)).append('|');
                    out.append('\n');
                }
            }
        }
    }
}

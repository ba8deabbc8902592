// JDBC (pgjdbc) scenarios run by the pgveil integration tests.
//
// Usage: java -cp <classes>:postgresql.jar DriverCheck scenario...
// Connection settings come from PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD;
// ITEST_SSL_ROOTCERT names the CA file for the "tls" scenario. Every scenario
// prints one line "RESULT <name> PASS <detail>" or "RESULT <name> FAIL <why>"
// (JdbcScenarios).

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.Array;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicReference;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public final class DriverCheck extends JdbcScenarios {

    private static Connection connect(String... extra) throws SQLException {
        Properties p = settings("itest-jdbc");
        // server-side prepared statements from the first use, and binary transfer
        p.setProperty("prepareThreshold", "1");
        for (int i = 0; i + 1 < extra.length; i += 2)
            p.setProperty(extra[i], extra[i + 1]);
        return connectWith(p);
    }

    private static long scalarLong(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            check(rs.next(), "no row for " + sql);
            return rs.getLong(1);
        }
    }

    private static String scalarString(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            check(rs.next(), "no row for " + sql);
            return rs.getString(1);
        }
    }

    private static String newTable(Connection c) throws SQLException {
        String name = "jdbc_" + UUID.randomUUID().toString().replace("-", "").substring(0, 12);
        try (Statement s = c.createStatement()) {
            s.execute("CREATE TABLE " + name + " (id integer PRIMARY KEY, note text)");
        }
        return name;
    }

    private static void dropTable(Connection c, String name) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS " + name);
        }
    }

    // ------------------------------------------------------------------ scenarios

    static String basic() throws Exception {
        try (Connection c = connect()) {
            checkEq("app_agent", scalarString(c, "SELECT current_user"), "current_user");
            checkEq(100L, scalarLong(c, "SELECT count(*) FROM users"), "users");
            try (PreparedStatement ps = c.prepareStatement("SELECT name, email FROM users WHERE id = ?")) {
                for (int i = 0; i < 5; i++) {
                    ps.setInt(1, 7);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "row");
                        checkEq("Zoë Müller", rs.getString(1), "name");
                        checkEq("user7@example.com", rs.getString(2), "email");
                    }
                }
                check(ps.unwrap(PGStatement.class).isUseServerPrepare(), "not server-prepared");
            }
            long named = scalarLong(c, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'SELECT name, email FROM users%'");
            // catalog metadata, as ORMs and IDEs read it
            java.sql.DatabaseMetaData md = c.getMetaData();
            check(md.getDatabaseProductVersion().startsWith("15"), "product version " + md.getDatabaseProductVersion());
            try (ResultSet rs = md.getColumns(null, "public", "users", "email")) {
                check(rs.next(), "metadata for users.email");
                checkEq("text", rs.getString("TYPE_NAME"), "users.email type");
            }
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "orders")) {
                check(rs.next(), "primary key of orders");
                checkEq("id", rs.getString("COLUMN_NAME"), "orders primary key");
            }
            checkEq(1L, named, "server-side prepared statement");
            try (Statement s = c.createStatement()) {
                check(s.execute("SELECT 1; SELECT 2"), "multi");
                check(s.getMoreResults(), "second result");
                try (ResultSet rs = s.getResultSet()) {
                    rs.next();
                    checkEq(2, rs.getInt(1), "second result value");
                }
            }
            return "ok";
        }
    }

    static String binary() throws Exception {
        String cols = "id, name, born, created_at, balance, active, tags, photo, uid, id::int8 * 12345678901 AS big, "
                + "balance::float8 AS bal";
        List<List<Object>> text = new ArrayList<>();
        List<List<Object>> bin = new ArrayList<>();
        // text: no server-side prepare, so no binary transfer
        try (Connection c = connect("prepareThreshold", "0", "binaryTransfer", "false")) {
            collect(c, cols, text);
        }
        // binary: prepareThreshold=-1 forces a server-prepared statement with binary results at once
        try (Connection c = connect("prepareThreshold", "-1", "binaryTransfer", "true")) {
            collect(c, cols, bin);
        }
        checkEq(100, bin.size(), "rows");
        for (int i = 0; i < text.size(); i++)
            checkEq(text.get(i).toString(), bin.get(i).toString(), "row " + i);
        checkEq("Zoë Müller", bin.get(6).get(1), "name");
        return "rows=" + bin.size();
    }

    private static void collect(Connection c, String cols, List<List<Object>> out) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("SELECT " + cols + " FROM users WHERE id > ? ORDER BY id")) {
            for (int round = 0; round < 3; round++) {
                out.clear();
                ps.setInt(1, 0);
                try (ResultSet rs = ps.executeQuery()) {
                    ResultSetMetaData md = rs.getMetaData();
                    while (rs.next()) {
                        List<Object> row = new ArrayList<>();
                        for (int k = 1; k <= md.getColumnCount(); k++) {
                            Object o = rs.getObject(k);
                            if (o instanceof Array)
                                o = Arrays.toString((Object[]) ((Array) o).getArray());
                            else if (o instanceof byte[])
                                o = Arrays.toString((byte[]) o);
                            else if (o instanceof BigDecimal)
                                o = ((BigDecimal) o).toPlainString();
                            row.add(o);
                        }
                        out.add(row);
                    }
                }
            }
        }
    }

    static String transaction() throws Exception {
        try (Connection w = connect(); Connection r = connect()) {
            String t = newTable(w);
            try {
                w.setAutoCommit(false);
                try (PreparedStatement ps = w.prepareStatement("INSERT INTO " + t + " VALUES (?, ?)")) {
                    ps.setInt(1, 1);
                    ps.setString(2, "committed");
                    ps.executeUpdate();
                    checkEq(0L, scalarLong(r, "SELECT count(*) FROM " + t), "before commit");
                    w.commit();
                    checkEq(1L, scalarLong(r, "SELECT count(*) FROM " + t), "after commit");
                    ps.setInt(1, 2);
                    ps.setString(2, "rolled back");
                    ps.executeUpdate();
                    w.rollback();
                    checkEq(1L, scalarLong(r, "SELECT count(*) FROM " + t), "after rollback");
                    java.sql.Savepoint sp = w.setSavepoint();
                    ps.setInt(1, 3);
                    ps.executeUpdate();
                    w.rollback(sp);
                    ps.setInt(1, 4);
                    ps.executeUpdate();
                    w.commit();
                }
                checkEq("1,4", scalarString(r, "SELECT string_agg(id::text, ',' ORDER BY id) FROM " + t), "ids");
            } finally {
                w.setAutoCommit(true);
                dropTable(w, t);
            }
            return "ok";
        }
    }

    static String error() throws Exception {
        try (Connection c = connect()) {
            String msg = expectSqlState("22012", () -> scalarLong(c, "SELECT 1/0"));
            check(msg.contains("division by zero"), "message: " + msg);
            checkEq(2L, scalarLong(c, "SELECT 2"), "after error");
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int / 0")) {
                ps.setInt(1, 5);
                expectSqlState("22012", () -> ps.executeQuery().close());
                expectSqlState("22012", () -> ps.executeQuery().close());
            }
            expectSqlState("42P01", () -> scalarLong(c, "SELECT count(*) FROM missing_table"));
            c.setAutoCommit(false);
            expectSqlState("22012", () -> scalarLong(c, "SELECT 1/0"));
            expectSqlState("25P02", () -> scalarLong(c, "SELECT 1"));
            c.rollback();
            checkEq(3L, scalarLong(c, "SELECT 3"), "after rollback");
            c.setAutoCommit(true);
            return "ok";
        }
    }

    static String copy() throws Exception {
        try (Connection c = connect()) {
            String t = newTable(c);
            try {
                CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
                StringBuilder sb = new StringBuilder();
                for (int i = 1; i <= 10000; i++)
                    sb.append(i).append('\t').append("jdbc row ").append(i).append('\n');
                long n = cm.copyIn("COPY " + t + " FROM STDIN", new StringReader(sb.toString()));
                checkEq(10000L, n, "copied in");
                StringWriter out = new StringWriter();
                long m = cm.copyOut("COPY (SELECT * FROM " + t + " ORDER BY id) TO STDOUT", out);
                checkEq(10000L, m, "copied out");
                checkEq(sb.toString(), out.toString(), "copy out data");
                expectSqlState("22P02", () -> {
                    try {
                        cm.copyIn("COPY " + t + " FROM STDIN", new StringReader("10001\tok\nnope\tbad\n"));
                    } catch (java.io.IOException e) {
                        throw new SQLException(e);
                    }
                });
                checkEq(10000L, scalarLong(c, "SELECT count(*) FROM " + t), "count after failed copy");
            } finally {
                dropTable(c, t);
            }
            return "ok";
        }
    }

    static String listenNotify() throws Exception {
        String ch = "ch_" + UUID.randomUUID().toString().replace("-", "").substring(0, 8);
        try (Connection l = connect(); Connection n = connect()) {
            try (Statement s = l.createStatement()) {
                s.execute("LISTEN " + ch);
            }
            try (Statement s = n.createStatement()) {
                s.execute("NOTIFY " + ch + ", 'hello'");
            }
            try (PreparedStatement ps = n.prepareStatement("SELECT pg_notify(?, ?)")) {
                ps.setString(1, ch);
                ps.setString(2, "wörld");
                ps.executeQuery().close();
            }
            List<String> got = new ArrayList<>();
            long deadline = System.currentTimeMillis() + 10000;
            while (got.size() < 2 && System.currentTimeMillis() < deadline) {
                PGNotification[] ns = l.unwrap(PGConnection.class).getNotifications(1000);
                if (ns != null)
                    for (PGNotification x : ns)
                        got.add(x.getName() + ":" + x.getParameter());
            }
            checkEq(Arrays.asList(ch + ":hello", ch + ":wörld"), got, "notifications");
            return "ok";
        }
    }

    static String cancel() throws Exception {
        String app = "itest-jdbc-cancel-" + UUID.randomUUID().toString().substring(0, 8);
        try (Connection c = connect("ApplicationName", app); Connection watch = connect()) {
            Statement s = c.createStatement();
            AtomicReference<Throwable> outcome = new AtomicReference<>();
            long t0 = System.currentTimeMillis();
            Thread th = new Thread(() -> {
                try {
                    s.execute("SELECT pg_sleep(30)");
                    outcome.set(new AssertionError("finished without cancel"));
                } catch (Throwable e) {
                    outcome.set(e);
                }
            });
            th.start();
            while (scalarLong(watch, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + app
                    + "' AND state = 'active' AND query LIKE 'SELECT pg_sleep%'") == 0) {
                check(System.currentTimeMillis() - t0 < 15000, "query did not start");
                Thread.sleep(50);
            }
            s.cancel();
            th.join(25000);
            check(!th.isAlive(), "cancelled statement did not return");
            long elapsed = System.currentTimeMillis() - t0;
            Throwable e = outcome.get();
            check(e instanceof SQLException, "outcome: " + e);
            checkEq("57014", ((SQLException) e).getSQLState(), "SQLSTATE");
            check(elapsed < 25000, "took " + elapsed + " ms");
            // The first statement after a cancel is retried once if it was cancelled
            // too: PostgreSQL signals a cancel twice, and under load the second
            // signal can land on the next statement.
            String after;
            try {
                after = scalarString(c, "SELECT 'after'");
            } catch (SQLException stray) {
                if (!"57014".equals(stray.getSQLState()))
                    throw stray;
                after = scalarString(c, "SELECT 'after'");
            }
            checkEq("after", after, "after cancel");
            s.close();
            return "57014";
        }
    }

    static String batch() throws Exception {
        try (Connection c = connect()) {
            String t = newTable(c);
            try {
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?)")) {
                    for (int i = 1; i <= 2000; i++) {
                        ps.setInt(1, i);
                        ps.setString(2, "b" + i);
                        ps.addBatch();
                    }
                    int[] counts = ps.executeBatch();
                    checkEq(2000, counts.length, "batch size");
                }
                checkEq(2000L, scalarLong(c, "SELECT count(*) FROM " + t), "rows");
                c.setAutoCommit(false);
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?)")) {
                    for (int i : new int[] {5001, 1, 5002}) {
                        ps.setInt(1, i);
                        ps.setString(2, "x");
                        ps.addBatch();
                    }
                    try {
                        ps.executeBatch();
                        throw new AssertionError("duplicate key not reported");
                    } catch (java.sql.BatchUpdateException e) {
                        checkEq("23505", e.getSQLState(), "batch error");
                    }
                }
                c.rollback();
                c.setAutoCommit(true);
                checkEq(0L, scalarLong(c, "SELECT count(*) FROM " + t + " WHERE id > 5000"), "rolled back batch");
            } finally {
                c.setAutoCommit(true);
                dropTable(c, t);
            }
            return "ok";
        }
    }

    static String large() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false); // fetch size works through a portal inside a transaction
            long count = 0, sum = 0;
            try (PreparedStatement ps = c.prepareStatement("SELECT id, payload FROM big")) {
                ps.setFetchSize(20000);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        count++;
                        sum += rs.getInt(1);
                        if (rs.getString(2).length() != 96)
                            throw new AssertionError("payload");
                    }
                }
            }
            c.commit();
            checkEq(1000000L, count, "rows");
            checkEq(1000000L * 1000001L / 2, sum, "sum");
            return "rows=" + count;
        }
    }

    static String params() throws Exception {
        String app = env("ITEST_APP", "itest-jdbc-params");
        try (Connection c = connect("ApplicationName", app, "options", "-c statement_timeout=43210")) {
            PGConnection pc = c.unwrap(PGConnection.class);
            check(pc.getParameterStatus("server_version").startsWith("15"), "server_version");
            checkEq(app, pc.getParameterStatus("application_name"), "application_name status");
            checkEq("UTF8", pc.getParameterStatus("client_encoding"), "client_encoding");
            checkEq("43210ms", scalarString(c, "SHOW statement_timeout"), "options");
            String onServer = scalarString(c, "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()");
            check(onServer.contains(app), "application_name on the server: " + onServer);
            try (Statement s = c.createStatement()) {
                s.execute("SET application_name = 'jdbc-renamed'");
            }
            checkEq("jdbc-renamed", pc.getParameterStatus("application_name"), "status after SET");
            return "ok";
        }
    }

    // Run through a pgveil with guardrail rules: blocked statements are 42501 and
    // never run, in the simple and the extended protocol and inside transactions.
    static String guard() throws Exception {
        String t = env("ITEST_TABLE", "missing");
        try (Connection c = connect()) {
            String msg = expectSqlState("42501", () -> {
                try (Statement s = c.createStatement()) {
                    s.execute("DROP TABLE " + t);
                }
            });
            check(msg.contains("destructive statements are not allowed"), "message: " + msg);
            expectSqlState("42501", () -> {
                try (PreparedStatement ps = c.prepareStatement("DELETE FROM " + t + " WHERE ?")) {
                    ps.setBoolean(1, true);
                    ps.executeUpdate();
                }
            });
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + t + " VALUES (?, ?)")) {
                ps.setInt(1, 1);
                ps.setString(2, "rolled back");
                ps.executeUpdate();
            }
            expectSqlState("42501", () -> {
                try (Statement s = c.createStatement()) {
                    s.execute("TRUNCATE " + t);
                }
            });
            expectSqlState("25P02", () -> scalarLong(c, "SELECT 1"));
            c.rollback();
            c.setAutoCommit(true);
            checkEq(0L, scalarLong(c, "SELECT count(*) FROM " + t), "rows after rollback");
            for (int i = 0; i < 6; i++) // the same statement, server-prepared after the first use
                try (PreparedStatement ps = c.prepareStatement("SELECT count(*) FROM " + t + " WHERE id > ?")) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "row");
                    }
                }
            return "blocked";
        }
    }

    // Run through a pgveil with [oidc] holding DELETE and UPDATE of ITEST_TABLE, whose
    // approver approves the first held statement, denies the second and lets the
    // third wait past hold_timeout. Returns the notices of the approved one.
    static String hold() throws Exception {
        String t = env("ITEST_TABLE", "missing");
        try (Connection c = connect("sslmode", "require")) {
            List<String> notices = new ArrayList<>();
            try (Statement s = c.createStatement()) {
                checkEq(1, s.executeUpdate("DELETE FROM " + t + " WHERE id = 1"), "approved rows");
                for (SQLWarning w = s.getWarnings(); w != null; w = w.getNextWarning())
                    notices.add(w.getMessage());
            }
            String denied = expectSqlState("42501", () -> {
                try (PreparedStatement ps = c.prepareStatement("DELETE FROM " + t + " WHERE id = ?")) {
                    ps.setInt(1, 2);
                    ps.executeUpdate();
                }
            });
            check(denied.contains("not this one"), "denial reason: " + denied);
            expectSqlState("57014", () -> {
                try (Statement s = c.createStatement()) {
                    s.executeUpdate("UPDATE " + t + " SET v = 0 WHERE id = 3");
                }
            });
            checkEq(1L, scalarLong(c, "SELECT 1"), "usable after the hold");
            return String.join(" | ", notices);
        }
    }

    static String tls() throws Exception {
        try (Connection c = connect("ssl", "true", "sslmode", "verify-full",
                "sslrootcert", env("ITEST_SSL_ROOTCERT", ""))) {
            checkEq(42L, scalarLong(c, "SELECT 40 + 2"), "query over TLS");
            return "ok";
        }
    }

    private static Scenario scenario(String name) {
        switch (name) {
            case "basic": return DriverCheck::basic;
            case "binary": return DriverCheck::binary;
            case "transaction": return DriverCheck::transaction;
            case "error": return DriverCheck::error;
            case "copy": return DriverCheck::copy;
            case "notify": return DriverCheck::listenNotify;
            case "cancel": return DriverCheck::cancel;
            case "batch": return DriverCheck::batch;
            case "large": return DriverCheck::large;
            case "params": return DriverCheck::params;
            case "tls": return DriverCheck::tls;
            case "guard": return DriverCheck::guard;
            case "hold": return DriverCheck::hold;
            default: throw new IllegalArgumentException("unknown scenario " + name);
        }
    }

    public static void main(String[] args) {
        runScenarios(args, DriverCheck::scenario);
    }
}

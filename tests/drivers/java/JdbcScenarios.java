// What the JDBC scenario programs (DriverCheck, MaskCheck) share: settings
// from the environment, the connection, checks, and the loop that runs the
// scenarios named on the command line and prints one line
// "RESULT <name> PASS <detail>" or "RESULT <name> FAIL <why>" for each.

import java.io.PrintWriter;
import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.SQLException;
import java.util.Objects;
import java.util.Properties;
import java.util.function.Function;

abstract class JdbcScenarios {

    interface Scenario {
        String run() throws Exception;
    }

    interface SqlRun {
        void run() throws SQLException;
    }

    static String env(String name, String dflt) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? dflt : v;
    }

    /* The settings every connection starts from: PGUSER and PGPASSWORD, no TLS, timeouts. */
    static Properties settings(String applicationName) {
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER", "app_agent"));
        p.setProperty("password", env("PGPASSWORD", ""));
        p.setProperty("sslmode", "disable");
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "120");
        p.setProperty("ApplicationName", applicationName);
        return p;
    }

    /* A connection to PGHOST:PGPORT/PGDATABASE with these settings. */
    static Connection connectWith(Properties p) throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "127.0.0.1") + ":" + env("PGPORT", "5432") + "/"
                + env("PGDATABASE", "app");
        return DriverManager.getConnection(url, p);
    }

    static void check(boolean cond, String what) {
        if (!cond)
            throw new AssertionError(what);
    }

    static void checkEq(Object expected, Object actual, String what) {
        if (!Objects.equals(expected, actual))
            throw new AssertionError(what + ": expected <" + expected + "> but got <" + actual + ">");
    }

    /* Runs r, which must fail with this SQLSTATE; returns the error's message. */
    static String expectSqlState(String state, SqlRun r) throws SQLException {
        try {
            r.run();
        } catch (SQLException e) {
            checkEq(state, e.getSQLState(), "SQLSTATE (" + e.getMessage() + ")");
            return e.getMessage();
        }
        throw new AssertionError("expected SQLSTATE " + state + ", got no error");
    }

    /* Runs each named scenario (an unknown name fails) and prints its RESULT line; exits 1 if any failed. */
    static void runScenarios(String[] names, Function<String, Scenario> scenarios) {
        int failed = 0;
        for (String name : names) {
            String line;
            try {
                line = "RESULT " + name + " PASS " + scenarios.apply(name).run();
            } catch (Throwable e) {
                failed++;
                StringWriter sw = new StringWriter();
                e.printStackTrace(new PrintWriter(sw));
                line = "RESULT " + name + " FAIL " + sw.toString().replace("\n", " | ");
            }
            System.out.println(line);
            System.out.flush();
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}

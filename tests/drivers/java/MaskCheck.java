// Masked columns through pgjdbc, run by tests/integration/test_mask_drivers.py.
//
// Usage: java -cp <classes>:postgresql.jar MaskCheck mode scenario...
// mode: "default" (the driver's own settings), "prep1" (prepareThreshold=1,
// binaryTransfer=true: server-prepared from the first execution, binary
// results from the second), "binary" (prepareThreshold=-1: binary results
// from the first execution). Connection settings come from PGHOST, PGPORT,
// PGDATABASE, PGUSER, PGPASSWORD; ITEST_TABLE, ITEST_MANY and ITEST_LOG name
// the tables. Every scenario prints what the driver decoded as
// "DATA <scenario> <json>" lines and one "RESULT <scenario> PASS|FAIL <detail>"
// (JdbcScenarios).

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.postgresql.PGStatement;

public final class MaskCheck extends JdbcScenarios {

    private static String mode = "default";

    private static final String T = env("ITEST_TABLE", "maskdrv_people");
    private static final String MANY = env("ITEST_MANY", "maskdrv_many");
    private static final String LOG = env("ITEST_LOG", "maskdrv_log");
    private static final String COLS = "id, name, email, ssn, salary, born, score, card, note, city";

    private static Connection connect() throws SQLException {
        Properties p = settings("itest-jdbc-mask-" + mode);
        if (mode.equals("prep1")) {
            p.setProperty("prepareThreshold", "1");
            p.setProperty("binaryTransfer", "true");
        } else if (mode.equals("binary")) {
            p.setProperty("prepareThreshold", "-1");
            p.setProperty("binaryTransfer", "true");
        } else if (!mode.equals("default")) {
            throw new IllegalArgumentException("unknown mode " + mode);
        }
        return connectWith(p);
    }

    // ------------------------------------------------------------------ output

    private static String json(Object o) {
        if (o == null)
            return "null";
        if (o instanceof Number || o instanceof Boolean)
            return o.toString();
        if (o instanceof List) {
            StringBuilder b = new StringBuilder("[");
            for (Object e : (List<?>) o)
                b.append(b.length() > 1 ? "," : "").append(json(e));
            return b.append("]").toString();
        }
        if (o instanceof Map) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<?, ?> e : ((Map<?, ?>) o).entrySet())
                b.append(b.length() > 1 ? "," : "").append(json(e.getKey().toString())).append(":")
                        .append(json(e.getValue()));
            return b.append("}").toString();
        }
        StringBuilder b = new StringBuilder("\"");
        for (char ch : o.toString().toCharArray()) {
            if (ch == '"' || ch == '\\')
                b.append('\\').append(ch);
            else if (ch < 0x20)
                b.append(String.format("\\u%04x", (int) ch));
            else
                b.append(ch);
        }
        return b.append("\"").toString();
    }

    private static void data(String scenario, Object value) {
        System.out.println("DATA " + scenario + " " + json(value));
    }

    // ------------------------------------------------------------------ rows

    /* A row of COLS as the driver decodes it, with the types checked. */
    private static List<Object> person(ResultSet rs) throws SQLException {
        check(rs.getObject("salary") instanceof BigDecimal, "salary is not a BigDecimal");
        check(rs.getObject("born") instanceof java.sql.Date, "born is not a java.sql.Date");
        check(rs.getObject("score") instanceof Integer, "score is not an Integer");
        LocalDate born = rs.getObject("born", LocalDate.class);
        checkEq(born.toString(), rs.getDate("born").toString(), "born as LocalDate and as Date");
        return new ArrayList<>(Arrays.asList(rs.getInt("id"), rs.getString("name"), rs.getString("email"),
                rs.getString("ssn"), rs.getBigDecimal("salary").toPlainString(), born.toString(), rs.getInt("score"),
                rs.getString("card"), rs.getString("note"), rs.getString("city")));
    }

    private static List<List<Object>> people(ResultSet rs) throws SQLException {
        List<List<Object>> out = new ArrayList<>();
        while (rs.next())
            out.add(person(rs));
        return out;
    }

    /* Checks one row of MANY (id, email, salary, born, city) against its mask. */
    private static void checkMany(ResultSet rs) throws SQLException {
        int i = rs.getInt(1);
        BigDecimal salary = new BigDecimal(i).multiply(new BigDecimal("1.37"));
        BigDecimal want = salary.round(new MathContext(2, RoundingMode.HALF_UP));
        LocalDate born = LocalDate.of(1970, 1, 1).plusDays(i).withDayOfMonth(1);
        checkEq("m***@corp-many.example", rs.getString(2), "email of row " + i);
        check(want.compareTo(rs.getBigDecimal(3)) == 0, "salary of row " + i + ": " + rs.getBigDecimal(3) + " != " + want);
        checkEq(born, rs.getObject(4, LocalDate.class), "born of row " + i);
        checkEq("city" + (i % 10), rs.getString(5), "city of row " + i);
    }

    // ------------------------------------------------------------------ scenarios

    static String select() throws Exception {
        try (Connection c = connect()) {
            List<List<Object>> first = null;
            boolean serverPrepared = false;
            try (PreparedStatement ps = c.prepareStatement("SELECT " + COLS + " FROM " + T + " WHERE id > ? ORDER BY id")) {
                for (int round = 0; round < 7; round++) {
                    ps.setInt(1, 0);
                    List<List<Object>> rows;
                    try (ResultSet rs = ps.executeQuery()) {
                        rows = people(rs);
                    }
                    if (first == null)
                        first = rows;
                    checkEq(first.toString(), rows.toString(), "execution " + round);
                }
                serverPrepared = ps.unwrap(PGStatement.class).isUseServerPrepare();
            }
            check(serverPrepared, "the statement was not server-prepared");
            data("select", first);
            // a masked row picked by a parameter, each one in turn
            List<List<Object>> byId = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT " + COLS + " FROM " + T + " WHERE id = ?")) {
                for (int i : new int[] {3, 1, 2, 3, 1, 2}) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        byId.addAll(people(rs));
                    }
                }
            }
            data("select_by_id", byId);
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT * FROM " + T + " ORDER BY id")) {
                data("select_star", people(rs));
            }
            return "server-prepared";
        }
    }

    static String fetchsize() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false); // a fetch size works through a portal inside a transaction
            int count = 0;
            try (PreparedStatement ps = c.prepareStatement("SELECT id, email, salary, born, city FROM " + MANY
                    + " WHERE id > ? ORDER BY id")) {
                ps.setFetchSize(1000);
                for (int round = 0; round < 2; round++) {
                    ps.setInt(1, 0);
                    count = 0;
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            checkMany(rs);
                            checkEq(++count, rs.getInt(1), "row order");
                        }
                    }
                    checkEq(12000, count, "rows of round " + round);
                }
            }
            // one row per Execute: PortalSuspended after each
            List<List<Object>> rows;
            try (PreparedStatement ps = c.prepareStatement("SELECT " + COLS + " FROM " + T + " ORDER BY id")) {
                ps.setFetchSize(1);
                try (ResultSet rs = ps.executeQuery()) {
                    rows = people(rs);
                }
            }
            data("fetch1", rows);
            // two portals open at once, read in turns
            List<Object> turns = new ArrayList<>();
            try (PreparedStatement a = c.prepareStatement("SELECT id, email FROM " + T + " ORDER BY id");
                 PreparedStatement b = c.prepareStatement("SELECT ssn, id FROM " + T + " ORDER BY id DESC")) {
                a.setFetchSize(1);
                b.setFetchSize(1);
                try (ResultSet ra = a.executeQuery(); ResultSet rb = b.executeQuery()) {
                    while (ra.next() && rb.next()) {
                        turns.add(Arrays.asList(ra.getInt(1), ra.getString(2)));
                        turns.add(Arrays.asList(rb.getInt(2), rb.getString(1)));
                    }
                }
            }
            data("turns", turns);
            c.commit();
            return "rows=" + count;
        }
    }

    static String batch() throws Exception {
        try (Connection c = connect()) {
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + LOG + " (id, secret, city) VALUES (?, ?, ?)",
                    new String[] {"id", "secret", "city"})) {
                for (int i : new int[] {1, 2, 7}) {
                    ps.setInt(1, i);
                    ps.setString(2, String.format("log-secret-jdbc-%04d", i));
                    ps.setString(3, "town" + i);
                    ps.addBatch();
                }
                checkEq(3, ps.executeBatch().length, "batch size");
                List<Object> keys = new ArrayList<>();
                try (ResultSet rs = ps.getGeneratedKeys()) {
                    while (rs.next())
                        keys.add(Arrays.asList(rs.getInt(1), rs.getString(2), rs.getString(3)));
                }
                data("batch_returning", keys);
            }
            // a batch of selects by parameter is not allowed; a batch of updates of unmasked columns is
            try (Statement s = c.createStatement()) {
                s.addBatch("UPDATE " + LOG + " SET city = city || '!' WHERE id = 1");
                s.addBatch("UPDATE " + LOG + " SET city = upper(city) WHERE id = 2");
                checkEq("[1, 1]", Arrays.toString(s.executeBatch()), "update counts");
            }
            List<Object> rows = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT id, secret, city FROM " + LOG + " WHERE id > ? ORDER BY id")) {
                for (int round = 0; round < 3; round++) {
                    ps.setInt(1, 0);
                    rows.clear();
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next())
                            rows.add(Arrays.asList(rs.getInt(1), rs.getString(2), rs.getString(3)));
                    }
                }
            }
            data("batch_rows", rows);
            return "ok";
        }
    }

    static String refused() throws Exception {
        try (Connection c = connect()) {
            List<Object> messages = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT upper(email) FROM " + T + " WHERE id = ?")) {
                for (int round = 0; round < 3; round++) {
                    ps.setInt(1, 1);
                    messages.add(expectSqlState("42501", () -> ps.executeQuery().close()));
                }
            }
            try (Statement s = c.createStatement()) {
                messages.add(expectSqlState("42501", () -> s.executeQuery("SELECT md5(ssn) FROM " + T).close()));
            }
            data("refused_messages", messages);
            // the connection goes on: masked rows again, through a server-prepared statement
            List<List<Object>> rows;
            try (PreparedStatement ps = c.prepareStatement("SELECT " + COLS + " FROM " + T + " WHERE id > ? ORDER BY id")) {
                for (int round = 0; round < 3; round++) {
                    ps.setInt(1, 0);
                    try (ResultSet rs = ps.executeQuery()) {
                        rows = people(rs);
                    }
                }
                ps.setInt(1, 0);
                try (ResultSet rs = ps.executeQuery()) {
                    rows = people(rs);
                }
            }
            data("after_refusal", rows);
            // inside a transaction a refusal fails it, as an error of the server does
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                expectSqlState("42501", () -> s.executeQuery("SELECT lower(card) FROM " + T).close());
                expectSqlState("25P02", () -> s.executeQuery("SELECT 1").close());
            }
            c.rollback();
            c.setAutoCommit(true);
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT ssn FROM " + T + " WHERE id = 2")) {
                check(rs.next(), "row");
                data("after_rollback", rs.getString(1));
            }
            return "ok";
        }
    }

    static String metadata() throws Exception {
        try (Connection c = connect()) {
            Map<String, Object> out = new LinkedHashMap<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT " + COLS + " FROM " + T + " WHERE id = ?")) {
                ps.setInt(1, 1);
                try (ResultSet rs = ps.executeQuery()) {
                    ResultSetMetaData md = rs.getMetaData();
                    List<Object> cols = new ArrayList<>();
                    for (int k = 1; k <= md.getColumnCount(); k++)
                        cols.add(Arrays.asList(md.getColumnName(k), md.getColumnTypeName(k), md.getColumnType(k),
                                md.getColumnClassName(k)));
                    out.put("columns", cols);
                    org.postgresql.PGResultSetMetaData pmd = md.unwrap(org.postgresql.PGResultSetMetaData.class);
                    out.put("base", Arrays.asList(pmd.getBaseTableName(3), pmd.getBaseColumnName(3)));
                    check(rs.next(), "row");
                    out.put("row", person(rs));
                }
            }
            DatabaseMetaData dmd = c.getMetaData();
            List<Object> cols = new ArrayList<>();
            try (ResultSet rs = dmd.getColumns(null, "public", T, "%")) {
                while (rs.next())
                    cols.add(Arrays.asList(rs.getString("COLUMN_NAME"), rs.getString("TYPE_NAME")));
            }
            out.put("getColumns", cols);
            data("metadata", out);
            return "ok";
        }
    }

    static String primarykeys() throws Exception {
        try (Connection c = connect()) {
            try (ResultSet rs = c.getMetaData().getPrimaryKeys(null, "public", T)) {
                check(rs.next(), "primary key");
                data("primarykeys", rs.getString("COLUMN_NAME"));
            }
            return "ok";
        }
    }

    private static Scenario scenario(String name) {
        switch (name) {
            case "select": return MaskCheck::select;
            case "fetchsize": return MaskCheck::fetchsize;
            case "batch": return MaskCheck::batch;
            case "refused": return MaskCheck::refused;
            case "metadata": return MaskCheck::metadata;
            case "primarykeys": return MaskCheck::primarykeys;
            default: throw new IllegalArgumentException("unknown scenario " + name);
        }
    }

    public static void main(String[] args) {
        mode = args[0];
        runScenarios(Arrays.copyOfRange(args, 1, args.length), MaskCheck::scenario);
    }
}

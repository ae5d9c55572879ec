// Logs in through Postern with pgjdbc (the JDBC URL carries sslmode and
// sslrootcert), runs a plain query and a prepared statement with a parameter,
// and prints one line per result for test/drivers/jdbc.test.ts to check.
// The prepared statement runs past pgjdbc's prepareThreshold (5), so the
// later executions use a named server-side statement.
//
// Usage: java -cp <classes>:/usr/share/java/postgresql.jar ScramLogin JDBC_URL USER PASSWORD
// Exit 0 when everything ran; 1 with "error <SQLSTATE> <message>" on a SQL error.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public final class ScramLogin {
  private ScramLogin() {}

  public static void main(String[] args) {
    if (args.length != 3) {
      System.err.println("usage: ScramLogin JDBC_URL USER PASSWORD");
      System.exit(2);
    }
    Properties props = new Properties();
    props.setProperty("user", args[1]);
    props.setProperty("password", args[2]);
    props.setProperty("connectTimeout", "20");
    props.setProperty("ApplicationName", "postern-jdbc-test");
    try (Connection conn = DriverManager.getConnection(args[0], props)) {
      try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select current_user, 40 + 2")) {
        while (rs.next()) {
          System.out.println("query " + rs.getString(1) + " " + rs.getInt(2));
        }
      }
      try (PreparedStatement ps = conn.prepareStatement("select ?::int * 10 + 2, current_database()")) {
        for (int i = 1; i <= 6; i++) {
          ps.setInt(1, i);
          try (ResultSet rs = ps.executeQuery()) {
            while (rs.next()) {
              System.out.println("prepared " + i + " " + rs.getInt(1) + " " + rs.getString(2));
            }
          }
        }
      }
      System.out.println("done");
    } catch (SQLException e) {
      System.out.println("error " + e.getSQLState() + " " + e.getMessage());
      System.exit(1);
    }
  }
}

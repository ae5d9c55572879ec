// Runs one pgjdbc connection through Postern in transaction mode with
// prepareThreshold=1: every execution uses a named server-side statement.
// Prints "row <i> <value> <backend pid>" per execution, then "done".
// Usage: TxPrepared JDBC_URL USER PASSWORD COUNT
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Properties;

public final class TxPrepared {
  private TxPrepared() {}

  public static void main(String[] args) throws InterruptedException {
    Properties props = new Properties();
    props.setProperty("user", args[1]);
    props.setProperty("password", args[2]);
    props.setProperty("prepareThreshold", "1");
    int count = Integer.parseInt(args[3]);
    try (Connection conn = DriverManager.getConnection(args[0], props);
        PreparedStatement ps = conn.prepareStatement("select ?::int * 3 + 1, pg_backend_pid()")) {
      for (int i = 1; i <= count; i++) {
        ps.setInt(1, i);
        try (ResultSet rs = ps.executeQuery()) {
          while (rs.next()) System.out.println("row " + i + " " + rs.getInt(1) + " " + rs.getInt(2));
        }
        Thread.sleep(5);
      }
      System.out.println("done");
    } catch (SQLException e) {
      System.out.println("error " + e.getSQLState() + " " + e.getMessage());
      System.exit(1);
    }
  }
}

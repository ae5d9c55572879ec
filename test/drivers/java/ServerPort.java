// Connects with pgjdbc (the JDBC URL carries the host name, sslmode and
// sslrootcert) and prints the port of the PostgreSQL server that answered,
// for test/integration/tenants.test.ts: which cluster a TLS server name
// (SNI) reached through Postern.
//
// Usage: java -cp <classes>:/usr/share/java/postgresql.jar ServerPort JDBC_URL USER PASSWORD
// Exit 0 after "port <n>"; 1 with "error <SQLSTATE> <message>" on a SQL error.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public final class ServerPort {
  private ServerPort() {}

  public static void main(String[] args) {
    if (args.length != 3) {
      System.err.println("usage: ServerPort JDBC_URL USER PASSWORD");
      System.exit(2);
    }
    Properties props = new Properties();
    props.setProperty("user", args[1]);
    props.setProperty("password", args[2]);
    props.setProperty("connectTimeout", "20");
    try (Connection conn = DriverManager.getConnection(args[0], props);
        Statement st = conn.createStatement();
        ResultSet rs = st.executeQuery("select inet_server_port()")) {
      while (rs.next()) System.out.println("port " + rs.getInt(1));
    } catch (SQLException e) {
      System.out.println("error " + e.getSQLState() + " " + e.getMessage());
      System.exit(1);
    }
  }
}

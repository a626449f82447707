package volume

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// DatabaseDSN turns cinder's [database] connection into a DSN of
// github.com/go-sql-driver/mysql. It accepts oslo.db's SQLAlchemy URLs
// (mysql://, mysql+pymysql://, mysql+mysqldb://; host[:port], or a unix
// socket in ?unix_socket=) and go-sql-driver DSNs as they are
// (user:pass@unix(/run/mysqld.sock)/cinder). The result always parses
// times (parseTime=true) in UTC, as cinder stores them. Errors never
// include the value: it holds a password.
func DatabaseDSN(conn string) (string, error) {
	conn = strings.TrimSpace(conn)
	if conn == "" {
		return "", fmt.Errorf("empty database URL")
	}
	var cfg *mysql.Config
	if scheme, _, ok := strings.Cut(conn, "://"); ok {
		switch strings.ToLower(scheme) {
		case "mysql", "mysql+pymysql", "mysql+mysqldb", "mysql+mysqlconnector":
		default:
			return "", fmt.Errorf("database scheme %q is not supported: only MySQL (mysql+pymysql://user:pass@host/cinder)", scheme)
		}
		u, err := url.Parse(conn)
		if err != nil {
			return "", fmt.Errorf("database URL does not parse as user:pass@host/database")
		}
		cfg = mysql.NewConfig()
		if u.User != nil {
			cfg.User = u.User.Username()
			cfg.Passwd, _ = u.User.Password()
		}
		cfg.DBName = strings.TrimPrefix(u.Path, "/")
		if cfg.DBName == "" || strings.Contains(cfg.DBName, "/") {
			return "", fmt.Errorf("database URL names no database (…/cinder)")
		}
		q := u.Query()
		if sock := q.Get("unix_socket"); sock != "" {
			cfg.Net, cfg.Addr = "unix", sock
		} else {
			host, port := u.Hostname(), u.Port()
			if host == "" {
				host = "localhost"
			}
			if port == "" {
				port = "3306"
			}
			cfg.Net, cfg.Addr = "tcp", net.JoinHostPort(host, port)
		}
		if cs := q.Get("charset"); cs != "" {
			cfg.Params = map[string]string{"charset": cs}
		}
	} else {
		var err error
		if cfg, err = mysql.ParseDSN(conn); err != nil {
			return "", fmt.Errorf("database DSN does not parse (mysql+pymysql://user:pass@host/cinder or user:pass@tcp(host:3306)/cinder)")
		}
		if cfg.DBName == "" {
			return "", fmt.Errorf("database DSN names no database")
		}
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	return cfg.FormatDSN(), nil
}

// RedactDSN hides the password of a go-sql-driver DSN.
func RedactDSN(dsn string) string {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return "***"
	}
	if cfg.Passwd != "" {
		cfg.Passwd = "xxxxx"
	}
	return cfg.FormatDSN()
}

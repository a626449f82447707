package volume

import (
	"strings"
	"testing"
)

func TestDatabaseDSN(t *testing.T) {
	for in, want := range map[string]string{
		"mysql+pymysql://cinder:s3cr%40t@db.example.com/cinder?charset=utf8":                 "cinder:s3cr@t@tcp(db.example.com:3306)/cinder?parseTime=true&charset=utf8",
		"mysql+pymysql://cinder:pw@10.0.0.5:3307/cinder":                                     "cinder:pw@tcp(10.0.0.5:3307)/cinder?parseTime=true",
		"mysql://cinder:pw@[fd00::5]/cinder":                                                 "cinder:pw@tcp([fd00::5]:3306)/cinder?parseTime=true",
		"mysql+pymysql://cinder:pw@/cinder?unix_socket=/run/mysqld/mysqld.sock&charset=utf8": "cinder:pw@unix(/run/mysqld/mysqld.sock)/cinder?parseTime=true&charset=utf8",
		"mysql+pymysql://cinder:pw@localhost/cinder?unix_socket=/var/run/mysqld.sock":        "cinder:pw@unix(/var/run/mysqld.sock)/cinder?parseTime=true",
		"cp:cp@unix(/tmp/vcagent-cp/run/mysqld.sock)/cinder?parseTime=true":                  "cp:cp@unix(/tmp/vcagent-cp/run/mysqld.sock)/cinder?parseTime=true",
		"cinder:pw@tcp(db:3306)/cinder":                                                      "cinder:pw@tcp(db:3306)/cinder?parseTime=true",
	} {
		got, err := DatabaseDSN(in)
		if err != nil || got != want {
			t.Errorf("DatabaseDSN(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "sqlite:///cinder.db", "postgresql://u:topsecret@h/cinder", "mysql+pymysql://u:topsecret@h/", "not a dsn at all"} {
		got, err := DatabaseDSN(in)
		if err == nil {
			t.Errorf("DatabaseDSN(%q) = %q, want an error", in, got)
		} else if strings.Contains(err.Error(), "topsecret") {
			t.Errorf("error %q shows the password", err)
		}
	}
}

func TestRedactDSN(t *testing.T) {
	if got := RedactDSN("cinder:topsecret@tcp(db:3306)/cinder?parseTime=true"); strings.Contains(got, "topsecret") || !strings.Contains(got, "cinder:xxxxx@tcp(db:3306)") {
		t.Errorf("RedactDSN = %q", got)
	}
}

//go:build integration

package integration

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vcagent/vcagent/rpc"
)

// logDirEnv names the directory where the agents' logs of a run are kept
// (one file per agent, named <test pid>-<n>-<test>.log, and the secrets the
// agents were given in <test pid>.secrets); by default a directory that is
// removed with the run's other temporary files.
const logDirEnv = "VCAGENT_LOG_DIR"

// runLogs holds the run's agent logs and the secrets given to the agents.
var runLogs struct { //nolint:gochecknoglobals // one per test run
	once sync.Once
	dir  string
	err  error

	mu      sync.Mutex
	n       int
	secrets map[string]string // secret -> where it was given
}

func runLogDir() (string, error) {
	runLogs.once.Do(func() {
		runLogs.dir = os.Getenv(logDirEnv)
		if runLogs.dir == "" {
			runLogs.dir = filepath.Join(filepath.Dir(agentBinary), "logs")
		}
		runLogs.err = os.MkdirAll(runLogs.dir, 0o755)
	})
	return runLogs.dir, runLogs.err
}

// keepAgentLog is startAgent's hook: it notes the secrets in the agent's
// environment and returns the file the agent's log is copied to.
func keepAgentLog(t testing.TB, env []string) io.WriteCloser {
	t.Helper()
	f, err := runLogFile(t.Name(), env)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func runLogFile(name string, env []string) (*os.File, error) {
	for _, kv := range env {
		noteSecrets(kv)
	}
	dir, err := runLogDir()
	if err != nil {
		return nil, err
	}
	runLogs.mu.Lock()
	runLogs.n++
	n := runLogs.n
	runLogs.mu.Unlock()
	safe := strings.NewReplacer("/", "_", " ", "_").Replace(name)
	return os.Create(filepath.Join(dir, fmt.Sprintf("%d-%03d-%s.log", os.Getpid(), n, safe)))
}

// noteSecrets records the passwords and tokens of one VAR=value setting.
func noteSecrets(kv string) {
	key, value, _ := strings.Cut(kv, "=")
	switch {
	case key == "VCAGENT_TRANSPORT_URL":
		u, err := rpc.ParseTransportURL(value)
		if err != nil {
			// Not parsable here either: take what sits between the
			// user's colon and the @, as a human would read it.
			if at := strings.LastIndex(value, "@"); at > 0 {
				if c := strings.LastIndex(value[:at], ":"); c > 0 {
					addSecret(value[c+1:at], key)
				}
			}
			return
		}
		for _, h := range u.Hosts {
			addSecret(h.Password, key)
		}
	case strings.Contains(key, "PASSWORD"), strings.Contains(key, "TOKEN"):
		addSecret(value, key)
	}
}

// addSecret records a secret, in memory and in <pid>.secrets beside the
// logs, so that a later test process scanning the same directory (test.sh's
// last step) knows it too. They are the test run's own secrets: random
// ones, and the test control plane's fixed token.
func addSecret(s, where string) {
	runLogs.mu.Lock()
	defer runLogs.mu.Unlock()
	if runLogs.secrets == nil {
		runLogs.secrets = map[string]string{}
	}
	if _, ok := runLogs.secrets[s]; ok || s == "" {
		return
	}
	runLogs.secrets[s] = where
	if dir, err := runLogDir(); err == nil {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.secrets", os.Getpid())), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err == nil {
			_, _ = fmt.Fprintf(f, "%s\t%s\n", where, s)
			_ = f.Close()
		}
	}
}

// keptSecrets returns the secrets of every test process that kept its
// logs in dir, by secret, with where each was given.
func keptSecrets(dir string) map[string]string {
	out := map[string]string{}
	files, _ := filepath.Glob(filepath.Join(dir, "*.secrets"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if where, secret, ok := strings.Cut(line, "\t"); ok && secret != "" {
				out[secret] = where
			}
		}
	}
	runLogs.mu.Lock()
	for s, where := range runLogs.secrets {
		out[s] = where
	}
	runLogs.mu.Unlock()
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestSecretsNeverLogged runs one more agent with a broker user of its own
// whose password is random, the control plane's token and a vCenter with a
// random password, at debug level, through a reconnection; then agents
// with a wrong broker password, a wrong vCenter password and malformed URLs
// that carry a password. Then it searches the logs kept so far (the files
// startAgent keeps, in $VCAGENT_LOG_DIR or a temporary directory: every
// agent of this run that started before it) and the operator endpoint's
// pages for every password and token any agent was given, and fails on any
// hit. TestSecretsNotInKeptLogs repeats the search at the end of test.sh.
func TestSecretsNeverLogged(t *testing.T) {
	ctrl := controlPlane(t)
	vcEnv, _ := testVCenter(t)
	user := "vcagent-secrets-" + randomHex(4)
	pass := randomHex(16)
	rabbitmqctl(t, "add_user", user, pass)
	t.Cleanup(func() { _ = exec.Command("rabbitmqctl", "-q", "delete_user", user).Run() })
	rabbitmqctl(t, "set_permissions", "-p", ctrl.Rabbit.VHost, user, ".*", ".*", ".*")
	broker := fmt.Sprintf("%s:%d/%s", ctrl.Rabbit.Host, ctrl.Rabbit.Port, ctrl.Rabbit.VHost)
	transport := fmt.Sprintf("rabbit://%s:%s@%s", user, pass, broker)

	host := fmt.Sprintf("vcagent-secrets-%d", time.Now().Unix()%100000)
	env := append(computeAgentEnv(ctrl, host), vcEnv...)
	env = append(env, "VCAGENT_TRANSPORT_URL="+transport, "VCAGENT_LOG_LEVEL=debug")
	agent := startAgent(t, env...)
	waitServiceState(t, ctrl, host, "up", 90*time.Second)
	// A reconnection logs the broker again.
	closeUserConnections(t, user)
	pingUntilAnswered(t, goTransport(t, ctrl.TransportURL), host, 60*time.Second)
	ops := agent.opsURL(t)
	for _, page := range []string{"/readyz", "/metrics", "/healthz"} {
		_, body := httpGet(t, ops+page)
		keepText(t, "ops"+strings.ReplaceAll(page, "/", "-"), body)
	}
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-agent.done

	// Failures that print what they were given.
	vcURL, vcUser := "", ""
	for _, kv := range vcEnv {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "VCAGENT_VCENTER_URL":
			vcURL = v
		case "VCAGENT_VCENTER_USER":
			vcUser = v
		}
	}
	wrongBroker := randomHex(16)
	wrongVC := randomHex(16)
	inURL := randomHex(16)
	for _, c := range []struct {
		name string
		env  []string
	}{
		{"wrong broker password", append(append([]string(nil), env...), "VCAGENT_TRANSPORT_URL=rabbit://"+user+":"+wrongBroker+"@"+broker)},
		{"wrong vCenter password", append(append([]string(nil), env...), "VCAGENT_VCENTER_PASSWORD="+wrongVC)},
		{"bad port in the transport URL", append(append([]string(nil), env...), "VCAGENT_TRANSPORT_URL=rabbit://"+user+":"+inURL+"@127.0.0.1:99999999/x")},
		{"bad option in the transport URL", append(append([]string(nil), env...), "VCAGENT_TRANSPORT_URL=rabbit://"+user+":"+inURL+"@127.0.0.1:5672/x?rabbit_qos_prefetch_count=many")},
		{"no scheme in the transport URL", append(append([]string(nil), env...), "VCAGENT_TRANSPORT_URL="+user+":"+inURL+"@127.0.0.1:5672/x")},
		{"credentials in the vCenter URL", append(append([]string(nil), env...),
			"VCAGENT_VCENTER_URL="+strings.Replace(vcURL, "://", "://"+vcUser+":"+inURL+"@", 1))},
	} {
		runAgentBriefly(t, c.name, 5*time.Second, c.env)
	}

	addSecret(ctrl.Token, "the control plane's token")
	addSecret(ctrl.Rabbit.Password, "the control plane's broker password")
	for _, s := range []string{wrongBroker, wrongVC, inURL} {
		addSecret(s, "a wrong or malformed setting")
	}
	scanRunLogs(t)
}

// closeUserConnections closes the broker connections of user (and only
// those: other tests and the control plane share the vhost).
func closeUserConnections(t *testing.T, user string) {
	t.Helper()
	out := rabbitmqctl(t, "-q", "list_connections", "--no-table-headers", "user", "pid")
	n := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == user {
			rabbitmqctl(t, "close_connection", f[1], "secrets test")
			n++
		}
	}
	if n == 0 {
		t.Fatalf("no broker connection of %s to close", user)
	}
}

// runAgentBriefly runs the agent for at most d (then SIGTERM) and keeps its log.
func runAgentBriefly(t *testing.T, name string, d time.Duration, env []string) {
	t.Helper()
	f, err := runLogFile(t.Name()+"-"+name, env)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(agentBinary)
	cmd.Env = append(os.Environ(), append([]string{"VCAGENT_LOG_FORMAT=json", "VCAGENT_HTTP_ADDR=127.0.0.1:0", "VCAGENT_SHUTDOWN_TIMEOUT=2s"}, env...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(d):
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			err = <-done
		}
	}
	t.Logf("%s: agent ended with %v", name, err)
}

// keepText adds a text to the run's logs.
func keepText(t *testing.T, name, text string) {
	t.Helper()
	f, err := runLogFile(t.Name()+"-"+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// TestSecretsNotInKeptLogs searches every log kept in the log directory
// for every secret any test process that kept logs there was given.
// integration/test.sh runs it alone after the integration tests, with the
// same VCAGENT_LOG_DIR, so that it covers every agent of the run whatever
// the order of the tests.
func TestSecretsNotInKeptLogs(t *testing.T) {
	dir, err := runLogDir()
	if err != nil {
		t.Fatal(err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*.log")); len(files) == 0 {
		t.Fatalf("no agent log kept in %s: nothing to search (set %s to the directory of a run)", dir, logDirEnv)
	}
	scanRunLogs(t)
}

// scanRunLogs fails on any secret found in the logs kept in the log
// directory. Secrets too short or too common to tell from other text (the
// default password "guest" is also a user name) are listed, not searched.
func scanRunLogs(t *testing.T) {
	t.Helper()
	dir, err := runLogDir()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	where := keptSecrets(dir)
	var secrets, skipped []string
	for s, w := range where {
		if len(s) < 8 || s == "guest" {
			skipped = append(skipped, w)
			continue
		}
		secrets = append(secrets, s)
	}
	sort.Strings(skipped)
	lines := 0
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for no := 1; sc.Scan(); no++ {
			lines++
			line := sc.Text()
			for _, s := range secrets {
				if strings.Contains(line, s) {
					shown := strings.ReplaceAll(line, s, "<"+where[s]+">")
					if len(shown) > 400 {
						shown = shown[:400] + "…"
					}
					t.Errorf("%s:%d holds %s: %s", filepath.Base(name), no, where[s], shown)
				}
			}
		}
		if err := sc.Err(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		f.Close()
	}
	t.Logf("searched %d lines in %d files of %s for %d secrets (not searchable: %v)", lines, len(files), dir, len(secrets), skipped)
	if len(files) == 0 || lines == 0 {
		t.Error("no agent log to search")
	}
}

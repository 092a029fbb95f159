package launchtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopSSHD()
	if stubPath != "" {
		os.RemoveAll(filepath.Dir(stubPath))
	}
	if realDir != "" {
		os.RemoveAll(realDir)
	}
	os.Exit(code)
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	stubOnce sync.Once
	stubPath string
	stubErr  error
)

// stubBinary builds stub/ once per test binary run.
func stubBinary(t *testing.T) string {
	t.Helper()
	stubOnce.Do(func() {
		dir, err := os.MkdirTemp("", "launchtest-stub-")
		if err != nil {
			stubErr = err
			return
		}
		stubPath = filepath.Join(dir, "stub")
		cmd := exec.Command("go", "build", "-o", stubPath, "./stub")
		if out, err := cmd.CombinedOutput(); err != nil {
			stubErr = fmt.Errorf("build stub: %v\n%s", err, out)
		}
	})
	if stubErr != nil {
		t.Fatal(stubErr)
	}
	return stubPath
}

// launchEnv is one test's private directory: the stub binaries under bin/
// (the --bin-dir; its path also marks every process the launch starts), a
// config, a key file, the state file and the log directory.
type launchEnv struct {
	dir, bin, config, keyFile, state, logs string
	key                                    string // the key file's text
}

func newEnv(t *testing.T, behavior string) *launchEnv {
	t.Helper()
	dir := t.TempDir()
	e := &launchEnv{
		dir:     dir,
		bin:     filepath.Join(dir, "bin"),
		config:  filepath.Join(dir, "cluster.yaml"),
		keyFile: filepath.Join(dir, "cluster.key"),
		state:   filepath.Join(dir, "launch.state"),
		logs:    filepath.Join(dir, "logs"),
	}
	stub := stubBinary(t)
	if err := os.MkdirAll(e.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(stub)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"coordinator", "node"} {
		if err := os.WriteFile(filepath.Join(e.bin, name), raw, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(e.bin, "behavior"), []byte(behavior), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := "cluster:\n  bind: 0.0.0.0:7946\n  label: \"lt-label\" # the nodes must get this\nmodel:\n  label: wrong\n"
	if err := os.WriteFile(e.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// A key the test can recognise anywhere it might leak to.
	e.key = "bGF1bmNodGVzdC1rZXktbXVzdC1uZXZlci1sZWFrLQ" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := os.WriteFile(e.keyFile, []byte(e.key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killMarked(e.bin) })
	return e
}

// keySHA is what the stub prints for a correctly delivered key file.
func (e *launchEnv) keySHA() string {
	s := sha256.Sum256([]byte(e.key + "\n"))
	return hex.EncodeToString(s[:])
}

// args returns the options every ssh test passes, then extra.
func (e *launchEnv) args(s *sshServer, extra ...string) []string {
	a := []string{
		"--config", e.config, "--bin-dir", e.bin, "--key-file", e.keyFile,
		"--ssh-opts", "-F " + s.sshConfig, "--state-file", e.state, "--log-dir", e.logs,
		"--coordinator-addr", "127.0.0.1:17946", "--cpu", "--grace", "2", "--connect-timeout", "3",
	}
	return append(a, extra...)
}

// launch is a running scripts/launch.sh. It runs in its own process group,
// as a shell job does, so that the test can send Ctrl-C to the group.
type launch struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startLaunch(t *testing.T, args ...string) *launch {
	t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(repoRoot(), "scripts", "launch.sh")}, args...)...)
	l := &launch{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = l.out, l.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { l.err = cmd.Wait(); close(l.done) }()
	t.Cleanup(func() {
		select {
		case <-l.done:
			return
		default:
		}
		// A test that failed mid-launch: TERM lets the launcher stop its
		// hosts, whose wrappers then remove their key files; KILL (which
		// leaves them to the dead man's switch, racing the test's own
		// cleanup) only if it does not end in time.
		syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-l.done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-l.done
		}
	})
	return l
}

// wait waits up to d for the launch to end and returns its exit status.
func (l *launch) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(d):
		t.Fatalf("launch.sh still running after %v:\n%s", d, l.out)
	}
	if l.err == nil {
		return 0
	}
	if ee, ok := l.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("launch.sh: %v", l.err)
	return -1
}

// runLaunch runs launch.sh to completion (at most d) and returns its status
// and output.
func runLaunch(t *testing.T, d time.Duration, args ...string) (int, string) {
	t.Helper()
	l := startLaunch(t, args...)
	code := l.wait(t, d)
	return code, l.out.String()
}

// waitOutput waits until every string of want is in the launch's output.
func (l *launch) waitOutput(t *testing.T, d time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		out := l.out.String()
		missing := ""
		for _, w := range want {
			if !strings.Contains(out, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the launch's output after %v:\n%s", missing, d, out)
		}
		select {
		case <-l.done:
			t.Fatalf("launch ended (%v) before printing %q:\n%s", l.err, missing, out)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// proc is a process found in /proc.
type proc struct {
	pid, ppid int
	cmdline   string
}

func procs() []proc {
	ents, _ := os.ReadDir("/proc")
	var ps []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		p := proc{pid: pid, cmdline: strings.ReplaceAll(string(raw), "\x00", " ")}
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			// Fields after the parenthesised command: state ppid ...
			if i := bytes.LastIndexByte(stat, ')'); i > 0 {
				f := strings.Fields(string(stat[i+1:]))
				if len(f) > 1 {
					p.ppid, _ = strconv.Atoi(f[1])
				}
				if len(f) > 0 && f[0] == "Z" {
					continue // exited, waiting to be reaped: not running
				}
			}
		}
		ps = append(ps, p)
	}
	return ps
}

// marked lists the running processes whose command line contains mark.
func marked(mark string) []proc {
	var out []proc
	for _, p := range procs() {
		if p.pid != os.Getpid() && strings.Contains(p.cmdline, mark) {
			out = append(out, p)
		}
	}
	return out
}

// stubs lists the running stand-in binaries of env e with role
// "coordinator" or "node" (not the ssh clients or wrappers that name them).
func stubs(e *launchEnv, role string) []proc {
	var out []proc
	for _, p := range marked(e.bin) {
		if strings.HasPrefix(p.cmdline, filepath.Join(e.bin, role)+" ") {
			out = append(out, p)
		}
	}
	return out
}

func killMarked(mark string) {
	for _, p := range marked(mark) {
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

// sshdChildren lists the sshd's session processes: none may remain once a
// launch is over.
func sshdChildren(s *sshServer) []proc {
	var out []proc
	for _, p := range procs() {
		if p.ppid == s.cmd.Process.Pid {
			out = append(out, p)
		}
	}
	return out
}

// assertNothingLeft fails unless, within d, no process of the launch (marked
// by the env's bin dir), no sshd session and no key directory remain.
func assertNothingLeft(t *testing.T, e *launchEnv, s *sshServer, keyDirs []string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := marked(e.bin)
		if s != nil {
			left = append(left, sshdChildren(s)...)
		}
		var dirs []string
		for _, k := range keyDirs {
			if _, err := os.Stat(k); err == nil {
				dirs = append(dirs, k)
			}
		}
		if len(left) == 0 && len(dirs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind after %v: processes %v, key dirs %v", d, left, dirs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// keyDirs returns the directories of the key files the stubs reported.
func keyDirs(out string) []string {
	var dirs []string
	for _, line := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(line, "key_file="); ok {
			dirs = append(dirs, filepath.Dir(strings.Fields(rest)[0]))
		}
	}
	return dirs
}

// assertKeyNotInProcesses fails if the key is in any process's command line
// or environment (what ps and /proc show other users).
func assertKeyNotInProcesses(t *testing.T, key string) {
	t.Helper()
	for _, p := range procs() {
		if strings.Contains(p.cmdline, key) {
			t.Errorf("the cluster key is on the command line of pid %d: %s", p.pid, p.cmdline)
		}
		if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.pid)); err == nil && bytes.Contains(env, []byte(key)) {
			t.Errorf("the cluster key is in the environment of pid %d (%s)", p.pid, p.cmdline)
		}
	}
}

// stateValue returns the value of the state file's line "key value".
func stateValue(t *testing.T, path, key string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			return v
		}
	}
	t.Fatalf("state file %s has no %q line:\n%s", path, key, raw)
	return ""
}
